"""One replication pass: for each policy and destination, copy what the destination lacks.

A policy's pass takes one snapshot of the source (one repository for a targeted pass;
:mod:`replicator.endpoints`), then runs a pass into every destination at once, each with its
own workers, so that a slow or failing destination delays no other. Each takes a snapshot of
its destination, then for every selected source
tag whose digest differs at the destination: reads its manifests from the source, has the
destination plan what it lacks, copies missing blobs and manifests (each digest once per
destination per pass, hashed while it streams, or server-side; a blob several destinations
stream is read from the source once for all of them, :mod:`replicator.tee`), and makes the plan's steps
bottom-up with the tag's move after everything a pull needs. Every step that changes the
destination passes one gate (:mod:`replicator.gate`), which a dry run closes. The engine knows
registry concepts only: how an endpoint stores them is the endpoint's. Under ``artifacts:
follow`` a tag's artifacts (signatures, attestations, SBOMs, referrers) are made first
(:mod:`replicator.follow`); under ``require_signature`` a new digest must be signed
(:mod:`replicator.signatures`).

A tag fails alone: its error is recorded in the pass report and the state store, and the
pass goes on. At the end, the tags still out of sync become the destination's pending set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from drivers.backoff import Backoff
from drivers.base import ObjectInfo, ObjectTooLarge
from drivers.errors import NotFound, StorageError
from replicator import layout
from replicator.artifacts import artifact_subject, follows, standalone, wanted_tag
from replicator.audit import Change
from replicator.config import DEFAULT_ABANDONED_UPLOADS, Config, Policy, Region
from replicator.budget import EgressBudget
from replicator.copier import BlobCopier
from replicator.deletions import plan_deletions
from replicator.endpoints import Endpoint, endpoint_for
from replicator.endpoints.base import Destination, DestinationSnapshot, Selection, Snapshot
from replicator.errors import TAG_ERRORS, BudgetExhausted, ReplicationError, error_kind, unexpected
from replicator.filters import policy_selects, selected
from replicator.flavours import resolve_flavours
from replicator.follow import Artifact, ArtifactFollower
from replicator.gate import Gate, Link, Purge, Removal, Step, TagMove
from replicator.manifests import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    Manifest,
    ManifestError,
    parse_manifest,
)
from replicator.ordering import start_order
from replicator.once import Once
from replicator.planner import TagPlan
from replicator.purging import deliver_purges, purge_urls
from replicator.report import PassReport
from replicator.settling import Settling
from replicator.sharding import Shard
from replicator.tee import SourceTee
from replicator.throttle import TokenBucket
from replicator.windows import windows_open
from replicator.signatures import require_signature, signature_tag
from state.store import PassRecord, StateStore

log = logging.getLogger(__name__)

RETRY_BACKOFF = Backoff(initial=60.0, maximum=3600.0)
"""The wait between attempts at a failing tag."""


@dataclass(frozen=True)
class RunOptions:
    """How a pass runs.

    ``audit`` re-reads every link and re-plans every tag, trusting no cached state.
    ``backoff`` defers failing tags until their next retry time;
    ``None`` retries every failing tag now. ``stop``, once set, makes the pass start no
    further tag (tags under way finish). ``shard`` limits the pass to the repositories it owns.
    ``on_pass`` is called as each destination's pass starts, with its report and tags.
    ``clock`` tells the time for budgets, windows and deletion delays. ``respect_windows``
    skips destinations outside their sync windows; ``force_delete`` lifts ``max_delete``.
    """

    concurrency: int = 8
    dry_run: bool = False
    audit: bool = False
    backoff: Backoff | None = None
    stop: threading.Event | None = None
    shard: Shard = Shard()
    on_pass: Callable[[PassReport, list[tuple[str, str]]], None] | None = None
    server_side_copy: str = "verified"
    """``verified``, ``trusted`` or ``off``: which server-side copies ``BlobCopier`` may make."""
    abandoned_uploads_after: float = DEFAULT_ABANDONED_UPLOADS
    """After a pass that died (or in an audit), a full pass first discards the destination's
    incomplete uploads older than this."""
    wait_for_purges: bool = False
    """Keep retrying the destination's purges until accepted or its ``cdn.timeout`` (``sync``);
    otherwise one attempt, later ones left to the purge queue's timer (``serve``)."""
    on_change: Callable[[Change], None] | None = None
    """Called with each change applied to a destination (never in a dry run), once the change
    is visible there; what it raises fails the tag."""
    clock: Callable[[], float] = time.time
    respect_windows: bool = False
    force_delete: bool = False
    observer: Callable[[DestinationPass], Callable[[Step], None]] | None = None
    """In a dry run (``replicator plan``): called as each destination's pass is made; what it
    returns is shown every step the pass's gate records."""
    planned: Mapping[str, Mapping[tuple[str, str], str | None]] | None = None
    """A saved plan being applied: by destination, the only tags a pass may change, each with
    the digest it must still have at the source (``None``: planned for deletion). Other tags
    are only compared; a planned tag found changed is skipped and reported (kind ``changed``)."""

    @classmethod
    def from_config(cls, config: Config, **options) -> RunOptions:
        return cls(concurrency=config.concurrency, server_side_copy=config.server_side_copy,
                   abandoned_uploads_after=config.abandoned_uploads_after, **options)


