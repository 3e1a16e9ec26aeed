"""``replicator plan``: what a ``sync`` would do now, and what it would cost; saved plans.

A plan is a dry run of the real passes (:mod:`replicator.engine`) on a throwaway copy of the
state store, so that it reads exactly what the following ``sync`` reads (the same listings,
links and manifests, nothing per blob) and leaves the state store as it was. Its gate's
observer (:class:`PassRecorder`) is shown every write the pass would make and asks the
destination what each costs in requests (``write_requests``, ``copy_requests``,
``step_requests``, ``removal_requests``), with the source's reads of the blobs it would copy
(one ``get`` per blob streamed into any destination of the policy, whose passes share the read;
one ``head`` per server-side copy) and the CDN calls of its
purges. The figures are those a ``sync --json`` right after reports when nothing fails and
nothing changes in between; money is :func:`replicator.costs.estimate` of them.

A plan saved with ``--out`` lists, per policy and destination, every tag to create, move or
delete with the digest it has at the source; :func:`load_saved` turns it back into what
``sync --plan`` applies (``RunOptions.planned``), refusing a plan made for another
configuration.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

from drivers.errors import ConfigError
from replicator.budget import deferred, remaining
from replicator.config import Config, Policy
from replicator.costs import REQUEST_CLASSES, estimate
from replicator.engine import DestinationPass, RunOptions, run_policy
from replicator.gate import Copy, Link, Purge, Removal, Step
from replicator.report import PassReport, human_size
from state.store import StateStore

FORMAT = "replicator-plan/1"
ACTIONS = ("create", "move", "delete")
TEXT_TAGS = 20
"""Tags listed per pass in the text form (``--json`` lists them all)."""


class PassRecorder:
    """Prices, in requests and copies, the steps one dry-run destination pass records, and
    counts its copies in the pass's report as the copier would. ``streamed`` maps each blob
    whose source read a recorder of the policy's destinations counted to that recorder (the
    passes share the read, :mod:`replicator.tee`)."""

    def __init__(self, destination_pass: DestinationPass, streamed: dict[str, PassRecorder]):
        self.destination_pass = destination_pass
        self.report = destination_pass.report
        self.source = destination_pass.policy.source
        self.destination = destination_pass.destination_name
        self.requests: dict[str, Counter] = {self.source: Counter(), self.destination: Counter()}
        self.tags: list[dict] = []
        self.purges: set[str] = set()
        self.uploads: dict[str, str] = {}
        self.streamed = streamed
        self.manifest_bytes = 0
        self.budget_left: int | None = None
        """What the destination's egress budget still allows this period (``None``: no budget)."""
        self._lock = threading.Lock()
        self._copying = threading.local()
        """Bytes the copies of the tag this thread is planning add (a tag's copies and its
        move are recorded on the thread that replicates it)."""

    def __call__(self, step: Step) -> None:
        with self._lock:
            self._record(step)

    def _record(self, step: Step) -> None:
        endpoint = self.destination_pass.destination
        held = self.destination_pass.held
        wrote = self.requests[self.destination]
        if isinstance(step, Copy):
            self._copying.bytes = getattr(self._copying, "bytes", 0) + step.size
        if isinstance(step, Copy) and step.route == "manifest":
            wrote.update(endpoint.write_requests(step.size, manifest=True))
            self.manifest_bytes += step.size
            self._count(manifests_copied=1, bytes_copied=step.size)
        elif isinstance(step, Copy) and step.route == "stream":
            if self.streamed.setdefault(step.digest, self) is self:
                self.requests[self.source]["get"] += 1
            wrote.update(endpoint.write_requests(step.size))
            self.uploads.setdefault(step.digest, step.name)
            self._count(blobs_copied=1, bytes_copied=step.size)
        elif isinstance(step, Copy):
            self.requests[self.source]["head"] += 1
            wrote.update(endpoint.copy_requests(step.size, step.route == "hashed"))
            check = "server_side_verified" if step.route == "hashed" else "server_side_trusted"
            self._count(blobs_copied=1, server_side_copies=1, server_side_bytes=step.size,
                        **{check: 1})
        elif isinstance(step, Link):
            wrote.update(held.step_requests(step.step, self.uploads))
            if step.move is not None:
                move = step.move
                self.tags.append({"repository": move.repository, "tag": move.tag,
                                  "action": "create" if move.previous is None else "move",
                                  "digest": move.digest, "previous": move.previous,
                                  "new_bytes": getattr(self._copying, "bytes", 0)})
                self._copying.bytes = 0
        elif isinstance(step, Removal):
            wrote.update(held.removal_requests(step.step))
            entry = {"repository": step.name, "tag": step.tag, "action": "delete",
                     "digest": None, "previous": None, "new_bytes": 0}
            if entry not in self.tags:
                self.tags.append(entry)
        elif isinstance(step, Purge):
            self.purges.add(step.url)

    def _count(self, **counters: int) -> None:
        for counter, n in counters.items():
            self.report.count(counter, n)


