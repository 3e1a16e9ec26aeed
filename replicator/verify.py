"""Check that a destination serves what its source serves: tags, manifests, links, blobs.

Reads only, through the endpoint interface; reports drift precisely. ``deep`` re-hashes every
referenced blob; otherwise blobs are checked for presence and size from what the
destination's snapshot holds (a blob held with an unknown size, such as a Swift DLO, is
stat'ed).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from drivers.base import UNKNOWN_SIZE, ObjectTooLarge
from drivers.errors import NotFound
from replicator import layout
from replicator.artifacts import (MAX_ARTIFACTS, MAX_DEPTH, ArtifactTags, artifact_types,
                                  follows, types_selected, wanted_tag)
from replicator.config import Config, Filter, Policy
from replicator.endpoints import Destination, Endpoint, endpoint_for
from replicator.endpoints.base import DestinationSnapshot, Selection, Snapshot
from replicator.engine import SourceReader
from replicator.errors import TAG_ERRORS
from replicator.filters import policy_selects, selected
from replicator.flavours import resolve_flavours
from replicator.manifests import MAX_MANIFEST_SIZE, Manifest, ManifestError, parse_manifest
from replicator.ordering import kept
from replicator.planner import is_foreign


@dataclass(frozen=True)
class Drift:
    """One way a destination differs from its source.

    ``kind`` is one of ``missing-tag``, ``tag-mismatch``, ``bad-link``, ``missing-manifest``,
    ``bad-manifest``, ``missing-link``, ``missing-blob``, ``wrong-size``, ``wrong-digest``, and
    ``missing-tag-index`` (the tag's index link: pulls still work, its history is incomplete),
    and ``missing-artifact`` (an artifact tag of the image at the source, such as its signature,
    absent or at another digest at the destination; the artifact's own content is checked
    under its tag).
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


def verify(source: Endpoint, destination: Destination, tags: list[tuple[str, str]],
           deep: bool = False, listing: Snapshot | None = None,
           artifact_filter: Filter = Filter()) -> VerifyResult:
    """Verify ``tags`` (repository, tag) of ``source`` at ``destination``; with ``listing`` (a
    snapshot of ``source`` showing its artifact tags), also the artifacts of each tag's image
    that ``artifact_filter`` selects by type.

    Raises ``StorageError`` only if a region cannot be listed or read at all.
    """
    held = destination.destination_snapshot(None, None, audit=True)
    checker = ContentChecker(destination, held, deep)
    reader = None if listing is None else SourceReader(source, listing, 0.0)
    artifacts = None if listing is None else ArtifactTags(listing.tags)
    for name, tag in tags:
        digest = checker.check_tag(source, name, tag)
        if reader is not None:
            checker.check_artifacts(reader, artifacts, artifact_filter, name, tag, digest)
    return checker.result


class ContentChecker:
    """Checks tags and manifests at a destination, collecting drift in ``result``."""

    def __init__(self, destination: Destination, held: DestinationSnapshot, deep: bool):
        self.destination = destination
        self.held = held
        self.deep = deep
        self.result = VerifyResult()
        self._blobs_seen: set[str] = set()

    def check_tag(self, source: Endpoint, name: str, tag: str) -> str:
        """Check the tag; the digest the source gives it."""
        self.result.tags_checked += 1
        expected = source.tag_read(name, tag)
        try:
            actual = self.held.tag_digest(name, tag)
        except (NotFound, layout.LayoutError) as error:
            self._drift(name, tag, "bad-link", str(error))
            return expected
        if actual is None:
            self._drift(name, tag, "missing-tag", f"source has {expected}")
            return expected
        if actual != expected:
            self._drift(name, tag, "tag-mismatch", f"source {expected}, destination {actual}")
        for kind, detail in self.held.missing_history(name, tag, actual):
            self._drift(name, tag, kind, detail)
        self.check_manifest(name, tag, actual)
        return expected

    def check_artifacts(self, source: SourceReader, artifacts: ArtifactTags,
                        artifact_filter: Filter, name: str, tag: str, digest: str) -> None:
        """Every artifact tag of the image at ``digest`` (and of the manifests below it, and of
        those artifacts, to ``MAX_DEPTH``) is at the destination with the source's digest. An
        artifact unreadable at the source is left out (its own check is the source's)."""
        seen: set[str] = set()
        pending = [(subject, 1) for subject in {digest, *_tree(source, name, digest)}]
        while pending:
            subject, depth = pending.pop()
            for artifact in artifacts.of(name, subject):
                if artifact in seen or len(seen) >= MAX_ARTIFACTS:
                    continue
                seen.add(artifact)
                expected = source.tag_digest(name, artifact)
                tree = _tree(source, name, expected)
                if not tree or not types_selected(artifact_filter, artifact_types(expected, tree)):
                    continue
                try:
                    actual = self.held.tag_digest(name, artifact)
                except (NotFound, layout.LayoutError):
                    actual = None
                if actual != expected:
                    where = "absent" if actual is None else f"at {actual}"
                    self._drift(name, tag, "missing-artifact",
                                f"{name}:{artifact} (source {expected}): {where}")
                else:
                    self.check_manifest(name, artifact, actual)
                if depth < MAX_DEPTH:
                    pending.extend((below, depth + 1) for below in tree)

    def check_manifest(self, name: str, tag: str, digest: str) -> None:
        """The manifest at ``digest`` in ``name``, its children, their links and blobs: what a
        pull of it needs. Raises ``StorageError`` only if the destination cannot be read."""
        self.result.manifests_checked += 1
        try:
            manifest = parse_manifest(self.destination.manifest_read(name, digest, MAX_MANIFEST_SIZE),
                                      digest)
        except NotFound:
            missing = self.held.missing_references(name, tag, Manifest(digest, "", b""), ())
            for kind, detail in missing:
                self._drift(name, tag, kind, detail)
            self._drift(name, tag, "missing-manifest", digest)
            return
        except (ManifestError, ObjectTooLarge) as error:
            self._drift(name, tag, "bad-manifest", str(error))
            return
        blobs = [blob for blob in manifest.blobs if not is_foreign(blob)]
        for kind, detail in self.held.missing_references(name, tag, manifest, [b.digest for b in blobs]):
            self._drift(name, tag, kind, detail)
        for child in manifest.children:
            self.check_manifest(name, tag, child.digest)
        for blob in blobs:
            self._check_blob(name, tag, blob.digest, blob.size)

    def _check_blob(self, name: str, tag: str, digest: str, size: int) -> None:
        self.result.blobs_checked += 1
        held = self.held.holdings(name, [digest])
        if digest not in held:
            self._drift(name, tag, "missing-blob", digest)
            return
        found = held[digest]
        if size >= 0 and found == UNKNOWN_SIZE:
            try:
                found = self.destination.blob_size(name, digest)
            except NotFound:
                self._drift(name, tag, "missing-blob", digest)
                return
        if size >= 0 and found != size:
            self._drift(name, tag, "wrong-size", f"{digest}: {found} bytes, expected {size}")
            return
        if self.deep and digest not in self._blobs_seen:
            self._blobs_seen.add(digest)
            hasher = hashlib.sha256()
            for chunk in self.destination.blob_open(name, digest):
                hasher.update(chunk)
                self.result.bytes_hashed += len(chunk)
            if "sha256:" + hasher.hexdigest() != digest:
                self._drift(name, tag, "wrong-digest", f"{digest}: bytes hash to sha256:{hasher.hexdigest()}")

    def _drift(self, name: str, tag: str, kind: str, detail: str) -> None:
        self.result.drift.append(Drift(name, tag, kind, detail))


def _tree(source: SourceReader, name: str, digest: str) -> dict[str, Manifest]:
    try:
        return source.manifest_tree(name, digest)
    except TAG_ERRORS:
        return {}


def verify_policy(config: Config, policy: Policy, deep: bool = False) -> list[VerifyResult]:
    """Verify every tag ``policy`` replicates from the source (its filters, then its
    ``keep_latest``), in each destination. Raises
    ``ConfigError`` for a region holding both layout flavours (:mod:`replicator.flavours`)."""
    resolve_flavours(config, policy)
    source = endpoint_for(config.regions[policy.source])
    wanted = Selection(lambda name: selected(policy.repositories, name),
                       lambda name, tag: policy_selects(policy, name, tag) or wanted_tag(policy, tag))
    listing = source.snapshot(None, None, True, wanted)
    tags = sorted(kept(policy, {key: info for key, info in listing.tags.items()
                                if policy_selects(policy, *key)}))
    results = []
    for name in policy.destinations:
        result = verify(source, endpoint_for(config.regions[name]), tags, deep,
                        listing if follows(policy) else None, policy.artifact_types)
        result.policy, result.source, result.destination = policy.name, policy.source, name
        results.append(result)
    return results
