"""One read of a source blob for every destination of a pass that streams it.

The destinations of a policy's pass run at once (:func:`replicator.engine.run_policy`), and a
blob that several of them lack would otherwise cross the source's egress once per destination.
A :class:`SourceTee` is shared by the passes of one policy run: the first destination to stream
a blob starts a *shared read* of it; the destinations that may still need it (each pass says
which it may need: :meth:`SourceTee.join`) take the same chunks from a bounded buffer.

Nobody waits for a slower destination. The chunk past the last one read is pulled from the
source by whichever reader needs it first; the buffer keeps what the slowest reader still
attached (or, while the first chunk is kept, a destination that may yet ask) has not taken.
A reader that falls more than ``window`` bytes behind is detached and reads the rest from the
source itself from where it was; a destination that asks after the first chunk has gone (or
that was dropped to keep the buffer small) reads the blob itself. Either is a *re-read*,
counted as ``blobs_reread`` in that destination's report. When the buffers of all shared reads
together hold more than ``limit`` bytes, the oldest reads stop keeping chunks for destinations
that have not asked yet. Memory is therefore bounded by ``limit`` (plus one window while
readers are detached) whatever the blobs' sizes.

The tee hands on bytes as the source gave them: every destination hashes what it writes
(:class:`replicator.copier.BlobCopier`). An error of the source's read is raised to every
reader of it, as its own read would have raised it.

Counted in each reader's report: ``source_blob_bytes``, the blob bytes its copies pulled from
the source (for everyone, or alone: the sum over a run's reports is what the source served),
``blobs_shared`` (blobs it took from a read another destination had started) and
``blobs_reread``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator

from replicator.endpoints.base import Endpoint
from replicator.manifests import Descriptor
from replicator.report import PassReport

WINDOW = 16 * 1024 * 1024
"""How far (in bytes) a reader may fall behind the first reader of a shared read."""
LIMIT = 64 * 1024 * 1024
"""Bytes all shared reads of a tee may keep for readers that have not asked yet."""


class _Reader:
    def __init__(self, report: PassReport):
        self.report = report
        self.next = 0
        """Index of the next chunk it takes."""
        self.offset = 0
        """Bytes it has taken."""
        self.detached = False


class _SharedRead:
    """The chunks of one source read, from ``base`` on, for the readers attached to it."""

    def __init__(self, digest: str, chunks: Iterator[bytes], expected: set[str]):
        self.digest = digest
        self.source = chunks
        self.chunks: list[bytes] = []
        self.base = 0
        self.kept = 0
        self.readers: list[_Reader] = []
        self.expected = expected
        """Destinations that may yet ask, while the first chunk is kept."""
        self.served: set[str] = set()
        self.pulling = False
        self.done = False
        self.error: BaseException | None = None

    @property
    def end(self) -> int:
        return self.base + len(self.chunks)

    def trim(self) -> int:
        """Drop the chunks no attached or expected reader needs; the bytes freed."""
        keep = 0 if self.expected and self.base == 0 else min(
            (reader.next for reader in self.readers), default=self.end)
        freed = 0
        while self.base < keep:
            freed += len(self.chunks.pop(0))
            self.base += 1
        self.kept -= freed
        return freed

    def shed(self) -> bool:
        """Stop waiting for the destinations that have not asked, else detach the reader
        furthest behind (never the one at the end); whether anything was dropped."""
        if self.expected:
            self.expected = set()
            return True
        laggards = [reader for reader in self.readers if reader.next < self.end]
        if not laggards:
            return False
        laggard = min(laggards, key=lambda reader: reader.next)
        laggard.detached = True
        self.readers.remove(laggard)
        return True

    @property
    def finished(self) -> bool:
        """Nobody reads it or may yet ask for it."""
        return not self.readers and not self.expected and not self.pulling


class SourceTee:
    """Shared reads of ``source``'s blobs by the destinations of one policy run (thread-safe).

    :meth:`open` raises what the source's ``blob_open`` raises (``NotFound`` before yielding
    anything, ``StorageError``), to each reader of a shared read.
    """

    def __init__(self, source: Endpoint, window: int = WINDOW, limit: int = LIMIT):
        self.source = source
        self.window = window
        self.limit = limit
        self._members: dict[str, Callable[[Descriptor], bool]] = {}
        self._reads: dict[str, _SharedRead] = {}
        self._started: set[str] = set()
        self._kept = 0
        self._changed = threading.Condition()

    def join(self, destination: str, wants: Callable[[Descriptor], bool]) -> None:
        """Count ``destination`` among the readers a shared read keeps its first chunks for
        while ``wants(blob)`` (called under the tee's lock: no request, no lock) says it may
        still stream the blob."""
        with self._changed:
            self._members[destination] = wants

    def leave(self, destination: str) -> None:
        """``destination``'s pass has ended: no read keeps chunks for it any longer."""
        with self._changed:
            self._members.pop(destination, None)
            for shared in list(self._reads.values()):
                shared.expected.discard(destination)
                self._settle(shared)

    def open(self, destination: str, name: str, blob: Descriptor,
             report: PassReport) -> Stream:
        """The blob's bytes for ``destination``'s copy in repository ``name``: from a shared
        read when one it may join is under way, else from one it starts (or alone)."""
        reader = _Reader(report)
        with self._changed:
            shared = self._reads.get(blob.digest)
            if shared is None or shared.error is not None:
                reread = blob.digest in self._started
                shared = self._start(name, blob, destination)
            elif destination in shared.served or shared.base > 0:
                shared, reread = None, True
            else:
                reread = False
                shared.expected.discard(destination)
                report.count("blobs_shared")
            if shared is not None:
                shared.readers.append(reader)
                shared.served.add(destination)
        if reread:
            report.count("blobs_reread")
        if shared is None:
            return Stream(self._alone(reader, name, blob.digest), lambda: None)
        return Stream(self._shared(reader, shared, name), lambda: self._release(reader, shared))

    def _start(self, name: str, blob: Descriptor, destination: str) -> _SharedRead:
        expected = {member for member, wants in self._members.items()
                    if member != destination and wants(blob)}
        shared = self._reads[blob.digest] = _SharedRead(
            blob.digest, _delegating(self.source.blob_open(name, blob.digest)), expected)
        self._started.add(blob.digest)
        return shared

    def _alone(self, reader: _Reader, name: str, digest: str) -> Iterator[bytes]:
        for chunk in self.source.blob_open(name, digest, reader.offset):
            reader.report.count("source_blob_bytes", len(chunk))
            yield chunk

    def _shared(self, reader: _Reader, shared: _SharedRead, name: str) -> Iterator[bytes]:
        try:
            while (chunk := self._take(reader, shared)) is not None:
                yield chunk
        finally:
            self._release(reader, shared)
        if reader.detached:
            reader.report.count("blobs_reread")
            yield from self._alone(reader, name, shared.digest)

    def _take(self, reader: _Reader, shared: _SharedRead) -> bytes | None:
        """The reader's next chunk, pulled from the source if nobody has yet; ``None`` at the
        end or once the reader is detached."""
        with self._changed:
            while not reader.detached:
                if reader.next < shared.end:
                    chunk = shared.chunks[reader.next - shared.base]
                    self._advance(reader, chunk)
                    self._kept -= shared.trim()
                    return chunk
                if shared.error is not None:
                    raise shared.error
                if shared.done:
                    return None
                if not shared.pulling:
                    shared.pulling = True
                    break
                self._changed.wait()
            else:
                return None
        try:
            chunk = next(shared.source, None)
        except BaseException as error:
            with self._changed:
                shared.pulling, shared.error, shared.expected = False, error, set()
                self._changed.notify_all()
            raise
        with self._changed:
            shared.pulling = False
            if chunk is None:
                shared.done = True
            else:
                reader.report.count("source_blob_bytes", len(chunk))
                shared.chunks.append(chunk)
                shared.kept += len(chunk)
                self._kept += len(chunk)
                self._advance(reader, chunk)
                self._kept -= shared.trim()
                self._bound(shared)
            self._changed.notify_all()
        return chunk

    def _release(self, reader: _Reader, shared: _SharedRead) -> None:
        with self._changed:
            if reader in shared.readers:
                shared.readers.remove(reader)
            self._settle(shared)

    @staticmethod
    def _advance(reader: _Reader, chunk: bytes) -> None:
        reader.next += 1
        reader.offset += len(chunk)

    def _bound(self, shared: _SharedRead) -> None:
        """Keep ``shared`` within the window, then all reads within the limit: the oldest stop
        waiting for destinations that have not asked first."""
        while shared.kept > self.window and shared.shed():
            self._kept -= shared.trim()
        for other in list(self._reads.values()):
            if self._kept <= self.limit:
                break
            if other.expected:
                other.expected = set()
                self._settle(other)

    def _settle(self, shared: _SharedRead) -> None:
        """Free what ``shared`` no longer needs; forget it (and end its source read, which
        nobody may have finished) once nobody reads or awaits it."""
        self._kept -= shared.trim()
        if shared.finished:
            if self._reads.get(shared.digest) is shared:
                del self._reads[shared.digest]
            shared.source.close()


class Stream(Iterator[bytes]):
    """One destination's chunks of a blob; :meth:`close` leaves its shared read at once (even
    before the first chunk), as a copy that failed must."""

    def __init__(self, chunks: Generator[bytes, None, None], release: Callable[[], None]):
        self._chunks = chunks
        self._release = release

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()
        self._release()


def _delegating(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks`` as a generator, whose ``close`` ends the read under it."""
    yield from chunks
