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
    ``links`` holds the keys of every layer, revision and tag index link (a tag's index links
    are found among them by :meth:`tag_index_keys`, only when a removal asks); ``blobs`` maps
    a blob's digest to its size (only when the blobs prefix was listed), which is
    ``drivers.base.UNKNOWN_SIZE`` where the listing did not tell it (a Swift DLO).
    """

    tags: dict[tuple[str, str], ObjectInfo] = field(default_factory=dict)
    links: set[str] = field(default_factory=set)
    blobs: dict[str, int] = field(default_factory=dict)
    _index_keys: dict[tuple[str, str], list[str]] | None = field(default=None, repr=False)

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
            case layout.TagIndex() | layout.LayerLink() | layout.RevisionLink():
                self.add_link(info.key)

    def add_link(self, key: str) -> None:
        """Note a layer, revision or tag index link written or listed."""
        self.links.add(key)
        self._index_keys = None

    def tag_index_keys(self, name: str, tag: str) -> list[str]:
        """The keys of the tag's index links among ``links``; the first call indexes them all."""
        if self._index_keys is None:
            self._index_keys = {}
            for key in self.links:
                entry = layout.parse_key(key)
                if isinstance(entry, layout.TagIndex):
                    self._index_keys.setdefault((entry.name, entry.tag), []).append(key)
        return self._index_keys.get((name, tag), [])