class SourceReader:
    """Reads a source endpoint's tags and manifests, each at most once per pass."""

    def __init__(self, endpoint: Endpoint, snapshot: Snapshot, listed: float):
        self.endpoint = endpoint
        self.snapshot = snapshot
        self.listed = listed
        """When the source listing began: changes noted later may be missing from it."""
        self._manifests = Once()

    def tag_digest(self, name: str, tag: str) -> str:
        digest = self.snapshot.tag_digest(name, tag)
        if digest is None:
            raise ReplicationError("the tag is not in the source listing")
        return digest

    def manifest_tree(self, name: str, digest: str) -> dict[str, Manifest]:
        """The manifest at ``digest`` in repository ``name`` and every manifest below it.
        Raises ``TAG_ERRORS``."""
        tree: dict[str, Manifest] = {}
        pending = [digest]
        while pending:
            current = pending.pop()
            if current not in tree:
                tree[current] = self.manifest(name, current)
                pending.extend(child.digest for child in tree[current].children)
        return tree

    def manifest(self, name: str, digest: str) -> Manifest:
        """The parsed manifest; read once per pass even when tags ask for it concurrently
        (a failure is shared too). Raises ``TAG_ERRORS``."""
        return self._manifests.run(digest, lambda: self._read(name, digest))

    def _read(self, name: str, digest: str) -> Manifest:
        try:
            data = self.endpoint.manifest_read(name, digest, MAX_MANIFEST_SIZE)
        except NotFound:
            raise ReplicationError(f"manifest {digest} is missing at the source") from None
        except ObjectTooLarge:
            raise ManifestError(f"manifest {digest} is over the 4 MiB limit") from None
        return parse_manifest(data, digest)


