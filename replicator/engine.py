"""One replication pass: for each policy and destination, copy what the destination lacks.

Per destination the pass lists the source's and destination's repositories and the
destination's blobs, then for every selected source tag whose digest differs at the
destination: reads its manifests from the source, plans (``planner.plan_tag``), copies
missing blobs and manifests (each digest once per destination per pass, hashed while it
streams), and writes links bottom-up with the tag's ``current/link`` last.

A tag fails alone: a ``ReplicationError`` (or storage, manifest or layout error) is recorded
in the pass report and the pass goes on.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fnmatch import fnmatchcase

from drivers.base import StorageDriver
from drivers.errors import NotFound, StorageError
from replicator import layout
from replicator.config import Config, Filter, Policy
from replicator.inventory import Inventory
from replicator.manifests import Descriptor, Manifest, ManifestError, parse_manifest
from replicator.planner import TagPlan, plan_tag
from replicator.report import PassReport
from state.store import PassRecord, StateStore, TagLink

log = logging.getLogger(__name__)


class ReplicationError(Exception):
    """Content at the source cannot be replicated as it is (missing or corrupt)."""


TAG_ERRORS = (ReplicationError, StorageError, ManifestError, layout.LayoutError)


def selected(policy_filter: Filter, value: str) -> bool:
    return (any(fnmatchcase(value, pattern) for pattern in policy_filter.include)
            and not any(fnmatchcase(value, pattern) for pattern in policy_filter.exclude))


def policy_selects(policy: Policy, name: str, tag: str) -> bool:
    return selected(policy.repositories, name) and selected(policy.tags, tag)


@dataclass(frozen=True)
class RunOptions:
    """``audit`` re-reads every link and re-plans every tag, trusting no cached state;
    ``backoff`` (initial, maximum seconds) defers failing tags until their next retry time
    (``None``: retry every failing tag now)."""

    concurrency: int = 8
    dry_run: bool = False
    audit: bool = False
    backoff: tuple[float, float] | None = None


class TagLinks:
    """A region's tag links, read only when the listing's etag differs from the recorded one."""

    def __init__(self, region: str, storage: StorageDriver, inventory: Inventory,
                 state: StateStore, audit: bool):
        self.region = region
        self.storage = storage
        self.inventory = inventory
        self.state = state
        self.known = {} if audit else state.tag_links(region)

    def digest(self, name: str, tag: str) -> str | None:
        """The tag's digest in this region, ``None`` if it has no tag link.

        Raises ``StorageError`` or ``LayoutError`` (junk link) when the link must be read.
        """
        info = self.inventory.tags.get((name, tag))
        if info is None:
            return None
        known = self.known.get((name, tag))
        if known is not None and known.etag == info.etag:
            return known.digest
        digest = layout.parse_link(self.storage.read(layout.tag_current_key(name, tag)))
        self.record(name, tag, info.etag, digest)
        return digest

    def record(self, name: str, tag: str, etag: str, digest: str) -> None:
        self.known[(name, tag)] = TagLink(etag, digest)
        self.state.record_tag_link(self.region, name, tag, etag, digest)

    def forget(self, name: str, tag: str) -> None:
        self.known.pop((name, tag), None)
        self.state.forget_tag_link(self.region, name, tag)


class SourceReader:
    """Reads a source region's tag links and manifests, each at most once per pass."""

    def __init__(self, storage: StorageDriver, links: TagLinks):
        self.storage = storage
        self.links = links
        self._lock = threading.Lock()
        self._manifests: dict[str, Manifest] = {}

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
        if digest not in self._manifests:
            try:
                data = self.storage.read(layout.blob_key(digest))
            except NotFound:
                raise ReplicationError(f"manifest {digest} is missing at the source") from None
            manifest = parse_manifest(data, digest)
            with self._lock:
                self._manifests[digest] = manifest
        return self._manifests[digest]


