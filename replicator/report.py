"""What a pass did, counted thread-safely, and how it is shown (JSON or text)."""

from __future__ import annotations

import threading
import uuid
from dataclasses import asdict, dataclass, field

COUNTERS = ("tags_replicated", "tags_unchanged", "tags_deleted", "tags_failed",
            "manifests_copied", "blobs_copied", "blobs_present", "bytes_copied",
            "server_side_copies", "server_side_verified", "server_side_trusted", "server_side_bytes",
            "purges_sent", "purges_retrying", "purges_failed", "purges_timed_out",
            "bandwidth_waits", "artifacts_replicated", "artifacts_unchanged", "artifacts_left_out",
            "source_blob_bytes", "blobs_shared", "blobs_reread", "repositories_unchanged")
"""``blobs_copied`` counts every blob copied, ``server_side_copies`` those of them the
destination's storage copied from the source's itself (``server_side_verified`` of them with
the SHA-256 proven by the provider, ``server_side_trusted`` checked by size only); ``bytes_copied`` counts only the bytes
that streamed through the replicator (blobs and manifests), ``server_side_bytes`` the others.
``purges_retrying`` counts URLs not accepted yet but worth retrying, ``purges_failed`` those
refused for good, ``purges_timed_out`` those still retrying when the run's ``cdn.timeout`` ran
out (the last two make the pass fail). ``bandwidth_waits`` counts the streamed chunks that
waited for the destination's ``bandwidth`` limit. ``artifacts_*`` count artifact tags
replicated ahead of their image (once per pass each), found already there, and left out past
the bound on how many one image may have. ``source_blob_bytes`` counts the blob bytes the
pass's streamed copies read from the source (a blob several destinations stream is read once,
each chunk counted in the report of the destination that pulled it, so the sum over a run's
reports is what the source served), ``blobs_shared`` the streamed blobs it took from a read
another destination had started, ``blobs_reread`` those it read (or read the rest of) from
the source again, having fallen behind or come late (:mod:`replicator.tee`).
``repositories_unchanged`` counts the repositories the pass skipped, found in sync before and
listed the same at both ends since (:mod:`replicator.settling`); their tags count in
``tags_unchanged``."""


@dataclass(frozen=True)
class Failure:
    repository: str
    tag: str
    error: str
    kind: str


@dataclass
class PassReport:
    """The outcome of one policy's pass into one destination."""

    policy: str
    source: str
    destination: str
    tags_replicated: int = 0
    tags_unchanged: int = 0
    tags_deleted: int = 0
    tags_failed: int = 0
    manifests_copied: int = 0
    blobs_copied: int = 0
    blobs_present: int = 0
    bytes_copied: int = 0
    server_side_copies: int = 0
    server_side_verified: int = 0
    server_side_trusted: int = 0
    server_side_bytes: int = 0
    purges_sent: int = 0
    purges_retrying: int = 0
    purges_failed: int = 0
    purges_timed_out: int = 0
    bandwidth_waits: int = 0
    failures: list[Failure] = field(default_factory=list)
    error: str | None = None
    """Set when the pass could not run at all (a region could not be listed)."""
    error_kind: str | None = None
    planned: list[str] = field(default_factory=list)
    artifacts_replicated: int = 0
    artifacts_unchanged: int = 0
    artifacts_left_out: int = 0
    source_blob_bytes: int = 0
    blobs_shared: int = 0
    blobs_reread: int = 0
    repositories_unchanged: int = 0
    planned_artifacts: list[str] = field(default_factory=list)
    """In a dry run, each artifact tag that would be replicated ahead of its image."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    pass_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Unique to this pass into this destination (the audit trail's ``pass_id``)."""

    @property
    def ok(self) -> bool:
        """Nothing failed: no tag, no pass, no purge refused for good or timed out (a purge still
        retrying within a run that does not wait for it is fine)."""
        return (self.error is None and self.tags_failed == 0 and self.purges_failed == 0
                and self.purges_timed_out == 0)

    def count(self, counter: str, n: int = 1) -> None:
        if counter not in COUNTERS:
            raise ValueError(f"unknown counter {counter!r}")
        with self._lock:
            setattr(self, counter, getattr(self, counter) + n)

    def fail(self, repository: str, tag: str, error: str, kind: str) -> None:
        with self._lock:
            self.tags_failed += 1
            self.failures.append(Failure(repository, tag, error, kind))

    def plan(self, action: str) -> None:
        with self._lock:
            self.planned.append(action)

    def plan_artifact(self, artifact: str) -> None:
        with self._lock:
            self.planned_artifacts.append(artifact)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {counter: getattr(self, counter) for counter in COUNTERS}

    def as_dict(self, dry_run: bool) -> dict:
        result = {"policy": self.policy, "source": self.source, "destination": self.destination}
        result.update(self.counts())
        result["failures"] = [asdict(failure) for failure in
                              sorted(self.failures, key=lambda f: (f.repository, f.tag))]
        result["error"] = self.error
        if dry_run:
            result["planned"] = self.planned
            result["planned_artifacts"] = self.planned_artifacts
        return result


