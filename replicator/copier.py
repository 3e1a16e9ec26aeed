"""Copying blobs and manifests into a destination: verified, each digest once per pass.

A blob is streamed through the replicator and hashed on the way, or copied by the destination
from the source itself (:meth:`~replicator.endpoints.base.Destination.copy_ability`) as the run's
``server_side_copy`` mode allows:

- ``verified``: only where the provider's answer carries the SHA-256 of the bytes it stored;
  it is compared with the digest before any step refers to the blob, and a copy that differs
  is deleted and fails its tags as a corrupt blob;
- ``trusted``: any server-side copy, checked by size only (``verify --deep`` re-hashes);
- ``off``: stream everything.

A streamed blob whose bytes do not match its digest or size is read again from the source (a
body cut short without a length reads back short with no error) before it is declared corrupt.
Manifests are written from the bytes already read and checked. A streamed blob's bytes come
from the source through a :class:`~replicator.tee.SourceTee`, which the destinations of a pass
share so that a blob several of them lack is read from the source once; each destination
hashes what it writes.

A copier may pace what it streams (a :class:`~replicator.throttle.TokenBucket` shared by
every copy into the destination; server-side copies are not paced) and spend an egress budget
(:class:`~replicator.budget.EgressBudget`: every blob and manifest counts). A tag's new blobs
are admitted together, while the budget has room, and then all copied, so that a spent budget
never leaves a tag half copied; once it is spent, ``ensure_blobs`` raises ``BudgetExhausted``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from drivers.errors import AccessDenied, NotFound
from drivers.retry import pause
from replicator.budget import EgressBudget
from replicator.endpoints.base import Destination, Endpoint
from replicator.errors import ReplicationError
from replicator.gate import Copy, Gate
from replicator.manifests import Descriptor, Manifest
from replicator.report import PassReport
from replicator.tee import SourceTee
from replicator.throttle import TokenBucket

log = logging.getLogger(__name__)

SERVER_SIDE_MODES = ("verified", "trusted", "off")
SOURCE_READS = 3
"""Reads of a blob from the source before its bytes are declared corrupt."""


class _Mismatch(ReplicationError):
    """The bytes read do not match the digest or the size: perhaps a read cut short."""


class BlobCopier:
    """Copies blobs and manifests into one destination, each digest at most once.

    ``ensure`` returns a future of the bytes this call had copied (the blob's or manifest's
    size for the first tag that needs a digest, 0 for the others, which wait for the same
    copy; ``None`` in a dry run); it fails with ``ReplicationError`` when the source bytes are
    missing or do not match the digest (or, for a trusted server-side copy, its size), in which
    case nothing was made visible at the destination. ``server_side`` is one of ``SERVER_SIDE_MODES``; the first ``AccessDenied``
    from a server-side copy (or a hashed copy whose answer carried no hash) turns server-side
    copies off for the rest of the copier's pass (that blob and every later one stream).
    Streamed blobs are read through ``tee`` (shared with the other destinations of the pass,
    as ``reader``; without one, a tee of this copier's own).
    """

    def __init__(self, source: Endpoint, destination: Destination, pool: ThreadPoolExecutor,
                 report: PassReport, gate: Gate, server_side: str = "verified",
                 throttle: TokenBucket | None = None, budget: EgressBudget | None = None,
                 tee: SourceTee | None = None, reader: str = ""):
        if server_side not in SERVER_SIDE_MODES:
            raise ValueError(f"server_side must be one of {SERVER_SIDE_MODES}")
        self.source = source
        self.destination = destination
        self.pool = pool
        self.report = report
        self.gate = gate
        self._lock = threading.RLock()
        self._futures: dict[str, Future] = {}
        ability = destination.copy_ability(source)
        capable = ability == "hashed" if server_side == "verified" else bool(ability)
        self._server_side = server_side if capable else "off"
        self.throttle = throttle
        self.budget = budget
        self.tee = tee if tee is not None else SourceTee(source)
        self.reader = reader or destination.name

    def ensure_blobs(self, name: str, blobs: list[Descriptor]) -> list[Future]:
        """One future per blob; those not yet copied or copying in this pass are admitted
        against the budget together. Raises ``BudgetExhausted`` (nothing started) if it is spent."""
        with self._lock:
            fresh = {blob.digest: blob for blob in blobs if blob.digest not in self._futures}
            if fresh and self.budget is not None:
                self.budget.reserve(sum(max(blob.size, 0) for blob in fresh.values()))
            return [self._ensure(Copy(name, blob.digest, blob.size, self.route(blob)),
                                 lambda blob=blob: self._copy_blob(name, blob))
                    for blob in blobs]

    def ensure_manifest(self, name: str, manifest: Manifest) -> Future:
        return self._ensure(Copy(name, manifest.digest, len(manifest.data), "manifest"),
                            lambda: self._write_manifest(name, manifest))

    def _ensure(self, step: Copy, copy) -> Future:
        with self._lock:   # reentrant: ensure_blobs holds it
            if step.digest not in self._futures:
                if self.gate.allows(step):
                    self._futures[step.digest] = self.pool.submit(copy)
                else:
                    self._futures[step.digest] = Future()
                    self._futures[step.digest].set_result(None)
                return self._futures[step.digest]
            return _shared(self._futures[step.digest])

    def streams(self, blob: Descriptor) -> bool:
        """Whether the copier may yet stream ``blob`` in this pass: it has not copied it (or is
        about to), and would not copy it server-side. Takes no lock."""
        copy = self._futures.get(blob.digest)
        return (copy is None or not copy.done()) and self.route(blob) == "stream"

    def route(self, blob: Descriptor) -> str:
        """How ``blob`` is to be copied: server-side ``hashed`` or ``plain``, or ``stream``
        (also what a refused server-side copy falls back to)."""
        mode = self._server_side
        if mode == "verified" and blob.size >= 0 and self.destination.hashes_copy(blob.size):
            return "hashed"
        if mode == "trusted" and blob.size >= 0:
            return "plain"
        return "stream"

    def _copy_blob(self, name: str, blob: Descriptor) -> int:
        """Copy a blob ``ensure_blobs`` admitted; its size. The budget gets back what a failure
        did not use."""
        reserved = max(blob.size, 0)
        try:
            copied = self._transfer(name, blob)
        except BaseException:
            if self.budget is not None:
                self.budget.add(-reserved)
            raise
        if self.budget is not None:
            self.budget.add(copied - reserved)
        return copied

    def _transfer(self, name: str, blob: Descriptor) -> int:
        """Copy one blob server-side or streamed; its size."""
        route = self.route(blob)
        if route != "stream" and self._copy_server_side(name, blob, hashed=route == "hashed"):
            return blob.size
        for reads in range(1, SOURCE_READS + 1):
            try:
                size = self._stream(name, blob)
                break
            except _Mismatch as error:
                if reads == SOURCE_READS:
                    raise
                log.info("%s; reading it again from the source", error)
                pause(reads)
        self.report.count("blobs_copied")
        self.report.count("bytes_copied", size)
        return size

    def _stream(self, name: str, blob: Descriptor) -> int:
        """Stream and hash one blob; its size. Raises ``_Mismatch`` with nothing committed."""
        hasher = hashlib.sha256()
        size = 0

        def check() -> None:
            actual = "sha256:" + hasher.hexdigest()
            if actual != blob.digest:
                raise _corrupt(blob, actual)
            if 0 <= blob.size != size:
                raise _wrong_size(blob, size)

        source = self.tee.open(self.reader, name, blob, self.report)

        def chunks() -> Iterator[bytes]:
            """The source's bytes, checked before the last one is handed on (a destination may
            finish the upload as soon as it has ``blob.size`` bytes)."""
            nonlocal size
            try:
                for chunk in source:
                    hasher.update(chunk)
                    size += len(chunk)
                    if 0 <= blob.size <= size:
                        check()
                    if self.throttle is not None and self.throttle.take(len(chunk)):
                        self.report.count("bandwidth_waits")
                    yield chunk
            except NotFound:
                raise _missing(blob) from None
            check()

        try:
            self.destination.blob_write(name, blob.digest, blob.size, chunks())
        finally:
            source.close()   # a failed write leaves the shared read at once
        return size

    def _copy_server_side(self, name: str, blob: Descriptor, hashed: bool) -> bool:
        """Copy ``blob`` server-side once its size at the source is the manifest's; ``hashed``:
        and keep it only if the provider's SHA-256 is the digest. False (nothing copied) when
        the copy cannot be had or proven: the caller streams it."""
        try:
            size = self.source.blob_size(name, blob.digest)
        except NotFound:
            raise _missing(blob) from None
        if size != blob.size:
            raise _wrong_size(blob, size)
        try:
            sha256 = self.destination.blob_copy_from(self.source, name, blob.digest, size, hashed)
        except NotFound:
            raise _missing(blob) from None
        except AccessDenied as error:
            self._stop_server_side(f"refused ({error})")
            return False
        if hashed and sha256 is None:
            self.destination.blob_delete(name, blob.digest)
            self._stop_server_side("answered without the SHA-256 of the copy")
            return False
        if hashed and "sha256:" + sha256 != blob.digest:
            self.destination.blob_delete(name, blob.digest)
            raise _corrupt(blob, "sha256:" + sha256)
        self.report.count("blobs_copied")
        self.report.count("server_side_copies")
        self.report.count("server_side_verified" if hashed else "server_side_trusted")
        self.report.count("server_side_bytes", size)
        return True

    def _stop_server_side(self, reason: str) -> None:
        with self._lock:
            first, self._server_side = self._server_side != "off", "off"
        if first:
            log.warning("server-side copy to %s %s; streaming blobs through the replicator "
                        "instead for the rest of this pass", self.destination.describe(), reason)

    def _write_manifest(self, name: str, manifest: Manifest) -> int:
        self.destination.manifest_write(name, manifest)
        if self.budget is not None:
            self.budget.add(len(manifest.data))
        self.report.count("manifests_copied")
        self.report.count("bytes_copied", len(manifest.data))
        return len(manifest.data)


def _shared(copy: Future) -> Future:
    """A future that ends as ``copy`` does, having copied nothing itself."""
    shared: Future = Future()
    copy.add_done_callback(lambda done: shared.set_exception(done.exception())
                           if done.exception() else shared.set_result(0))
    return shared


def _missing(blob: Descriptor) -> ReplicationError:
    return ReplicationError(f"blob {blob.digest} is missing at the source")


def _corrupt(blob: Descriptor, actual: str) -> _Mismatch:
    return _Mismatch(f"blob {blob.digest} is corrupt at the source: its bytes hash to {actual}")


def _wrong_size(blob: Descriptor, size: int) -> _Mismatch:
    return _Mismatch(f"blob {blob.digest} is {size} bytes at the source, "
                     f"the manifest says {blob.size}")