def fingerprint(config: Config) -> str:
    """Names the policies (name, source, destinations, delete) and regions a plan is for."""
    shape = {"regions": sorted(config.regions),
             "policies": [[policy.name, policy.source, list(policy.destinations), policy.delete]
                          for policy in config.policies]}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


def _state_copy(path: Path, folder: str) -> StateStore:
    """A private copy of the state store at ``path`` (empty if there is none)."""
    copy = Path(folder) / "plan-state.db"
    if path.exists():
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
    return StateStore(copy)


def make_plan(config: Config, policies: list[Policy], options: RunOptions) -> dict:
    """The plan document of ``policies`` (see :func:`text`). Reads only; raises
    nothing for a region's error (a pass that cannot run has ``error`` set)."""
    before = {name: region.requests.snapshot() for name, region in config.regions.items()}
    reports, recorders, purges, notes = _dry_run(config, policies, options)
    requests = {name: Counter({kind: count - before[name][kind]
                               for kind, count in region.requests.snapshot().items()})
                for name, region in config.regions.items()}
    passes = []
    for report in reports:
        recorder = recorders.get(id(report))
        passes.append(_pass_entry(report, recorder))
        if recorder is not None:
            for region, counts in recorder.requests.items():
                requests[region].update(counts)
            if recorder.purges:
                purges.setdefault(report.destination, set()).update(recorder.purges)
    document = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {"fingerprint": fingerprint(config), "policies": [p.name for p in policies],
                   "regions": sorted(config.regions)},
        "ok": all(report.ok for report in reports),
        "passes": passes,
        "requests": {name: {kind: counts[kind] for kind in REQUEST_CLASSES}
                     for name, counts in requests.items()},
        "cdn_calls": {name: config.regions[name].cdn.purger.calls_for(len(urls))
                      for name, urls in purges.items()},
        "purge_paths": {name: len(urls) for name, urls in purges.items()},
        "pricing": None,
        "cost": None,
        "notes": notes,
    }
    if config.pricing is not None:
        _price(document, config)
    return document


def _dry_run(config: Config, policies: list[Policy], options: RunOptions,
             ) -> tuple[list[PassReport], dict[int, PassRecorder], dict[str, set[str]], list[str]]:
    """Every pass of ``policies`` run dry on a copy of the state store: the reports, the
    recorder of each (by the report's id), the purges already queued by region (behind a CDN),
    and notes on what the plan does not count."""
    recorders: dict[int, PassRecorder] = {}

    def observer(streamed: dict[str, PassRecorder]):
        def record(destination_pass: DestinationPass) -> PassRecorder:
            recorder = recorders[id(destination_pass.report)] = PassRecorder(destination_pass,
                                                                             streamed)
            return recorder
        return record

    options = replace(options, dry_run=True, wait_for_purges=False, on_pass=None, planned=None)
    reports: list[PassReport] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="replicator-plan-") as folder:
        state = _state_copy(config.state_path, folder)
        try:
            for policy in policies:
                notes.extend(_unfinished_passes(state, policy))
                policy_reports = run_policy(config, policy, state,
                                            replace(options, observer=observer({})))
                for report in policy_reports:
                    if id(report) in recorders:
                        recorders[id(report)].budget_left = remaining(
                            state, policy, report.destination, options.clock())
                reports.extend(policy_reports)
            queued = {name: {item.url for item in state.outstanding_purges(name)}
                      for name, region in config.regions.items() if region.cdn is not None}
        finally:
            state.close()
    return reports, recorders, queued, notes


