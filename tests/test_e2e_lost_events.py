"""``replicator serve`` counts the changes its schedule finds that no push event announced.

The source is a directory in Distribution's layout with two registries over it: one sends its
push notifications to the service, the other sends none. Pushing through the first is a push
whose event arrives; stopping it and pushing through the second is pushing while the webhook
sender is down (notifications lost). Scheduled passes run every 2 seconds. The service writes
its audit trail and ships it on its timer into a directory region.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests import registry as reg
from tests.services import free_port
from tests.test_e2e_audit import TOOLS, WEB_1, WEB_2
from tests.test_e2e_serve import notifications_endpoint, start_notifying_registry
from tests.test_e2e_sync import write_config
from tests.test_service import TOKEN, Replicator, wait_for

LOST = "replicator_changes_without_event_total"
LABELS = {"policy": "mirror", "source": "primary", "destination": "local"}


def trail(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def scheduled_passes(replicator: Replicator) -> float:
    return replicator.scrape().value("replicator_pass_duration_seconds_count", **LABELS)


def test_changes_the_schedule_finds_without_an_event_are_counted(tmp_path):
    port = free_port()
    primary = reg.filesystem_storage(tmp_path / "primary")
    audit_path = tmp_path / "audit.jsonl"
    services = []
    try:
        notifying = start_notifying_registry(primary, tmp_path / "logs", notifications_endpoint(
            f"http://127.0.0.1:{port}/events/primary"))
        services.append(notifying)
        config = write_config(tmp_path / "replicator.yml", {
            "state": {"path": str(tmp_path / "state.db")},
            "server": {"listen": f"127.0.0.1:{port}", "webhook_token": TOKEN, "debounce": "0.3s"},
            "regions": {"primary": {"storage": primary},
                        "local": {"storage": reg.filesystem_storage(tmp_path / "local")},
                        "archive": {"storage": reg.filesystem_storage(tmp_path / "archive")}},
            "policies": [{"name": "mirror", "source": "primary", "destinations": ["local"],
                          "schedule": {"interval": "2s"}}],
            "audit": {"path": str(audit_path), "region": "archive", "prefix": "audit/",
                      "ship_interval": "1s"}})
        replicator = Replicator(config, port, tmp_path / "logs")
        services.append(replicator)
        replicator.wait_for_pass()

        reg.push(notifying.url, "apps/web", "1.0", WEB_1, tmp_path / "work")
        wait_for(lambda: len(trail(audit_path)) == 1, lambda: f"the pushed tag replicated "
                 f"({replicator.log()})")
        after = scheduled_passes(replicator)
        wait_for(lambda: scheduled_passes(replicator) >= after + 2, "two more scheduled passes")
        assert replicator.scrape().value("replicator_events_received_total", region="primary",
                                         action="push") > 0
        assert replicator.scrape().value(LOST, **LABELS) == 0

        notifying.stop()   # the webhook sender is gone: pushes below announce nothing
        silent = reg.start_registry(primary, tmp_path / "logs")
        services.append(silent)
        reg.push(silent.url, "apps/web", "1.0", WEB_2, tmp_path / "work")
        reg.push(silent.url, "base/tools", "latest", TOOLS, tmp_path / "work")
        wait_for(lambda: len(trail(audit_path)) == 3, lambda: f"the schedule replicating the "
                 f"silent pushes ({replicator.log()})")
        wait_for(lambda: replicator.scrape().value(LOST, **LABELS) == 2, lambda: (
            f"{LOST} counting the two changes ({replicator.scrape().value(LOST, **LABELS)})"))
        after = scheduled_passes(replicator)
        wait_for(lambda: scheduled_passes(replicator) >= after + 2, "two more scheduled passes")
        assert replicator.scrape().value(LOST, **LABELS) == 2

        lines = trail(audit_path)
        assert (lines[0]["repository"], lines[0]["tag"], lines[0]["action"]) == ("apps/web", "1.0",
                                                                                 "create")
        assert sorted((line["repository"], line["tag"], line["action"], line["old_digest"],
                       line["new_digest"]) for line in lines[1:]) == [
            ("apps/web", "1.0", "move", WEB_1.digest, WEB_2.digest),
            ("base/tools", "latest", "create", None, TOOLS.digest)]
        assert lines[0]["pass_id"] not in {line["pass_id"] for line in lines[1:]}
        archive = tmp_path / "archive" / "audit"

        def shipped() -> bytes:
            return b"".join(path.read_bytes() for path in sorted(archive.rglob("*.jsonl")))

        wait_for(lambda: shipped() == audit_path.read_bytes(), "the trail shipped on the timer")
    finally:
        for service in reversed(services):
            service.stop()
