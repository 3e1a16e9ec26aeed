"""Repositories a full pass skips: found in sync by an earlier pass and listed the same since.

A full pass that finds a repository entirely in sync at a destination (every tag it compares
unchanged, nothing written, deleted, failed or deferred there) records a fingerprint of each
end's listing of that repository and of the policy's settings (``settled`` in the state
store). A later full pass whose listings show the same fingerprints at both ends, under the
same settings, skips the repository: it reads no tag link, loads no record and holds none of
its listing entries, so its memory does not grow with such repositories. The source's
listing drops a repository only if every destination of the pass may skip it; a destination
whose own listing of it changed (a tag deleted there behind the replicator's back) has the
source list that repository again (:meth:`Snapshot.restore`) and compares it as usual.

A fingerprint covers every key of the repository's listing with its size and change token
(etag), so any write at either end (a tag pushed, moved or deleted, a link written or removed,
an upload begun) changes it. What a repository's listing does not show, it does not cover:
blob data, which lives outside the repository, as a no-change pass does not look at it
either; an audit pass (``sync --audit``), a targeted pass and the application of a saved plan
neither skip nor settle. A repository written to by a pass settles at its next pass that finds
it in sync, and is skipped from the pass after that. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping

from drivers.base import ObjectInfo
from replicator.config import Policy
from state.store import SettledRepository


def fingerprint(entries: Iterable[ObjectInfo]) -> str:
    """A digest of listing entries (keys, sizes and etags, in the order listed)."""
    digest = hashlib.blake2b(digest_size=16)
    for info in entries:
        digest.update(f"{info.key}\0{info.size}\0{info.etag}\n".encode())
    return digest.hexdigest()


def settings_fingerprint(policy: Policy) -> str:
    """A digest of what decides which of a repository's tags a policy replicates and how:
    its filters, ``delete``, ``keep_latest``, artifact settings and signature keys."""
    keys = b""
    if policy.signature_keys:
        from cryptography.hazmat.primitives import serialization
        keys = b"".join(key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
                        for key in policy.signature_keys)
    text = repr((policy.source, policy.repositories, policy.tags, policy.delete,
                 policy.keep_latest, policy.artifacts, policy.artifact_types))
    return hashlib.blake2b(text.encode() + keys, digest_size=16).hexdigest()


class Settling:
    """What a policy's full pass may skip, from the state store's ``settled`` rows
    (by destination and repository) and the pass's destinations."""

    def __init__(self, policy: Policy, destinations: Iterable[str],
                 rows: Mapping[tuple[str, str], SettledRepository]):
        self.settings = settings_fingerprint(policy)
        self.destinations = tuple(destinations)
        self.rows = rows

    def _row(self, destination: str, name: str) -> SettledRepository | None:
        row = self.rows.get((destination, name))
        return row if row is not None and row.settings == self.settings else None

    def source_skips(self, name: str, listed: str) -> bool:
        """Whether the source's listing may leave out ``name``, listed with fingerprint
        ``listed``: every destination found it settled at that listing."""
        rows = [self._row(destination, name) for destination in self.destinations]
        return all(row is not None and row.source == listed for row in rows)

    def destination_skips(self, destination: str,
                          source_skipped: Callable[[str], bool]) -> Callable[[str, str], bool]:
        """For the destination's listing: whether it may leave out ``name``, listed with a
        fingerprint: the source left it out and the destination's listing is as settled."""
        def skips(name: str, listed: str) -> bool:
            row = self._row(destination, name)
            return row is not None and row.held == listed and source_skipped(name)
        return skips

    def tags(self, destination: str, name: str) -> int:
        """How many tags the pass that settled the repository compared."""
        row = self._row(destination, name)
        return row.tags if row is not None else 0

    def settle(self, source: str, held: str, tags: int) -> SettledRepository:
        return SettledRepository(source, held, self.settings, tags)
