"""Blobs: HEAD, streamed GET (redirects followed, broken streams resumed), mount, upload.

An upload is one session: ``POST`` opens it, each ``PATCH`` appends one chunk (the registry
answers a new ``Location``, which the next request must use), ``PUT ?digest=`` closes it with
the last chunk as its body, so a blob of at most the chunk size is ``POST`` + ``PUT``. When a
request of the session fails retryably, the session's offset is asked for (``GET`` on its
``Location``: 204 with ``Range: 0-N``) and the upload resumes there; when the registry has
dropped the session (404), a new one starts from byte 0. A failed upload cancels its session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, suppress

import httpx

from drivers.base import CHUNK_SIZE, resumed
from drivers.errors import StorageError, TransientError
from drivers.registry.client import Session
from drivers.registry.manifest import push_scope
from drivers.registry.tag import pull_scope
from drivers.retry import after_failure, retrying

REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
OCTETS = {"Content-Type": "application/octet-stream"}

Chunks = Iterable[bytes] | Callable[[int], Iterable[bytes]]
"""A blob's bytes for :meth:`Blobs.blob_upload`: an iterable of chunks, or a function giving
the chunks from an offset (as ``blob_open`` and ``StorageDriver.open`` do)."""


class _Source:
    """An upload's bytes by offset. An iterable is read forward, keeping the chunk in hand so
    that it can be sent again; an opener can also start over at any offset."""

    def __init__(self, chunks: Chunks) -> None:
        self._opener = chunks if callable(chunks) else None
        self._pieces: Iterator[bytes] | None = None if callable(chunks) else iter(chunks)
        self._start = 0
        self._buffer = bytearray()

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` (fewer where the blob ends). Raises ``StorageError``
        when ``offset`` lies before the chunk in hand of an iterable."""
        if self._pieces is None or not self._start <= offset <= self._start + len(self._buffer):
            if self._opener is None:
                raise StorageError(f"cannot read the blob again from byte {offset}: "
                                   "its chunks were given as an iterable")
            self._pieces, self._start = iter(self._opener(offset)), offset
            self._buffer.clear()
        del self._buffer[:offset - self._start]
        self._start = offset
        while len(self._buffer) < size and (piece := next(self._pieces, None)) is not None:
            self._buffer += piece
        return bytes(self._buffer[:size])


def _offset(response: httpx.Response) -> int | None:
    """The bytes a session holds, from ``Range: 0-<last>`` (``0-0``: none; Distribution
    says ``0-0`` for an empty session, so a 1-byte one reads as empty)."""
    first, _, last = response.headers.get("Range", "").removeprefix("bytes=").partition("-")
    if first.strip() != "0" or not last.strip().isdecimal():
        return None
    return int(last) + 1 if int(last) else 0