class BlobCopier:
    """Copies blobs and manifests into one destination, each digest at most once.

    ``ensure`` returns a future shared by every tag that needs the same digest; it fails with
    ``ReplicationError`` when the source bytes are missing or do not match the digest, in
    which case nothing was made visible at the destination.
    """

    def __init__(self, source: StorageDriver, destination: StorageDriver,
                 pool: ThreadPoolExecutor, report: PassReport, dry_run: bool):
        self.source = source
        self.destination = destination
        self.pool = pool
        self.report = report
        self.dry_run = dry_run
        self._lock = threading.Lock()
        self._futures: dict[str, Future] = {}

    def ensure_blob(self, blob: Descriptor) -> Future:
        return self._ensure(blob.digest, self._copy_blob, blob)

    def ensure_manifest(self, manifest: Manifest) -> Future:
        return self._ensure(manifest.digest, self._write_manifest, manifest)

    def _ensure(self, digest: str, copy, item) -> Future:
        with self._lock:
            if digest not in self._futures:
                if self.dry_run:
                    self._futures[digest] = Future()
                    self._futures[digest].set_result(None)
                    self.report.plan(f"copy {digest}")
                else:
                    self._futures[digest] = self.pool.submit(copy, item)
            return self._futures[digest]

    def _copy_blob(self, blob: Descriptor) -> None:
        key = layout.blob_key(blob.digest)
        hasher = hashlib.sha256()
        with self.destination.writer(key) as writer:
            try:
                for chunk in self.source.open(key):
                    hasher.update(chunk)
                    writer.write(chunk)
            except NotFound:
                raise ReplicationError(f"blob {blob.digest} is missing at the source") from None
            actual = "sha256:" + hasher.hexdigest()
            if actual != blob.digest:
                raise ReplicationError(f"blob {blob.digest} is corrupt at the source: "
                                       f"its bytes hash to {actual}")
            if 0 <= blob.size != writer.size:
                raise ReplicationError(f"blob {blob.digest} is {writer.size} bytes at the source, "
                                       f"the manifest says {blob.size}")
            writer.commit()
        self.report.count("blobs_copied")
        self.report.count("bytes_copied", writer.size)

    def _write_manifest(self, manifest: Manifest) -> None:
        self.destination.write(layout.blob_key(manifest.digest), manifest.data)
        self.report.count("manifests_copied")
        self.report.count("bytes_copied", len(manifest.data))


