"""Copying blobs and manifests into a destination: verified, each digest once per pass."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from drivers.base import StorageDriver
from drivers.errors import NotFound
from replicator import layout
from replicator.manifests import Descriptor, Manifest
from replicator.report import PassReport


class ReplicationError(Exception):
    """Content at the source cannot be replicated as it is (missing or corrupt)."""


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
