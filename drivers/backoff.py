"""The one back-off calculator: how long to wait before the next attempt at anything.

Every wait in the project comes from a :class:`Backoff`: storage request retries
(:mod:`drivers.retry`), the next attempt at a failing tag (the state store's failure records)
and CDN purge retries (the purge queue). The wait after the ``n``-th consecutive failure is
``initial * 2**(n-1)`` capped at ``maximum``, plus up to ``jitter`` seconds at random, and never
less than a ``Retry-After`` the other side asked for (itself capped at ``retry_after_limit``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import tenacity


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with optional jitter that honours ``Retry-After``."""

    initial: float
    maximum: float
    jitter: float = 0.0
    retry_after_limit: float | None = None
    """The longest ``Retry-After`` honoured (``None``: ``maximum``)."""

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
        wait = min(self.maximum, self.initial * 2 ** max(0, failures - 1))
        if self.jitter:
            wait += random.uniform(0, self.jitter)
        if retry_after:
            limit = self.maximum if self.retry_after_limit is None else self.retry_after_limit
            wait = max(wait, min(retry_after, limit))
        return wait

    def tenacity_wait(self) -> tenacity.wait.wait_base:
        """This back-off as a tenacity ``wait``; an exception's ``retry_after`` attribute (seconds),
        if it has one, is honoured."""
        return _TenacityWait(self)


class _TenacityWait(tenacity.wait.wait_base):
    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        return self.backoff.delay(retry_state.attempt_number, getattr(error, "retry_after", None))
