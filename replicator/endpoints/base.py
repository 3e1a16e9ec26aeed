"""The endpoint interface: a place where images live, at the level of registry concepts.

An :class:`Endpoint` is one region as the engine sees it: repositories holding tags, manifests
and blobs, addressed by name, tag and digest. It reads and writes content; a
:class:`Snapshot` is what one listing of it showed (its tags, what it holds), taken once per
pass, and answers the questions a pass asks without further requests where the endpoint can.
What a kind of place needs beyond that (a storage layout's link files, a registry API's
mounts) stays inside its endpoint.

Abilities beyond the minimum are asked for, not assumed: a destination says whether and how it
can copy blobs from another endpoint server-side (:meth:`Destination.copy_ability`,
:meth:`Destination.hashes_copy`). Cost model: what a snapshot costs is in each endpoint kind's
docstring; everything else is one request per call unless said otherwise.

Errors: every method raises only ``drivers.errors.StorageError`` (and its subclasses:
``NotFound`` where said, ``AccessDenied``, ``TransientError`` after retries) for I/O, and
``replicator.layout.LayoutError`` for content that breaks Distribution's grammar (a junk
link). Content problems (a manifest that does not parse, bytes that do not match) are the
caller's to judge.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from drivers.base import ObjectInfo, RequestCounter
from replicator.manifests import Manifest
from replicator.planner import TagPlan

TagEntry = ObjectInfo
"""A tag as a listing shows it: ``etag`` changes whenever the tag may have moved, ``mtime`` is
when it last did (for lag)."""


@dataclass(frozen=True)
class Selection:
    """Which repositories and tags a caller wants from a snapshot."""

    repository: Callable[[str], bool]
    tag: Callable[[str, str], bool]


class Snapshot(ABC):
    """What one listing of an endpoint showed: its tags, for a pass that reads from it.

    Thread-safe for the calls a pass makes concurrently.
    """

    tags: Mapping[tuple[str, str], TagEntry]
    """Every tag the listing showed, by (repository, tag), but those of ``skipped``."""

    fingerprints: Mapping[str, str] = MappingProxyType({})
    """By repository, :func:`replicator.settling.fingerprint` of every entry the listing showed
    of it, where the endpoint's listing shows each key of a repository (storage); else empty."""

    skipped: frozenset[str] | set[str] = frozenset()
    """The repositories the listing showed and left out, as the caller's ``skip`` asked."""

    def restore(self, name: str) -> Mapping[tuple[str, str], TagEntry]:
        """List the skipped repository ``name`` again, into the snapshot (once, however many
        threads ask); its tags. Its fingerprint becomes the new listing's. Raises
        ``StorageError``, and ``ValueError`` for a repository this snapshot did not skip."""
        raise ValueError(f"{name} was not left out of the listing")

    @abstractmethod
    def tag_digest(self, name: str, tag: str) -> str | None:
        """The digest the tag points at, ``None`` if the snapshot has no such tag. Reads the
        tag only when the listing shows it may have changed since the state store last saw it.
        Raises ``StorageError``, or ``LayoutError`` for a junk tag."""


