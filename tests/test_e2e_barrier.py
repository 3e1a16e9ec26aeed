"""End to end: ``replicator wait`` and ``GET /v1/images/...`` as a deploy barrier, with real parts.

Registry A (``docker-registry`` over the directory of region ``primary``) takes skopeo pushes and
notifies ``replicator serve``; read-only registry B serves region ``replica`` behind Varnish, the
replica's CDN edge; region ``locked`` is a read-only registry reached through its API, so every
write to it is refused (405): an unwritable destination. Policy ``prod`` replicates everything
but ``shared/*`` to ``replica``; policy ``shared`` replicates ``shared/*`` to both.

Two deployments: ``purging``, whose ``cdn:`` block purges Varnish, and ``stale``, whose purges
go to a server that accepts them and purges nothing (as if the CDN's purge block were missing),
so the edge keeps serving the old digest until the test purges it itself.

The replication-delay histogram is checked against times measured around each push: a change
is made at the source between the push's start and end, and is visible after the test saw the
destination not serving it and before the scrape that counted it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from replicator import sample_images as si
from tests import registry as reg
from tests.cdn_servers import RecordingServer, Reply, start_varnish
from tests.services import LOOPBACK, free_port
from tests.test_e2e_serve import notifications_endpoint, start_notifying_registry
from tests.test_e2e_sync import REPO_ROOT, write_config
from tests.test_service import TOKEN, Replicator, wait_for

API_TOKEN = "api-token-for-tests"
ACCEPT = ", ".join(sorted(reg.MANIFEST_TYPES))
DELAY = "replicator_replication_delay_seconds"
BASE = si.layer({"etc/os-release": b"ID=e2e-barrier\n"})


def image(text: str) -> si.Image:
    return si.image([BASE, si.layer({"srv/app": text.encode()})])


class Barricade:
    """The regions, registries, edge and ``serve`` of one deployment (see the module docstring).
    ``purge`` is ``"varnish"`` or ``"nowhere"``; ``stop()`` stops everything it started."""

    def __init__(self, workdir: Path, *, purge: str = "varnish", webhook: bool = True,
                 interval: str = "1h", debounce: str = "1s", api_token: str | None = API_TOKEN):
        self.workdir = workdir
        self.storage = {name: reg.filesystem_storage(workdir / name)
                        for name in ("primary", "replica", "locked")}
        self.started = []
        self.api_token = api_token
        try:
            self.replica = self._start(reg.start_registry(self.storage["replica"], workdir,
                                                          readonly=True))
            self.locked = self._start(reg.start_registry(self.storage["locked"], workdir,
                                                         readonly=True))
            self.varnish = self._start(start_varnish(self.replica.port, workdir))
            nowhere = self._start(RecordingServer(lambda _: Reply(200)))
            node = self.edge_url if purge == "varnish" else nowhere.url
            port = free_port()
            self.config_path = write_config(workdir / "replicator.yml", {
                "state": {"path": str(workdir / "state.db")},
                "regions": {
                    "primary": {"storage": self.storage["primary"]},
                    "replica": {"storage": self.storage["replica"],
                                "cdn": {"baseurls": [self.edge_url], "http": {"nodes": [node]}}},
                    "locked": {"registry": {"url": self.locked.url, "timeout": 5}},
                },
                "policies": [
                    {"name": "prod", "source": "primary", "destinations": ["replica"],
                     "repositories": {"include": ["*"], "exclude": ["shared/*"]},
                     "schedule": {"interval": interval}},
                    {"name": "shared", "source": "primary", "destinations": ["replica", "locked"],
                     "repositories": {"include": ["shared/*"]}, "schedule": {"interval": interval}},
                ],
                "server": {"listen": f"{LOOPBACK}:{port}", "webhook_token": TOKEN,
                           "debounce": debounce,
                           **({"api_token": api_token} if api_token else {})},
            })
            self.service = self._start(Replicator(self.config_path, port, workdir))
            self.service.wait_for_pass()
            if webhook:
                self.source = self._start(start_notifying_registry(
                    self.storage["primary"], workdir,
                    notifications_endpoint(f"{self.service.url}/events/primary")))
            else:
                self.source = self._start(reg.start_registry(self.storage["primary"], workdir))
        except BaseException:
            self.stop()
            raise

    def _start(self, service):
        self.started.append(service)
        return service

    def stop(self) -> None:
        for service in reversed(self.started):
            service.stop()

    @property
    def edge_host(self) -> str:
        return f"{LOOPBACK}:{self.varnish.port}"

    @property
    def edge_url(self) -> str:
        return f"http://{self.edge_host}"

    def push(self, repository: str, tag: str, pushed: si.Image) -> tuple[float, float]:
        """Push with skopeo; the times just before and just after."""
        before = time.time()
        assert reg.push(self.source.url, repository, tag, pushed, self.workdir / "work") == pushed.digest
        return before, time.time()

    def replica_digest(self, repository: str, tag: str) -> str | None:
        """What registry B serves for the tag (None: nothing)."""
        try:
            return reg.manifest_digest(self.replica.url, repository, tag)
        except reg.SkopeoError:
            return None

    def edge_digest(self, repository: str, tag: str) -> str | None:
        """What Varnish serves for the tag's manifest (None: a 404). The GET may fill its cache."""
        request = urllib.request.Request(f"{self.edge_url}/v2/{repository}/manifests/{tag}",
                                         headers={"Accept": ACCEPT})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return "sha256:" + hashlib.sha256(response.read()).hexdigest()
        except urllib.error.HTTPError as error:
            assert error.code == 404, error
            return None

    def purge_edge(self, repository: str, tag: str) -> None:
        request = urllib.request.Request(f"{self.edge_url}/v2/{repository}/manifests/{tag}",
                                         method="PURGE")
        urllib.request.urlopen(request, timeout=30).close()

    def wait_argv(self, image_reference: str, *options: str) -> list[str]:
        return [sys.executable, "-m", "replicator", "wait", "--config", str(self.config_path),
                image_reference, *options]

    def wait(self, image_reference: str, *options: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.wait_argv(image_reference, *options), capture_output=True,
                              text=True, cwd=REPO_ROOT, timeout=300)

    def api(self, path: str, token: str | None = API_TOKEN) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.service.url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=330) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def delays(self, policy: str = "prod", destination: str = "replica") -> tuple[float, float]:
        """(count, sum) of the replication-delay histogram."""
        scrape = self.service.scrape()
        labels = {"policy": policy, "destination": destination}
        return scrape.value(f"{DELAY}_count", **labels), scrape.value(f"{DELAY}_sum", **labels)

    def delays_after(self, count: float) -> tuple[float, float, float]:
        """Wait for the histogram to count more than ``count``; (count, sum, time of that scrape)."""
        seen = wait_for(lambda: (lambda c, s: (c, s) if c > count else None)(*self.delays()),
                        "a replication-delay observation", 30)
        return seen[0], seen[1], time.time()


