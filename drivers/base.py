"""The storage driver protocol: flat keys and bytes, no registry knowledge.

A driver addresses objects by *key*: a ``/``-separated path relative to the driver's root
directory (``docker/registry/v2/blobs/...``). Keys never start with ``/``, never contain
``..`` segments, backslashes, NUL or other control characters; :func:`check_key` enforces
this before any request is made and raises :class:`~drivers.errors.InvalidKey`.

Every method raises only the exceptions of :mod:`drivers.errors`. Retryable errors have
already been retried (see :mod:`drivers.retry`) by the time they reach the caller.

Every request a driver sends to its storage is counted once in its :class:`RequestCounter`,
under one of the kinds ``list``, ``get``, ``head``, ``put``, ``copy``, ``delete``
(each multipart part is one ``put``).
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import ClassVar

from drivers.errors import (AccessDenied, InvalidKey, NotFound, PreconditionFailed, StorageError,
                            TransientError)
from drivers.retry import after_failure

REQUEST_KINDS = ("list", "get", "head", "put", "copy", "delete")

CHUNK_SIZE = 1024 * 1024
"""Size of the chunks :meth:`StorageDriver.open` yields (drivers may yield smaller ones)."""

SMALL_READ_LIMIT = 4 * 1024 * 1024
"""Default bound for :meth:`StorageDriver.read`: larger objects raise ``ObjectTooLarge``."""

UNKNOWN_SIZE = -1
"""``ObjectInfo.size`` of a listed object whose size the listing does not tell."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object as a listing or a stat sees it.

    ``etag`` is an opaque change token: it changes whenever the content is rewritten
    (an S3/GCS/Azure ETag, or size and nanosecond mtime on a filesystem). ``mtime`` is
    seconds since the epoch.

    ``size`` is exact from :meth:`StorageDriver.stat`. From :meth:`StorageDriver.list` it may
    be :data:`UNKNOWN_SIZE` where the driver's ``listed_sizes_exact`` is false (a Swift
    Dynamic Large Object lists as 0 bytes): a caller that needs that size stats the object.
    """

    key: str
    size: int
    etag: str
    mtime: float


class ObjectTooLarge(StorageError):
    """A small read found an object larger than the caller's limit."""


