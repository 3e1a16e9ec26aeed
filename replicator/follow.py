"""Artifacts before their image: what a pass into one destination replicates ahead of a tag.

For a tag at digest D, its artifacts (:mod:`replicator.artifacts`) are the artifact tags of D
and of every manifest below D (an index's children), then theirs, deepest first: each is
replicated whole (its blobs, manifests, the manifests a referrers index lists, its links and
tag) before the next, and all of them before the image's tag moves. One that fails stops the
image's tag with ``ArtifactFailed`` naming it. Each artifact tag is replicated once per pass,
however many images share it.

Cost: artifact tags are known from the source listing, their digests as any tag's. Only an
artifact tag that differs at the destination has its manifests read, except in a repository
holding an artifact tag whose subject no tag points at (the signature of an index's child or
of a referrer) that the destination lacks: there the manifests below every image and
artifact are read to find what it belongs to.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from replicator.artifacts import (MAX_ARTIFACTS, MAX_DEPTH, ArtifactTags, artifact_types,
                                  types_selected)
from replicator.config import Policy
from replicator.errors import TAG_ERRORS, ArtifactFailed
from replicator.manifests import Manifest
from replicator.report import PassReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Artifact:
    """An artifact tag at the source: ``digest`` there, ``current`` at the destination, and
    its manifests when they were read."""

    tag: str
    digest: str
    current: str | None
    tree: Mapping[str, Manifest] | None

    @property
    def subjects(self) -> set[str]:
        """The digests whose own artifacts follow this one."""
        return set(self.tree) if self.tree is not None else {self.digest}


class ArtifactFollower:
    """The artifacts of each tag of one pass into one destination, replicated before it.

    ``source`` is the pass's source reader; ``destination_digest(name, tag)`` a tag's digest at
    the destination; ``replicate(name, image_tag, artifact)`` replicates one artifact, returns
    whether it changed anything and raises ``TAG_ERRORS``.
    """

    def __init__(self, policy: Policy, source, destination_digest: Callable[[str, str], str | None],
                 replicate: Callable[[str, str, Artifact], bool], report: PassReport, audit: bool):
        self.policy = policy
        self.source = source
        self.destination_digest = destination_digest
        self.replicate = replicate
        self.report = report
        self.audit = audit
        self.tags = ArtifactTags(source.snapshot.tags)
        self._lock = threading.Lock()
        self._tag_locks: dict[tuple[str, str], threading.Lock] = {}
        self._outcomes: dict[tuple[str, str], bool | Exception] = {}
        self._deep: dict[str, bool] = {}

    def follow(self, name: str, tag: str, digest: str,
               tree: Mapping[str, Manifest] | None) -> tuple[str, ...]:
        """Replicate every artifact of ``name:tag`` at ``digest`` (``tree``: its manifests, if
        read); the digests of those this pass changed. Raises ``ArtifactFailed`` for the first
        that fails."""
        if tree is None and self.tags.subjects(name) and self._searching(name):
            tree = self._tree(name, tag, digest)
        found: list[Artifact] = []
        self._walk(name, set(tree) if tree is not None else {digest}, 1, set(), found)
        return tuple(artifact.digest for artifact in found if self._once(name, tag, artifact))

    def replicate_selected(self, name: str, tag: str, digest: str, current: str | None,
                           tree: Mapping[str, Manifest]) -> bool:
        """Replicate an artifact tag the policy selects on its own (after :meth:`follow`), once
        per pass however many images it also belongs to; whether the pass changed anything for
        it. Raises ``ArtifactFailed``."""
        return self._once(name, tag, Artifact(tag, digest, current, tree))

    def _walk(self, name: str, subjects: set[str], depth: int, seen: set[str],
              found: list[Artifact]) -> None:
        for subject in sorted(subjects):
            for tag in self.tags.of(name, subject):
                if tag in seen:
                    continue
                if len(seen) >= MAX_ARTIFACTS:
                    log.warning("%s: more than %d artifact tags for one image; %s left out",
                                name, MAX_ARTIFACTS, tag)
                    self.report.count("artifacts_left_out")
                    continue
                seen.add(tag)
                artifact = self._artifact(name, tag)
                if artifact is None:
                    continue
                if depth < MAX_DEPTH:
                    self._walk(name, artifact.subjects, depth + 1, seen, found)
                found.append(artifact)

    def _artifact(self, name: str, tag: str) -> Artifact | None:
        """The artifact tag as it stands, ``None`` when ``artifact_types`` leaves it out."""
        try:
            digest = self.source.tag_digest(name, tag)
            current = self.destination_digest(name, tag)
            changed = self.audit or digest != current
            read = changed or self._searching(name)
            tree = self.source.manifest_tree(name, digest) if read else None
        except TAG_ERRORS as error:
            raise ArtifactFailed(f"artifact {name}:{tag} cannot be read: {error}", error) from None
        if changed and not types_selected(self.policy.artifact_types, artifact_types(digest, tree)):
            return None
        return Artifact(tag, digest, current, tree)

    def _tree(self, name: str, tag: str, digest: str) -> Mapping[str, Manifest]:
        try:
            return self.source.manifest_tree(name, digest)
        except TAG_ERRORS as error:
            raise ArtifactFailed(f"{name}:{tag}: manifests to search for artifacts cannot be "
                                 f"read: {error}", error) from None

    def _once(self, name: str, image_tag: str, artifact: Artifact) -> bool:
        """Replicate the artifact unless this pass did already; whether that changed anything.
        Raises ``ArtifactFailed`` (again for every later call) if it failed."""
        key = (name, artifact.tag)
        with self._lock:
            lock = self._tag_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._outcomes:
                self._outcomes[key] = self._replicate(name, image_tag, artifact)
            outcome = self._outcomes[key]
        if isinstance(outcome, Exception):
            raise ArtifactFailed(f"artifact {name}:{artifact.tag} ({artifact.digest}) failed: "
                                 f"{outcome}", outcome)
        return outcome

    def _replicate(self, name: str, image_tag: str, artifact: Artifact) -> bool | Exception:
        try:
            changed = self.replicate(name, image_tag, artifact)
        except TAG_ERRORS as error:
            return error
        self.report.count("artifacts_replicated" if changed else "artifacts_unchanged")
        return changed

    def _searching(self, name: str) -> bool:
        """Whether repository ``name`` holds an artifact tag the destination lacks whose
        subject no tag points at: found only by reading the manifests below images and
        artifacts. Decided once per repository and pass."""
        with self._lock:
            if name not in self._deep:
                self._deep[name] = self._unanchored_change(name)
            return self._deep[name]

    def _unanchored_change(self, name: str) -> bool:
        anchors = {self._source_digest(repository, tag)
                   for repository, tag in self.source.snapshot.tags if repository == name}
        for subject, tags in self.tags.subjects(name).items():
            if subject in anchors:
                continue
            for tag in tags:
                try:
                    current = self.destination_digest(name, tag)
                    if self.audit or self._source_digest(name, tag) != current:
                        return True
                except TAG_ERRORS:
                    return True
        return False

    def _source_digest(self, name: str, tag: str) -> str | None:
        try:
            return self.source.snapshot.tag_digest(name, tag)
        except TAG_ERRORS:
            return None
