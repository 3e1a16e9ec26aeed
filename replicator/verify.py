"""Check that a destination serves what its source serves: tags, manifests, links, blobs.

Reads only; reports drift precisely. ``deep`` re-hashes every referenced blob; otherwise
blobs are checked for presence and size from the destination's listing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from drivers.base import StorageDriver
from drivers.errors import NotFound
from replicator import layout
from replicator.config import Config, Policy
from replicator.filters import policy_selects
from replicator.flavours import resolve_flavours
from replicator.inventory import Inventory
from replicator.manifests import ManifestError, parse_manifest
from replicator.planner import is_foreign


@dataclass(frozen=True)
class Drift:
    """One way a destination differs from its source.

    ``kind`` is one of ``missing-tag``, ``tag-mismatch``, ``bad-link``, ``missing-manifest``,
    ``bad-manifest``, ``missing-link``, ``missing-blob``, ``wrong-size``, ``wrong-digest``, and
    ``missing-tag-index`` (the tag's index link: pulls still work, its history is incomplete).
    """

    repository: str
    tag: str
    kind: str
    detail: str


@dataclass
class VerifyResult:
    policy: str = ""
    source: str = ""
    destination: str = ""
    tags_checked: int = 0
    manifests_checked: int = 0
    blobs_checked: int = 0
    bytes_hashed: int = 0
    drift: list[Drift] = field(default_factory=list)


def verify(source: StorageDriver, destination: StorageDriver, tags: list[tuple[str, str]],
           deep: bool = False) -> VerifyResult:
    """Verify ``tags`` (repository, tag) of ``source`` at ``destination``.

    Raises ``StorageError`` only if a region cannot be listed or read at all.
    """
    inventory = Inventory().add(destination.list(layout.REPOSITORIES_PREFIX))
    inventory.add(destination.list(layout.BLOBS_PREFIX))
    checker = _Checker(destination, inventory, deep)
    for name, tag in tags:
        checker.check_tag(source, name, tag)
    return checker.result


class _Checker:
    def __init__(self, destination: StorageDriver, inventory: Inventory, deep: bool):
        self.destination = destination
        self.inventory = inventory
        self.deep = deep
        self.result = VerifyResult()
        self._blobs_seen: set[str] = set()

    def check_tag(self, source: StorageDriver, name: str, tag: str) -> None:
        self.result.tags_checked += 1
        expected = layout.parse_link(source.read(layout.tag_current_key(name, tag)))
        if (name, tag) not in self.inventory.tags:
            self._drift(name, tag, "missing-tag", f"source has {expected}")
            return
        try:
            actual = layout.parse_link(self.destination.read(layout.tag_current_key(name, tag)))
        except (NotFound, layout.LayoutError) as error:
            self._drift(name, tag, "bad-link", str(error))
            return
        if actual != expected:
            self._drift(name, tag, "tag-mismatch", f"source {expected}, destination {actual}")
        if layout.tag_index_key(name, tag, actual) not in self.inventory.links:
            self._drift(name, tag, "missing-tag-index", f"tag index link for {actual}")
        self._check_manifest(name, tag, actual)

    def _check_manifest(self, name: str, tag: str, digest: str) -> None:
        self.result.manifests_checked += 1
        if layout.revision_link_key(name, digest) not in self.inventory.links:
            self._drift(name, tag, "missing-link", f"revision link for {digest}")
        try:
            manifest = parse_manifest(self.destination.read(layout.blob_key(digest)), digest)
        except NotFound:
            self._drift(name, tag, "missing-manifest", digest)
            return
        except ManifestError as error:
            self._drift(name, tag, "bad-manifest", str(error))
            return
        for child in manifest.children:
            self._check_manifest(name, tag, child.digest)
        for blob in manifest.blobs:
            if is_foreign(blob):
                continue
            if layout.layer_link_key(name, blob.digest) not in self.inventory.links:
                self._drift(name, tag, "missing-link", f"layer link for {blob.digest}")
            self._check_blob(name, tag, blob.digest, blob.size)

    def _check_blob(self, name: str, tag: str, digest: str, size: int) -> None:
        self.result.blobs_checked += 1
        if digest not in self.inventory.blobs:
            self._drift(name, tag, "missing-blob", digest)
            return
        if size >= 0 and self.inventory.blobs[digest] != size:
            self._drift(name, tag, "wrong-size",
                        f"{digest}: {self.inventory.blobs[digest]} bytes, expected {size}")
            return
        if self.deep and digest not in self._blobs_seen:
            self._blobs_seen.add(digest)
            hasher = hashlib.sha256()
            for chunk in self.destination.open(layout.blob_key(digest)):
                hasher.update(chunk)
                self.result.bytes_hashed += len(chunk)
            if "sha256:" + hasher.hexdigest() != digest:
                self._drift(name, tag, "wrong-digest", f"{digest}: bytes hash to sha256:{hasher.hexdigest()}")

    def _drift(self, name: str, tag: str, kind: str, detail: str) -> None:
        self.result.drift.append(Drift(name, tag, kind, detail))


def verify_policy(config: Config, policy: Policy, deep: bool = False) -> list[VerifyResult]:
    """Verify every tag ``policy`` selects at the source, in each destination. Raises
    ``ConfigError`` for a region holding both layout flavours (:mod:`replicator.flavours`)."""
    resolve_flavours(config, policy)
    source = config.regions[policy.source].storage
    inventory = Inventory().add(source.list(layout.REPOSITORIES_PREFIX))
    tags = sorted(key for key in inventory.tags if policy_selects(policy, *key))
    results = []
    for name in policy.destinations:
        result = verify(source, config.regions[name].storage, tags, deep)
        result.policy, result.source, result.destination = policy.name, policy.source, name
        results.append(result)
    return results