class RequestCounter:
    """Thread-safe counts of storage requests by kind (see ``REQUEST_KINDS``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(REQUEST_KINDS, 0)

    def add(self, kind: str, n: int = 1) -> None:
        if kind not in self._counts:
            raise ValueError(f"unknown request kind {kind!r}")
        with self._lock:
            self._counts[kind] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key; raise ``InvalidKey`` otherwise."""
    if not key or key.startswith("/") or key.endswith("/"):
        raise InvalidKey(f"invalid key {key!r}: must be a non-empty relative path")
    if "\\" in key or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise InvalidKey(f"invalid key {key!r}: backslash or control character")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidKey(f"invalid key {key!r}: empty, '.' or '..' segment")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is empty or a safe key followed by ``/``; raise ``InvalidKey``."""
    if prefix:
        if not prefix.endswith("/"):
            raise InvalidKey(f"invalid prefix {prefix!r}: must end with '/'")
        check_key(prefix[:-1])
    return prefix


def check_delimiter(delimiter: str) -> str:
    """Return ``delimiter`` if it is a non-empty string without control characters or
    backslashes; raise ``InvalidKey`` otherwise."""
    if not delimiter or "\\" in delimiter or any(ord(c) < 32 or ord(c) == 127 for c in delimiter):
        raise InvalidKey(f"invalid delimiter {delimiter!r}")
    return delimiter


def common_prefix(key: str, prefix: str, delimiter: str) -> str | None:
    """``key`` up to and including the first ``delimiter`` after ``prefix`` (which ``key``
    starts with), ``None`` if there is none: the "subdirectory" a delimited listing rolls it
    into."""
    end = key.find(delimiter, len(prefix))
    return None if end < 0 else key[:end + len(delimiter)]


def delimited_pages(prefix: str, delimiter: str,
                    fetch: Callable[[str | None], tuple[list[str], str | None]]) -> Iterator[list[str]]:
    """:func:`token_pages` of a delimited listing, once ``prefix`` and ``delimiter`` passed
    their checks (else ``InvalidKey``, before any request)."""
    check_prefix(prefix)
    check_delimiter(delimiter)
    return token_pages(fetch)


def whole_prefix(prefix: str, delimiter: str) -> str:
    """A prefix of a delimited listing as the server sent it, made to end with the whole
    ``delimiter``: Azurite 3.35 and fake-gcs-server 1.54 end it after the delimiter's first
    character (``a/`` for ``a/_x`` with delimiter ``/_``), where S3, Swift and the providers'
    documentation keep the whole delimiter."""
    if prefix.endswith(delimiter) or not prefix.endswith(delimiter[0]):
        return prefix
    return prefix[:-1] + delimiter


def token_pages(fetch: Callable[[str | None], tuple[list[ObjectInfo], str | None]],
                ) -> Iterator[list[ObjectInfo]]:
    """Yield the non-empty pages of a listing paged by continuation tokens.

    ``fetch(token)`` returns one page and the next token, ``None`` after the last page; the
    first call gets ``None``.
    """
    token = None
    while True:
        page, token = fetch(token)
        if page:
            yield page
        if not token:
            return


_URL_QUERY = re.compile(r"\?[^\s'\"]*")


def without_url_queries(text: str) -> str:
    """``text`` (an SDK's error message) without URL query strings, which may carry shared
    access signatures, upload session ids or other secrets."""
    return _URL_QUERY.sub("", text)


def error_for_status(status: int | None, message: str) -> StorageError:
    """The error an HTTP status means: 404, 412, 401/403, 408/429/5xx, else a plain StorageError."""
    if status == 404:
        return NotFound(message)
    if status == 412:
        return PreconditionFailed(message)
    if status in (401, 403):
        return AccessDenied(message)
    if status in (408, 429) or (status or 0) >= 500:
        return TransientError(message)
    return StorageError(message)


def resumed(read_range: Callable[[int], Iterator[bytes]], offset: int = 0) -> Iterator[bytes]:
    """Yield what ``read_range(offset)`` yields; when it breaks with a retryable error, go on
    with ``read_range`` from the byte where it broke, up to the retry policy's number of
    consecutive failures (:data:`drivers.retry.ATTEMPTS`), pausing its back-off between them."""
    failures = 0
    while True:
        try:
            for chunk in read_range(offset):
                offset += len(chunk)
                failures = 0
                yield chunk
            return
        except StorageError as error:
            failures = after_failure(error, failures)


class ChunkedWriter(ABC):
    """A streaming upload to one key, invisible at that key until :meth:`commit`.

    Use as a context manager: leaving the block without ``commit()`` (normally or by an
    exception) calls :meth:`abort`. Memory held is bounded by the driver's part size.
    """

    def __init__(self) -> None:
        self.size = 0
        self.closed = False

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Append ``data``. Raises ``StorageError`` if a part upload fails after retries."""

    @abstractmethod
    def commit(self) -> str:
        """Make the object visible at its key, atomically; return its etag as listings show it.

        Raises ``StorageError``; the object is then not visible (call :meth:`abort`).
        """

    @abstractmethod
    def abort(self) -> None:
        """Discard everything written; never raises. Idempotent; a no-op after commit."""

    def __enter__(self) -> ChunkedWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.closed:
            self.abort()


class StorageDriver(ABC):
    """One storage location (a bucket, container or directory, plus a root directory).

    Subclasses set ``kind`` (the key of the Distribution ``storage:`` block they accept) and
    implement :meth:`from_config` and the abstract methods.
    """

    kind: ClassVar[str]
    listed_sizes_exact: ClassVar[bool] = True
    """False if :meth:`list` may report ``UNKNOWN_SIZE`` for some objects."""
    delete_heads_first: ClassVar[bool] = False
    """True if :meth:`delete` HEADs the object first (one more ``head`` request), to find
    parts stored apart from it (a Swift DLO's segments)."""

    list_page_size: ClassVar[int] = 1000
    """The most entries (objects, or prefixes) one listing request returns: a listing of ``n``
    keys costs ``max(1, ceil(n / list_page_size))`` requests."""

    def __init__(self) -> None:
        self.requests = RequestCounter()

    @classmethod
    @abstractmethod
    def from_config(cls, params: dict) -> StorageDriver:
        """Build a driver from the parameters of a Distribution ``storage.<kind>`` block.

        Raises ``ConfigError`` naming the bad parameter (relative to the block).
        """

    @abstractmethod
    def describe(self) -> str:
        """A human-readable location such as ``s3://bucket/root``; never contains secrets."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[list[ObjectInfo]]:
        """Yield pages of every object whose key starts with ``prefix``, recursively.

        Each page is the result of one listing request. Keys within the whole listing are in
        ascending byte order. A prefix that matches nothing yields nothing (no error).
        ``prefix`` is empty or ends with ``/``; otherwise ``InvalidKey``.
        """

    def list_ahead(self, prefix: str = "") -> Iterator[list[ObjectInfo]]:
        """As :meth:`list`, for a caller that will read the pages a little later: a driver
        that can may start the listing now and run it ahead of the caller, beside what the
        caller does meanwhile (a bounded lead). Closing the pages (``close()``, where they have
        it) stops such work. The default is :meth:`list`."""
        return self.list(prefix)

    @abstractmethod
    def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> Iterator[list[str]]:
        """Yield pages of the "subdirectories" below ``prefix``: each distinct
        ``prefix + s + delimiter`` that some key starts with, where ``s`` holds no
        ``delimiter`` (S3's CommonPrefixes; see :func:`common_prefix`). Keys with no
        ``delimiter`` after ``prefix`` are left out.

        ``delimiter`` may be any string :func:`check_delimiter` accepts: ``"/"`` gives the
        immediate subdirectories; ``"/_"`` every directory, however deep, that holds an entry
        whose name starts with ``_`` (and nothing below one). Each page is one listing request
        of at most ``list_page_size`` entries, counted as ``list``; prefixes within the whole
        listing are in ascending byte order. A prefix that matches nothing yields nothing.
        Raises ``InvalidKey`` for a bad prefix or delimiter (before any request),
        ``StorageError``.
        """

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Return the object's metadata. Raises ``NotFound``."""

    @abstractmethod
    def _read_range(self, key: str, offset: int) -> Iterator[bytes]:
        """Yield the object's bytes from ``offset`` in chunks (one request).

        Raises ``NotFound`` before yielding anything if the key does not exist; a
        ``TransientError`` (before or while yielding) is retried by :meth:`open`, so
        implementations do not retry here.
        """

    @abstractmethod
    def write(self, key: str, data: bytes) -> str:
        """Store a small object atomically (readers see the old or the new bytes).

        Returns the new object's etag as listings and :meth:`stat` show it.
        """

    @abstractmethod
    def writer(self, key: str) -> ChunkedWriter:
        """Start a chunked upload to ``key``; see :class:`ChunkedWriter`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object. Deleting a missing key is not an error."""

    def write_requests(self, size: int) -> dict[str, int]:
        """The requests :meth:`write` of ``size`` bytes sends when nothing fails (retries add
        more), by kind as counted. This default: one ``put``. Sends no request."""
        return {"put": 1}

    def writer_requests(self, size: int) -> dict[str, int]:
        """The requests a :meth:`writer` sends to upload and commit ``size`` bytes when nothing
        fails. This default: one ``put`` (the object is sent whole at commit)."""
        return {"put": 1}

    def delete_requests(self) -> dict[str, int]:
        """The requests :meth:`delete` of an existing object sends when nothing fails."""
        return {"delete": 1, "head": 1} if self.delete_heads_first else {"delete": 1}

    def sweep_abandoned_uploads(self, prefix: str, older_than: float) -> int:
        """Discard incomplete uploads under ``prefix`` started over ``older_than`` seconds ago
        (by a process killed mid-copy); how many. Raises ``StorageError``.

        Incomplete uploads are never visible as objects. This default sweeps nothing: it suits
        drivers whose incomplete uploads expire by themselves (Azure's uncommitted blocks,
        GCS's resumable sessions, both after a week).
        """
        check_prefix(prefix)
        return 0

    def read(self, key: str, limit: int = SMALL_READ_LIMIT) -> bytes:
        """Return the whole object. Raises ``NotFound``, or ``ObjectTooLarge`` past ``limit``."""
        data = bytearray()
        for chunk in self.open(key):
            data += chunk
            if len(data) > limit:
                raise ObjectTooLarge(f"{key}: larger than {limit} bytes")
        return bytes(data)

    def open(self, key: str, offset: int = 0) -> Iterator[bytes]:
        """Yield the object's bytes from ``offset`` in chunks of at most ``CHUNK_SIZE``.

        A stream that breaks with a retryable error is reopened at the byte where it broke,
        up to the retry policy's number of attempts. Raises ``NotFound`` before yielding
        anything if the key does not exist.
        """
        check_key(key)
        yield from resumed(lambda start: self._read_range(key, start), offset)


class ServerSideCopy(ABC):
    """Optional ability of a driver: copy an object from another driver of the same provider
    without its bytes passing through this process (S3 CopyObject, GCS rewrite, Azure Copy Blob).

    A driver that has it subclasses this besides :class:`StorageDriver`; callers test
    ``isinstance(destination, ServerSideCopy) and destination.can_copy_from(source)`` and
    otherwise stream the object through :meth:`StorageDriver.open` and
    :meth:`StorageDriver.writer`. The copy runs with the *destination's* credentials (and, where
    the provider needs one, a short-lived read grant made by the source driver), and is
    counted in the destination's :class:`RequestCounter` as ``copy`` requests (plus the
    ``put``/``head``/``delete`` requests that start, watch or cancel a multi-request copy).
    The bytes are not hashed on the way: a caller that needs them verified reads them back.
    """

    @abstractmethod
    def can_copy_from(self, source: StorageDriver) -> bool:
        """Whether :meth:`copy_from` can work from ``source``: the same provider and service
        endpoint, with credentials that plausibly reach both. Decided from configuration alone:
        never raises and sends no request. True is a guess the provider may still refuse
        (``AccessDenied`` from :meth:`copy_from`)."""

    @abstractmethod
    def copy_from(self, source: StorageDriver, key: str, size: int | None = None) -> str:
        """Copy ``source``'s object at ``key`` to this driver's ``key`` (each under its own
        root directory) and return the new object's etag as listings and :meth:`stat
        <StorageDriver.stat>` show it. ``size``, the source object's size if the caller
        already knows it, spares a request where the copy method depends on it.

        The object appears at ``key`` atomically, complete or not at all (an existing object
        stays until then); a failed copy leaves nothing behind (no multipart upload, no
        partial blob). Raises ``InvalidKey`` before any request, ``NotFound`` when the source
        object does not exist, ``AccessDenied`` when this driver's credentials may not read
        the source or write here (the caller falls back to streaming), ``TransientError``
        after retries (or when the provider's copy did not finish within the driver's bounded
        wait, after cancelling it), and ``StorageError`` otherwise. A ``source`` for which
        :meth:`can_copy_from` is false may raise ``TypeError``: callers ask first.
        """

    def copy_requests(self, size: int, hashed: bool) -> dict[str, int]:
        """The requests at this driver of :meth:`copy_from` (``hashed``: :meth:`copy_from_hashed
        <HashedServerSideCopy.copy_from_hashed>`) of ``size`` bytes when nothing fails and the
        provider finishes at once. This default: one ``copy``."""
        return {"copy": 1}


@dataclass(frozen=True)
class HashedCopy:
    """What a server-side copy that hashes its bytes answered: the new object's etag, and the
    hex SHA-256 of the bytes the provider stored (``None`` if its answer carried none)."""

    etag: str
    sha256: str | None


class HashedServerSideCopy(ServerSideCopy):
    """Optional ability beyond :class:`ServerSideCopy`: a copy whose answer carries the SHA-256
    the provider computed over the bytes it stored, in the same call (S3 CopyObject with
    ``ChecksumAlgorithm=SHA256``). Callers compare it with the digest before anything refers to
    the object, and delete the object if it differs: that is a verified server-side copy."""

    @abstractmethod
    def hashes_copy(self, size: int) -> bool:
        """Whether :meth:`copy_from_hashed` can copy an object of ``size`` bytes (the provider
        hashes only single-call copies, up to a size limit). No request; never raises."""

    @abstractmethod
    def copy_from_hashed(self, source: StorageDriver, key: str, size: int) -> HashedCopy:
        """Copy like :meth:`ServerSideCopy.copy_from` (same errors and guarantees), in one
        request, and return the etag with the provider's SHA-256 of the stored bytes.
        ``size`` must satisfy :meth:`hashes_copy` (else ``ValueError`` before any request)."""


class PartWriter(ChunkedWriter):
    """A :class:`ChunkedWriter` that uploads in parts of ``part_size`` bytes, buffering one.

    A part is sent only once more bytes follow it, so the last part is never empty. An object
    that ends within its first part is one ``driver.write``. Subclasses send a part
    (:meth:`_send_part`), finish the upload with the last one (:meth:`_finish`) and cancel it
    (:meth:`_cancel`, which :meth:`abort` calls, ignoring its ``StorageError``).
    """

    def __init__(self, driver: StorageDriver, key: str, part_size: int) -> None:
        super().__init__()
        self._driver, self._key, self._part_size = driver, key, part_size
        self._buffer = bytearray()
        self.parts = 0

    @abstractmethod
    def _send_part(self, part: bytes) -> None:
        """Upload one full part (the first starts the upload)."""

    @abstractmethod
    def _finish(self, last: bytes) -> str:
        """Upload the last part and make the object visible; return its etag."""

    @abstractmethod
    def _cancel(self) -> None:
        """Discard whatever was sent, if anything."""

    @staticmethod
    def requests(driver: StorageDriver, size: int, part_size: int,
                 finishing: dict[str, int]) -> dict[str, int]:
        """What uploading ``size`` bytes costs: one ``driver.write`` within the first part,
        else a ``put`` per part plus the ``finishing`` requests of the upload."""
        if size <= part_size:
            return driver.write_requests(size)
        parts = {"put": -(-size // part_size)}
        return {kind: parts.get(kind, 0) + finishing.get(kind, 0) for kind in {*parts, *finishing}}

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        while len(self._buffer) > self._part_size:
            self._send_part(bytes(self._buffer[:self._part_size]))
            del self._buffer[:self._part_size]
            self.parts += 1

    def commit(self) -> str:
        last = bytes(self._buffer)
        etag = self._finish(last) if self.parts else self._driver.write(self._key, last)
        self._buffer.clear()
        self.closed = True
        return etag

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._buffer.clear()
        with suppress(StorageError):
            self._cancel()


class LayoutFlavours(ABC):
    """Optional ability of a driver whose backend Distribution versions lay out differently:
    the same registry path becomes a different object name in 2.8 and in 3.x (Azure: see
    :mod:`drivers.azure`). Keys stay the same; only the driver's key-to-name arithmetic changes.

    ``flavour`` is one of ``flavours``; ``flavour_known`` says whether it was chosen (from the
    configuration or a listing) rather than left at the driver's default. Backends whose
    versions agree (S3, GCS, filesystem) do not have this ability and need no detection.
    """

    flavours: ClassVar[tuple[str, ...]]
    flavour: str
    flavour_known: bool

    @abstractmethod
    def required_flavour(self) -> str | None:
        """The flavour the driver's configuration alone implies (e.g. a root directory, which
        only one flavour has), or ``None``. Sends no request."""

    @abstractmethod
    def use_flavour(self, flavour: str) -> None:
        """Name objects as ``flavour`` does from now on; ``flavour_known`` becomes true.
        Raises ``ConfigError`` (field ``layout``) for an unknown flavour or one that
        contradicts :meth:`required_flavour`."""

    @abstractmethod
    def flavours_present(self, prefix: str) -> set[str]:
        """The flavours under whose naming some object's key starts with ``prefix``: one
        one-object listing per flavour. Raises ``InvalidKey`` for a bad prefix, ``StorageError``."""
