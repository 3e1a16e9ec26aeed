"""Prometheus metrics, prefix ``replicator_``.

Counters and the pass-duration histogram are updated after each pass. Lag, pending, failing
and last-success gauges are read from the state store at scrape time (the same reading as
``replicator status``), and storage request counts from each region's driver counter.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from replicator.config import Config
from replicator.purging import PurgeOutcome
from replicator.report import PassReport
from replicator.status import destination_statuses
from state.store import Replication, StateStore

disable_created_metrics()

PASS_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
DESTINATION = ("policy", "source", "destination")
DELAY_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
"""Replication delays: seconds (pushes announced by events) to a day (a stuck destination)."""


class Metrics:
    def __init__(self, config: Config, state: StateStore):
        self.registry = CollectorRegistry()
        self.tags_replicated = Counter("replicator_tags_replicated", "Tags created or moved at a destination.",
                                       DESTINATION, registry=self.registry)
        self.blobs_copied = Counter("replicator_blobs_copied", "Blobs and manifests copied to a destination.",
                                    DESTINATION, registry=self.registry)
        self.bytes_copied = Counter("replicator_bytes_copied", "Bytes streamed through the "
                                    "replicator to a destination.", DESTINATION, registry=self.registry)
        self.server_side_bytes = Counter("replicator_server_side_bytes", "Bytes a destination's "
                                         "storage copied from the source's itself.", DESTINATION,
                                         registry=self.registry)
        self.server_side_copies = Counter("replicator_server_side_copies", "Blobs a destination's "
                                          "storage copied from the source's itself, by check: verified "
                                          "(SHA-256 proven by the provider) or trusted (size only).",
                                          (*DESTINATION, "check"), registry=self.registry)
        self.errors = Counter("replicator_errors", "Tags that failed in a pass, by kind of error.",
                              ("destination", "kind"), registry=self.registry)
        self.events = Counter("replicator_events_received", "Registry notification events received.",
                              ("region", "action"), registry=self.registry)
        self.purges = Counter("replicator_cdn_purges", "CDN purge URLs sent, by result (sent, "
                              "retrying, failed).", ("destination", "provider", "result"),
                              registry=self.registry)
        self.pass_duration = Histogram("replicator_pass_duration_seconds",
                                       "Duration of full passes, per destination.", DESTINATION,
                                       buckets=PASS_BUCKETS, registry=self.registry)
        self.changes_without_event = Counter(
            "replicator_changes_without_event", "Changes a scheduled pass applied that no push "
            "or delete event had announced (lost notifications).", DESTINATION,
            registry=self.registry)
        self.replication_delay = Histogram(
            "replicator_replication_delay_seconds", "From a tag's change at the source to the "
            "change visible at the destination (its CDN purge accepted), one per tag change.",
            ("policy", "destination"), buckets=DELAY_BUCKETS, registry=self.registry)
        self.config = config
        self.registry.register(_StateCollector(config, state))
        self.registry.register(_RequestCollector(config))

    def observe(self, report: PassReport, duration: float | None) -> None:
        """Count one pass into one destination; ``duration`` only for full passes."""
        labels = (report.policy, report.source, report.destination)
        self.tags_replicated.labels(*labels).inc(report.tags_replicated)
        self.blobs_copied.labels(*labels).inc(report.blobs_copied + report.manifests_copied)
        self.bytes_copied.labels(*labels).inc(report.bytes_copied)
        self.server_side_bytes.labels(*labels).inc(report.server_side_bytes)
        for check in ("verified", "trusted"):
            self.server_side_copies.labels(*labels, check).inc(getattr(report, f"server_side_{check}"))
        for failure in report.failures:
            if failure.kind not in ("deferred", "budget"):
                self.errors.labels(report.destination, failure.kind).inc()
        if report.error_kind is not None:
            self.errors.labels(report.destination, report.error_kind).inc()
        if duration is not None:
            self.pass_duration.labels(*labels).observe(duration)
        self.observe_purges(report.destination, PurgeOutcome(
            report.purges_sent, report.purges_retrying, report.purges_failed))

    def observe_replications(self, replications: list[Replication]) -> None:
        """One replication-delay observation per tag change made visible."""
        for replication in replications:
            self.replication_delay.labels(replication.policy, replication.destination).observe(
                max(0.0, replication.visible - replication.changed))

    def observe_purges(self, destination: str, outcome: PurgeOutcome) -> None:
        cdn = self.config.regions[destination].cdn
        if cdn is None:
            return
        for result in ("sent", "retrying", "failed"):
            self.purges.labels(destination, cdn.purger.kind, result).inc(getattr(outcome, result))


class _StateCollector:
    def __init__(self, config: Config, state: StateStore):
        self.config = config
        self.state = state

    def collect(self):
        families = {
            "lag": GaugeMetricFamily("replicator_lag_seconds", "Age of the oldest change at the "
                                     "source not yet visible at the destination (0 in sync).", labels=DESTINATION),
            "pending": GaugeMetricFamily("replicator_pending_tags", "Tags known to differ between "
                                         "source and destination.", labels=DESTINATION),
            "failing": GaugeMetricFamily("replicator_failing_tags", "Tags whose last attempt failed.",
                                         labels=DESTINATION),
            "queue": GaugeMetricFamily("replicator_cdn_purge_queue", "CDN purges recorded and not "
                                       "yet accepted by the provider.", labels=("destination",)),
            "budget_used": GaugeMetricFamily("replicator_egress_budget_used_bytes", "Bytes copied "
                                             "into the destination in its current egress budget "
                                             "period.", labels=DESTINATION),
            "budget_waiting": GaugeMetricFamily("replicator_budget_waiting_tags", "Tags the last full "
                                                "pass left pending because the egress budget was "
                                                "spent.", labels=DESTINATION),
            "success": GaugeMetricFamily("replicator_last_success_timestamp_seconds", "End of the last "
                                         "full pass with no failure (0: never).", labels=DESTINATION),
        }
        queues = {}
        for status in destination_statuses(self.config, self.state, time.time()):
            queues[status.destination] = status.purges_outstanding
            labels = [status.policy, status.source, status.destination]
            families["lag"].add_metric(labels, status.lag_seconds)
            families["pending"].add_metric(labels, status.pending_tags)
            families["failing"].add_metric(labels, len(status.failing))
            families["success"].add_metric(labels, status.last_success or 0)
            if status.budget is not None:
                families["budget_used"].add_metric(labels, status.budget.used)
                families["budget_waiting"].add_metric(labels, status.budget.waiting_tags)
        for destination, outstanding in queues.items():
            if self.config.regions[destination].cdn is not None:
                families["queue"].add_metric([destination], outstanding)
        yield from families.values()


class _RequestCollector:
    def __init__(self, config: Config):
        self.config = config

    def collect(self):
        family = CounterMetricFamily("replicator_storage_requests", "Storage API requests sent, by "
                                     "region and kind.", labels=("region", "op"))
        for name, region in self.config.regions.items():
            for op, count in region.requests.snapshot().items():
                family.add_metric([name, op], count)
        yield family
