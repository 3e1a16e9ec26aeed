"""Which destination tags a policy with ``delete: true`` removes: pure, no I/O.

A tag missing at the source is deleted at a destination only when all of these hold:

- the replicator made it there: the state store records that it created or last moved the
  tag, to the digest the tag still holds (a tag that exists only at the destination, or that
  someone moved since, is never deleted);
- it has stayed missing at the source for the policy's ``delete_delay``, counted from the
  first pass that saw it missing (a tag that comes back within the delay drops its count);
- the pass would delete no more than ``max_delete`` tags (checked by the engine: above it, a
  pass deletes none unless forced).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

Key = tuple[str, str]


@dataclass(frozen=True)
class DeletionPlan:
    due: tuple[Key, ...]
    """Tags to delete now."""
    absent_since: dict[Key, float]
    """Tags the replicator made that are missing at the source, since when (due ones included)."""
    foreign: tuple[Key, ...]
    """Tags missing at the source that the replicator did not make: kept."""


def plan_deletions(gone: Mapping[Key, str | None], made: Mapping[Key, str],
                   absent_since: Mapping[Key, float], now: float, delay: float) -> DeletionPlan:
    """``gone``: destination tags the policy selects that are missing at the source, with the
    digest each holds at the destination now (``None`` if unreadable); ``made``: the tags the
    replicator made there and the digest it wrote; ``absent_since``: what earlier passes saw."""
    ours = {key: absent_since.get(key, now) for key, digest in gone.items()
            if digest is not None and made.get(key) == digest}
    return DeletionPlan(tuple(sorted(key for key, since in ours.items() if now - since >= delay)),
                        ours, tuple(sorted(key for key in gone if key not in ours)))
