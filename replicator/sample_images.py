"""Small, real container images built in memory: gzip'd tar layers, configs, manifests, indexes.

Deterministic: the same arguments always give the same digests. Used by ``replicator demo``
and by the tests (which also write them as OCI layouts for skopeo).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data), **extra}


@dataclass(frozen=True)
class Image:
    """A manifest (or index) with the blobs it references and, for an index, its children."""

    manifest: Blob
    blobs: tuple[Blob, ...] = ()
    children: tuple[Image, ...] = field(default=())

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def all_blobs(self) -> Iterator[Blob]:
        """Every blob, manifests included, each before anything that references it."""
        for child in self.children:
            yield from child.all_blobs()
        yield from self.blobs
        yield self.manifest


def _json(value: dict) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


def _diff_id(layer: Blob) -> str:
    return "sha256:" + hashlib.sha256(gzip.decompress(layer.data)).hexdigest()


def layer(files: dict[str, bytes], *, oci: bool = True) -> Blob:
    """A gzip'd tar layer holding ``files`` (path -> content), reproducible byte for byte."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, content in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    data = gzip.compress(tar_bytes.getvalue(), mtime=0)
    return Blob(OCI_LAYER if oci else DOCKER_LAYER, data)


def image(layers: list[Blob], *, architecture: str = "amd64", os: str = "linux",
          oci: bool = True, labels: dict[str, str] | None = None) -> Image:
    """A single-platform image of ``layers`` (their media types should match ``oci``)."""
    config = Blob(OCI_CONFIG if oci else DOCKER_CONFIG, _json({
        "architecture": architecture,
        "os": os,
        "config": {"Labels": labels or {}},
        "rootfs": {"type": "layers", "diff_ids": [_diff_id(blob) for blob in layers]},
    }))
    manifest = Blob(OCI_MANIFEST if oci else DOCKER_MANIFEST, _json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": config.descriptor(),
        "layers": [blob.descriptor() for blob in layers],
    }))
    return Image(manifest, (config, *layers))


def index(children: list[Image], *, oci: bool = True) -> Image:
    """A multi-platform index (OCI) or manifest list (Docker) of ``children``."""
    entries = []
    for child in children:
        platform = json.loads(child.blobs[0].data)
        entries.append(child.manifest.descriptor(
            platform={"architecture": platform["architecture"], "os": platform["os"]}))
    media_type = OCI_INDEX if oci else DOCKER_LIST
    manifest = Blob(media_type, _json({"schemaVersion": 2, "mediaType": media_type,
                                        "manifests": entries}))
    return Image(manifest, (), tuple(children))
