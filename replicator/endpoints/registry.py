"""An OCI registry over its HTTP API as an endpoint to replicate from (``drivers.registry``).

A snapshot lists the repositories (the configured names; with globs or none configured, the
registry's ``_catalog`` filtered by them), each repository's ``tags/list`` (paged), and sends
one manifest ``HEAD`` per tag for its digest (``Docker-Content-Digest``): that is the whole
cost of a pass over an unchanged registry. The API gives no time of change, so a tag's time
is when a snapshot first saw it. Manifests and blobs are read with ``GET`` (blobs streamed,
redirects to blob storage followed, broken streams resumed), and checked by the engine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatchcase

from drivers.base import ObjectInfo, ObjectTooLarge
from drivers.errors import NotFound
from drivers.registry import RegistryClient
from replicator import layout
from replicator.endpoints.base import Capabilities, Endpoint, Selection, Snapshot

HEAD_CONCURRENCY = 8
"""Manifest HEADs in flight while a snapshot resolves tags to digests."""
_GLOB = frozenset("*?[")


class RegistryEndpoint(Endpoint):
    """A registry at ``client``'s URL. ``client.repositories`` are names or globs (shell
    syntax, ``*`` matching ``/`` too); none means every repository of the catalog."""

    capabilities = Capabilities(listing_detects_changes=False, server_side_copy=False,
                                snapshot_cost="the catalog (unless every repository is named), "
                                              "one tags/list per repository and one manifest "
                                              "HEAD per tag")

    def __init__(self, name: str, client: RegistryClient):
        self.name = name
        self.client = client
        self.requests = client.requests

    def describe(self) -> str:
        return self.client.describe()

    def repositories(self) -> list[str]:
        """The repositories to replicate, sorted. Raises ``CatalogUnavailable`` when globs (or
        nothing) were configured and the registry offers no catalog."""
        patterns = self.client.repositories
        if patterns and not any(_GLOB & set(pattern) for pattern in patterns):
            return sorted(set(patterns))
        names = {name for page in self.client.catalog() for name in page}
        return sorted(name for name in names
                      if not patterns or any(fnmatchcase(name, pattern) for pattern in patterns))

    def snapshot(self, repository: str | None, state, audit: bool,
                 wanted: Selection | None = None) -> RegistrySnapshot:
        """Tags ``wanted`` leaves out are never HEADed; repositories it leaves out never listed."""
        names = [repository] if repository else self.repositories()
        if wanted is not None:
            names = [name for name in names if wanted.repository(name)]
        tags = [(name, tag) for name in names for tag in self._tags(name)
                if wanted is None or wanted.tag(name, tag)]
        with ThreadPoolExecutor(HEAD_CONCURRENCY, "manifest-head") as pool:
            infos = list(pool.map(lambda key: self.client.manifest_head(*key), tags))
        seen = time.time()
        entries = {key: ObjectInfo(f"{key[0]}:{key[1]}", info.size, info.digest, seen)
                   for key, info in zip(tags, infos) if info is not None}
        return RegistrySnapshot(entries)

    def _tags(self, name: str) -> list[str]:
        try:
            return sorted({tag for page in self.client.tag_list(name) for tag in page
                           if _valid_tag(tag)})
        except NotFound:
            return []

    def tag_read(self, name: str, tag: str) -> str:
        info = self.client.manifest_head(name, tag)
        if info is None:
            raise NotFound(f"{self.describe()}: {name}:{tag} does not exist")
        return info.digest

    def probe(self) -> None:
        self.client.call("GET", self.client.endpoint("/v2/"), kind="get")

    def manifest_read(self, name: str, digest: str, limit: int) -> bytes:
        data, _, _ = self.client.manifest_get(name, digest)
        if len(data) > limit:
            raise ObjectTooLarge(f"{self.describe()}: manifest {digest}: larger than {limit} bytes")
        return data

    def blob_size(self, name: str, digest: str) -> int:
        size = self.client.blob_head(name, digest)
        if size is None:
            raise NotFound(f"{self.describe()}: blob {digest} is not in {name}")
        return size

    def blob_open(self, name: str, digest: str) -> Iterator[bytes]:
        return self.client.blob_open(name, digest)


class RegistrySnapshot(Snapshot):
    """Tags and their digests, as one listing of a registry resolved them."""

    def __init__(self, tags: dict[tuple[str, str], ObjectInfo]):
        self.tags = tags

    def tag_digest(self, name: str, tag: str) -> str | None:
        entry = self.tags.get((name, tag))
        return None if entry is None else entry.etag


def _valid_tag(tag: str) -> bool:
    try:
        layout.check_tag(tag)
    except layout.LayoutError:
        return False
    return True
