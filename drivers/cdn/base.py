"""The CDN purger protocol: invalidate cached URLs at one provider. No registry knowledge.

A purger receives absolute URLs (``https://registry-eu.example.com/v2/app/manifests/1.0``)
in batches of at most its ``batch_size`` and either succeeds for the whole batch or raises
:class:`PurgeError`. It keeps no queue of its own: the engine's durable purge queue retries.
Secrets (API tokens, keys) never appear in ``describe()``, ``repr()`` or any error message.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import ClassVar


class PurgeError(Exception):
    """A purge batch failed.

    ``retryable`` says whether sending the same batch later may succeed (throttling, 5xx,
    connection errors, too many invalidations in flight); ``retry_after`` is the provider's
    requested wait in seconds, if it gave one. 401/403 and malformed requests are permanent.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Purger(ABC):
    """One CDN (or a set of cache nodes) in front of one region's registry."""

    kind: ClassVar[str]
    batch_size: int = 30

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        """API requests sent (each node of an ``http`` purger counts)."""

    def count_call(self, n: int = 1) -> None:
        with self._lock:
            self.calls += n

    def calls_for(self, urls: int) -> int:
        """The API calls purging ``urls`` URLs takes when every batch is accepted at once.
        This default: one call per batch of at most ``batch_size``."""
        return -(-urls // self.batch_size)

    @classmethod
    @abstractmethod
    def from_config(cls, params: dict) -> Purger:
        """Build from the provider's block of a region's ``cdn:`` config. Raises
        ``drivers.errors.ConfigError`` naming the bad key (relative to the block)."""

    @abstractmethod
    def describe(self) -> str:
        """A human-readable target such as ``cloudfront:E123ABC``; never contains secrets."""

    @abstractmethod
    def purge(self, urls: list[str], batch_id: str | None = None) -> None:
        """Invalidate every URL of the batch (at most ``batch_size``). Raises ``PurgeError``.

        ``batch_id`` names this batch of changes: a retry of the same batch passes the same id,
        a batch for a later change a new one. Providers that deduplicate requests (CloudFront's
        CallerReference) use it so that a retry after a lost answer costs nothing; ``None``
        means "treat as new".
        """