@pytest.fixture(scope="module")
def purging(tmp_path_factory):
    deployment = Barricade(tmp_path_factory.mktemp("barrier-purging"))
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
def stale(tmp_path_factory):
    deployment = Barricade(tmp_path_factory.mktemp("barrier-stale"), purge="nowhere")
    yield deployment
    deployment.stop()


def destination(document: dict, name: str) -> dict:
    [entry] = [entry for entry in document["destinations"] if entry["destination"] == name]
    return entry


def test_wait_blocks_while_the_tag_is_pending_and_returns_once_the_replica_and_its_edge_serve_it(purging):
    """serve is paused (SIGSTOP) while the push happens, so the tag stays pending for as long
    as the test says; the registry keeps its notification and delivers it once serve runs."""
    pushed = image("pending then served")
    count, total = purging.delays()
    os.kill(purging.service.service.process.pid, signal.SIGSTOP)
    try:
        started, pushed_at = purging.push("app", "1", pushed)
        waiting = subprocess.Popen(purging.wait_argv("app:1", "--timeout", "2m", "--interval", "0.2",
                                                     "--through-cdn", "--json"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   cwd=REPO_ROOT)
        time.sleep(2.0)
        assert purging.replica_digest("app", "1") is None
        assert waiting.poll() is None, waiting.communicate()
    finally:
        resumed = time.time()
        os.kill(purging.service.service.process.pid, signal.SIGCONT)
    out, err = waiting.communicate(timeout=120)
    returned = time.time()
    assert waiting.returncode == 0, (out, err)
    assert purging.replica_digest("app", "1") == pushed.digest
    assert purging.edge_digest("app", "1") == pushed.digest
    document = json.loads(out)
    entry = destination(document, "replica")
    assert document["in_sync"] and (entry["digest"], entry["reasons"]) == (pushed.digest, [])
    assert resumed <= entry["replicated_at"] <= entry["purged_at"] <= returned

    new_count, new_total, scraped = purging.delays_after(count)
    assert new_count == count + 1
    assert resumed - pushed_at <= new_total - total <= scraped - started


def test_the_image_api_long_polls_until_the_replica_and_its_edge_serve_the_image(purging):
    pushed = image("through the api")
    count, total = purging.delays()
    started, _ = purging.push("app", "api", pushed)
    code, document = purging.api("/v1/images/app:api?wait=60&through_cdn=1")
    answered = time.time()
    assert code == 200, document
    entry = destination(document, "replica")
    assert document["in_sync"] and entry["digest"] == pushed.digest, document
    assert purging.replica_digest("app", "api") == pushed.digest
    assert purging.edge_digest("app", "api") == pushed.digest
    assert started <= entry["replicated_at"] <= entry["purged_at"] <= answered
    code, by_digest = purging.api(f"/v1/images/app@{pushed.digest}")
    assert code == 200 and by_digest["in_sync"], by_digest
    new_count, new_total, scraped = purging.delays_after(count)
    assert new_count == count + 1
    assert 0 < new_total - total <= scraped - started


def test_the_image_api_needs_the_api_token_and_names_bad_requests(purging):
    assert purging.api("/v1/images/app:1", token=None)[0] == 401
    assert purging.api("/v1/images/app:1", token=TOKEN)[0] == 401
    assert purging.api("/", token=None)[0] == 401
    assert purging.api("/v1/images/app")[0] == 400
    assert purging.api("/v1/images/app:1?wait=soon")[0] == 400
    code, document = purging.api("/v1/images/nothing:1")
    assert code == 404 and "not at the source region primary" in document["error"]
    request = urllib.request.Request(purging.service.url + "/",
                                     headers={"Authorization": f"Bearer {API_TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        page = response.read().decode()
    assert "<h2>Destinations</h2>" in page
    for text in (page, purging.service.get("/metrics")[1].decode(), purging.service.log()):
        assert API_TOKEN not in text and TOKEN not in text


def test_wait_exits_2_for_bad_usage_and_images_it_cannot_wait_for(purging):
    for arguments in (["app"], ["App:1"], ["nothing:1"], ["app:1", "--destination", "mars"],
                      ["app:1", "--timeout", "soon"]):
        result = purging.wait(*arguments)
        assert result.returncode == 2, (arguments, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr


def test_an_unwritable_destination_makes_wait_fail_at_the_timeout_naming_it(purging):
    pushed = image("never lands in locked")
    purging.push("shared/app", "1", pushed)
    wait_for(lambda: purging.replica_digest("shared/app", "1") == pushed.digest, "replica serving it")
    wait_for(lambda: purging.service.status()["destinations"][2]["failing_tags"] == 1,
             "the failure at locked recorded")

    started = time.monotonic()
    result = purging.wait("shared/app:1", "--timeout", "3s", "--interval", "0.5")
    assert time.monotonic() - started >= 3
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    [locked] = [line for line in lines if line.startswith("  locked (policy shared)")]
    assert f"old digest: the tag is not there yet (wanted {pushed.digest})" in locked
    assert "failing after" in locked and "405" in locked
    assert [line for line in lines if line.startswith("  replica (policy shared)")] == [
        f"  replica (policy shared): serves {pushed.digest}"]

    assert purging.wait("shared/app:1", "--destination", "replica", "--timeout", "0").returncode == 0

    started = time.monotonic()
    code, document = purging.api("/v1/images/shared/app:1?wait=2&destination=locked")
    assert time.monotonic() - started >= 2
    assert code == 200 and not document["in_sync"]
    entry = destination(document, "locked")
    assert entry["digest"] is None and entry["pending"].startswith("failing after")


def test_through_cdn_fails_while_the_edge_serves_the_old_digest_and_passes_once_purged(stale):
    old, new = image("old at the edge"), image("new at the edge")
    count, _ = stale.delays()
    stale.push("web", "1", old)
    assert stale.wait("web:1", "--timeout", "1m", "--interval", "0.2").returncode == 0
    assert stale.edge_digest("web", "1") == old.digest          # now cached at the edge
    stale.push("web", "1", new)
    assert stale.wait("web:1", "--timeout", "1m", "--interval", "0.2").returncode == 0
    assert stale.replica_digest("web", "1") == new.digest
    assert stale.delays_after(count + 1)[0] == count + 2     # the creation and the move

    result = stale.wait("web:1", "--through-cdn", "--timeout", "2s", "--interval", "0.5")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert (f"replica (policy prod): CDN still stale: {stale.edge_url}/v2/web/manifests/1 serves "
            f"{old.digest}") in result.stdout
    code, document = stale.api("/v1/images/web:1?through_cdn=1&wait=1")
    assert code == 200 and not document["in_sync"]
    assert destination(document, "replica")["reasons"] == [
        f"CDN still stale: {stale.edge_url}/v2/web/manifests/1 serves {old.digest}"]

    stale.purge_edge("web", "1")
    result = stale.wait("web:1", "--through-cdn", "--timeout", "1m", "--json")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert destination(json.loads(result.stdout), "replica")["digest"] == new.digest
    code, document = stale.api("/v1/images/web:1?through_cdn=1")
    assert code == 200 and document["in_sync"], document
    assert stale.edge_digest("web", "1") == new.digest


def through_barrier(deployment: Barricade, reference: str, via: str) -> dict:
    """The image's status once in sync: from ``wait --through-cdn --json`` (``via="cli"``, a new
    process) or from ``GET /v1/images/...?wait=60&through_cdn=1`` (``via="api"``)."""
    if via == "cli":
        result = deployment.wait(reference, "--through-cdn", "--timeout", "1m", "--interval", "0.2",
                                 "--json")
        assert result.returncode == 0, (result.stdout, result.stderr)
        return json.loads(result.stdout)
    code, document = deployment.api(f"/v1/images/{reference}?wait=60&through_cdn=1")
    assert code == 200 and document["in_sync"], document
    return document


def wait_latencies(deployment: Barricade, repository: str, via: str = "cli",
                   pushes: int = 3) -> list[tuple[float, float]]:
    """Push ``pushes`` new tags one by one, each followed by the barrier (``through_barrier``);
    for each, the seconds from the push's end to the barrier's return, and from the change
    becoming visible (its purge accepted) to that return. One delay observation per change,
    each between the times measured around the push and the time its purge was accepted."""
    count, total = deployment.delays()
    latencies = []
    for index in range(pushes):
        pushed = image(f"{repository} {via} {index}")
        started, pushed_at = deployment.push(repository, str(index), pushed)
        document = through_barrier(deployment, f"{repository}:{index}", via)
        returned = time.time()
        assert deployment.replica_digest(repository, str(index)) == pushed.digest
        assert deployment.edge_digest(repository, str(index)) == pushed.digest
        visible = destination(document, "replica")["purged_at"]
        assert pushed_at < visible < returned
        latencies.append((returned - pushed_at, returned - visible))
        new_count, new_total, scraped = deployment.delays_after(count)
        assert new_count == count + 1
        assert visible - pushed_at - 1e-6 <= new_total - total <= visible - started + 1e-6
        count, total = new_count, new_total
    return latencies


def test_wait_latency_with_and_without_the_webhook(purging, tmp_path_factory):
    scheduled = Barricade(tmp_path_factory.mktemp("barrier-scheduled"), webhook=False, interval="2s")
    try:
        figures = {
            "webhook (debounce 1s), wait": wait_latencies(purging, "latency/webhook-cli"),
            "webhook (debounce 1s), API": wait_latencies(purging, "latency/webhook-api", "api"),
            "schedule only (interval 2s), wait": wait_latencies(scheduled, "latency/scheduled-cli"),
            "schedule only (interval 2s), API": wait_latencies(scheduled, "latency/scheduled-api", "api"),
        }
        started = time.monotonic()
        assert purging.wait("latency/webhook-cli:0", "--through-cdn", "--timeout", "0").returncode == 0
        in_sync_already = time.monotonic() - started
    finally:
        scheduled.stop()
    for name, latencies in figures.items():
        print(f"{name}: push -> return " + ", ".join(f"{push:.2f}s" for push, _ in latencies)
              + "; visible -> return " + ", ".join(f"{seen:.2f}s" for _, seen in latencies))
    print(f"wait on an image already in sync (process start included): {in_sync_already:.2f}s")
