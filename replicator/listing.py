"""How a storage snapshot lists a region's repositories: all of them in one listing, or only
the ones a caller wants, whichever costs fewer requests.

A full listing of ``docker/registry/v2/repositories/`` costs one request per
``list_page_size`` keys (1000 on every driver here). A pass that wants only some repositories
(a shard of ``--shard INDEX/COUNT``, or a policy's ``repositories`` filter) can instead find
every repository with one delimited listing (:func:`discover`) and list only the prefixes of
the ones it wants: the discovery's pages, plus for each such repository one request per page
of its keys, at least one. :func:`targeted` chooses from the key counts per repository that
the region's last listings left in the state store (``listing_keys``): without any (a first
pass, a state store that was deleted, a caller without one), the listing is full; when every
repository is wanted (one shard and no filter) the targeted way never costs less (unless keys
outside any repository outweigh its discovery), so that pass lists exactly as before. A repository pushed since the counts were taken counts as one
page. What is listed is the same either way for the wanted repositories, so the choice changes
requests, never what a pass sees of them.

Discovery follows Distribution's catalog (``registry/storage/catalog.go`` at v2.8.3:
``Enumerate`` walks the repositories root and ``handleRepository`` takes a directory holding
``_layers`` for a repository and enters no directory whose name starts with ``_``; a nested
name such as ``apps/web`` lies beside ``apps``'s ``_layers``). Where Distribution's walk lists
directory by directory (its S3 driver: one ``ListObjectsV2`` with ``Delimiter: "/"`` each), a
listing delimited by ``/_`` returns, a thousand a page, every directory at any depth that holds
an entry whose name starts with ``_``, and none below such an entry: the catalog's
repositories, plus any directory holding only ``_manifests`` or ``_uploads``, whose listing
then finds what tags it has, or none. Names that break Distribution's grammar are left out, as
:func:`replicator.layout.parse_key` leaves their keys out of a full listing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress

from drivers.base import ObjectInfo, StorageDriver
from replicator import layout

log = logging.getLogger(__name__)

REPOSITORY_DELIMITER = "/_"
"""Ends a repository's directory in a key: names never hold it (a name component starts with
a letter or digit), and every key of a repository's content follows it."""


def repository_of(key: str) -> str:
    """The repository whose content a key under the repositories prefix is, ``""`` if none."""
    rest = key[len(layout.REPOSITORIES_PREFIX):]
    end = rest.find(REPOSITORY_DELIMITER)
    return rest[:end] if end > 0 else ""


def ancestors(name: str) -> list[str]:
    """The names a nested name lies under: ``a/b/c`` -> ``a``, ``a/b``."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def outermost(names: Iterable[str]) -> list[str]:
    """Of ``names``, in order, those under no other of them: listing ``apps/`` lists
    ``apps/web`` too."""
    chosen = set(names)
    return sorted(name for name in chosen if not any(a in chosen for a in ancestors(name)))


def discover(storage: StorageDriver) -> list[str]:
    """Every repository ``storage`` holds (see the module's docstring); one ``list`` request
    per page of names. Raises ``StorageError``."""
    start = len(layout.REPOSITORIES_PREFIX)
    names = []
    for page in storage.list_prefixes(layout.REPOSITORIES_PREFIX, REPOSITORY_DELIMITER):
        for prefix in page:
            with suppress(layout.LayoutError):
                names.append(layout.check_name(prefix[start:-len(REPOSITORY_DELIMITER)]))
    return names


def _pages(keys: int, page_size: int) -> int:
    return max(1, -(-keys // page_size))


def costs(known: dict[str, int], wanted: Callable[[str], bool], page_size: int) -> tuple[int, int]:
    """Estimated ``list`` requests of (a full listing, a targeted one), from the key counts per
    repository a region's last listings found (``""``: keys under no repository). Pure."""
    names = [name for name in known if name]
    below: Counter[str] = Counter()
    for name in names:
        for holder in (name, *ancestors(name)):
            below[holder] += known[name]
    listed = outermost(name for name in names if wanted(name))
    return (_pages(sum(known.values()), page_size),
            _pages(len(names), page_size) + sum(_pages(below[name], page_size) for name in listed))


def targeted(known: dict[str, int], wanted: Callable[[str], bool], page_size: int) -> bool:
    """Whether listing only the wanted repositories costs fewer requests than a full listing;
    false without knowledge (``known`` empty)."""
    if not known:
        return False
    full, target = costs(known, wanted, page_size)
    return target < full


def full_listing(storage: StorageDriver, region: str, state,
                 wanted: Callable[[str], bool] | None) -> bool:
    """Whether :func:`repository_pages` lists all of the region's repositories in one listing
    (not targeted: see :func:`targeted`)."""
    known = state.listing_keys(region) if state is not None and wanted is not None else {}
    return not targeted(known, wanted, storage.list_page_size)


def repository_pages(storage: StorageDriver, region: str, state,
                     wanted: Callable[[str], bool] | None,
                     started: Iterator[list[ObjectInfo]] | None = None
                     ) -> Iterator[list[ObjectInfo]]:
    """Listing pages holding every key of the repositories ``wanted`` selects (all of them, and
    perhaps others, when a full listing is the cheaper way; every one without ``wanted``), the
    way chosen by :func:`targeted` from what ``state`` (a state store, or ``None``) recorded
    for ``region``; ``started`` is a full listing of the repositories begun earlier (where
    :func:`full_listing` said so), taken as the full one. Once the pages are exhausted,
    records the key counts they showed there. Raises ``StorageError``."""
    counts: Counter[str] = Counter()
    if started is None and not full_listing(storage, region, state, wanted):
        names = discover(storage)
        listed = outermost(name for name in names if wanted(name))
        log.debug("%s: listing %d of %d repositories", region, len(listed), len(names),
                 extra={"region": region})
        for name in listed:
            for page in storage.list(layout.repository_prefix(name)):
                counts.update(repository_of(info.key) for info in page)
                yield page
        chosen = set(listed)
        keep = {"", *(name for name in names
                      if name not in chosen and not any(a in chosen for a in ancestors(name)))}
    else:
        for page in started if started is not None else storage.list(layout.REPOSITORIES_PREFIX):
            counts.update(repository_of(info.key) for info in page)
            yield page
        keep = set()
    if state is not None:
        state.record_listing_keys(region, dict(counts), keep)
