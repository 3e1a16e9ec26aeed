"""Copying blobs and manifests into a destination: verified, each digest once per pass.

A blob is streamed through the replicator and hashed on the way, or, when the destination's
storage can copy it from the source's itself (:class:`~drivers.base.ServerSideCopy`) and the
run allows it, copied server-side: then its size is checked before the copy, and its digest
only by ``replicator verify --deep``. Manifests are written from the bytes already read and
checked.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from drivers.base import ServerSideCopy, StorageDriver
from drivers.errors import AccessDenied, NotFound
from replicator import layout
from replicator.manifests import Descriptor, Manifest
from replicator.report import PassReport

log = logging.getLogger(__name__)


class ReplicationError(Exception):
    """Content at the source cannot be replicated as it is (missing or corrupt)."""


class BlobCopier:
    """Copies blobs and manifests into one destination, each digest at most once.

    ``ensure`` returns a future shared by every tag that needs the same digest; it fails with
    ``ReplicationError`` when the source bytes are missing or do not match the digest (or, for
    a server-side copy, its size), in which case nothing was made visible at the destination.

    With ``server_side_copy``, blobs of known size are copied server-side where the
    destination can copy from the source; the first ``AccessDenied`` from such a copy turns
    it off for the rest of the copier's pass (that blob and every later one stream).
    """

    def __init__(self, source: StorageDriver, destination: StorageDriver,
                 pool: ThreadPoolExecutor, report: PassReport, dry_run: bool,
                 server_side_copy: bool = True):
        self.source = source
        self.destination = destination
        self.pool = pool
        self.report = report
        self.dry_run = dry_run
        self._lock = threading.Lock()
        self._futures: dict[str, Future] = {}
        self._server_side = (server_side_copy and isinstance(destination, ServerSideCopy)
                             and destination.can_copy_from(source))

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
        if self._server_side and blob.size >= 0 and self._copy_server_side(blob, key):
            return
        hasher = hashlib.sha256()
        with self.destination.writer(key) as writer:
            try:
                for chunk in self.source.open(key):
                    hasher.update(chunk)
                    writer.write(chunk)
            except NotFound:
                raise _missing(blob) from None
            actual = "sha256:" + hasher.hexdigest()
            if actual != blob.digest:
                raise ReplicationError(f"blob {blob.digest} is corrupt at the source: "
                                       f"its bytes hash to {actual}")
            if 0 <= blob.size != writer.size:
                raise _wrong_size(blob, writer.size)
            writer.commit()
        self.report.count("blobs_copied")
        self.report.count("bytes_copied", writer.size)

    def _copy_server_side(self, blob: Descriptor, key: str) -> bool:
        """Copy ``blob`` storage to storage once its size at the source is the manifest's.
        False (nothing copied) when the destination may not read the source: stream it."""
        try:
            size = self.source.stat(key).size
        except NotFound:
            raise _missing(blob) from None
        if size != blob.size:
            raise _wrong_size(blob, size)
        try:
            self.destination.copy_from(self.source, key, size)
        except NotFound:
            raise _missing(blob) from None
        except AccessDenied as error:
            with self._lock:
                first, self._server_side = self._server_side, False
            if first:
                log.warning("server-side copy to %s refused (%s); streaming blobs through the "
                            "replicator instead for the rest of this pass",
                            self.destination.describe(), error)
            return False
        self.report.count("blobs_copied")
        self.report.count("server_side_copies")
        self.report.count("server_side_bytes", size)
        return True

    def _write_manifest(self, manifest: Manifest) -> None:
        self.destination.write(layout.blob_key(manifest.digest), manifest.data)
        self.report.count("manifests_copied")
        self.report.count("bytes_copied", len(manifest.data))


def _missing(blob: Descriptor) -> ReplicationError:
    return ReplicationError(f"blob {blob.digest} is missing at the source")


def _wrong_size(blob: Descriptor, size: int) -> ReplicationError:
    return ReplicationError(f"blob {blob.digest} is {size} bytes at the source, "
                            f"the manifest says {blob.size}")
