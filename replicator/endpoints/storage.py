"""Distribution storage as an endpoint: the registry's layout (:mod:`replicator.layout`) over a
storage driver.

Tags, links and blobs are known from listings: a snapshot is one paged listing of the
repositories (or of one repository; or, for a pass that wants only some, of each of those
where that costs fewer requests: :mod:`replicator.listing`), plus one of all blobs the first
time a pass needs to know which it holds (a targeted pass probes each blob instead). A tag's
link is read only when its listing entry changed since the state store last saw it. Writes follow the planner's order
(:mod:`replicator.planner`): blob data, layer and revision links, the tag's ``current/link``,
then its index link.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping

from drivers.base import HashedServerSideCopy, ObjectInfo, ServerSideCopy, StorageDriver
from drivers.errors import NotFound
from replicator import layout
from replicator.endpoints.base import (Destination, DestinationSnapshot, Endpoint,
                                       Selection)
from replicator.inventory import Inventory
from replicator.links import TagLinks
from replicator.listing import full_listing, repository_of, repository_pages
from replicator.once import Once
from replicator.manifests import Manifest
from replicator.planner import TagPlan, plan_tag
from replicator.settling import fingerprint


class StorageEndpoint(Destination):
    """A region's Distribution storage, through ``storage`` (its driver)."""

    def __init__(self, name: str, storage: StorageDriver):
        self.name = name
        self.storage = storage
        self.requests = storage.requests
        self._ahead: Iterator[list[ObjectInfo]] | None = None

    def describe(self) -> str:
        return self.storage.describe()

    def snapshot(self, repository: str | None, state, audit: bool,
                 wanted: Selection | None = None,
                 skip: Callable[[str, str], bool] | None = None) -> StorageSnapshot:
        """One listing of ``repository``, or of the repositories ``wanted`` selects, in one
        listing of all or in one per repository, whichever :mod:`replicator.listing` finds
        cheaper; without ``wanted`` or ``state``, one listing of all. With ``skip``, each
        repository's entries are fingerprinted as the pages stream past, and held only if
        ``skip`` does not leave them out."""
        ahead, self._ahead = self._ahead, None
        if repository:
            _close(ahead)
            pages = self.storage.list(layout.repository_prefix(repository))
        else:
            pages = repository_pages(self.storage, self.name, state,
                                     None if wanted is None else wanted.repository, ahead)
        return StorageSnapshot(self, pages, state, audit, repository, skip)

    def prepare(self, repository: str | None, state, wanted: Selection | None = None) -> None:
        """A pass of every repository whose listing is a full one (:func:`full_listing`)
        starts it now, through :meth:`StorageDriver.list_ahead`."""
        self.release()
        if repository is None and full_listing(self.storage, self.name, state,
                                               None if wanted is None else wanted.repository):
            self._ahead = self.storage.list_ahead(layout.REPOSITORIES_PREFIX)

    def release(self) -> None:
        ahead, self._ahead = self._ahead, None
        _close(ahead)

    def tag_read(self, name: str, tag: str) -> str:
        return layout.parse_link(self.storage.read(layout.tag_current_key(name, tag)))

    def destination_snapshot(self, repository: str | None, state, audit: bool,
                             wanted: Selection | None = None,
                             skip: Callable[[str, str], bool] | None = None) -> StorageSnapshot:
        return self.snapshot(repository, state, audit, wanted, skip)

    def probe(self) -> None:
        next(iter(self.storage.list(layout.ROOT)), None)

    def manifest_read(self, name: str, digest: str, limit: int) -> bytes:
        return self.storage.read(layout.blob_key(digest), limit)

    def manifest_write(self, name: str, manifest: Manifest) -> None:
        self.storage.write(layout.blob_key(manifest.digest), manifest.data)

    def blob_size(self, name: str, digest: str) -> int:
        return self.storage.stat(layout.blob_key(digest)).size

    def blob_open(self, name: str, digest: str, offset: int = 0) -> Iterator[bytes]:
        return self.storage.open(layout.blob_key(digest), offset)

    def blob_write(self, name: str, digest: str, size: int, chunks: Iterable[bytes]) -> None:
        with self.storage.writer(layout.blob_key(digest)) as writer:
            for chunk in chunks:
                writer.write(chunk)
            writer.commit()

    def blob_delete(self, name: str, digest: str) -> None:
        self.storage.delete(layout.blob_key(digest))

    def write_requests(self, size: int, manifest: bool = False) -> dict[str, int]:
        return self.storage.write_requests(size) if manifest else self.storage.writer_requests(size)

    def copy_requests(self, size: int, hashed: bool) -> dict[str, int]:
        return self.storage.copy_requests(size, hashed)

    def copy_ability(self, source: Endpoint) -> str:
        if not (isinstance(source, StorageEndpoint) and isinstance(self.storage, ServerSideCopy)
                and self.storage.can_copy_from(source.storage)):
            return ""
        return "hashed" if isinstance(self.storage, HashedServerSideCopy) else "plain"

    def hashes_copy(self, size: int) -> bool:
        return isinstance(self.storage, HashedServerSideCopy) and self.storage.hashes_copy(size)

    def blob_copy_from(self, source: Endpoint, name: str, digest: str, size: int,
                       hashed: bool) -> str | None:
        key = layout.blob_key(digest)
        if hashed:
            return self.storage.copy_from_hashed(source.storage, key, size).sha256
        self.storage.copy_from(source.storage, key, size)
        return None

    def sweep_abandoned_uploads(self, older_than: float) -> int:
        return self.storage.sweep_abandoned_uploads(layout.BLOBS_PREFIX, older_than)


