"""Egress budgets: at most so many bytes copied into a destination per period.

A policy's destination entry may set ``egress_budget: {bytes, per}``. Periods are aligned to
the Unix epoch in UTC (``per: 1d`` runs from 00:00 UTC to 00:00 UTC), and what was copied in
the current one (blobs and manifests, streamed or copied server-side) is counted in the state
store, so the count survives restarts and is shared by every pass of the policy into that
destination. A tag's new blobs start copying only while the count is below the budget; their
sizes are counted as they start (what a failed copy did not move is given back), so the budget
is overrun by at most one tag's new blobs, and no tag is left half copied. A tag the budget
refused waits, pending, for a later period.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from replicator.config import Budget, Policy
from replicator.errors import BudgetExhausted
from state.store import StateStore

K = TypeVar("K")


def period_start(budget: Budget, now: float) -> float:
    return math.floor(now / budget.per) * budget.per


@dataclass(frozen=True)
class BudgetStatus:
    bytes: int
    per: float
    used: int
    period_ends: float
    waiting_tags: int
    """Tags the last full pass in this period left waiting for the next one."""

    def as_dict(self) -> dict:
        return {"bytes": self.bytes, "per_seconds": self.per, "used": self.used,
                "period_ends": self.period_ends, "waiting_tags": self.waiting_tags}


def budget_status(state: StateStore, policy: Policy, destination: str,
                  now: float) -> BudgetStatus | None:
    """The destination's budget in the period holding ``now``; ``None`` if it has none."""
    budget = policy.destination_settings(destination).egress_budget
    if budget is None:
        return None
    start = period_start(budget, now)
    used, waiting = state.egress_used(policy.name, destination, start)
    return BudgetStatus(budget.bytes, budget.per, used, start + budget.per, waiting)


def remaining(state: StateStore, policy: Policy, destination: str, now: float) -> int | None:
    """Bytes the destination's budget still allows in the period holding ``now`` (a copy may
    start while this is above zero); ``None`` when it has no budget."""
    status = budget_status(state, policy, destination, now)
    return None if status is None else max(0, status.bytes - status.used)


def deferred(left: int | None, new_bytes: Mapping[K, int]) -> list[K]:
    """Of tags in the order a pass starts them, with the bytes each would copy that nothing
    before it copies (``new_bytes``), those a budget with ``left`` bytes (:func:`remaining`)
    would leave waiting, as a pass at ``concurrency: 1`` admits them: a tag with new bytes
    starts while less than ``left`` has been admitted before it. ``None``: no budget."""
    if left is None:
        return []
    admitted, waiting = 0, []
    for key, size in new_bytes.items():
        if size and admitted >= left:
            waiting.append(key)
        elif size:
            admitted += size
    return waiting


class EgressBudget:
    """The budget of one policy's destination as a pass spends it (thread-safe). Without a
    ``budget`` it allows everything and counts nothing."""

    def __init__(self, state: StateStore, policy: str, destination: str, budget: Budget | None,
                 clock: Callable[[], float]):
        self.state = state
        self.policy = policy
        self.destination = destination
        self.budget = budget
        self.clock = clock
        self._lock = threading.Lock()

    def reserve(self, n: int) -> None:
        """Count ``n`` bytes about to be copied. Raises ``BudgetExhausted`` (nothing counted)
        if the period's budget is already spent."""
        if self.budget is None:
            return
        with self._lock:
            start = period_start(self.budget, self.clock())
            used, _ = self.state.egress_used(self.policy, self.destination, start)
            if used >= self.budget.bytes:
                raise BudgetExhausted(f"the egress budget into {self.destination} is spent until "
                                      f"{_timestamp(start + self.budget.per)}")
            self.state.add_egress(self.policy, self.destination, start, n)

    def add(self, n: int) -> None:
        """Count ``n`` bytes copied without asking (negative: give back what a failed copy
        reserved)."""
        if self.budget is not None and n:
            with self._lock:
                self.state.add_egress(self.policy, self.destination,
                                      period_start(self.budget, self.clock()), n)

    def note_waiting(self, tags: int) -> None:
        if self.budget is not None:
            self.state.note_budget_waiting(self.policy, self.destination,
                                           period_start(self.budget, self.clock()), tags)


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
