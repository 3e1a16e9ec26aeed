"""A region's tag links, read from storage only when their listing entry changed."""

from __future__ import annotations

from drivers.base import StorageDriver
from replicator import layout
from replicator.inventory import Inventory
from replicator.once import Once
from state.store import StateStore, TagLink


class TagLinks:
    """A region's tag links, read only when the listing's etag differs from the recorded one.
    Without a state store (``None``, for readers such as verify) every link is read and
    nothing is recorded. A link several threads ask for at once (the passes into a policy's
    destinations share the source's) is read once. A repository's records are loaded from the
    state store when one of its tags is first asked for, so a pass holds only the records of
    the repositories it looks at."""

    def __init__(self, region: str, storage: StorageDriver, inventory: Inventory,
                 state: StateStore | None, audit: bool):
        self.region = region
        self.storage = storage
        self.inventory = inventory
        self.state = state
        self.trusted = not audit and state is not None
        self._known = Once()
        self._reads = Once(forget=True)   # a read's digest is kept in the records

    def _repository(self, name: str) -> dict[str, TagLink]:
        """The repository's recorded links, by tag, loaded once."""
        return self._known.run(name, lambda: self.state.tag_links(self.region, name)
                               if self.trusted else {})

    def digest(self, name: str, tag: str) -> str | None:
        """The tag's digest in this region, ``None`` if it has no tag link.

        Raises ``StorageError`` or ``LayoutError`` (junk link) when the link must be read.
        """
        info = self.inventory.tags.get((name, tag))
        if info is None:
            return None
        known = self._repository(name).get(tag)
        if known is not None and known.etag == info.etag:
            return known.digest
        return self._reads.run((name, tag, info.etag), lambda: self._read(name, tag, info.etag))

    def _read(self, name: str, tag: str, etag: str) -> str:
        known = self._repository(name).get(tag)   # read by a caller whose read was forgotten
        if known is not None and known.etag == etag:
            return known.digest
        digest = layout.parse_link(self.storage.read(layout.tag_current_key(name, tag)))
        self.record(name, tag, etag, digest)
        return digest

    def record(self, name: str, tag: str, etag: str, digest: str) -> None:
        self._repository(name)[tag] = TagLink(etag, digest)
        if self.state is not None:
            self.state.record_tag_link(self.region, name, tag, etag, digest)

    def forget(self, name: str, tag: str) -> None:
        self._repository(name).pop(tag, None)
        if self.state is not None:
            self.state.forget_tag_link(self.region, name, tag)