def _pass_entry(report: PassReport, recorder: PassRecorder | None) -> dict:
    """A pass as ``sync --json`` shows it, with what the plan adds."""
    entry = report.as_dict(dry_run=False)
    entry["tags"] = sorted(recorder.tags, key=lambda t: (t["repository"], t["tag"])) if recorder else []
    entry["manifest_bytes"] = recorder.manifest_bytes if recorder else 0
    entry["egress_bytes"] = report.bytes_copied + report.server_side_bytes
    entry["purge_urls"] = len(recorder.purges) if recorder else 0
    entry["budget"] = _budget_entry(recorder)
    return entry


def _budget_entry(recorder: PassRecorder | None) -> dict | None:
    """What the destination's egress budget would defer: the tags, in the order the pass
    would make them, that would wait for the next period (as a pass at concurrency 1 admits
    them); ``None`` without a budget."""
    if recorder is None or recorder.budget_left is None:
        return None
    made = [tag for tag in recorder.tags if tag["action"] != "delete"]
    waiting = deferred(recorder.budget_left,
                       {(tag["repository"], tag["tag"]): tag["new_bytes"] for tag in made})
    return {"left": recorder.budget_left,
            "deferred": [{"repository": name, "tag": tag} for name, tag in waiting]}


def _unfinished_passes(state: StateStore, policy: Policy) -> list[str]:
    return [f"{policy.name} -> {destination}: the last pass never ended, so the next one first "
            f"lists and discards abandoned uploads (not counted here)"
            for destination in state.unfinished_passes(policy.name)]


def _price(document: dict, config: Config) -> None:
    pricing = config.pricing
    egress = Counter()
    for entry in document["passes"]:
        egress[(entry["source"], entry["destination"])] += entry["egress_bytes"]
    costs = estimate(pricing, document["requests"], egress, document["purge_paths"])
    document["pricing"] = {
        "tables": [{"name": table.name, "taken": table.taken, "sources": list(table.sources),
                    "currency": table.currency, "file": table.path} for table in pricing.tables],
        "regions": {name: f"{priced.table.name} {priced.entry}"
                    for name, priced in sorted(pricing.regions.items())},
        "unpriced": sorted(name for name in document["requests"] if name not in pricing.regions),
    }
    for entry in document["passes"]:
        rate = pricing.egress_per_gib(entry["source"], entry["destination"])
        entry["egress_cost"] = entry["egress_bytes"] / 1024 ** 3 * rate
    document["cost"] = {
        "currency": pricing.tables[0].currency if pricing.tables else "USD",
        "total": sum(cost.total for cost in costs.values()),
        "regions": {name: {**asdict(cost), "total": cost.total} for name, cost in sorted(costs.items())},
    }


