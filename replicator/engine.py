"""One replication pass: for each policy and destination, copy what the destination lacks.

Per destination the pass lists the source's and destination's repositories (one repository
for a targeted pass), then for every selected source tag whose digest differs at the
destination: reads its manifests from the source, plans (``planner.plan_tag``), copies
missing blobs and manifests (each digest once per destination per pass, hashed while it
streams), and writes links bottom-up with the tag's ``current/link`` last. Tag links are read
only when their listing entry changed since the state store last saw them.

A tag fails alone: its error is recorded in the pass report and the state store, and the
pass goes on. At the end, the tags still out of sync become the destination's pending set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from drivers.base import ObjectInfo, ObjectTooLarge, StorageDriver
from drivers.errors import NotFound, StorageError
from replicator import layout
from replicator.config import DEFAULT_ABANDONED_UPLOADS, Config, Policy, Region
from replicator.copier import BlobCopier, ReplicationError
from replicator.filters import policy_selects
from replicator.flavours import resolve_flavours
from replicator.inventory import Inventory
from replicator.links import TagLinks
from replicator.manifests import (
    MAX_MANIFEST_SIZE,
    Manifest,
    ManifestError,
    parse_manifest,
)
from replicator.planner import TagPlan, plan_tag
from replicator.purging import purge_urls, send_purges
from replicator.report import PassReport
from replicator.sharding import Shard
from state.store import PassRecord, StateStore

log = logging.getLogger(__name__)

TAG_ERRORS = (ReplicationError, StorageError, ManifestError, layout.LayoutError)

RETRY_BACKOFF = (60.0, 3600.0)
"""Default (initial, maximum) seconds between attempts at a failing tag."""


def error_kind(error: Exception) -> str:
    """A short, stable name for what went wrong, for metrics: ``source_content``,
    ``manifest``, ``layout``, ``storage_transient``, ``storage_access``, ``storage``."""
    if isinstance(error, StorageError):
        return {"TransientError": "storage_transient", "AccessDenied": "storage_access"}.get(
            type(error).__name__, "storage")
    return {ReplicationError: "source_content", ManifestError: "manifest"}.get(type(error), "layout")


@dataclass(frozen=True)
class RunOptions:
    """How a pass runs.

    ``audit`` re-reads every link and re-plans every tag, trusting no cached state.
    ``backoff`` (initial, maximum seconds) defers failing tags until their next retry time;
    ``None`` retries every failing tag now. ``stop``, once set, makes the pass start no
    further tag (tags under way finish). ``shard`` limits the pass to the repositories it owns.
    ``on_pass`` is called as each destination's pass starts, with its report and tags.
    """

    concurrency: int = 8
    dry_run: bool = False
    audit: bool = False
    backoff: tuple[float, float] | None = None
    stop: threading.Event | None = None
    shard: Shard = Shard()
    on_pass: Callable[[PassReport, list[tuple[str, str]]], None] | None = None
    server_side_copy: bool = True
    """Let a destination's storage copy blobs from the source's where it can (``BlobCopier``)."""
    abandoned_uploads_after: float = DEFAULT_ABANDONED_UPLOADS
    """After a pass that died (or in an audit), a full pass first discards the destination's
    incomplete uploads older than this."""

    @classmethod
    def from_config(cls, config: Config, **options) -> RunOptions:
        return cls(concurrency=config.concurrency, server_side_copy=config.server_side_copy,
                   abandoned_uploads_after=config.abandoned_uploads_after, **options)


class SourceReader:
    """Reads a source region's tag links and manifests, each at most once per pass."""

    def __init__(self, storage: StorageDriver, links: TagLinks, listed: float):
        self.storage = storage
        self.links = links
        self.listed = listed
        """When the source listing began: changes noted later may be missing from it."""
        self._lock = threading.Lock()
        self._manifests: dict[str, Future] = {}

    def tag_digest(self, name: str, tag: str) -> str:
        digest = self.links.digest(name, tag)
        if digest is None:
            raise ReplicationError("the tag is not in the source listing")
        return digest

    def manifest_tree(self, digest: str) -> dict[str, Manifest]:
        """The manifest at ``digest`` and every manifest below it. Raises ``TAG_ERRORS``."""
        tree: dict[str, Manifest] = {}
        pending = [digest]
        while pending:
            current = pending.pop()
            if current not in tree:
                tree[current] = self.manifest(current)
                pending.extend(child.digest for child in tree[current].children)
        return tree

    def manifest(self, digest: str) -> Manifest:
        """The parsed manifest; read once per pass even when tags ask for it concurrently
        (a failure is shared too). Raises ``TAG_ERRORS``."""
        with self._lock:
            future = self._manifests.get(digest)
            reader = future is None
            if reader:
                future = self._manifests[digest] = Future()
        if reader:
            try:
                future.set_result(self._read(digest))
            except TAG_ERRORS as error:
                future.set_exception(error)
        return future.result()

    def _read(self, digest: str) -> Manifest:
        try:
            data = self.storage.read(layout.blob_key(digest), MAX_MANIFEST_SIZE)
        except NotFound:
            raise ReplicationError(f"manifest {digest} is missing at the source") from None
        except ObjectTooLarge:
            raise ManifestError(f"manifest {digest} is over the 4 MiB limit") from None
        return parse_manifest(data, digest)


