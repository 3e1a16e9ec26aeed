"""Decide what a destination needs for one tag, in the order that keeps it consistent. Pure.

The order of ``TagPlan.links`` is the safety contract (DESIGN invariant 1): for each manifest,
children first, its layer links then its revision link; then the tag's ``current/link``; then
the tag's index link. The current link comes after everything a pull needs. The index link
follows it because Distribution lists a tag in ``tags/list`` as soon as its folder holds any
key: written first, a new tag would be listed but not pullable until the current link lands.
The executor copies every blob and manifest blob before the first link.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass

from replicator import layout
from replicator.manifests import Descriptor, Manifest

FOREIGN_MARKERS = ("foreign", "nondistributable")


@dataclass(frozen=True)
class TagPlan:
    name: str
    tag: str
    digest: str
    blobs: tuple[Descriptor, ...]
    manifests: tuple[Manifest, ...]
    links: tuple[tuple[str, str], ...]
    """Steps in write order, each (what, digest): for Distribution storage (key, digest) pairs,
    the tag's current link, when needed, after every manifest's links and before only the
    tag's own index link."""
    reused: frozenset[str]
    """Digests of referenced blobs and manifests the destination already holds."""
    move: tuple[str, str] | None = None
    """The step of ``links`` that moves the tag to ``digest``, if the plan has one."""

    @property
    def empty(self) -> bool:
        return not (self.blobs or self.manifests or self.links)


def is_foreign(descriptor: Descriptor) -> bool:
    """A foreign (non-distributable) layer lives at its URLs, not in the registry."""
    return bool(descriptor.urls) and any(m in descriptor.media_type for m in FOREIGN_MARKERS)


def bottom_up(manifests: Mapping[str, Manifest], digest: str) -> Iterator[Manifest]:
    """The manifest at ``digest`` and every manifest below it, each after its children (in
    write order; a child two parents share comes twice). A missing one raises ``KeyError``."""
    manifest = manifests[digest]
    for child in manifest.children:
        yield from bottom_up(manifests, child.digest)
    yield manifest


def plan_tag(name: str, tag: str, digest: str, manifests: Mapping[str, Manifest],
             present_blobs: Container[str], present_links: Container[str],
             current: str | None = None) -> TagPlan:
    """Plan the copy of ``name:tag`` at ``digest`` into a destination.

    ``manifests`` holds the tag's manifest and every manifest below it, by digest (a missing
    one raises ``KeyError``). ``present_blobs`` are digests and ``present_links`` keys the
    destination already has; they are neither copied nor written again. ``current`` is the
    digest the destination's tag points at now: if it is ``digest``, the plan only repairs
    what is missing below the tag.
    """
    blobs: dict[str, Descriptor] = {}
    needed_manifests: dict[str, Manifest] = {}
    links: list[tuple[str, str]] = []
    reused: set[str] = set()

    def need_link(key: str, target: str) -> None:
        if key not in present_links and (key, target) not in links:
            links.append((key, target))

    for manifest in bottom_up(manifests, digest):
        for blob in manifest.blobs:
            if is_foreign(blob):
                continue
            if blob.digest in present_blobs:
                reused.add(blob.digest)
            else:
                blobs.setdefault(blob.digest, blob)
            need_link(layout.layer_link_key(name, blob.digest), blob.digest)
        if manifest.digest in present_blobs:
            reused.add(manifest.digest)
        else:
            needed_manifests.setdefault(manifest.digest, manifest)
        need_link(layout.revision_link_key(name, manifest.digest), manifest.digest)

    move = (layout.tag_current_key(name, tag), digest) if current != digest else None
    if move:
        links.append(move)
    need_link(layout.tag_index_key(name, tag, digest), digest)
    return TagPlan(name, tag, digest, tuple(blobs.values()), tuple(needed_manifests.values()),
                   tuple(links), frozenset(reused), move)
