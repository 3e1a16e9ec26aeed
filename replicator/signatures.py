"""Cosign signatures: the public keys a policy trusts, and whether the source signed a digest.

Cosign signs an image ``sha256:<hex>`` with a manifest tagged ``sha256-<hex>.sig`` in the
image's repository: each layer of media type ``application/vnd.dev.cosign.simplesigning.v1+json``
is a simple-signing JSON payload whose ``critical.image.docker-manifest-digest`` names the
digest, signed by the base64 signature in the layer's ``dev.cosignproject.cosign/signature``
annotation: ECDSA (P-256, SHA-256) or RSA (PKCS#1 v1.5, SHA-256) over the payload's SHA-256,
Ed25519 over the payload itself. Verification is by :mod:`cryptography`, imported when first
needed: a configuration that trusts no key never loads it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from drivers.errors import ConfigError
from replicator.errors import TAG_ERRORS, ReplicationError, Unsigned
from replicator.manifests import Descriptor, Manifest

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
MAX_PAYLOAD = 64 * 1024
"""Payloads larger than this are not read (cosign's are a few hundred bytes)."""

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def signature_tag(digest: str) -> str:
    """The tag cosign gives the signature of ``digest``."""
    return digest.replace(":", "-") + ".sig"


def load_keys(entries: object, field: str, base: Path = Path(".")) -> tuple[PublicKey, ...]:
    """Public keys from a non-empty list of PEM texts or paths of PEM files (relative to
    ``base``). Raises ``ConfigError`` naming the entry that is not a usable key."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(field, "must be a non-empty list of PEM public keys or PEM file paths")
    return tuple(_load_key(entry, f"{field}[{position}]", base)
                 for position, entry in enumerate(entries))


def _load_key(entry: object, field: str, base: Path) -> PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(field, "must be a PEM public key or the path of one")
    if "-----BEGIN" in entry:
        pem = entry.encode()
    else:
        try:
            pem = (base / entry).read_bytes()
        except OSError:
            raise ConfigError(field, "names a file that cannot be read") from None
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise ConfigError(field, "is not a PEM public key") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(field, "is an elliptic-curve key not on P-256")
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey,
                            ed25519.Ed25519PublicKey)):
        raise ConfigError(field, "must be an ECDSA P-256, RSA or Ed25519 public key")
    return key


def signed_layers(manifest: Manifest) -> list[tuple[Descriptor, bytes]]:
    """The simple-signing layers of a signature manifest, each with its decoded signature."""
    layers = []
    for blob in manifest.blobs:
        encoded = blob.annotation(SIGNATURE_ANNOTATION)
        if blob.media_type != SIMPLE_SIGNING or encoded is None:
            continue
        try:
            layers.append((blob, base64.b64decode(encoded, validate=True)))
        except binascii.Error:
            continue
    return layers


def names_digest(payload: bytes, digest: str) -> bool:
    """Whether a simple-signing payload is about ``digest``."""
    try:
        document = json.loads(payload)
        return document["critical"]["image"]["docker-manifest-digest"] == digest
    except (ValueError, KeyError, TypeError):
        return False


def verifies(key: PublicKey, signature: bytes, payload: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


def require_signature(source, name: str, digest: str, keys: Sequence[PublicKey]) -> None:
    """Check that ``source`` (a pass's source reader) holds a signature of ``digest`` in
    repository ``name`` that verifies against one of ``keys``: reads the signature manifest
    (once per pass) and its payloads. Raises ``Unsigned`` saying why not."""
    tag = signature_tag(digest)
    signature_digest = source.snapshot.tag_digest(name, tag)
    if signature_digest is None:
        raise Unsigned(f"no signature {name}:{tag} at the source")
    try:
        manifest = source.manifest(name, signature_digest)
        layers = signed_layers(manifest)
        for blob, signature in layers:
            payload = _payload(source.endpoint, name, blob)
            if payload is not None and names_digest(payload, digest) and any(
                    verifies(key, signature, payload) for key in keys):
                return
    except TAG_ERRORS as error:
        raise Unsigned(f"signature {name}:{tag} cannot be read: {error}") from None
    reason = "verifies against no configured key" if layers else "holds no simple-signing layer"
    raise Unsigned(f"signature {name}:{tag} ({signature_digest}) {reason}")


def _payload(endpoint, name: str, blob: Descriptor) -> bytes | None:
    """The payload's bytes if they fit ``MAX_PAYLOAD`` and hash to the layer's digest."""
    if blob.size > MAX_PAYLOAD:
        return None
    data = b""
    for chunk in endpoint.blob_open(name, blob.digest):
        data += chunk
        if len(data) > MAX_PAYLOAD:
            return None
    if "sha256:" + hashlib.sha256(data).hexdigest() != blob.digest:
        raise ReplicationError(f"payload {blob.digest} does not hash to its digest")
    return data