class DestinationPass:
    """One policy's pass into one destination region (or one repository of it)."""

    def __init__(self, policy: Policy, source: SourceReader,
                 source_tags: dict[tuple[str, str], ObjectInfo], region: Region,
                 state: StateStore, options: RunOptions, repository: str | None):
        self.policy = policy
        self.source = source
        self.source_tags = source_tags
        self.region = region
        self.destination_name = region.name
        self.destination = region.storage
        self.state = state
        self.options = options
        self.repository = repository
        self.report = PassReport(policy.name, policy.source, region.name)
        self.inventory = Inventory()
        self.in_sync: set[tuple[str, str]] = set()
        self._blobs_listed = False
        self._probed: set[str] = set()
        self._reused: set[str] = set()
        self._lock = threading.Lock()

    def run(self) -> PassReport:
        started = time.time()
        if self.repository is None and not self.options.dry_run:
            died = self.state.begin_pass(self.policy.name, self.destination_name, started)
            if died or self.options.audit:
                self._sweep_abandoned_uploads()
        self.inventory.add(self.destination.list(_listing_prefix(self.repository)), self.repository)
        self.links = TagLinks(self.destination_name, self.destination, self.inventory, self.state,
                              self.options.audit)
        self.failing = self.state.failures(self.policy.name, self.destination_name)
        if self.options.on_pass is not None:
            self.options.on_pass(self.report, list(self.source_tags))
        workers = self.options.concurrency
        with ThreadPoolExecutor(workers, "blob") as blob_pool, \
                ThreadPoolExecutor(workers, "tag") as tag_pool:
            self.copier = BlobCopier(self.source.storage, self.destination, blob_pool,
                                     self.report, self.options.dry_run, self.options.server_side_copy)
            self._replicate_all(tag_pool, 2 * workers)
        if self.policy.delete:
            self._delete_removed_tags()
        if not self.options.dry_run:
            self._record(started)
            outcome = send_purges(self.region, self.state)
            for result in ("sent", "retrying", "failed"):
                self.report.count(f"purges_{result}", getattr(outcome, result))
        return self.report

    def _sweep_abandoned_uploads(self) -> None:
        swept = self.destination.sweep_abandoned_uploads(layout.BLOBS_PREFIX,
                                                         self.options.abandoned_uploads_after)
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
                self.report.tags_failed == 0 and not pending, self.report.counts(),
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
            if digest == current and not self.options.audit:
                self._complete_tag_index(name, tag, digest)
                self._done(name, tag, False, digest)
                return
            tree = self.source.manifest_tree(digest)
            plan = plan_tag(name, tag, digest, tree, self._present_blobs(tree),
                            self.inventory.links, current)
            self._count_reused(plan.reused)
            self._apply(plan)
        except TAG_ERRORS as error:
            self._failed(name, tag, digest, error)
        else:
            self._done(name, tag, not plan.empty, digest)

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
                                      str(error), self.options.backoff or RETRY_BACKOFF)

    def _deferred(self, name: str, tag: str, digest: str) -> bool:
        failure = self.failing.get((name, tag))
        if (self.options.backoff is None or failure is None or failure.digest != digest
                or failure.next_retry <= time.time()):
            return False
        self.report.fail(name, tag, f"retry deferred until {_timestamp(failure.next_retry)} after "
                                    f"{failure.attempts} attempts; last error: {failure.error}",
                         "deferred")
        return True

    def _complete_tag_index(self, name: str, tag: str, digest: str) -> None:
        """Write the index link of a tag whose current link is right: a pass stopped between
        the two writes left it out. Known from the listing, so it costs no read."""
        key = layout.tag_index_key(name, tag, digest)
        if key not in self.inventory.links:
            self._write_link(key, digest)
            self.inventory.links.add(key)

    def _destination_digest(self, name: str, tag: str) -> str | None:
        try:
            return self.links.digest(name, tag)
        except layout.LayoutError:
            return None

    def _present_blobs(self, tree: dict[str, Manifest]) -> dict[str, int]:
        """Blobs the destination holds: from one listing of all blobs in a full pass, from a
        probe of each blob the tag references in a targeted one."""
        if self.repository is None:
            with self._lock:
                if not self._blobs_listed:
                    self.inventory.add(self.destination.list(layout.BLOBS_PREFIX))
                    self._blobs_listed = True
            return self.inventory.blobs
        for digest in {d for m in tree.values() for d in (m.digest, *(b.digest for b in m.blobs))}:
            if digest in self.inventory.blobs or digest in self._probed:
                continue
            self._probed.add(digest)
            try:
                self.inventory.blobs[digest] = self.destination.stat(layout.blob_key(digest)).size
            except NotFound:
                pass
        return self.inventory.blobs

    def _count_reused(self, digests: Iterable[str]) -> None:
        with self._lock:
            fresh = set(digests) - self._reused
            self._reused |= fresh
        self.report.count("blobs_present", len(fresh))

    def _apply(self, plan: TagPlan) -> None:
        current_key = layout.tag_current_key(plan.name, plan.tag)
        copies = [self.copier.ensure_blob(blob) for blob in plan.blobs]
        copies += [self.copier.ensure_manifest(manifest) for manifest in plan.manifests]
        for copy in copies:
            copy.result()
        for key, digest in plan.links:
            if key in self.inventory.links:
                continue
            if key != current_key:
                self._write_link(key, digest)
                self.inventory.links.add(key)
                continue
            with self._purging(plan.name, plan.tag):
                etag = self._write_link(key, digest)
            if etag is not None:
                self.links.record(plan.name, plan.tag, etag, digest)

    def _write_link(self, key: str, digest: str) -> str | None:
        """Write a link (or, in a dry run, plan it); the new etag, ``None`` in a dry run."""
        if self.options.dry_run:
            self.report.plan(f"write {key} -> {digest}")
            return None
        return self.destination.write(key, layout.link_bytes(digest))

    @contextmanager
    def _purging(self, name: str, tag: str) -> Iterator[None]:
        """Around a change of the tag's current link: purges recorded before, ready after,
        even if the change raised (it may have been applied; a purge too many costs a refetch)."""
        if self.region.cdn is None:
            yield
            return
        urls = purge_urls(self.region.cdn.baseurls, name, tag)
        if self.options.dry_run:
            yield
            for url in urls:
                self.report.plan(f"purge {url}")
            return
        self.state.enqueue_purges(self.destination_name, urls)
        try:
            yield
        finally:
            self.state.ready_purges(self.destination_name, urls)

    def _delete_removed_tags(self) -> None:
        for name, tag in sorted(self.inventory.tags):
            if ((name, tag) in self.source_tags or not policy_selects(self.policy, name, tag)
                    or not self.options.shard.owns(name)):
                continue
            keys = [layout.tag_current_key(name, tag), *self.inventory.tag_index_keys.get((name, tag), [])]
            try:
                with self._purging(name, tag):
                    for key in keys:
                        if self.options.dry_run:
                            self.report.plan(f"delete {key}")
                        else:
                            self.destination.delete(key)
            except StorageError as error:
                self._failed(name, tag, "", error)
            else:
                if not self.options.dry_run:
                    self.links.forget(name, tag)
                self.report.count("tags_deleted")


