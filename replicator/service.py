"""``replicator serve``: scheduled passes, push-triggered targeted passes, metrics.

Each policy runs on its schedule (APScheduler; missed runs coalesce). A push or delete event
for a policy's source region marks the repository pending at once (so lag shows it) and,
debounced, runs a targeted pass over that repository. A lock per policy ensures that no two
passes of one policy ever run at once. Scheduled passes defer failing tags with exponential
back-off and become audits (re-reading everything) once per ``audit_interval``.

Every change a pass applies goes to the audit trail (shipped every ``audit.ship_interval``);
a change a scheduled pass applies that no event announced counts in
``replicator_changes_without_event_total`` (the first scheduled pass of each policy counts
nothing: it catches up on what changed while nothing listened).

Scheduled passes leave out destinations outside their sync windows; push-triggered passes
replicate into them anyway unless the policy has ``strict_windows``. Deletions above a policy's
``max_delete`` are never forced here (``replicator sync --force-delete`` does that, once).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from drivers.errors import ConfigError, StorageError
from replicator.audit import AuditWriter, Change
from replicator.audit_shipping import ship_configured
from replicator.endpoints import endpoint_for
from replicator.config import Config, Policy
from replicator.debounce import Debouncer
from replicator.engine import RETRY_BACKOFF, RunOptions, run_policy
from replicator.artifacts import wanted_tag
from replicator.filters import policy_selects, selected
from replicator.metrics import Metrics
from replicator.notifications import TRIGGERS, Event
from replicator.purging import recover_purges, send_purges
from replicator.report import PassReport
from replicator.sharding import Shard
from state.store import StateStore

log = logging.getLogger(__name__)

PURGE_RETRY_INTERVAL = 2.0
READINESS_INTERVAL = 10.0
DEBOUNCE_MAX_FACTOR = 10
"""A burst of events waits at most this many debounce windows."""


class Service:
    def __init__(self, config: Config, state: StateStore, shard: Shard = Shard()):
        self.config = config
        self.state = state
        self.shard = shard
        self.metrics = Metrics(config, state)
        self.stopping = threading.Event()
        self.halted = threading.Event()
        """Set when a pass finds the configuration wrong (``config_error``): the service ends."""
        self.config_error: ConfigError | None = None
        self.readiness: dict[str, str] = {name: "not checked yet" for name in config.regions}
        self._locks = {policy.name: threading.Lock() for policy in config.policies}
        self._scheduler = BackgroundScheduler(timezone=timezone.utc)
        quiet = config.server.debounce
        self._events = Debouncer(lambda key: self.run_pass(*key), quiet, quiet * DEBOUNCE_MAX_FACTOR)
        self.trail = AuditWriter(config.audit_log) if config.audit_log else None
        self._caught_up: set[str] = set()

    def start(self) -> None:
        recover_purges(self.config.regions, self.state)
        self.state.take_visible_replications()   # made visible before this process: not observed
        now = datetime.now(timezone.utc)
        for policy in self.config.policies:
            if policy.schedule.cron:
                trigger = CronTrigger.from_crontab(policy.schedule.cron, timezone=timezone.utc)
                first = None
            else:
                trigger = IntervalTrigger(seconds=policy.schedule.interval, timezone=timezone.utc)
                first = now
            self._scheduler.add_job(self.run_pass, trigger, args=[policy.name], id=policy.name,
                                    max_instances=1, coalesce=True, misfire_grace_time=None,
                                    next_run_time=first)
        self._scheduler.add_job(self.retry_purges, IntervalTrigger(seconds=PURGE_RETRY_INTERVAL),
                                id="purges", max_instances=1, coalesce=True)
        self._scheduler.add_job(self.check_readiness, IntervalTrigger(seconds=READINESS_INTERVAL),
                                id="readiness", max_instances=1, coalesce=True, next_run_time=now)
        if self.config.audit_log and self.config.audit_log.region:
            self._scheduler.add_job(ship_configured, IntervalTrigger(
                seconds=self.config.audit_log.ship_interval), args=[self.config], id="audit",
                max_instances=1, coalesce=True)
        self._scheduler.start()
        self._events.start()

    def retry_purges(self) -> None:
        """Send the purges that failed earlier and are due again."""
        for name, region in self.config.regions.items():
            if region.cdn is not None:
                self.metrics.observe_purges(name, send_purges(region, self.state))
        self.metrics.observe_replications(self.state.take_visible_replications())

    def stop(self) -> None:
        """Start no new tag; let passes under way finish their current tags; then return."""
        self.stopping.set()
        self._scheduler.shutdown(wait=True)
        self._events.stop()
        ship_configured(self.config)

    def run_pass(self, policy_name: str, repository: str | None = None) -> list[PassReport]:
        """One pass of a policy (targeted at ``repository`` if given); waits for any pass of
        the same policy under way. Storage errors that stop the whole pass are logged; a
        ``ConfigError`` (a region holding both layout flavours) sets ``halted``."""
        policy = next(p for p in self.config.policies if p.name == policy_name)
        with self._locks[policy_name]:
            if self.stopping.is_set():
                return []
            audit = repository is None and self._audit_due(policy)
            changes: list[Change] = []
            options = RunOptions.from_config(self.config, audit=audit, backoff=RETRY_BACKOFF,
                                             stop=self.stopping, shard=self.shard,
                                             respect_windows=repository is None or policy.strict_windows,
                                             on_change=lambda change: self._applied(change, changes))
            begun = time.time()
            started = time.monotonic()
            try:
                reports = run_policy(self.config, policy, self.state, options, repository)
            except ConfigError as error:
                log.error("configuration error: %s", error)
                self.config_error = error
                self.halted.set()
                return []
            duration = time.monotonic() - started
            for report in reports:
                self.metrics.observe(report, None if repository else duration)
                log.info("pass %s -> %s%s: %d replicated, %d unchanged, %d failed", policy_name,
                         report.destination, f" ({repository})" if repository else "",
                         report.tags_replicated, report.tags_unchanged, report.tags_failed)
            self._settle_announcements(policy, changes, repository, begun)
            self.metrics.observe_replications(self.state.take_visible_replications())
            return reports

    def _applied(self, change: Change, changes: list[Change]) -> None:
        if self.trail is not None:
            self.trail.append(change)
        changes.append(change)

    def _settle_announcements(self, policy: Policy, changes: list[Change], repository: str | None,
                              begun: float) -> None:
        """Count the changes a scheduled pass applied that no event announced, then forget the
        announcements of what the pass (begun at ``begun``) left in sync."""
        if repository is None:
            if policy.name in self._caught_up:
                for change in changes:
                    if not self.state.announced(policy.name, change.destination,
                                                change.repository, change.tag):
                        self.metrics.changes_without_event.labels(
                            policy.name, policy.source, change.destination).inc()
            self._caught_up.add(policy.name)
        for destination in policy.destinations:
            self.state.forget_announced(policy.name, destination, begun, repository)

    def _audit_due(self, policy: Policy) -> bool:
        for destination in policy.destinations:
            last = self.state.last_pass(policy.name, destination, audit_only=True)
            if last is None or time.time() - last.finished >= self.config.audit_interval:
                return True
        return False

    def receive(self, region: str, events: list[Event]) -> int:
        """Take a validated envelope's events for ``region``; returns how many triggered a
        targeted pass. Pull and mount events, and events for repositories another shard owns,
        are counted and otherwise ignored."""
        triggered = 0
        for event in events:
            self.metrics.events.labels(region, event.action).inc()
            if event.action not in TRIGGERS or not self.shard.owns(event.repository):
                continue
            for policy in self.config.policies:
                if policy.source != region or not selected(policy.repositories, event.repository):
                    continue
                if event.tag and not (policy_selects(policy, event.repository, event.tag)
                                      or wanted_tag(policy, event.tag)):
                    continue
                for destination in policy.destinations:
                    self.state.add_pending(policy.name, destination, event.repository, event.tag,
                                           event.timestamp)
                    self.state.announce(policy.name, destination, event.repository, event.tag)
                self._events.hint((policy.name, event.repository))
                triggered += 1
        return triggered

    def check_readiness(self) -> None:
        """List one page of each region's storage; ``readiness`` then says ``"ok"`` or the error
        per region. Runs at start and every ``READINESS_INTERVAL`` so that probes answer at once."""
        result = {}
        for name, region in self.config.regions.items():
            try:
                endpoint_for(region).probe()
                result[name] = "ok"
            except StorageError as error:
                result[name] = f"unreachable: {error}"
        self.readiness = result
