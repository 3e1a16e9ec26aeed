"""``replicator serve`` with a registry over its API as the source, driven by that registry's
push notifications: registry A (read through its API) -> a filesystem region served by
read-only registry B. The schedule is an hour, so only the startup pass and the webhook make
passes; pushes to A must be served by B, with the same digest, within seconds.
"""

from __future__ import annotations

import uuid

from tests import registry as reg
from tests.services import free_port
from tests.test_e2e_serve import REPLICATION_WAIT, notifications_endpoint, start_notifying_registry
from tests.test_e2e_sync import WEB_1_0, WEB_MULTI, expected_pull, write_config
from tests.test_service import TOKEN, Replicator, wait_for


def test_pushes_to_a_source_registry_reach_the_destination_through_the_webhook(tmp_path):
    port = free_port()
    endpoint = notifications_endpoint(f"http://127.0.0.1:{port}/events/upstream")
    services = []
    try:
        upstream = start_notifying_registry(reg.filesystem_storage(tmp_path / "upstream"),
                                            tmp_path / "logs", endpoint)
        services.append(upstream)
        local = reg.filesystem_storage(tmp_path / "local")
        config = write_config(tmp_path / "replicator.yml", {
            "state": {"path": str(tmp_path / "state.db")},
            "server": {"listen": f"127.0.0.1:{port}", "webhook_token": TOKEN, "debounce": "0.5s"},
            "regions": {"upstream": {"registry": {"url": upstream.url}}, "local": {"storage": local}},
            "policies": [{"name": "mirror", "source": "upstream", "destinations": ["local"],
                          "schedule": {"interval": "1h"}}]})
        replicator = Replicator(config, port, tmp_path / "logs")
        services.append(replicator)
        replicator.wait_for_pass()
        assert replicator.get("/readyz")[0] == 200   # the registry answers GET /v2/
        replica = reg.start_registry(local, tmp_path / "logs", readonly=True)
        services.append(replica)

        for tag, image in (("1.0", WEB_1_0), ("multi", WEB_MULTI)):
            assert reg.push(upstream.url, "apps/web", tag, image, tmp_path / "work") == image.digest

            def served(tag=tag, image=image) -> bool:
                try:
                    return reg.manifest_digest(replica.url, "apps/web", tag) == image.digest
                except reg.SkopeoError:
                    return False

            wait_for(served, lambda: f"B serving apps/web:{tag} ({replicator.log()})",
                     REPLICATION_WAIT, interval=0.2)
            pulled = reg.pull(replica.url, "apps/web", tag, tmp_path / "pulls" / uuid.uuid4().hex)
            assert (image.digest, pulled) == expected_pull(image)

        wait_for(lambda: replicator.scrape().value("replicator_pending_tags") == 0,
                 "the pending set emptied")
        scrape = replicator.scrape()
        assert scrape.value("replicator_lag_seconds") == 0
        assert scrape.value("replicator_events_received_total", region="upstream", action="push") > 0
        assert scrape.value("replicator_storage_requests_total", region="upstream", op="head") > 0
    finally:
        for service in reversed(services):
            service.stop()