def _listing_prefix(repository: str | None) -> str:
    return layout.repository_prefix(repository) if repository else layout.REPOSITORIES_PREFIX


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def run_policy(config: Config, policy: Policy, state: StateStore, options: RunOptions,
               repository: str | None = None) -> list[PassReport]:
    """Run one pass of ``policy`` into each of its destinations, one after the other;
    with ``repository``, a targeted pass over that repository only.

    A region that cannot be listed fails the passes it is in (the source: all of them; a
    destination: its own), each report then has ``error`` set and a failed pass is recorded.
    Per-tag problems are in the reports (and the state store). Never raises ``StorageError``.
    """
    started = time.time()
    resolve_flavours(config, policy)
    source_storage = config.regions[policy.source].storage
    try:
        inventory = Inventory().add(source_storage.list(_listing_prefix(repository)), repository)
    except StorageError as error:
        return [_failed_pass(policy, name, error, state, started, options, repository)
                for name in policy.destinations]
    tags = {key: inventory.tags[key] for key in sorted(inventory.tags)
            if policy_selects(policy, *key) and options.shard.owns(key[0])}
    source = SourceReader(source_storage, TagLinks(policy.source, source_storage, inventory, state,
                                                   options.audit), started)
    reports = []
    for name in policy.destinations:
        destination_pass = DestinationPass(policy, source, tags, config.regions[name], state,
                                           options, repository)
        try:
            reports.append(destination_pass.run())
        except StorageError as error:
            reports.append(_failed_pass(policy, name, error, state, started, options, repository,
                                        destination_pass.report))
    return reports


def _failed_pass(policy: Policy, destination: str, error: StorageError, state: StateStore,
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
