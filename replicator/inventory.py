"""What a region holds, as its listings show it: tags, links and blobs. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from drivers.base import ObjectInfo
from replicator import layout


@dataclass
class Inventory:
    """Registry content of one region, built from listing pages of its storage.

    ``tags`` maps (repository, tag) to the listing entry of the tag's ``current/link``;
    ``links`` holds the keys of every layer, revision and tag index link; ``blobs`` maps
    a blob's digest to its size (only when the blobs prefix was listed), which is
    ``drivers.base.UNKNOWN_SIZE`` where the listing did not tell it (a Swift DLO).
    """

    tags: dict[tuple[str, str], ObjectInfo] = field(default_factory=dict)
    links: set[str] = field(default_factory=set)
    tag_index_keys: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    blobs: dict[str, int] = field(default_factory=dict)

    def add(self, pages: Iterable[list[ObjectInfo]], repository: str | None = None) -> Inventory:
        """Add listing pages; with ``repository``, only that repository's entries (and blobs)."""
        for page in pages:
            for info in page:
                self._add(info, repository)
        return self

    def _add(self, info: ObjectInfo, repository: str | None) -> None:
        entry = layout.parse_key(info.key)
        if repository is not None and getattr(entry, "name", repository) != repository:
            return
        match entry:
            case layout.BlobData(digest):
                self.blobs[digest] = info.size
            case layout.TagCurrent(name, tag):
                self.tags[(name, tag)] = info
            case layout.TagIndex(name, tag, _):
                self.links.add(info.key)
                self.tag_index_keys.setdefault((name, tag), []).append(info.key)
            case layout.LayerLink() | layout.RevisionLink():
                self.links.add(info.key)
