"""In which order a pass starts a policy's tags, and which it keeps: pure, no I/O.

A tag's rank is the position of the first of the policy's ``priority`` globs its name matches
(tags matching none come after all of them); within a rank, ``order`` decides: ``name``
(repository, then tag), ``newest-first`` or ``oldest-first`` by the time the source's listing
gives the tag (``ObjectInfo.mtime``: when its link was last written in a storage source;
a registry source tells no time, so its tags share one and fall back to name order). Ties
are always broken by name, so an order is the same on every run.

``keep_latest`` keeps, per repository, the newest tags (ties: the greatest names) and drops
the rest before any ordering.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import TypeVar

from drivers.base import ObjectInfo
from replicator.config import Policy

Key = tuple[str, str]
Entry = TypeVar("Entry", bound=ObjectInfo)


def kept(policy: Policy, tags: Mapping[Key, Entry]) -> dict[Key, Entry]:
    """``tags`` (already selected by the policy's filters) less those ``keep_latest`` drops."""
    if policy.keep_latest is None:
        return dict(tags)
    by_repository: dict[str, list[Key]] = defaultdict(list)
    for key in tags:
        by_repository[key[0]].append(key)
    newest_first = (sorted(keys, key=lambda k: (tags[k].mtime, k[1]), reverse=True)
                    for keys in by_repository.values())
    keep = {key for keys in newest_first for key in keys[:policy.keep_latest]}
    return {key: info for key, info in tags.items() if key in keep}


def start_order(policy: Policy, tags: Mapping[Key, Entry]) -> dict[Key, Entry]:
    """The tags ``policy`` replicates of ``tags``, in the order a pass starts them."""
    chosen = kept(policy, tags)
    return {key: chosen[key] for key in sorted(chosen, key=lambda k: _sort_key(policy, k, chosen[k]))}


def _sort_key(policy: Policy, key: Key, info: ObjectInfo) -> tuple:
    rank = next((index for index, pattern in enumerate(policy.priority)
                 if fnmatchcase(key[1], pattern)), len(policy.priority))
    recency = {"newest-first": -info.mtime, "oldest-first": info.mtime}.get(policy.order, 0.0)
    return rank, recency, key
