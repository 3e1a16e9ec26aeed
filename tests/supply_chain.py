"""Signatures, attestations, SBOMs and OCI 1.1 referrers, written as cosign and oras write them,
pushed to a registry over its HTTP API (Distribution 2.8 has no referrers API: referrers are
found through the ``sha256-<hex>`` fallback index tag).

- ``sign``: cosign's signature: an OCI manifest tagged ``sha256-<hex>.sig`` whose layer is the
  simple-signing JSON payload (``application/vnd.dev.cosign.simplesigning.v1+json``) with the
  base64 signature in the ``dev.cosignproject.cosign/signature`` annotation (ECDSA P-256 over
  SHA-256, or Ed25519 / RSA PKCS#1 v1.5).
- ``attach``: cosign's ``.att`` (a DSSE envelope) and ``.sbom`` tags.
- ``refer``: an oras / cosign v3 referrer: a manifest with ``subject`` and ``artifactType`` and
  the empty config, pushed by digest, and the fallback index tag listing every referrer.
- ``primary_registry``: the source registry the end-to-end tests push to.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from tests import registry as reg

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
DSSE = "application/vnd.dsse.envelope.v1+json"
SPDX = "application/spdx+json"
ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json"])


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hex_of(digest: str) -> str:
    return digest.split(":", 1)[1]


def public_pem(private_key) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def new_key(kind: str = "ecdsa"):
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ed25519.Ed25519PrivateKey.generate()


def sign_bytes(private_key, data: bytes) -> bytes:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return private_key.sign(data)


class Api:
    """Just enough of the registry API to push blobs and manifests."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.client = httpx.Client(timeout=30)

    def blob(self, repository: str, data: bytes) -> dict:
        """Upload ``data`` (POST then PUT); its descriptor fields."""
        digest = digest_of(data)
        started = self.client.post(f"{self.url}/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        separator = "&" if "?" in location else "?"
        done = self.client.put(f"{location}{separator}digest={digest}", content=data,
                               headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
        return {"digest": digest, "size": len(data)}

    def manifest(self, repository: str, reference: str, document: dict) -> str:
        """PUT the manifest under ``reference`` (a tag, or its digest); its digest."""
        data = json.dumps(document, separators=(",", ":")).encode()
        digest = digest_of(data)
        response = self.client.put(f"{self.url}/v2/{repository}/manifests/{reference or digest}",
                                   content=data, headers={"Content-Type": document["mediaType"]})
        assert response.status_code == 201, response.text
        return digest

    def get(self, repository: str, reference: str) -> httpx.Response:
        return self.client.get(f"{self.url}/v2/{repository}/manifests/{reference}",
                               headers={"Accept": ACCEPT})

    def tags(self, repository: str) -> list[str]:
        response = self.client.get(f"{self.url}/v2/{repository}/tags/list")
        return [] if response.status_code == 404 else sorted(response.json()["tags"] or [])

    def close(self) -> None:
        self.client.close()


def _artifact_manifest(api: Api, repository: str, layer: bytes, layer_type: str,
                       annotations: dict | None = None, config: bytes | None = None) -> dict:
    config = config if config is not None else json.dumps({
        "architecture": "", "os": "", "config": {}, "created": "0001-01-01T00:00:00Z",
        "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]}}).encode()
    layer_descriptor = {"mediaType": layer_type, **api.blob(repository, layer)}
    if annotations:
        layer_descriptor["annotations"] = annotations
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **api.blob(repository, config)},
            "layers": [layer_descriptor]}


def simple_signing_payload(host: str, repository: str, digest: str) -> bytes:
    return json.dumps({"critical": {"identity": {"docker-reference": f"{host}/{repository}"},
                                    "image": {"docker-manifest-digest": digest},
                                    "type": "cosign container image signature"},
                       "optional": None}).encode()


def sign(api: Api, repository: str, digest: str, private_key, *, payload_digest: str | None = None) -> str:
    """Sign ``digest`` as cosign does; the signature manifest's digest. ``payload_digest``
    writes another digest into the payload (a signature that names the wrong image)."""
    host = api.url.split("://", 1)[1]
    payload = simple_signing_payload(host, repository, payload_digest or digest)
    signature = base64.b64encode(sign_bytes(private_key, payload)).decode()
    document = _artifact_manifest(api, repository, payload, SIMPLE_SIGNING,
                                  {SIGNATURE_ANNOTATION: signature})
    return api.manifest(repository, f"sha256-{hex_of(digest)}.sig", document)


def attach(api: Api, repository: str, digest: str, suffix: str, private_key=None) -> str:
    """cosign's ``.att`` (a DSSE envelope of an in-toto statement) or ``.sbom`` tag."""
    if suffix == "att":
        statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1",
                                "subject": [{"digest": {"sha256": hex_of(digest)}}],
                                "predicateType": "https://slsa.dev/provenance/v0.2",
                                "predicate": {}}).encode()
        kind = b"application/vnd.in-toto+json"
        pae = b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(statement), statement)
        envelope = json.dumps({"payloadType": kind.decode(),
                               "payload": base64.b64encode(statement).decode(),
                               "signatures": [{"sig": base64.b64encode(
                                   sign_bytes(private_key or new_key(), pae)).decode()}]}).encode()
        document = _artifact_manifest(api, repository, envelope, DSSE,
                                      {"predicateType": "https://slsa.dev/provenance/v0.2"})
    else:
        sbom = json.dumps({"spdxVersion": "SPDX-2.3", "name": digest}).encode()
        document = _artifact_manifest(api, repository, sbom, SPDX)
    return api.manifest(repository, f"sha256-{hex_of(digest)}.{suffix}", document)


def refer(api: Api, repository: str, subject: dict, artifact_type: str, content: bytes,
          existing: list[dict] | None = None) -> tuple[str, list[dict]]:
    """An OCI 1.1 referrer of ``subject`` (a descriptor: mediaType, digest, size) pushed by
    digest, and the fallback tag ``sha256-<hex>`` rewritten to list it after ``existing``;
    the referrer's digest and the fallback index's entries."""
    empty = api.blob(repository, b"{}")
    document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
                "config": {"mediaType": OCI_EMPTY, **empty},
                "layers": [{"mediaType": artifact_type, **api.blob(repository, content)}],
                "subject": subject,
                "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}}
    data = json.dumps(document, separators=(",", ":")).encode()
    digest = api.manifest(repository, "", document)
    entries = [*(existing or []), {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(data),
                                   "artifactType": artifact_type}]
    api.manifest(repository, f"sha256-{hex_of(subject['digest'])}",
                 {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    return digest, entries


def descriptor(api: Api, repository: str, reference: str) -> dict:
    """The descriptor of the manifest ``reference`` names."""
    response = api.get(repository, reference)
    assert response.status_code == 200, response.text
    return {"mediaType": response.headers["Content-Type"].split(";")[0],
            "digest": digest_of(response.content), "size": len(response.content)}


@contextmanager
def primary_registry(tmp: Path) -> Iterator[tuple[dict, dict, list, Api]]:
    """Registry A (Debian's docker-registry) on the filesystem storage ``tmp/primary``, the
    storage of a ``tmp/local`` region, the list of services to stop (A first; a test appends
    the ones it starts) and a client of A. Every service in the list is stopped at the end."""
    primary = reg.filesystem_storage(tmp / "primary")
    services = [reg.start_registry(primary, tmp / "logs")]
    api = Api(services[0].url)
    try:
        yield primary, reg.filesystem_storage(tmp / "local"), services, api
    finally:
        api.close()
        for service in services:
            service.stop()