class DestinationSnapshot(Snapshot):
    """A snapshot of an endpoint a pass writes to, plus what the pass learnt or wrote since.
    Thread-safe for ``tag_digest``, ``holdings``, ``plan``, ``made`` and ``apply``."""

    @abstractmethod
    def holdings(self, name: str, digests: Iterable[str]) -> Mapping[str, int]:
        """Of ``digests`` (blobs) wanted in repository ``name``, those the endpoint holds there,
        with their sizes (``UNKNOWN_SIZE`` where it cannot tell without another request). May
        list or probe once per digest and pass; never raises ``NotFound``."""

    @abstractmethod
    def plan(self, name: str, tag: str, digest: str, tree: Mapping[str, Manifest],
             current: str | None) -> TagPlan:
        """What the endpoint lacks for ``name:tag`` at ``digest`` (``tree``: every manifest
        below it), in write order; pure given what the snapshot knows. ``current`` is the
        digest the tag points at now."""

    def known_holding(self, digest: str) -> bool | None:
        """Whether the endpoint holds the blob, as far as the snapshot already knows (no
        request; callable from any thread); ``None`` when it cannot tell."""
        return None

    @abstractmethod
    def made(self, step: tuple[str, str]) -> bool:
        """Whether the step is already made (by another tag of this pass, since it planned)."""

    @abstractmethod
    def describe(self, step: tuple[str, str]) -> str:
        """The step in words, as a dry run lists it."""

    @abstractmethod
    def apply(self, step: tuple[str, str]) -> str:
        """Make one of a plan's ``links`` steps; the new change token. Raises ``StorageError``."""

    @abstractmethod
    def step_requests(self, step: tuple[str, str], uploads: Mapping[str, str]) -> dict[str, int]:
        """The requests :meth:`apply` of ``step`` sends when nothing fails, by kind; no request.
        ``uploads`` maps each blob this pass uploads to the repository it goes into."""

    @abstractmethod
    def removal_requests(self, step: tuple[str, str]) -> dict[str, int]:
        """The requests :meth:`remove` of ``step`` sends when nothing fails; no request."""

    @abstractmethod
    def complete_tag(self, name: str, tag: str, digest: str) -> tuple[str, str] | None:
        """The step still missing for a tag already at ``digest`` (a pass stopped between its
        last two writes), known from the listing; ``None`` when nothing is missing."""

    @abstractmethod
    def record_tag(self, name: str, tag: str, token: str, digest: str) -> None:
        """Remember that the tag now points at ``digest`` with change token ``token``."""

    @abstractmethod
    def tag_removal(self, name: str, tag: str) -> list[tuple[str, str]]:
        """The steps that delete the tag (its history first kept, content never touched)."""

    @abstractmethod
    def remove(self, step: tuple[str, str]) -> None:
        """Carry out one step of :meth:`tag_removal`. Raises ``StorageError``."""

    @abstractmethod
    def forget_tag(self, name: str, tag: str) -> None:
        """Forget a deleted tag's recorded state."""

    @abstractmethod
    def missing_references(self, name: str, tag: str, manifest: Manifest,
                           blobs: Iterable[str]) -> list[tuple[str, str]]:
        """What the endpoint's own bookkeeping lacks for ``manifest`` (and its ``blobs``) in
        repository ``name`` under ``tag``, as (drift kind, detail) pairs: for storage, the
        revision and layer links a pull needs."""

    @abstractmethod
    def missing_history(self, name: str, tag: str, digest: str) -> list[tuple[str, str]]:
        """What the tag's history lacks at ``digest`` (storage: its index link; pulls work
        without it), as (drift kind, detail) pairs."""


class Endpoint(ABC):
    """One region a pass reads from: repositories, tags, manifests and blobs."""

    name: str
    requests: RequestCounter
    """Every request the endpoint sends, by kind (``list``, ``get``, ``head``, ``put``,
    ``copy``, ``delete``)."""

    @abstractmethod
    def describe(self) -> str:
        """A human-readable location; never contains secrets."""

    @abstractmethod
    def snapshot(self, repository: str | None, state, audit: bool,
                 wanted: Selection | None = None,
                 skip: Callable[[str, str], bool] | None = None) -> Snapshot:
        """List the endpoint (or one repository of it). ``state`` is the state store holding
        the tags last seen (``None``: nothing cached); ``audit`` trusts none of it. ``wanted``
        may leave out what the caller will not use, where that saves requests (an endpoint
        whose listing shows everything anyway may ignore it). ``skip(name, fingerprint)``, asked
        once per repository listed, leaves out a repository the caller needs nothing of
        (:mod:`replicator.settling`); an endpoint without ``fingerprints`` ignores it. Raises
        ``StorageError``."""

    def prepare(self, repository: str | None, state, wanted: Selection | None = None) -> None:
        """The caller's next :meth:`snapshot` or destination snapshot has these arguments:
        start now what may run ahead of it (a filesystem region's walk, in a child process),
        beside what the caller does until then. :meth:`release` stops what no snapshot took.
        The default starts nothing. Raises nothing a later snapshot would not."""

    def release(self) -> None:
        """Stop what :meth:`prepare` started and no snapshot took. Raises nothing."""

    @abstractmethod
    def tag_read(self, name: str, tag: str) -> str:
        """The digest the tag points at, read now (one request). Raises ``NotFound``, or
        ``LayoutError`` for a junk tag."""

    @abstractmethod
    def probe(self) -> None:
        """One cheap request that proves the endpoint answers. Raises ``StorageError``."""

    @abstractmethod
    def manifest_read(self, name: str, digest: str, limit: int) -> bytes:
        """The manifest's bytes (unchecked). Raises ``NotFound``, or ``ObjectTooLarge`` past
        ``limit``."""

    @abstractmethod
    def blob_size(self, name: str, digest: str) -> int:
        """The blob's size. Raises ``NotFound``."""

    @abstractmethod
    def blob_open(self, name: str, digest: str, offset: int = 0) -> Iterator[bytes]:
        """The blob's bytes from ``offset`` in chunks, resumed where a stream broke. Raises
        ``NotFound`` before yielding anything."""



