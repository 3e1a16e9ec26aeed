"""An OCI registry over its HTTP API as an endpoint (``drivers.registry``), to replicate from
or into.

A snapshot lists the repositories (the configured names; with globs or none configured, the
registry's ``_catalog`` filtered by them), each repository's ``tags/list`` (paged), and sends
one manifest ``HEAD`` per tag for its digest (``Docker-Content-Digest``), a repository's as soon
as its list has come, :data:`SNAPSHOT_CONCURRENCY` requests at once: that is the whole cost of
a pass over an unchanged registry. The API gives no time of change, so a tag's time
is when a snapshot first saw it. Manifests and blobs are read with ``GET`` (blobs streamed,
redirects to blob storage followed, broken streams resumed), and checked by the engine.

As a destination, each repository a pass touches is listed once (``tags/list``): a tag not
listed is absent, a listed tag the state store records this replicator moving to a digest is
taken to hold it, and only the other listed tags (and every tag in an audit, or without a state
store) cost a manifest ``HEAD``. A replica is written by the replicator alone (its other users
pull only): a tag moved there behind its back is repaired by the next audit, one deleted there
by the next pass. What a tag needs is asked with a ``HEAD`` per blob and manifest of its
repository (each once per pass). Writes go bottom-up as the API allows (DESIGN invariant 1):
blobs (uploaded, or mounted from the repository of this destination known to hold them: from
this run, or from the state store's record of earlier runs), then an index's children by
digest, then the tag (one ``PUT`` by tag, storing the tag's own manifest and moving the tag at
once; a manifest is never visible before what it references). A policy that deletes
lists the destination's tags (``tags/list`` per repository) and deletes a tag with its
manifest, which the API allows only while no other tag carries that manifest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from fnmatch import fnmatchcase

from drivers.base import ObjectInfo, ObjectTooLarge
from drivers.errors import NotFound, StorageError
from drivers.registry import RegistryClient
from drivers.registry.client import KEEP_ALIVE
from replicator import layout
from replicator.endpoints.base import (Destination, DestinationSnapshot, Endpoint,
                                       Selection, Snapshot)
from replicator.manifests import Manifest
from replicator.once import Once
from replicator.planner import TagPlan, bottom_up, is_foreign

SNAPSHOT_CONCURRENCY = KEEP_ALIVE
"""Tag lists and manifest HEADs in flight while a snapshot resolves tags to digests (a
repository's HEADs start as soon as its tag list has come): each is one small answer, so far
more than a pass's copy workers, and as many as the client keeps connections open. The
client's per-host back-off and ``requests_per_second`` gate every one of them."""
_GLOB = frozenset("*?[")


class RegistryEndpoint(Destination):
    """A registry at ``client``'s URL. ``client.repositories`` are names or globs (shell
    syntax, ``*`` matching ``/`` too); none means every repository of the catalog."""

    def __init__(self, name: str, client: RegistryClient):
        self.name = name
        self.client = client
        self.requests = client.requests
        self._homes: dict[str, str] = {}
        """digest -> a repository of this registry the blob was uploaded into (to mount from)."""
        self._homes_lock = threading.Lock()

    def destination_snapshot(self, repository: str | None, state, audit: bool,
                             wanted: Selection | None = None, skip=None) -> RegistryDestination:
        """Lists nothing up front: a pass into a registry lists a repository's tags when it
        first asks for one of them, and asks per blob and manifest (``wanted`` is not needed:
        nothing is listed that a pass does not ask for). ``state`` (if any) remembers across
        runs which repository holds each blob, to mount it from, and which digest each tag was
        moved to (trusted for listed tags, except in an ``audit``)."""
        return RegistryDestination(self, repository, state, audit)

    def known_home(self, digest: str) -> str | None:
        """The repository this process uploaded ``digest`` into, if it did."""
        with self._homes_lock:
            return self._homes.get(digest)

    def homeless(self, digest: str) -> None:
        """Forget where ``digest`` was (a mount from there failed)."""
        with self._homes_lock:
            self._homes.pop(digest, None)

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
                 wanted: Selection | None = None, skip=None) -> RegistrySnapshot:
        """Tags ``wanted`` leaves out are never HEADed; repositories it leaves out never listed.
        A tag list shows no change token, so nothing is ever skipped."""
        names = [repository] if repository else self.repositories()
        if wanted is not None:
            names = [name for name in names if wanted.repository(name)]
        pool = ThreadPoolExecutor(SNAPSHOT_CONCURRENCY, "snapshot")
        try:
            listings = {pool.submit(self.tag_names, name): name for name in names}
            heads = {}
            for listing in as_completed(listings):
                name = listings[listing]
                for tag in listing.result():
                    if wanted is None or wanted.tag(name, tag):
                        heads[name, tag] = pool.submit(self.client.manifest_head, name, tag)
            infos = {key: future.result() for key, future in sorted(heads.items())}
        finally:
            pool.shutdown(cancel_futures=True)
        seen = time.time()
        entries = {key: ObjectInfo(f"{key[0]}:{key[1]}", info.size, info.digest, seen)
                   for key, info in infos.items() if info is not None}
        return RegistrySnapshot(entries)

    def tag_names(self, name: str) -> list[str]:
        """The repository's tags (that Distribution's grammar allows), sorted; none if it does
        not exist."""
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

    def blob_open(self, name: str, digest: str, offset: int = 0) -> Iterator[bytes]:
        return self.client.blob_open(name, digest, offset)

    def manifest_write(self, name: str, manifest: Manifest) -> None:
        self.client.manifest_put(name, manifest.digest, manifest.data, manifest.media_type)

    def blob_write(self, name: str, digest: str, size: int, chunks: Iterable[bytes]) -> None:
        if size < 0:
            raise StorageError(f"{self.describe()}: blob {digest} of unknown size: the API needs it")
        self.client.blob_upload(name, digest, chunks, size)
        with self._homes_lock:
            self._homes.setdefault(digest, name)

    def blob_delete(self, name: str, digest: str) -> None:
        raise StorageError(f"{self.describe()}: blobs are never deleted through the API")

    def write_requests(self, size: int, manifest: bool = False) -> dict[str, int]:
        return {"put": 1} if manifest else self.client.upload_requests(size)

    def copy_requests(self, size: int, hashed: bool) -> dict[str, int]:
        raise TypeError("a registry destination copies no blob server-side from another endpoint")

    def copy_ability(self, source: Endpoint) -> str:
        return ""

    def hashes_copy(self, size: int) -> bool:
        return False

    def blob_copy_from(self, source: Endpoint, name: str, digest: str, size: int,
                       hashed: bool) -> str | None:
        raise TypeError("a registry destination copies no blob server-side from another endpoint")

    def sweep_abandoned_uploads(self, older_than: float) -> int:
        return 0


