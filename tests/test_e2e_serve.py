"""End to end: registry A's push notifications drive `replicator serve` to registry B.

moto serves bucket A (region ``primary``) and bucket B (``replica``). `replicator serve` runs with
a one-hour schedule, so only its startup pass and the webhook make passes. docker-registry A
serves bucket A and sends every event to ``/events/primary`` with the bearer token; read-only
docker-registry B serves bucket B. Images are pushed to A with skopeo and must be served by B,
with the same digest, within seconds.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from replicator import sample_images as si
from tests import registry as reg
from tests.test_e2e_sync import WEB_1_0, WEB_1_1, WEB_MULTI, expected_pull
from tests.test_service import TOKEN, Replicator, wait_for

REPLICATION_WAIT = 30.0
"""Bound on push-to-pullable; the schedule alone would take an hour."""


def notifications_endpoint(url: str) -> dict:
    """One Distribution 2.8 ``notifications.endpoints`` entry posting to ``url`` with ``TOKEN``."""
    return {"name": "replicator", "url": url, "headers": {"Authorization": [f"Bearer {TOKEN}"]},
            "timeout": "1s", "threshold": 3, "backoff": "1s"}


def start_notifying_registry(storage: dict, log_dir: Path, endpoint: dict):
    """``reg.start_registry`` with a ``notifications:`` section.

    start_registry writes its config itself, so the section goes in through Distribution's
    environment overrides: ``REGISTRY_NOTIFICATIONS_ENDPOINTS`` holds the endpoints list as
    YAML (JSON is YAML), and start_registry passes this process's environment on.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REGISTRY_NOTIFICATIONS_ENDPOINTS", json.dumps([endpoint]))
        return reg.start_registry(storage, log_dir)


class Deployment:
    """Buckets A and B, `replicator serve` between them, registry A (notifying the service
    unless ``webhook`` is false) and read-only registry B. ``stop()`` stops all it started."""

    def __init__(self, moto_url: str, workdir: Path, *, webhook: bool = True,
                 interval: str = "1h", debounce: str = "1s"):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.storage = {name: reg.s3_storage(moto_url, reg.create_bucket(moto_url))
                        for name in ("primary", "replica")}
        self.services = []
        try:
            self.replicator = Replicator.start(self.storage, workdir, debounce=debounce,
                                               interval=interval)
            self.services.append(self.replicator)
            if webhook:
                endpoint = notifications_endpoint(f"{self.replicator.url}/events/primary")
                self.source = start_notifying_registry(self.storage["primary"], workdir, endpoint)
            else:
                self.source = reg.start_registry(self.storage["primary"], workdir)
            self.services.append(self.source)
            self.replica = reg.start_registry(self.storage["replica"], workdir, readonly=True)
            self.services.append(self.replica)
        except BaseException:
            self.stop()
            raise

    def push(self, repository: str, tag: str, image: si.Image) -> str:
        return reg.push(self.source.url, repository, tag, image, self.workdir / "work")

    def replica_digest(self, repository: str, tag: str) -> str | None:
        """The digest registry B serves for the tag, or None while it serves none."""
        try:
            return reg.manifest_digest(self.replica.url, repository, tag)
        except reg.SkopeoError:
            return None

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


# --- one deployment for the module; each case pushes and waits for registry B ---------------

@pytest.fixture(scope="module")
def deployment(moto, tmp_path_factory):
    deployment = Deployment(moto.url, tmp_path_factory.mktemp("e2e-serve"), debounce="0.5s")
    yield deployment
    deployment.stop()


def push_and_wait(deployment: Deployment, repository: str, tag: str, image: si.Image) -> None:
    assert deployment.push(repository, tag, image) == image.digest
    wait_for(lambda: deployment.replica_digest(repository, tag) == image.digest,
             lambda: f"registry B serving {repository}:{tag} at {image.digest} "
                     f"(service log: {deployment.replicator.log()})", REPLICATION_WAIT, interval=0.2)
    pulled = reg.pull(deployment.replica.url, repository, tag,
                      deployment.workdir / "pulls" / uuid.uuid4().hex)
    assert (image.digest, pulled) == expected_pull(image)


def test_single_platform_image(deployment):
    push_and_wait(deployment, "apps/web", "1.0", WEB_1_0)


def test_multi_arch_index(deployment):
    """The children arrive by digest, without a tag, before the index."""
    push_and_wait(deployment, "apps/web", "multi", WEB_MULTI)


def test_moved_tag(deployment):
    if deployment.replica_digest("apps/web", "1.0") != WEB_1_0.digest:
        push_and_wait(deployment, "apps/web", "1.0", WEB_1_0)
    push_and_wait(deployment, "apps/web", "1.0", WEB_1_1)


def test_lag_returns_to_0_and_push_events_are_counted(deployment):
    push_and_wait(deployment, "apps/tools", "latest", WEB_1_1)  # skopeo may mount layers from apps/web
    replicator = deployment.replicator
    wait_for(lambda: replicator.scrape().value("replicator_pending_tags") == 0,
             "the pending set emptied")
    scrape = replicator.scrape()
    assert scrape.value("replicator_lag_seconds") == 0
    assert scrape.value("replicator_failing_tags") == 0
    assert scrape.value("replicator_events_received_total", region="primary", action="push") > 0
    assert scrape.value("replicator_tags_replicated_total") >= 1
