"""How far behind each destination is, from the state store alone (no storage requests).

``replicator status`` and the ``/metrics`` gauges both read :func:`destination_statuses`, so
they always agree. It works while ``serve`` runs: the state store is read through WAL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from replicator.budget import BudgetStatus, budget_status
from replicator.config import Config
from replicator.report import human_size
from state.store import FailureRecord, StateStore


@dataclass(frozen=True)
class DestinationStatus:
    policy: str
    source: str
    destination: str
    lag_seconds: float
    pending_tags: int
    failing: tuple[FailureRecord, ...]
    last_pass: float | None
    last_success: float | None
    purges_outstanding: int = 0
    budget: BudgetStatus | None = None
    """The destination's egress budget in the current period, if it has one."""

    @property
    def in_sync(self) -> bool:
        return (self.pending_tags == 0 and not self.failing and not self.purges_outstanding
                and self.last_success is not None and self.last_pass == self.last_success)

    def as_dict(self) -> dict:
        return {
            "policy": self.policy, "source": self.source, "destination": self.destination,
            "in_sync": self.in_sync, "lag_seconds": round(self.lag_seconds, 3),
            "pending_tags": self.pending_tags, "failing_tags": len(self.failing),
            "last_pass": self.last_pass, "last_success": self.last_success,
            "purges_outstanding": self.purges_outstanding,
            "egress_budget": self.budget.as_dict() if self.budget else None,
            "failures": [{"repository": f.repository, "tag": f.tag, "digest": f.digest,
                          "attempts": f.attempts, "error": f.error, "first_failed": f.first_failed,
                          "next_retry": f.next_retry, "kind": f.kind} for f in self.failing],
        }


def lag_seconds(pending_since: list[float], now: float) -> float:
    """The age of the oldest change not yet visible: pending tags and outstanding CDN purges
    (an edge still serving the old manifest is not in sync); 0 when there is none."""
    return max(0.0, now - min(pending_since)) if pending_since else 0.0


def destination_statuses(config: Config, state: StateStore, now: float | None = None) -> list[DestinationStatus]:
    now = time.time() if now is None else now
    statuses = []
    for policy in config.policies:
        for destination in policy.destinations:
            pending = state.pending(policy.name, destination)
            purges = state.outstanding_purges(destination)
            failing = sorted(state.failures(policy.name, destination).values(),
                             key=lambda f: (f.repository, f.tag))
            last = state.last_pass(policy.name, destination)
            success = state.last_pass(policy.name, destination, ok_only=True)
            changes = [*pending.values(), *(purge.created for purge in purges)]
            statuses.append(DestinationStatus(
                policy.name, policy.source, destination, lag_seconds(changes, now),
                len(pending), tuple(failing), last.finished if last else None,
                success.finished if success else None, len(purges),
                budget_status(state, policy, destination, now)))
    return statuses


def status_text(statuses: list[DestinationStatus]) -> str:
    lines = []
    for status in statuses:
        state = "in sync" if status.in_sync else "NOT in sync"
        lines.append(f"{status.policy}: {status.source} -> {status.destination}: {state}, "
                     f"lag {status.lag_seconds:.0f}s, {status.pending_tags} pending, "
                     f"{len(status.failing)} failing, {status.purges_outstanding} CDN purges "
                     f"outstanding, last success {when_text(status.last_success)}")
        if status.budget is not None:
            budget = status.budget
            lines.append(f"  egress budget: {human_size(budget.used)} of {human_size(budget.bytes)} "
                         f"used until {when_text(budget.period_ends)}; {budget.waiting_tags} tags "
                         f"waiting for it (pending, reason budget)")
        lines.extend(f"  FAILING {f.repository}:{f.tag} ({f.attempts} attempts, next retry "
                     f"{when_text(f.next_retry)}): {f.kind + ': ' if f.kind else ''}{f.error}"
                     for f in status.failing)
    return "\n".join(lines)


def when_text(seconds: float | None) -> str:
    """A UTC time as ISO 8601 (``never`` for ``None`` or 0)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)) if seconds else "never"