def run_document(reports: list[PassReport], requests: dict[str, dict[str, int]],
                 cdn_calls: dict[str, int], duration: float, dry_run: bool,
                 purges_outstanding: dict[str, list[str]] | None = None) -> dict:
    """The ``--json`` document of a ``sync`` run: ``requests`` are storage requests and
    ``cdn_calls`` CDN API calls, by region; ``purges_outstanding`` the URLs each region's CDN
    has not accepted yet when the run ends (regions with none are left out)."""
    return {
        "ok": all(report.ok for report in reports),
        "dry_run": dry_run,
        "duration_seconds": round(duration, 3),
        "passes": [report.as_dict(dry_run) for report in reports],
        "requests": requests,
        "cdn_calls": cdn_calls,
        "purges_outstanding": {name: urls for name, urls in (purges_outstanding or {}).items() if urls},
    }


def run_text(reports: list[PassReport], duration: float, dry_run: bool) -> str:
    """A short human summary of a ``sync`` run."""
    lines = []
    for report in reports:
        if report.error is not None:
            lines.append(f"{report.policy}: {report.source} -> {report.destination}: ERROR {report.error}")
            continue
        lines.append(
            f"{report.policy}: {report.source} -> {report.destination}: "
            f"{report.tags_replicated} tags replicated, {report.tags_unchanged} unchanged, "
            f"{report.tags_deleted} deleted, {report.tags_failed} failed"
            + (f", {report.artifacts_replicated} artifacts replicated ahead of their images"
               if report.artifacts_replicated else "") + "; "
            + f"{report.blobs_copied} blobs and {report.manifests_copied} manifests copied "
            f"({human_size(report.bytes_copied)}"
            + (f"; {report.server_side_copies} blobs of {human_size(report.server_side_bytes)} "
               f"copied server-side ({report.server_side_verified} verified, "
               f"{report.server_side_trusted} trusted)" if report.server_side_copies else "")
            + f"), {report.blobs_present} already present"
            + (f"; {report.purges_sent} CDN purges sent, {report.purges_retrying + report.purges_failed} "
               f"not accepted yet" if report.purges_sent or report.purges_retrying
               or report.purges_failed else "")
            + (f" ({report.purges_timed_out} timed out, still queued)" if report.purges_timed_out else ""))
        lines.extend(f"  would {action}" for action in report.planned)
        lines.extend(f"  would replicate artifact {artifact}" for artifact in report.planned_artifacts)
        lines.extend(f"  FAILED {f.repository}:{f.tag}: {f.error}"
                     for f in sorted(report.failures, key=lambda f: (f.repository, f.tag)))
    verb = "planned (dry run)" if dry_run else "done"
    lines.append(f"{verb} in {duration:.1f}s")
    return "\n".join(lines)


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