class Blobs(Session):
    """Blob requests: ``head`` for HEAD (and an upload's status), ``get`` for each GET
    (a redirect's target included), ``put`` for each POST, PATCH and PUT of an upload,
    ``copy`` for a mount, ``delete`` for cancelling a session."""

    def _blob_url(self, repository: str, digest: str) -> str:
        return self.endpoint(f"/v2/{repository}/blobs/{digest}")

    def _followed(self, method: str, url: str, *, kind: str, scopes: tuple[str, ...],
                  headers: dict[str, str] | None = None, stream: bool = False) -> httpx.Response:
        for _ in range(MAX_REDIRECTS):
            response = self.send(method, url, kind=kind, scopes=scopes, headers=headers, stream=stream)
            if response.status_code not in REDIRECTS:
                return response
            response.close()
            url = self.location(response, self.where(method, url))
        raise StorageError(f"{self.where(method, url)}: more than {MAX_REDIRECTS} redirects")

    def blob_head(self, repository: str, digest: str) -> int | None:
        """The blob's size, or ``None`` when ``repository`` has no such blob.

        Raises ``AccessDenied``, or ``TransientError`` after retries (also for an answer
        without ``Content-Length``).
        """
        url = self._blob_url(repository, digest)
        where = self.where("HEAD", url)

        def head() -> int | None:
            response = self.expect(self._followed("HEAD", url, kind="head",
                                                  scopes=pull_scope(repository)), (200, 404), where)
            if response.status_code == 404:
                return None
            size = response.headers.get("Content-Length", "")
            if not size.isdecimal():
                raise TransientError(f"{where}: the answer has no Content-Length")
            return int(size)

        return retrying(head)

    def blob_open(self, repository: str, digest: str, offset: int = 0) -> Iterator[bytes]:
        """Yield the blob's bytes from ``offset`` in chunks of at most ``CHUNK_SIZE``,
        following redirects (the registry's ``Authorization`` goes to the registry only).

        A stream that breaks is resumed with ``Range`` where it broke, as
        ``StorageDriver.open`` does. The bytes are not hashed here: callers verify the digest.
        Raises ``NotFound`` before yielding anything when there is no such blob,
        ``AccessDenied``, ``TransientError`` after retries.
        """
        yield from resumed(lambda start: self._blob_range(repository, digest, start), offset)

    def _blob_range(self, repository: str, digest: str, offset: int) -> Iterator[bytes]:
        url = self._blob_url(repository, digest)
        where = self.where("GET", url)
        headers = {"Range": f"bytes={offset}-"} if offset else None
        response = self.expect(self._followed("GET", url, kind="get", scopes=pull_scope(repository),
                                              headers=headers, stream=True), (200, 206), where)
        skip = offset if response.status_code == 200 else 0
        with closing(response), self.translating(where):
            for chunk in response.iter_bytes(CHUNK_SIZE):
                if skip:
                    chunk, skip = chunk[skip:], max(0, skip - len(chunk))
                if chunk:
                    yield chunk

    def blob_mount(self, repository: str, digest: str, from_repository: str) -> bool:
        """Mount the blob from ``from_repository`` into ``repository``: no bytes travel.

        True when mounted (201). False when the registry could not (it lacks the blob there,
        or the credentials may not pull from it): the upload session it opened instead (202)
        is cancelled. Raises ``AccessDenied`` when ``repository`` may not be pushed to,
        ``TransientError`` after retries.
        """
        url = self.endpoint(f"/v2/{repository}/blobs/uploads/")
        response = self.call("POST", url, kind="copy",
                             scopes=push_scope(repository) + pull_scope(from_repository),
                             params={"mount": digest, "from": from_repository}, statuses=(201, 202))
        if response.status_code == 201:
            return True
        self.upload_cancel(repository, self.location(response, self.where("POST", url)))
        return False

    def upload_cancel(self, repository: str, location: str) -> None:
        """Cancel the upload session at ``location`` (a session's URL); one that is gone
        already is not an error. Raises ``AccessDenied``, ``TransientError`` after retries."""
        self.call("DELETE", location, kind="delete", scopes=push_scope(repository),
                  statuses=(200, 202, 204, 404))

    def blob_upload(self, repository: str, digest: str, chunks: Chunks, size: int) -> None:
        """Upload the blob ``digest`` of ``size`` bytes into ``repository``.

        ``chunks`` gives the bytes (see :data:`Chunks`); memory stays within about one upload
        chunk (``chunksize``, or the registry's ``OCI-Chunk-Min-Length`` if larger). A broken
        request resumes at the registry's offset; a session the registry dropped starts over,
        which needs ``chunks`` to be an opener (an iterable cannot be read again: then
        ``StorageError``). Whatever fails, the session is cancelled.

        Raises ``StorageError`` when the registry refuses the bytes (``DIGEST_INVALID``:
        they do not hash to ``digest``; ``SIZE_INVALID``) or ``chunks`` holds fewer than
        ``size`` bytes; ``AccessDenied``; ``Unsupported`` for a read-only registry;
        ``TransientError`` when the retry policy's attempts run out.
        """
        source = _Source(chunks)
        location, offset, failures = None, 0, 0
        try:
            while True:
                finishing = False
                try:
                    if location is None:
                        (location, chunk_size), offset = self._upload_start(repository), 0
                    while size - offset > chunk_size:
                        data = source.read(offset, chunk_size)
                        location = self._upload_patch(repository, location, data, offset)
                        offset, failures = offset + len(data), 0
                    finishing = True
                    self._upload_finish(repository, location, digest,
                                        source.read(offset, size - offset), size - offset)
                    return
                except StorageError as error:
                    failures = after_failure(error, failures)
                if finishing and self.blob_head(repository, digest) == size:
                    location = None
                    return
                if location is not None:
                    location, offset = self._upload_status(repository, location)
        except BaseException:
            if location is not None:
                with suppress(StorageError):
                    self.upload_cancel(repository, location)
            raise

    def upload_requests(self, size: int) -> dict[str, int]:
        """The requests :meth:`blob_upload` of ``size`` bytes sends when nothing fails, as
        counted: the ``POST``, a ``PATCH`` per chunk before the last, the closing ``PUT``
        (a registry announcing a larger ``OCI-Chunk-Min-Length`` needs fewer)."""
        return {"put": 2 + max(0, -(-size // self.chunk_size) - 1)}

    def _upload_start(self, repository: str) -> tuple[str, int]:
        url = self.endpoint(f"/v2/{repository}/blobs/uploads/")
        response = self.call("POST", url, kind="put", scopes=push_scope(repository),
                             statuses=(202,))
        minimum = response.headers.get("OCI-Chunk-Min-Length", "")
        chunk_size = max(self.chunk_size, int(minimum) if minimum.isdecimal() else 0)
        return self.location(response, self.where("POST", url)), chunk_size

    def _upload_patch(self, repository: str, location: str, data: bytes, offset: int) -> str:
        where = self.where("PATCH", location)
        headers = {**OCTETS, "Content-Range": f"{offset}-{offset + len(data) - 1}"}
        response = self.expect(self.send("PATCH", location, kind="put", scopes=push_scope(repository),
                                         headers=headers, content=data), (202,), where)
        held = _offset(response)
        if held is not None and held != offset + len(data):
            raise TransientError(f"{where}: the session holds {held} bytes, not {offset + len(data)}")
        return self.location(response, where)

    def _upload_finish(self, repository: str, location: str, digest: str, data: bytes,
                       expected: int) -> None:
        if len(data) != expected:
            raise StorageError(f"{self.describe()}: the bytes given for {digest} end "
                               f"{expected - len(data)} bytes short")
        url = str(httpx.URL(location).copy_merge_params({"digest": digest}))
        where = self.where("PUT", url)
        response = self.expect(self.send("PUT", url, kind="put", scopes=push_scope(repository),
                                         headers=OCTETS, content=data), (201, 204), where)
        announced = response.headers.get("Docker-Content-Digest", digest)
        if announced != digest:
            raise StorageError(f"{where}: the registry stored {announced}, not {digest}")

    def _upload_status(self, repository: str, location: str) -> tuple[str | None, int]:
        """The session's current ``Location`` and offset; ``(None, 0)`` when it is gone."""
        response = self.call("GET", location, kind="head", scopes=push_scope(repository),
                             statuses=(204, 404))
        if response.status_code == 404:
            return None, 0
        offset = _offset(response)
        if offset is None:
            raise TransientError(f"{self.where('GET', location)}: the answer has no Range")
        return self.location(response, self.where("GET", location)), offset