class DestinationPass:
    """One policy's pass into one destination region (or one repository of it); ``tee``
    shares its streamed blobs' source reads with the other destinations' passes."""

    def __init__(self, policy: Policy, source: SourceReader,
                 source_tags: dict[tuple[str, str], ObjectInfo], destination: Destination,
                 region: Region, state: StateStore, options: RunOptions,
                 repository: str | None, tee: SourceTee | None = None,
                 settling: Settling | None = None):
        self.policy = policy
        self.source = source
        self.source_tags = source_tags
        self.region = region
        self.destination_name = region.name
        self.destination = destination
        self.state = state
        self.options = options
        self.repository = repository
        self.report = PassReport(policy.name, policy.source, region.name)
        self.gate = Gate(self.report, options.dry_run,
                         options.observer(self) if options.observer is not None else None)
        self.in_sync: set[tuple[str, str]] = set()
        self._reused: set[str] = set()
        self._lock = threading.Lock()
        self.artifacts = ArtifactFollower(policy, source, self._destination_digest,
                                          self._replicate_artifact, self.report,
                                          options.audit) if follows(policy) else None
        self._steps = Once()
        """Link steps several tags need (a shared layer's link): made once, the others wait."""
        self.planned = None if options.planned is None else options.planned.get(region.name, {})
        self.tee = tee if tee is not None else SourceTee(source.endpoint)
        self.held: DestinationSnapshot | None = None
        self.copier: BlobCopier | None = None
        self.settling = settling
        self._dirty: set[str] = set()
        """Repositories this pass wrote to, or would delete from: not settled by it."""

    def wants_stream(self, blob: Descriptor) -> bool:
        """Whether the pass may yet stream ``blob`` from the source, as far as it knows without
        a request (unknown: yes). Takes no lock (the tee asks under its own)."""
        held, copier = self.held, self.copier
        if held is not None and held.known_holding(blob.digest):
            return False
        return copier is None or copier.streams(blob)

    def run(self) -> PassReport:
        started = time.time()
        if self.repository is None and not self.options.dry_run:
            died = self.state.begin_pass(self.policy.name, self.destination_name, started)
            if died or self.options.audit:
                self._sweep_abandoned_uploads()
        skip = None if self.settling is None or not self.source.snapshot.fingerprints else \
            self.settling.destination_skips(self.destination_name,
                                            self.source.snapshot.skipped.__contains__)
        self.held = self.destination.destination_snapshot(self.repository, self.state,
                                                          self.options.audit,
                                                          wanted(self.policy, self.options), skip)
        self._restore_source()
        self.failing = self.state.failures(self.policy.name, self.destination_name)
        self.pending_since = self.state.pending(self.policy.name, self.destination_name)
        if self.options.on_pass is not None:
            self.options.on_pass(self.report, list(self.source_tags))
        self._report_planned_tags_gone()
        # the destination's tags as the pass began: a registry lists them now, as a plan does
        held_tags = sorted(self.held.tags) if self.policy.delete else []
        workers = self.options.concurrency
        settings = self.policy.destination_settings(self.destination_name)
        self.budget = EgressBudget(self.state, self.policy.name, self.destination_name,
                                   None if self.options.dry_run else settings.egress_budget,
                                   self.options.clock)
        with ThreadPoolExecutor(workers, "blob") as blob_pool, \
                ThreadPoolExecutor(workers, "tag") as tag_pool:
            self.copier = BlobCopier(self.source.endpoint, self.destination, blob_pool,
                                     self.report, self.gate, self.options.server_side_copy,
                                     TokenBucket(settings.bandwidth) if settings.bandwidth else None,
                                     self.budget, self.tee, self.destination_name)
            self._replicate_all(tag_pool, 2 * workers)
        self.tee.leave(self.destination_name)
        if self.repository is None:
            self.budget.note_waiting(sum(failure.kind == "budget" for failure in self.report.failures))
        if self.policy.delete:
            self._delete_removed_tags(held_tags)
        if not self.options.dry_run:
            self._record(started)
            self._settle()
            timeout = self.region.cdn.timeout if self.options.wait_for_purges and self.region.cdn else None
            outcome = deliver_purges(self.region, self.state, timeout)
            for result in ("sent", "retrying", "failed", "timed_out"):
                self.report.count(f"purges_{result}", getattr(outcome, result))
        return self.report

    def _restore_source(self) -> None:
        """Count the repositories skipped here as unchanged; have the source list again those
        it left out that this destination's listing did not (:mod:`replicator.settling`)."""
        if self.settling is None:
            return
        skipped = self.held.skipped
        self.report.count("repositories_unchanged", len(skipped))
        self.report.count("tags_unchanged", sum(self.settling.tags(self.destination_name, name)
                                                for name in skipped))
        restored: dict[tuple[str, str], ObjectInfo] = {}
        for name in sorted(self.source.snapshot.skipped - skipped):
            restored.update(self.source.snapshot.restore(name))
        if restored:
            self.source_tags = {**self.source_tags, **pass_tags(self.policy, self.options, restored)}

    def _settle(self) -> None:
        """Record the repositories this full pass found entirely in sync (and keep those it
        skipped), for the next pass to skip."""
        if self.settling is None or self.report.error is not None:
            return
        source, held = self.source.snapshot.fingerprints, self.held.fingerprints
        failed = {failure.repository for failure in self.report.failures}
        compared = Counter(name for name, _ in self.source_tags)
        in_sync = Counter(name for name, _ in self.in_sync)
        owned = wanted(self.policy, self.options).repository
        settled = {}
        for name in source.keys() & held.keys():
            if name in self.held.skipped:
                settled[name] = self.settling.rows[(self.destination_name, name)]
            elif (owned(name) and name not in self._dirty and name not in failed
                  and in_sync[name] == compared[name]):
                settled[name] = self.settling.settle(source[name], held[name], compared[name])
        self.state.replace_settled(self.policy.name, self.destination_name, settled, owned)

    def _sweep_abandoned_uploads(self) -> None:
        swept = self.destination.sweep_abandoned_uploads(self.options.abandoned_uploads_after)
        if swept:
            log.info("discarded %d abandoned uploads at %s", swept, self.destination_name,
                     extra={"destination": self.destination_name})

    def _replicate_all(self, pool: ThreadPoolExecutor, window: int) -> None:
        """Every source tag through ``pool``, at most ``window`` queued at a time, so memory
        does not grow with the number of tags. Unexpected errors are raised here."""
        slots = threading.BoundedSemaphore(window)
        running: deque = deque()
        for key in self.source_tags:
            slots.acquire()
            future = pool.submit(self._replicate_tag, *key)
            future.add_done_callback(lambda _: slots.release())
            running.append(future)
            while running and running[0].done():
                running.popleft().result()
        for future in running:
            future.result()

    def _record(self, started: float) -> None:
        pending = {key: info.mtime for key, info in self.source_tags.items() if key not in self.in_sync}
        self.state.replace_pending(self.policy.name, self.destination_name, pending,
                                   self.source.listed, self.repository)
        if self.repository is None:
            self.state.record_pass(PassRecord(
                self.policy.name, self.policy.source, self.destination_name, started, time.time(),
                self.report.tags_failed == 0 and not pending and self.report.error is None,
                self.report.counts(),
                self.options.audit))
            self.state.end_pass(self.policy.name, self.destination_name)
        self.state.flush()

    def _replicate_tag(self, name: str, tag: str) -> None:
        if self.options.stop is not None and self.options.stop.is_set():
            return
        digest = ""
        try:
            digest = self.source.tag_digest(name, tag)
            if self._deferred(name, tag, digest):
                return
            current = self._destination_digest(name, tag)
            changed = digest != current or self.options.audit
            if changed and not self._planned(name, tag, digest):
                return
            tree = self.source.manifest_tree(name, digest) if changed else None
            if changed and self.policy.signature_keys:
                require_signature(self.source, name, digest, self.policy.signature_keys)
            came = self.artifacts.follow(name, tag, digest, tree) if self.artifacts is not None else ()
            if not changed:
                if self.planned is None:
                    self._complete_tag(name, tag, digest)
                self._done(name, tag, False, digest)
                return
            moved = self._move(name, tag, digest, current, tree, came)
        except TAG_ERRORS as error:
            self._failed(name, tag, digest, error)
        except BudgetExhausted as error:   # waits, pending, for the next period: no back-off
            self.report.fail(name, tag, str(error), error_kind(error))
        except Exception as error:  # a defect must fail its tag, not the whole pass
            log.debug("unexpected error replicating %s:%s", name, tag, exc_info=True)
            self._failed(name, tag, digest, unexpected(error))
        else:
            self._done(name, tag, moved, digest)

    def _move(self, name: str, tag: str, digest: str, current: str | None,
              tree: Mapping[str, Manifest], artifacts: tuple[str, ...] = ()) -> bool:
        """Write what the tag lacks and move it; whether anything changed. Under ``artifacts:
        follow`` an artifact tag goes through the follower, which makes it once per pass."""
        if self.artifacts is not None and artifact_subject(tag) is not None:
            return self.artifacts.replicate_selected(name, tag, digest, current, tree)
        return not self._write(name, tag, digest, tree, current, artifacts).empty

    def _write(self, name: str, tag: str, digest: str, tree: Mapping[str, Manifest],
               current: str | None, artifacts: tuple[str, ...] = ()) -> TagPlan:
        plan = self.held.plan(name, tag, digest, tree, current)
        if not plan.empty:
            self._dirty.add(name)
        self._count_reused(plan.reused)
        self._apply(plan, current, artifacts)
        return plan

    def _replicate_artifact(self, name: str, image_tag: str, artifact: Artifact) -> bool:
        """One artifact of ``name:image_tag``, as a tag of its own; whether anything changed."""
        if artifact.digest == artifact.current and not self.options.audit:
            if self.planned is None:
                self._complete_tag(name, artifact.tag, artifact.digest)
            return False
        if not self._planned(name, artifact.tag, artifact.digest):
            return False
        plan = self._write(name, artifact.tag, artifact.digest, artifact.tree, artifact.current)
        if self.options.dry_run and not plan.empty:
            self.report.plan_artifact(f"{name}:{artifact.tag} -> {artifact.digest} "
                                      f"(of {name}:{image_tag})")
        return not plan.empty

    def _fields(self, name: str, tag: str, digest: str) -> dict:
        return {"policy": self.policy.name, "source": self.policy.source,
                "destination": self.destination_name, "repository": name, "tag": tag, "digest": digest}

    def _done(self, name: str, tag: str, changed: bool, digest: str) -> None:
        self.report.count("tags_replicated" if changed else "tags_unchanged")
        if changed:
            log.info("replicated %s:%s (%s) to %s", name, tag, digest, self.destination_name,
                     extra=self._fields(name, tag, digest))
        with self._lock:
            self.in_sync.add((name, tag))
        if (name, tag) in self.failing and not self.options.dry_run:
            self.state.clear_failure(self.policy.name, self.destination_name, name, tag)

    def _failed(self, name: str, tag: str, digest: str, error: Exception) -> None:
        log.warning("%s:%s -> %s failed: %s", name, tag, self.destination_name, error,
                    extra=self._fields(name, tag, digest))
        self.report.fail(name, tag, str(error), error_kind(error))
        if not self.options.dry_run:
            self.state.record_failure(self.policy.name, self.destination_name, name, tag, digest,
                                      str(error), self.options.backoff or RETRY_BACKOFF,
                                      kind=error_kind(error))

    def _deferred(self, name: str, tag: str, digest: str) -> bool:
        failure = self.failing.get((name, tag))
        if (self.options.backoff is None or failure is None or failure.digest != digest
                or failure.next_retry <= time.time()
                or self._signed_since(name, digest, failure.last_failed)):
            return False
        self.report.fail(name, tag, f"retry deferred until {_timestamp(failure.next_retry)} after "
                                    f"{failure.attempts} attempts; last error: {failure.error}",
                         "deferred")
        return True

    def _signed_since(self, name: str, digest: str, moment: float) -> bool:
        """Whether a signature of ``digest`` appeared (or moved) at the source after ``moment``:
        a tag held back for want of one is retried at once."""
        if not self.policy.signature_keys:
            return False
        entry = self.source.snapshot.tags.get((name, signature_tag(digest)))
        return entry is not None and entry.mtime > moment

    def _planned(self, name: str, tag: str, digest: str) -> bool:
        """Whether the pass may change the tag: always, unless it applies a saved plan; then
        only a tag planned at ``digest`` (one planned otherwise is reported as changed)."""
        if self.planned is None:
            return True
        if (name, tag) not in self.planned:
            return False
        expected = self.planned[(name, tag)]
        if expected != digest:
            self.report.fail(name, tag, f"changed at the source since the plan (planned "
                                        f"{expected or 'for deletion'}, now {digest}): skipped",
                             "changed")
            return False
        return True

    def _report_planned_tags_gone(self) -> None:
        for (name, tag), digest in sorted((self.planned or {}).items()):
            if digest is not None and (name, tag) not in self.source_tags:
                self.report.fail(name, tag, f"planned at {digest}, no longer at the source: "
                                            f"skipped", "changed")

    def _complete_tag(self, name: str, tag: str, digest: str) -> None:
        """Make the step a tag already at the right digest still lacks (a pass stopped between
        its last two writes left it out). Known from the snapshot, so it costs no read."""
        step = self.held.complete_tag(name, tag, digest)
        if step is not None:
            self._dirty.add(name)
            self._make(step)

    def _destination_digest(self, name: str, tag: str) -> str | None:
        try:
            return self.held.tag_digest(name, tag)
        except layout.LayoutError:
            return None

    def _count_reused(self, digests: Iterable[str]) -> None:
        with self._lock:
            fresh = set(digests) - self._reused
            self._reused |= fresh
        self.report.count("blobs_present", len(fresh))

    def _apply(self, plan: TagPlan, current: str | None = None,
               artifacts: tuple[str, ...] = ()) -> None:
        """Copy what ``plan`` needs and make its steps; ``current`` (the tag's digest there
        before) and ``artifacts`` (the digests of those that came with it) go to the audit."""
        copies = self.copier.ensure_blobs(plan.name, plan.blobs)
        copies += [self.copier.ensure_manifest(plan.name, manifest) for manifest in plan.manifests]
        copied = sum(copy.result() or 0 for copy in copies)
        for step in plan.links:
            if self.held.made(step):
                continue
            if step != plan.move:
                self._steps.run(step, lambda step=step: self._make(step))
                continue
            with self._purging(plan.name, plan.tag):
                token = self._make(step, TagMove(plan.name, plan.tag, plan.digest, current))
            if token is not None:
                self.held.record_tag(plan.name, plan.tag, token, plan.digest)
                self._record_move(plan.name, plan.tag, plan.digest)
                self._changed(plan.name, plan.tag, current, plan.digest, copied, artifacts)

    def _changed(self, name: str, tag: str, old: str | None, new: str | None,
                 copied: int = 0, artifacts: tuple[str, ...] = ()) -> None:
        if self.options.on_change is not None:
            action = "delete" if new is None else "move" if old else "create"
            self.options.on_change(Change(self.policy.name, self.policy.source,
                                          self.destination_name, name, tag, action, old, new,
                                          copied, self.report.pass_id, artifacts))

    def _record_move(self, name: str, tag: str, digest: str) -> None:
        """The tag as made by the replicator (only such tags may be deleted) and the move's
        times, for the status API and the replication-delay histogram: the change counts from
        the earliest the source's listing or a push event showed it."""
        listed = self.source.snapshot.tags.get((name, tag))
        changed = min(listed.mtime if listed is not None else time.time(),
                      self.pending_since.get((name, tag), float("inf")))
        self.state.record_move(self.policy.name, self.destination_name, name, tag, digest,
                               changed, time.time(), self.region.cdn is not None)

    def _make(self, step: tuple[str, str], move: TagMove | None = None) -> str | None:
        """One step through the gate; its change token, ``None`` in a dry run."""
        allowed = self.gate.allows(Link(step, self.held.describe(step), move))
        return self.held.apply(step) if allowed else None

    @contextmanager
    def _purging(self, name: str, tag: str) -> Iterator[None]:
        """Around a move or removal of a tag: purges recorded before, ready after, even if the
        change raised (it may have been applied; a purge too many costs a refetch)."""
        if self.region.cdn is None:
            yield
            return
        urls = purge_urls(self.region.cdn.baseurls, name, tag)
        if not all([self.gate.allows(Purge(url)) for url in urls]):
            yield
            return
        self.state.enqueue_purges(self.destination_name, urls)
        try:
            yield
        finally:
            self.state.ready_purges(self.destination_name, urls)

    def _delete_removed_tags(self, held_tags: list[tuple[str, str]]) -> None:
        """Delete what :func:`~replicator.deletions.plan_deletions` allows; above ``max_delete``
        tags, none (the pass fails with the reason) unless forced."""
        gone = {(name, tag): self._destination_digest(name, tag) for name, tag in held_tags
                if (name, tag) not in self.source.snapshot.tags and policy_selects(self.policy, name, tag)
                and self.options.shard.owns(name)
                and (self.planned is None or self.planned.get((name, tag), "") is None)}
        self._dirty.update(name for name, _ in gone)
        plan = plan_deletions(gone, self.state.made_tags(self.destination_name),
                              self.state.tag_absences(self.policy.name, self.destination_name),
                              self.options.clock(), self.policy.delete_delay)
        due = plan.due
        if len(due) > self.policy.max_delete and not self.options.force_delete:
            self.report.error = (f"would delete {len(due)} tags, more than max_delete "
                                 f"({self.policy.max_delete}): deleted none; run sync with "
                                 f"--force-delete to delete them")
            self.report.error_kind, due = "max_delete", ()
        absences = dict(plan.absent_since)
        for name, tag in due:
            try:
                old = self._destination_digest(name, tag)
                with self._purging(name, tag):
                    for step in self.held.tag_removal(name, tag):
                        if self.gate.allows(Removal(name, tag, step)):
                            self.held.remove(step)
            except StorageError as error:
                self._failed(name, tag, "", error)
            else:
                if not self.options.dry_run:
                    self.held.forget_tag(name, tag)
                    self.state.forget_made_tag(self.destination_name, name, tag)
                    self._changed(name, tag, old, None)
                absences.pop((name, tag))
                self.report.count("tags_deleted")
        if not self.options.dry_run and self.planned is None:   # a saved plan sees only its own
            self.state.replace_tag_absences(self.policy.name, self.destination_name, absences,
                                            self.repository)


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def wanted(policy: Policy, options: RunOptions) -> Selection:
    """What a pass of ``policy`` reads at either end: its repositories that the shard owns."""
    return Selection(
        lambda name: selected(policy.repositories, name) and options.shard.owns(name),
        lambda name, tag: policy_selects(policy, name, tag) or wanted_tag(policy, tag))


