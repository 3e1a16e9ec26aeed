"""Parse image manifests into the blobs and child manifests they reference. Pure: no I/O.

Understood: OCI image manifests and indexes, Docker schema 2 manifests and manifest lists,
and Docker schema 1 (signed or not). Artifacts (any config media type, ``artifactType``)
are OCI manifests like any other. Anything else raises ``ManifestError``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from replicator.layout import LayoutError, check_digest

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
"""Distribution's own limit on a manifest's size."""

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})


class ManifestError(ValueError):
    """A manifest that is not JSON, too large, of an unknown media type, or malformed."""


@dataclass(frozen=True)
class Descriptor:
    """A reference to content by digest. ``urls`` non-empty marks a foreign layer."""

    digest: str
    size: int
    media_type: str = ""
    urls: tuple[str, ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    """The descriptor's ``annotations`` as sorted (key, value) pairs."""

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: ``blobs`` are its config and layers, ``children`` its manifests."""

    digest: str
    media_type: str
    data: bytes
    blobs: tuple[Descriptor, ...] = ()
    children: tuple[Descriptor, ...] = ()
    subject: str | None = None
    """The digest in the manifest's ``subject`` (OCI 1.1: the manifest it is an artifact of)."""
    artifact_type: str = ""
    """``artifactType``, else (an image manifest) its config's media type, as the OCI
    distribution spec reports an artifact's type; ``""`` for an index without one."""


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_manifest(data: bytes, digest: str) -> Manifest:
    """Parse manifest bytes that must hash to ``digest``.

    Raises ``ManifestError`` when the bytes do not match the digest, exceed 4 MiB, are not a
    JSON object, have an unknown media type, or reference content with a malformed descriptor.
    """
    if len(data) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"manifest {digest} is {len(data)} bytes, over the 4 MiB limit")
    actual = digest_of(data)
    if actual != digest:
        raise ManifestError(f"manifest {digest}: content hashes to {actual}")
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"manifest {digest} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ManifestError(f"manifest {digest} is not a JSON object")
    try:
        return _parse(document, data, digest)
    except (KeyError, TypeError, LayoutError, ValueError) as error:
        if isinstance(error, ManifestError):
            raise
        raise ManifestError(f"manifest {digest} is malformed: {_describe(error)}") from None


def _describe(error: Exception) -> str:
    return f"missing field {error}" if isinstance(error, KeyError) else str(error)


def _parse(document: dict, data: bytes, digest: str) -> Manifest:
    media_type = _media_type(document, digest)
    if media_type in INDEX_TYPES:
        children = tuple(_descriptor(entry) for entry in _list(document, "manifests"))
        return Manifest(digest, media_type, data, children=children,
                        subject=_subject(document), artifact_type=_artifact_type(document, ""))
    if media_type in IMAGE_TYPES:
        blobs = (_descriptor(document["config"]),
                 *(_descriptor(entry) for entry in _list(document, "layers")))
        return Manifest(digest, media_type, data, blobs=blobs, subject=_subject(document),
                        artifact_type=_artifact_type(document, blobs[0].media_type))
    layers = {check_digest(layer["blobSum"]) for layer in _list(document, "fsLayers")}
    blobs = tuple(Descriptor(layer, -1) for layer in sorted(layers))
    return Manifest(digest, media_type, data, blobs=blobs)


def _media_type(document: dict, digest: str) -> str:
    version = document.get("schemaVersion")
    if version == 1:
        return DOCKER_SCHEMA1_SIGNED if "signatures" in document else DOCKER_SCHEMA1
    if version != 2:
        raise ManifestError(f"manifest {digest} has unsupported schemaVersion {version!r}")
    media_type = document.get("mediaType")
    if media_type is None:
        media_type = OCI_INDEX if "manifests" in document else OCI_MANIFEST
    if media_type not in IMAGE_TYPES | INDEX_TYPES:
        raise ManifestError(f"manifest {digest} has unknown media type {media_type!r}")
    return media_type


def _subject(document: dict) -> str | None:
    subject = document.get("subject")
    return None if subject is None else _descriptor(subject).digest


def _artifact_type(document: dict, config_media_type: str) -> str:
    artifact_type = document.get("artifactType")
    return artifact_type if isinstance(artifact_type, str) and artifact_type else config_media_type


def _list(document: dict, field: str) -> list:
    value = document.get(field, [])
    if not isinstance(value, list):
        raise ManifestError(f"field {field!r} is not a list")
    return value


def _descriptor(entry: object) -> Descriptor:
    if not isinstance(entry, dict):
        raise ManifestError("descriptor is not a JSON object")
    size = entry["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"descriptor {entry.get('digest')!r} has invalid size {size!r}")
    urls = entry.get("urls") or ()
    if not isinstance(urls, list | tuple) or not all(isinstance(url, str) for url in urls):
        raise ManifestError(f"descriptor {entry.get('digest')!r} has invalid urls")
    annotations = entry.get("annotations")
    annotations = {key: value for key, value in annotations.items() if isinstance(value, str)} \
        if isinstance(annotations, dict) else {}
    return Descriptor(check_digest(entry["digest"]), size, str(entry.get("mediaType", "")),
                      tuple(urls), tuple(sorted(annotations.items())))
