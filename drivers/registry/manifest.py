"""Manifests and indexes: HEAD, GET (digest-checked), PUT and DELETE by reference."""

from __future__ import annotations

import hashlib
from contextlib import closing
from dataclasses import dataclass

from drivers.errors import StorageError, TransientError
from drivers.registry.client import Session
from drivers.registry.tag import pull_scope
from drivers.retry import retrying

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
)
ACCEPT = ", ".join(MANIFEST_TYPES)
"""Sent with every manifest GET and HEAD: Distribution 2.8 answers 404 for an OCI manifest
unless the OCI types are accepted."""
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class ManifestInfo:
    """A manifest as a HEAD describes it."""

    digest: str
    media_type: str
    size: int


def push_scope(repository: str) -> tuple[str, ...]:
    return (f"repository:{repository}:pull,push",)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(reference: str) -> bool:
    return ":" in reference


class Manifests(Session):
    """Manifest requests: ``head`` for HEAD, ``get`` for GET, ``put`` for PUT, ``delete``."""

    def _manifest_url(self, repository: str, reference: str) -> str:
        return self.endpoint(f"/v2/{repository}/manifests/{reference}")

    def manifest_head(self, repository: str, reference: str) -> ManifestInfo | None:
        """The digest, media type and size of the manifest ``reference`` (a tag or a digest)
        names, or ``None`` when there is none (or no such repository).

        Raises ``AccessDenied``, or ``TransientError`` after retries (also when the answer
        lacks ``Docker-Content-Digest``, ``Content-Type`` or ``Content-Length``).
        """
        url = self._manifest_url(repository, reference)
        response = self.call("HEAD", url, kind="head", scopes=pull_scope(repository),
                             headers={"Accept": ACCEPT}, statuses=(200, 404))
        if response.status_code == 404:
            return None
        digest = response.headers.get("Docker-Content-Digest")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        size = response.headers.get("Content-Length", "")
        if not digest or not media_type or not size.isdecimal():
            raise TransientError(f"{self.where('HEAD', url)}: the answer lacks the manifest's "
                                 "digest, media type or length")
        if is_digest(reference) and digest != reference:
            raise TransientError(f"{self.where('HEAD', url)}: answered for digest {digest}")
        return ManifestInfo(digest, media_type, int(size))

    def manifest_get(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """The manifest's exact bytes, media type and digest (the SHA-256 of those bytes).

        Raises ``NotFound``, ``AccessDenied``, or ``TransientError`` after retries, among them
        answers whose bytes do not hash to the digest asked for (or to the digest the registry
        announced) and manifests over 4 MiB.
        """
        url = self._manifest_url(repository, reference)
        where = self.where("GET", url)

        def get() -> tuple[bytes, str, str]:
            response = self.expect(self.send("GET", url, kind="get", scopes=pull_scope(repository),
                                              headers={"Accept": ACCEPT}, stream=True),
                                   (200,), where)
            with closing(response), self.translating(where):
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_MANIFEST_SIZE:
                        raise TransientError(f"{where}: a manifest over {MAX_MANIFEST_SIZE} bytes")
            digest = sha256_digest(bytes(data))
            announced = response.headers.get("Docker-Content-Digest", digest)
            if digest != (reference if is_digest(reference) else announced):
                raise TransientError(f"{where}: the bytes served hash to {digest}")
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            return bytes(data), media_type, digest

        return retrying(get)

    def manifest_put(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """Store ``data`` as the manifest ``reference`` (a tag, or the digest of ``data``);
        return its digest. Children and blobs must be there first (else ``StorageError`` with
        the registry's ``MANIFEST_BLOB_UNKNOWN``).

        Raises ``ValueError`` before any request for a digest reference that ``data`` does not
        hash to; ``AccessDenied``; ``Unsupported`` when the registry is read-only;
        ``StorageError`` when the registry refuses the manifest (its code in the message);
        ``TransientError`` after retries.
        """
        digest = sha256_digest(data)
        if is_digest(reference) and reference != digest:
            raise ValueError(f"manifest bytes hash to {digest}, not {reference}")
        url = self._manifest_url(repository, reference)
        response = self.call("PUT", url, kind="put", scopes=push_scope(repository),
                             headers={"Content-Type": media_type}, content=data, statuses=(201,))
        announced = response.headers.get("Docker-Content-Digest", digest)
        if announced != digest:
            raise StorageError(f"{self.where('PUT', url)}: the registry stored {announced}, "
                               f"not {digest}")
        return digest

    def manifest_delete(self, repository: str, digest: str) -> None:
        """Delete the manifest ``digest`` and, in Distribution, every tag on it.

        Raises ``NotFound``; ``Unsupported`` when the registry has deletes disabled (405);
        ``AccessDenied``; ``TransientError`` after retries.
        """
        url = self._manifest_url(repository, digest)
        self.call("DELETE", url, kind="delete", scopes=push_scope(repository), statuses=(202,))