class StorageSnapshot(DestinationSnapshot):
    """One listing of a storage endpoint: its :class:`~replicator.inventory.Inventory`."""

    def __init__(self, endpoint: StorageEndpoint, pages: Iterable[list[ObjectInfo]], state,
                 audit: bool, repository: str | None,
                 skip: Callable[[str, str], bool] | None = None):
        self.endpoint = endpoint
        self.inventory = Inventory()
        self.links = TagLinks(endpoint.name, endpoint.storage, self.inventory, state, audit)
        self.repository = repository
        self.tags = self.inventory.tags
        self._blobs_listed = False
        self._probed: set[str] = set()
        self._lock = threading.Lock()
        self._restored = Once()
        if skip is None:
            self.inventory.add(pages, repository)
        else:
            self._take(pages, skip)

    def _take(self, pages: Iterable[list[ObjectInfo]], skip: Callable[[str, str], bool]) -> None:
        fingerprints: dict[str, str] = {}
        skipped: set[str] = set()
        for name, entries in _repositories(pages):
            if name:
                fingerprints[name] = fingerprint(entries)
            if name and skip(name, fingerprints[name]):
                skipped.add(name)
            else:
                self.inventory.add([entries], self.repository)
        self.fingerprints = fingerprints
        self.skipped = frozenset(skipped)

    def restore(self, name: str) -> Mapping[tuple[str, str], ObjectInfo]:
        if name not in self.skipped:
            return super().restore(name)
        return self._restored.run(name, lambda: self._relist(name))

    def _relist(self, name: str) -> dict[tuple[str, str], ObjectInfo]:
        entries = [info for page in self.endpoint.storage.list(layout.repository_prefix(name))
                   for info in page if repository_of(info.key) == name]
        restored = Inventory().add([entries], name)
        self.fingerprints[name] = fingerprint(entries)
        self.inventory.add([entries], name)
        return restored.tags

    def tag_digest(self, name: str, tag: str) -> str | None:
        return self.links.digest(name, tag)

    def holdings(self, name: str, digests: Iterable[str]) -> Mapping[str, int]:
        """From one listing of all blobs in a full pass, from a probe of each digest in a
        targeted one."""
        storage = self.endpoint.storage
        if self.repository is None:
            with self._lock:
                if not self._blobs_listed:
                    self.inventory.add(storage.list(layout.BLOBS_PREFIX))
                    self._blobs_listed = True
            return self.inventory.blobs
        for digest in set(digests):
            with self._lock:
                if digest in self.inventory.blobs or digest in self._probed:
                    continue
                self._probed.add(digest)
            try:
                self.inventory.blobs[digest] = storage.stat(layout.blob_key(digest)).size
            except NotFound:
                pass
        return self.inventory.blobs

    def known_holding(self, digest: str) -> bool | None:
        """Known from the blobs listing once made (a full pass), else only for blobs probed."""
        if self._blobs_listed or digest in self.inventory.blobs:
            return digest in self.inventory.blobs
        return None

    def plan(self, name: str, tag: str, digest: str, tree: Mapping[str, Manifest],
             current: str | None) -> TagPlan:
        present = self.holdings(name, {d for m in tree.values()
                                       for d in (m.digest, *(b.digest for b in m.blobs))})
        return plan_tag(name, tag, digest, tree, present, self.inventory.links, current)

    def made(self, step: tuple[str, str]) -> bool:
        return step[0] in self.inventory.links

    def describe(self, step: tuple[str, str]) -> str:
        return f"write {step[0]} -> {step[1]}"

    def apply(self, step: tuple[str, str]) -> str:
        key, digest = step
        etag = self.endpoint.storage.write(key, layout.link_bytes(digest))
        if not isinstance(layout.parse_key(key), layout.TagCurrent):
            self.inventory.add_link(key)
        return etag

    def step_requests(self, step: tuple[str, str], uploads: Mapping[str, str]) -> dict[str, int]:
        return self.endpoint.storage.write_requests(len(layout.link_bytes(step[1])))

    def removal_requests(self, step: tuple[str, str]) -> dict[str, int]:
        return self.endpoint.storage.delete_requests()

    def complete_tag(self, name: str, tag: str, digest: str) -> tuple[str, str] | None:
        key = layout.tag_index_key(name, tag, digest)
        return None if key in self.inventory.links else (key, digest)

    def record_tag(self, name: str, tag: str, token: str, digest: str) -> None:
        self.links.record(name, tag, token, digest)

    def tag_removal(self, name: str, tag: str) -> list[tuple[str, str]]:
        return [(layout.tag_current_key(name, tag), ""),
                *((key, "") for key in self.inventory.tag_index_keys(name, tag))]

    def remove(self, step: tuple[str, str]) -> None:
        self.endpoint.storage.delete(step[0])

    def forget_tag(self, name: str, tag: str) -> None:
        self.links.forget(name, tag)

    def missing_references(self, name: str, tag: str, manifest: Manifest,
                           blobs: Iterable[str]) -> list[tuple[str, str]]:
        links = self.inventory.links
        missing = [("missing-link", f"layer link for {digest}") for digest in blobs
                   if layout.layer_link_key(name, digest) not in links]
        if layout.revision_link_key(name, manifest.digest) not in links:
            missing.insert(0, ("missing-link", f"revision link for {manifest.digest}"))
        return missing

    def missing_history(self, name: str, tag: str, digest: str) -> list[tuple[str, str]]:
        if layout.tag_index_key(name, tag, digest) in self.inventory.links:
            return []
        return [("missing-tag-index", f"tag index link for {digest}")]


def _repositories(pages: Iterable[list[ObjectInfo]]) -> Iterator[tuple[str, list[ObjectInfo]]]:
    """Listing entries in runs of one repository each (``""``: keys under none), as listed.
    A repository's keys are one run: they all start with its name and ``/_``, which no other
    repository's key starts with, and a driver lists keys in byte order (within each
    repository's prefix, when :mod:`replicator.listing` lists them one by one)."""
    name, entries = None, []
    for page in pages:
        for info in page:
            owner = repository_of(info.key)
            if owner != name:
                if entries:
                    yield name, entries
                name, entries = owner, []
            entries.append(info)
    if entries:
        yield name, entries


def _close(pages: Iterator[list[ObjectInfo]] | None) -> None:
    close = getattr(pages, "close", None)
    if close is not None:
        close()
