"""A late signature and the webhook: ``serve`` replicates a signature pushed after its image as
soon as the registry's push event for the signature tag arrives, though the policy's tag filter
(``v*``) does not select the signature's tag and the next scheduled pass is an hour away."""

from __future__ import annotations


import pytest

from replicator import sample_images as si
from tests import registry as reg
from tests import supply_chain as sc
from tests.services import free_port
from tests.test_e2e_artifacts import fallback
from tests.test_e2e_sync import write_config
from tests.test_notifications import envelope, event
from tests.test_service import TOKEN, Replicator, wait_for

REPO = "apps/late"
IMAGE = si.image([si.layer({"srv/app": b"signed after its push\n"})])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("artifact-events")
    primary = reg.filesystem_storage(tmp / "primary")
    replica = reg.filesystem_storage(tmp / "replica")
    registry = reg.start_registry(primary, tmp / "logs")
    api = sc.Api(registry.url)
    replicator = None
    try:
        reg.push(registry.url, REPO, "v1", IMAGE, tmp / "work")
        port = free_port()
        config = write_config(tmp / "replicator.yml", {
            "state": {"path": str(tmp / "state.db")},
            "regions": {"primary": {"storage": primary}, "replica": {"storage": replica}},
            "server": {"listen": f"127.0.0.1:{port}", "webhook_token": TOKEN, "debounce": "0.2s"},
            "policies": [{"name": "late", "source": "primary", "destinations": ["replica"],
                          "tags": {"include": ["v*"]}, "schedule": {"interval": "1h"}}]})
        replicator = Replicator(config, port, tmp)
        replicator.wait_for_pass()
        yield {"api": api, "replicator": replicator, "replica": reg.Store(replica)}
    finally:
        api.close()
        if replicator is not None:
            replicator.stop()
        registry.stop()


def test_the_signature_event_brings_the_late_signature(served):
    store, replicator = served["replica"], served["replicator"]
    tag = f"{fallback(IMAGE.digest)}.sig"
    assert store.get(reg.tag_current_key(REPO, "v1")).decode() == IMAGE.digest
    signature = sc.sign(served["api"], REPO, IMAGE.digest, sc.new_key())
    assert not store.exists(reg.tag_current_key(REPO, tag))
    assert replicator.post(envelope(event("push", REPO, tag, digest=signature))) \
        == (200, {"accepted": 1, "triggered": 1})
    wait_for(lambda: store.exists(reg.tag_current_key(REPO, tag)), "the signature at the replica")
    assert store.get(reg.tag_current_key(REPO, tag)).decode() == signature
    assert not reg.missing_keys(store, REPO, "v1", IMAGE)


def test_events_for_tags_neither_selected_nor_artifacts_trigger_nothing(served):
    assert served["replicator"].post(envelope(event("push", REPO, "dev"))) \
        == (200, {"accepted": 1, "triggered": 0})
