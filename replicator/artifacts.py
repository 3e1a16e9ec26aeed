"""Which tags are artifacts of which digest, and which artifacts a policy takes. Pure: no I/O.

An artifact of a manifest ``sha256:<hex>`` is found by tag, in the manifest's repository:
cosign's ``sha256-<hex>.<suffix>`` (``.sig``, ``.att``, ``.sbom``, any suffix) and the OCI 1.1
referrers fallback tag ``sha256-<hex>``, an index listing every manifest whose ``subject`` is
that digest (pushed by digest, reached only through it). Artifacts have artifacts of their
own (a signature of an SBOM): a policy follows them to ``MAX_DEPTH`` levels and at most
``MAX_ARTIFACTS`` tags per image.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from replicator.config import Filter, Policy
from replicator.filters import selected
from replicator.manifests import Manifest

MAX_DEPTH = 4
"""Levels of artifacts of artifacts followed below an image."""
MAX_ARTIFACTS = 64
"""Artifact tags followed for one image; more are left out (and counted)."""

_ARTIFACT_TAG = re.compile(r"sha256-([0-9a-f]{64})(?:\.[A-Za-z0-9_.-]+)?")


def artifact_subject(tag: str) -> str | None:
    """The digest ``tag`` names as an artifact tag's subject, ``None`` for any other tag."""
    match = _ARTIFACT_TAG.fullmatch(tag)
    return None if match is None else f"sha256:{match[1]}"


def follows(policy: Policy) -> bool:
    """Whether ``policy`` replicates artifacts with their subject (``artifacts: follow``)."""
    return policy.artifacts == "follow"


def wanted_tag(policy: Policy, tag: str) -> bool:
    """Whether a source listing must show ``tag`` to ``policy`` beyond what its tag filter
    selects: an artifact tag, under ``artifacts: follow``."""
    return follows(policy) and artifact_subject(tag) is not None


def standalone(policy: Policy, tag: str) -> bool:
    """Whether a tag the policy selects is replicated as a unit of its own: every tag but,
    under ``require_signature``, an artifact tag, which travels only with its verified subject."""
    return not (policy.signature_keys and artifact_subject(tag) is not None)


class ArtifactTags:
    """The artifact tags of one listing, by (repository, subject digest)."""

    def __init__(self, tags: Iterable[tuple[str, str]]):
        self._by_repository: dict[str, dict[str, list[str]]] = {}
        for name, tag in sorted(tags):
            subject = artifact_subject(tag)
            if subject is not None:
                self._by_repository.setdefault(name, {}).setdefault(subject, []).append(tag)

    def of(self, name: str, digest: str) -> list[str]:
        """The artifact tags of ``digest`` in repository ``name``, sorted."""
        return self.subjects(name).get(digest, [])

    def subjects(self, name: str) -> Mapping[str, list[str]]:
        """Repository ``name``'s artifact tags, by subject digest."""
        return self._by_repository.get(name, {})


def artifact_types(digest: str, tree: Mapping[str, Manifest]) -> set[str]:
    """The artifact types the manifest at ``digest`` carries: its own, or for an index without
    one (a referrers fallback index) those of the manifests it lists."""
    manifest = tree[digest]
    if manifest.artifact_type or not manifest.children:
        return {manifest.artifact_type}
    return {tree[child.digest].artifact_type for child in manifest.children}


def types_selected(types_filter: Filter, types: Iterable[str]) -> bool:
    """Whether every type passes ``artifact_types`` (globs, include then exclude): an
    artifact tag is replicated whole or not at all, since an index cannot lose an entry without
    changing its digest."""
    return all(selected(types_filter, kind) for kind in types)