class RegistrySnapshot(Snapshot):
    """Tags and their digests, as one listing of a registry resolved them."""

    def __init__(self, tags: dict[tuple[str, str], ObjectInfo]):
        self.tags = tags

    def tag_digest(self, name: str, tag: str) -> str | None:
        entry = self.tags.get((name, tag))
        return None if entry is None else entry.etag


class RegistryDestination(DestinationSnapshot):
    """What a pass into a registry learnt of it: tags' digests, and what each repository holds,
    each asked once (a ``HEAD``). Steps are ``(what, digest)``, ``what`` being ``blob <name>``,
    ``manifest <name>`` or ``tag <name>:<tag>``."""

    def __init__(self, endpoint: RegistryEndpoint, repository: str | None = None, state=None,
                 audit: bool = True):
        self.endpoint = endpoint
        self.client = endpoint.client
        self.repository = repository
        self.state = state
        self._trusting = not audit and state is not None
        """Whether listed tags the replicator moved are taken to hold the digest it wrote."""
        self._made: dict[tuple[str, str], str] | None = None
        self._tags: dict[tuple[str, str], ObjectInfo] | None = None
        self._digests: dict[tuple[str, str], str | None] = {}
        self._sizes: dict[tuple[str, str], int | None] = {}
        self._manifests: dict[str, Manifest] = {}
        self._lock = threading.Lock()
        self._heads = Once()
        """Each HEAD once, however many tags ask at the same time."""
        self._lists = Once()

    @property
    def tags(self) -> Mapping[tuple[str, str], ObjectInfo]:
        """The destination's tags, listed on first use: its repositories (the configured names,
        or the catalog's) and a ``tags/list`` each; digests are HEADed only where needed."""
        if self._tags is None:
            names = [self.repository] if self.repository else self.endpoint.repositories()
            self._tags = {(name, tag): ObjectInfo(f"{name}:{tag}", -1, "", 0.0)
                          for name in names for tag in self._tag_names(name)}
        return self._tags

    def _tag_names(self, name: str) -> frozenset[str]:
        """The repository's tags, listed once per pass however many tags ask at once."""
        return self._lists.run(name, lambda: frozenset(self.endpoint.tag_names(name)))

    def _made_digest(self, name: str, tag: str) -> str | None:
        """The digest the state store records this replicator moving the tag to, if any."""
        with self._lock:
            if self._made is None:
                self._made = self.state.made_tags(self.endpoint.name)
            return self._made.get((name, tag))

    def tag_digest(self, name: str, tag: str) -> str | None:
        """From the repository's tag list and the state store where it can (see the module
        docstring), else one manifest ``HEAD``."""
        if (name, tag) not in self._digests:
            if self._trusting and tag not in self._tag_names(name):
                digest = None
            else:
                digest = self._made_digest(name, tag) if self._trusting else None
                if digest is None:
                    info = self.client.manifest_head(name, tag)
                    digest = None if info is None else info.digest
            self._digests[(name, tag)] = digest
        return self._digests[(name, tag)]

    def _size(self, name: str, digest: str, manifest: bool = False) -> int | None:
        """The size of a blob (or manifest) in ``name``; ``None`` when it is not there."""
        if (name, digest) not in self._sizes:
            size = self._heads.run((name, digest), lambda: self._head(name, digest, manifest))
            with self._lock:
                self._sizes.setdefault((name, digest), size)
        return self._sizes[(name, digest)]

    def _head(self, name: str, digest: str, manifest: bool) -> int | None:
        if manifest:
            info = self.client.manifest_head(name, digest)
            return None if info is None else info.size
        return self.client.blob_head(name, digest)

    def holdings(self, name: str, digests: Iterable[str]) -> Mapping[str, int]:
        sizes = {digest: self._size(name, digest) for digest in set(digests)}
        return {digest: size for digest, size in sizes.items() if size is not None}

    def plan(self, name: str, tag: str, digest: str, tree: Mapping[str, Manifest],
             current: str | None) -> TagPlan:
        blobs: dict[str, object] = {}
        steps: list[tuple[str, str]] = []
        reused: set[str] = set()

        def need(step: tuple[str, str]) -> None:
            if step not in steps:
                steps.append(step)

        move = (f"tag {name}:{tag}", digest) if current != digest else None
        for manifest in bottom_up(tree, digest):
            for blob in manifest.blobs:
                if is_foreign(blob):
                    continue
                if self._size(name, blob.digest) is not None:
                    reused.add(blob.digest)
                    continue
                if self._home(blob.digest) in (None, name):
                    blobs.setdefault(blob.digest, blob)   # else mounted from its home
                need((f"blob {name}", blob.digest))
            with self._lock:
                self._manifests[manifest.digest] = manifest
            if self._size(name, manifest.digest, manifest=True) is not None:
                reused.add(manifest.digest)
            elif manifest.digest != digest or move is None:   # the tag's PUT stores its own
                need((f"manifest {name}", manifest.digest))

        if move:
            steps.append(move)
        return TagPlan(name, tag, digest, tuple(blobs.values()), (), tuple(steps),
                       frozenset(reused), move)

    def made(self, step: tuple[str, str]) -> bool:
        what, digest = step
        kind, _, where = what.partition(" ")
        if kind == "tag":
            return self._digests.get(tuple(where.rsplit(":", 1))) == digest
        return self._sizes.get((where, digest)) is not None

    def describe(self, step: tuple[str, str]) -> str:
        return f"put {step[0]} -> {step[1]}"

    def apply(self, step: tuple[str, str]) -> str:
        what, digest = step
        kind, _, where = what.partition(" ")
        if kind == "blob":
            self._place_blob(where, digest)
        elif kind == "manifest":
            manifest = self._manifests[digest]
            self.client.manifest_put(where, digest, manifest.data, manifest.media_type)
        else:
            where, tag = where.rsplit(":", 1)
            manifest = self._manifests[digest]
            self.client.manifest_put(where, tag, manifest.data, manifest.media_type)
            self._digests[(where, tag)] = digest
        with self._lock:
            self._sizes[(where, digest)] = -1
        return digest

    def _home(self, digest: str) -> str | None:
        """A repository of this registry holding ``digest``: where this process uploaded it,
        else where the state store says an earlier run put it."""
        home = self.endpoint.known_home(digest)
        if home is None and self.state is not None:
            home = self.state.blob_home(self.endpoint.name, digest)
        return home

    def _place_blob(self, name: str, digest: str) -> None:
        """The blob into ``name``: uploaded there by the copier this pass, or mounted from the
        repository of this registry known to hold it (a failed mount forgets that home: the
        next pass uploads the blob)."""
        home = self._home(digest)
        if home not in (None, name) and not self.client.blob_mount(name, digest, home):
            self.endpoint.homeless(digest)
            if self.state is not None:
                self.state.forget_blob_home(self.endpoint.name, digest)
            raise StorageError(f"{self.endpoint.describe()}: blob {digest} could not be mounted "
                               f"into {name} from {home}; the next pass uploads it")
        if self.state is not None:
            self.state.record_blob_home(self.endpoint.name, digest, home or name)

    def step_requests(self, step: tuple[str, str], uploads: Mapping[str, str]) -> dict[str, int]:
        """A manifest or tag is one ``PUT``; a blob uploaded into another repository (or
        known to be held by one from an earlier run) is one mount; one uploaded here, none."""
        what, digest = step
        kind, _, where = what.partition(" ")
        if kind != "blob":
            return {"put": 1}
        return {} if uploads.get(digest, self._home(digest)) in (None, where) else {"copy": 1}

    def removal_requests(self, step: tuple[str, str]) -> dict[str, int]:
        return {"delete": 1}

    def complete_tag(self, name: str, tag: str, digest: str) -> tuple[str, str] | None:
        return None

    def record_tag(self, name: str, tag: str, token: str, digest: str) -> None:
        self._digests[(name, tag)] = digest

    def tag_removal(self, name: str, tag: str) -> list[tuple[str, str]]:
        """Distribution's API deletes a tag only with its manifest (and every other tag on it):
        a tag sharing its manifest with another tag of the repository is not deleted, with a
        ``StorageError`` saying why."""
        digest = self.tag_digest(name, tag)
        if digest is None:
            return []
        sharing = sorted(other for repository, other in self.tags
                         if repository == name and other != tag
                         and self.tag_digest(repository, other) == digest)
        if sharing:
            raise StorageError(f"{self.endpoint.describe()}: {name}:{tag} is not deleted: its "
                               f"manifest {digest} also carries {', '.join(sharing)}, which the "
                               f"registry's API would delete with it")
        return [(f"manifest {name}", digest)]

    def remove(self, step: tuple[str, str]) -> None:
        """Delete the manifest (and so the tag). Raises ``Unsupported`` (a ``StorageError``)
        where the registry has deletes disabled."""
        what, digest = step
        self.client.manifest_delete(what.partition(" ")[2], digest)

    def forget_tag(self, name: str, tag: str) -> None:
        self._digests.pop((name, tag), None)

    def missing_references(self, name: str, tag: str, manifest: Manifest,
                           blobs: Iterable[str]) -> list[tuple[str, str]]:
        return []

    def missing_history(self, name: str, tag: str, digest: str) -> list[tuple[str, str]]:
        return []


def _valid_tag(tag: str) -> bool:
    try:
        layout.check_tag(tag)
    except layout.LayoutError:
        return False
    return True