def pass_tags(policy: Policy, options: RunOptions,
              tags: Mapping[tuple[str, str], ObjectInfo]) -> dict[tuple[str, str], ObjectInfo]:
    """Of a source snapshot's ``tags``, those a pass of ``policy`` compares, in start order."""
    return start_order(policy, {key: info for key, info in tags.items()
                                if policy_selects(policy, *key) and standalone(policy, key[1])
                                and options.shard.owns(key[0])})


def run_policy(config: Config, policy: Policy, state: StateStore, options: RunOptions,
               repository: str | None = None) -> list[PassReport]:
    """Run one pass of ``policy`` into each of its destinations, all at once (each with
    ``options.concurrency`` workers); with ``repository``, a targeted pass over that
    repository only. Tags start in the policy's order (:mod:`replicator.ordering`) in each;
    a blob several destinations stream is read from the source once where it can be
    (:mod:`replicator.tee`). With ``options.respect_windows``, destinations outside their sync
    windows are left out (no report). Reports come in the order of ``policy.destinations``.

    A region that cannot be listed fails the passes it is in (the source: all of them; a
    destination: its own), each report then has ``error`` set and a failed pass is recorded.
    Per-tag problems are in the reports (and the state store). Never raises for an error of a
    region or a tag: an unexpected one fails its tag or its destination's pass.
    """
    started = time.time()
    destinations = [name for name in policy.destinations if not options.respect_windows
                    or windows_open(policy.destination_settings(name).windows, options.clock())]
    for name in sorted(set(policy.destinations) - set(destinations)):
        log.info("policy %s: %s is outside its sync windows; no pass", policy.name, name,
                 extra={"policy": policy.name, "destination": name})
    if not destinations:
        return []
    resolve_flavours(config, policy)
    source_endpoint = endpoint_for(config.regions[policy.source])
    endpoints = {name: endpoint_for(config.regions[name]) for name in destinations}
    settling = (Settling(policy, destinations, state.settled(policy.name))
                if repository is None and not options.audit and options.planned is None else None)
    selection = wanted(policy, options)
    with _prepared([source_endpoint, *endpoints.values()], repository, state, selection):
        try:
            skips = None if settling is None else settling.source_skips
            snapshot = source_endpoint.snapshot(repository, state, options.audit, selection, skips)
        except StorageError as error:
            return [_failed_pass(policy, name, error, state, started, options, repository)
                    for name in destinations]
        tags = pass_tags(policy, options, snapshot.tags)
        source = SourceReader(source_endpoint, snapshot, started)
        tee = SourceTee(source_endpoint)
        passes = [DestinationPass(policy, source, tags, endpoints[name], config.regions[name],
                                  state, options, repository, tee, settling)
                  for name in destinations]
        for destination_pass in passes:
            tee.join(destination_pass.destination_name, destination_pass.wants_stream)

        def run(destination_pass: DestinationPass) -> PassReport:
            name = destination_pass.destination_name
            try:
                return destination_pass.run()
            except StorageError as error:
                return _failed_pass(policy, name, error, state, started, options, repository,
                                    destination_pass.report)
            except Exception as error:  # a defect fails this destination's pass, not the run
                log.debug("unexpected error in the pass into %s", name, exc_info=True)
                return _failed_pass(policy, name, unexpected(error), state, started, options,
                                    repository, destination_pass.report)
            finally:
                tee.leave(name)

        with ThreadPoolExecutor(len(passes), "pass") as pool:
            return list(pool.map(run, passes))


@contextmanager
def _prepared(endpoints: list[Endpoint], repository: str | None, state: StateStore,
              selection: Selection) -> Iterator[None]:
    """Each endpoint prepared for its snapshot (:meth:`Endpoint.prepare`), so every region's
    listing starts at once; released at the end."""
    try:
        for endpoint in endpoints:
            endpoint.prepare(repository, state, selection)
        yield
    finally:
        for endpoint in endpoints:
            endpoint.release()


def _failed_pass(policy: Policy, destination: str, error: Exception, state: StateStore,
                 started: float, options: RunOptions, repository: str | None,
                 report: PassReport | None = None) -> PassReport:
    log.error("pass of policy %s into %s failed: %s", policy.name, destination, error,
              extra={"policy": policy.name, "destination": destination})
    report = report or PassReport(policy.name, policy.source, destination)
    report.error, report.error_kind = str(error), error_kind(error)
    if not options.dry_run and repository is None:
        state.record_pass(PassRecord(policy.name, policy.source, destination, started, time.time(),
                                     False, report.counts(), options.audit))
        state.end_pass(policy.name, destination)
    return report