def text(document: dict) -> str:
    """The plan as tables: per pass its tags, copies and egress, then requests and money per
    region, and the price tables used."""
    lines = []
    pricing = document["pricing"]
    if pricing:
        for table in pricing["tables"]:
            taken = f"prices taken {table['taken']}" if table["taken"] else "prices from the configuration"
            lines.append(f"priced with {table['name']} ({taken}"
                         + (f"; {', '.join(table['sources'])}" if table["sources"] else "") + ")")
        lines.append("regions priced as: " + ", ".join(f"{name} = {entry}"
                                                        for name, entry in pricing["regions"].items()))
    for entry in document["passes"]:
        lines.append(f"{entry['policy']}: {entry['source']} -> {entry['destination']}"
                     + (f": ERROR {entry['error']}" if entry["error"] else ""))
        if entry["error"]:
            continue
        actions = Counter(tag["action"] for tag in entry["tags"])
        lines.append(f"  tags       {actions['create']} to create, {actions['move']} to move, "
                     f"{actions['delete']} to delete, {entry['tags_unchanged']} unchanged"
                     + (f", {entry['tags_failed']} failing" if entry["tags_failed"] else ""))
        streamed = entry["blobs_copied"] - entry["server_side_copies"]
        blob_bytes = entry["bytes_copied"] - entry["manifest_bytes"]
        lines.append(f"  blobs      {streamed} streamed ({human_size(blob_bytes)}), "
                     f"{entry['server_side_copies']} server-side "
                     f"({human_size(entry['server_side_bytes'])}), {entry['manifests_copied']} "
                     f"manifests, {entry['blobs_present']} already there")
        egress = f"  egress     {human_size(entry['egress_bytes'])} ({entry['egress_bytes']} B)"
        if "egress_cost" in entry:
            egress += f" from {entry['source']}: {_money(entry['egress_cost'])}"
        lines.append(egress)
        if entry["purge_urls"]:
            lines.append(f"  purges     {entry['purge_urls']} URLs")
        if entry["budget"] is not None:
            deferred_tags = entry["budget"]["deferred"]
            lines.append(f"  budget     {human_size(entry['budget']['left'])} left this period: "
                         f"{len(deferred_tags)} tags would wait for the next"
                         + "".join(f"\n    waits  {tag['repository']}:{tag['tag']}"
                                   for tag in deferred_tags[:TEXT_TAGS]))
        for tag in entry["tags"][:TEXT_TAGS]:
            lines.append(f"    {tag['action']:<6} {tag['repository']}:{tag['tag']}"
                         + (f" {tag['digest']}" if tag["digest"] else ""))
        if len(entry["tags"]) > TEXT_TAGS:
            lines.append(f"    ... and {len(entry['tags']) - TEXT_TAGS} more tags (--json lists them all)")
        for failure in entry["failures"]:
            lines.append(f"    FAILING {failure['repository']}:{failure['tag']}: {failure['error']}")
    cost = document["cost"] or {"regions": {}}
    header = f"  {'region':<16}{'LIST':>8}{'GET':>8}{'HEAD':>8}{'PUT/COPY/POST':>15}{'DELETE':>8}"
    lines.append("requests" + ("" if document["cost"] else " (no pricing: block in the configuration)"))
    money_header = "".join(f"{part:>11}" for part in ("requests", "egress", "CDN", "total"))
    lines.append(header + (money_header if document["cost"] else ""))
    for name, counts in document["requests"].items():
        if not any(counts.values()) and name not in cost["regions"]:
            continue
        row = (f"  {name:<16}{counts['list']:>8}{counts['get']:>8}{counts['head']:>8}"
               f"{counts['put'] + counts['copy']:>15}{counts['delete']:>8}")
        if name in cost["regions"]:
            money = cost["regions"][name]
            row += "".join(f"{_money(money[part]):>11}" for part in ("requests", "egress", "cdn", "total"))
        lines.append(row)
    for name, calls in document["cdn_calls"].items():
        if calls:
            lines.append(f"  CDN {name}: {document['purge_paths'][name]} invalidation paths, {calls} API calls")
    if document["cost"]:
        lines.append(f"estimated total: {_money(document['cost']['total'])} {document['cost']['currency']}"
                     + (f" (unpriced: {', '.join(pricing['unpriced'])})" if pricing["unpriced"] else ""))
    lines.extend(f"note: {note}" for note in document["notes"])
    return "\n".join(lines)


def _money(amount: float) -> str:
    if amount < 0.01:
        return f"${amount:.6f}"
    return f"${amount:.4f}" if amount < 100 else f"${amount:,.2f}"


def load_saved(path: str, config: Config) -> dict[str, dict[str, dict[tuple[str, str], str | None]]]:
    """A saved plan as ``RunOptions.planned`` per policy: policy -> destination -> (repository,
    tag) -> digest (``None``: delete). Raises ``ConfigError`` (field ``--plan``) for a file that
    cannot be read, is not a plan, or was made for another configuration."""
    try:
        document = json.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError("--plan", f"cannot read {path}: {error.strerror}") from None
    except ValueError:
        raise ConfigError("--plan", f"{path} is not JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ConfigError("--plan", f"{path} is not a saved plan ({FORMAT})")
    if (document.get("config") or {}).get("fingerprint") != fingerprint(config):
        raise ConfigError("--plan", f"{path} was made for another configuration (its policies "
                                    f"or regions differ): make a new plan")
    planned: dict[str, dict[str, dict[tuple[str, str], str | None]]] = {}
    try:
        for entry in document["passes"]:
            config.policy(entry["policy"])
            tags = planned.setdefault(entry["policy"], {}).setdefault(entry["destination"], {})
            for tag in entry["tags"]:
                if tag["action"] not in ACTIONS or (tag["digest"] is None) != (tag["action"] == "delete"):
                    raise ValueError(tag)
                tags[(str(tag["repository"]), str(tag["tag"]))] = tag["digest"]
    except (KeyError, TypeError, ValueError, ConfigError):
        raise ConfigError("--plan", f"{path}: malformed plan (its passes or tags)") from None
    return planned
