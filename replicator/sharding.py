"""Splitting repositories among replicas: each is owned by exactly one shard.

Ownership is rendezvous hashing of the repository name: the shard with the highest
``sha256(index:name)`` owns it. It is stable across restarts and machines, and when the
shard count changes from N to N+1 only about 1/(N+1) of repositories move; a repository
that moves is simply scanned by its new owner (its content is already at the destinations).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

from drivers.errors import ConfigError

_ORDINAL = re.compile(r"-(\d+)$")


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def owns(self, repository: str) -> bool:
        return self.count == 1 or owner(repository, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@lru_cache(maxsize=65536)
def owner(repository: str, count: int) -> int:
    """The index of the shard, of ``count``, that owns ``repository``."""
    return max(range(count), key=lambda index: hashlib.sha256(f"{index}:{repository}".encode()).digest())


def parse_shard(text: str, hostname: str) -> Shard:
    """``INDEX/COUNT``; ``INDEX`` may be ``auto``: the ordinal that ends a StatefulSet pod's
    hostname (``replicator-2`` -> 2). Raises ``ConfigError`` naming ``--shard``."""
    index_text, _, count_text = text.partition("/")
    if not count_text.isdigit() or int(count_text) < 1:
        raise ConfigError("--shard", "must be INDEX/COUNT with COUNT >= 1, e.g. 0/3 or auto/3")
    if index_text == "auto":
        match = _ORDINAL.search(hostname)
        if not match:
            raise ConfigError("--shard", f"auto needs a hostname ending in -<ordinal>, got {hostname!r}")
        index_text = match[1]
    if not index_text.isdigit() or int(index_text) >= int(count_text):
        raise ConfigError("--shard", "INDEX must be a number from 0 to COUNT-1")
    return Shard(int(index_text), int(count_text))