class DestinationPass:
    """One policy's pass into one destination region."""

    def __init__(self, policy: Policy, source: SourceReader, source_tags: list[tuple[str, str]],
                 destination_name: str, destination: StorageDriver, state: StateStore,
                 options: RunOptions):
        self.policy = policy
        self.source = source
        self.source_tags = source_tags
        self.destination_name = destination_name
        self.destination = destination
        self.state = state
        self.options = options
        self.report = PassReport(policy.name, policy.source, destination_name)
        self.inventory = Inventory()
        self._blobs_listed = False
        self._reused: set[str] = set()
        self._lock = threading.Lock()

    def run(self) -> PassReport:
        started = time.time()
        self.inventory.add(self.destination.list(layout.REPOSITORIES_PREFIX))
        self.links = TagLinks(self.destination_name, self.destination, self.inventory, self.state,
                              self.options.audit)
        self.failing = self.state.failures(self.policy.name, self.destination_name)
        workers = self.options.concurrency
        with ThreadPoolExecutor(workers, "blob") as blob_pool, \
                ThreadPoolExecutor(workers, "tag") as tag_pool:
            self.copier = BlobCopier(self.source.storage, self.destination, blob_pool,
                                     self.report, self.options.dry_run)
            for future in [tag_pool.submit(self._replicate_tag, *key) for key in self.source_tags]:
                future.result()
        if self.policy.delete:
            self._delete_removed_tags()
        if not self.options.dry_run:
            self.state.record_pass(PassRecord(
                self.policy.name, self.policy.source, self.destination_name, started, time.time(),
                self.report.tags_failed == 0, self.report.counts()))
        self.state.flush()
        return self.report

    def _replicate_tag(self, name: str, tag: str) -> None:
        digest = ""
        try:
            digest = self.source.tag_digest(name, tag)
            if self._deferred(name, tag, digest):
                return
            current = self._destination_digest(name, tag)
            if digest == current and not self.options.audit:
                self.report.count("tags_unchanged")
                return
            self._ensure_blobs_listed()
            plan = plan_tag(name, tag, digest, self.source.manifest_tree(digest),
                            self.inventory.blobs, self.inventory.links, current)
            self._count_reused(plan.reused)
            self._apply(plan)
        except TAG_ERRORS as error:
            log.warning("%s:%s failed: %s", name, tag, error)
            self.report.fail(name, tag, str(error))
            if not self.options.dry_run:
                self.state.record_failure(self.policy.name, self.destination_name, name, tag, digest,
                                          str(error), self.options.backoff or RETRY_BACKOFF)
            return
        self.report.count("tags_unchanged" if plan.empty else "tags_replicated")
        if (name, tag) in self.failing and not self.options.dry_run:
            self.state.clear_failure(self.policy.name, self.destination_name, name, tag)

    def _deferred(self, name: str, tag: str, digest: str) -> bool:
        failure = self.failing.get((name, tag))
        if (self.options.backoff is None or failure is None or failure.digest != digest
                or failure.next_retry <= time.time()):
            return False
        self.report.fail(name, tag, f"retry deferred until {_timestamp(failure.next_retry)} after "
                                    f"{failure.attempts} attempts; last error: {failure.error}")
        return True

    def _destination_digest(self, name: str, tag: str) -> str | None:
        try:
            return self.links.digest(name, tag)
        except layout.LayoutError:
            return None

    def _ensure_blobs_listed(self) -> None:
        with self._lock:
            if not self._blobs_listed:
                self.inventory.add(self.destination.list(layout.BLOBS_PREFIX))
                self._blobs_listed = True

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
            if self.options.dry_run:
                self.report.plan(f"write {key} -> {digest}")
                self.inventory.links.add(key)
                continue
            etag = self.destination.write(key, layout.link_bytes(digest))
            if key == current_key:
                self.links.record(plan.name, plan.tag, etag, digest)
            else:
                self.inventory.links.add(key)

    def _delete_removed_tags(self) -> None:
        source_tags = set(self.source_tags)
        for name, tag in sorted(self.inventory.tags):
            if (name, tag) in source_tags or not policy_selects(self.policy, name, tag):
                continue
            keys = [layout.tag_current_key(name, tag), *self.inventory.tag_index_keys.get((name, tag), [])]
            try:
                for key in keys:
                    if self.options.dry_run:
                        self.report.plan(f"delete {key}")
                    else:
                        self.destination.delete(key)
            except StorageError as error:
                self.report.fail(name, tag, f"delete failed: {error}")
            else:
                self.links.forget(name, tag)
                self.report.count("tags_deleted")


RETRY_BACKOFF = (60.0, 3600.0)
"""Default (initial, maximum) seconds between attempts at a failing tag."""


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def run_policy(config: Config, policy: Policy, state: StateStore,
               options: RunOptions) -> list[PassReport]:
    """Run one pass of ``policy`` into each of its destinations, one after the other.

    Raises ``StorageError`` only when a region cannot be listed at all; per-tag problems
    are in the reports (and the state store).
    """
    source_storage = config.regions[policy.source].storage
    source_inventory = Inventory().add(source_storage.list(layout.REPOSITORIES_PREFIX))
    tags = sorted(key for key in source_inventory.tags if policy_selects(policy, *key))
    links = TagLinks(policy.source, source_storage, source_inventory, state, options.audit)
    source = SourceReader(source_storage, links)
    return [DestinationPass(policy, source, tags, name, config.regions[name].storage, state,
                            options).run()
            for name in policy.destinations]