class Destination(Endpoint):
    """An endpoint a pass also writes to."""

    @abstractmethod
    def destination_snapshot(self, repository: str | None, state, audit: bool,
                             wanted: Selection | None = None,
                             skip: Callable[[str, str], bool] | None = None) -> DestinationSnapshot:
        """What a pass writing here (or verifying what it holds) starts from: as
        :meth:`Endpoint.snapshot` (``wanted`` and ``skip`` likewise), with what such a pass
        needs. Raises ``StorageError``."""

    @abstractmethod
    def manifest_write(self, name: str, manifest: Manifest) -> None:
        """Store a checked manifest's bytes (invisible until a step refers to them)."""

    @abstractmethod
    def blob_write(self, name: str, digest: str, size: int, chunks: Iterable[bytes]) -> None:
        """Store the blob from ``chunks`` (``size`` bytes, ``-1`` if unknown), visible only once
        complete; memory bounded by a chunk. An exception raised by ``chunks`` (the caller's
        check of the bytes) leaves nothing visible and propagates. Raises ``StorageError``."""

    @abstractmethod
    def write_requests(self, size: int, manifest: bool = False) -> dict[str, int]:
        """The requests :meth:`blob_write` (``manifest``: :meth:`manifest_write`) of ``size``
        bytes sends when nothing fails, by kind; no request."""

    @abstractmethod
    def copy_requests(self, size: int, hashed: bool) -> dict[str, int]:
        """The requests here of :meth:`blob_copy_from` of ``size`` bytes when nothing fails."""

    @abstractmethod
    def blob_delete(self, name: str, digest: str) -> None:
        """Remove a blob this process just wrote and found wrong (never anything else)."""

    @abstractmethod
    def copy_ability(self, source: Endpoint) -> str:
        """How blobs can be copied into this endpoint from ``source`` without passing through
        the process: ``"hashed"`` (the provider's answer carries the SHA-256 of the copy),
        ``"plain"`` (size only), or ``""`` (never). From configuration alone: no request."""

    @abstractmethod
    def hashes_copy(self, size: int) -> bool:
        """Whether a hashed copy of ``size`` bytes is possible (providers limit its size)."""

    @abstractmethod
    def blob_copy_from(self, source: Endpoint, name: str, digest: str, size: int,
                       hashed: bool) -> str | None:
        """Copy the blob from ``source`` server-side (see :meth:`copy_ability`); with ``hashed``
        return the provider's hex SHA-256 of the stored copy (``None`` if its answer carried
        none), else ``None``. Raises ``NotFound`` (not at the source), ``AccessDenied`` (the
        caller streams instead), ``StorageError``."""

    @abstractmethod
    def sweep_abandoned_uploads(self, older_than: float) -> int:
        """Discard incomplete uploads older than ``older_than`` seconds; how many."""
