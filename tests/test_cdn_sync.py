"""CDN purging through the engine: which URLs a pass purges, when, and what survives failures.

Each test builds two filesystem regions, ``src`` and ``dst``, with ``dst`` behind a CDN whose
API (or cache node) is a scripted ``RecordingServer`` (CloudFront: moto's server). Passes run
in process (``run_policy`` with a ``StateStore``) or through the CLI where the process
boundary matters (exit codes, ``--dry-run`` output, ``recover_purges`` at start, a kill -9).

What a purge of ``name:tag`` is: ``<baseurl>/v2/<name>/manifests/<tag>`` and
``<baseurl>/v2/<name>/tags/list`` under every base URL; never a blob or a digest URL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from drivers.errors import TransientError
from replicator import config as config_module
from replicator import sample_images as si
from replicator.demo import publish
from replicator.engine import RunOptions, run_policy
from replicator.metrics import Metrics
from replicator.purging import send_purges
from replicator.report import PassReport
from replicator.status import destination_statuses
from state.store import StateStore
from tests import registry as reg
from tests import test_cdn_purgers as purger_tests
from tests.cdn_servers import Recorded, RecordingServer, Reply
from tests.services import S3_CREDENTIALS
from tests.test_cdn_purgers import API_PURGERS, CLOUDFLARE_OK, TOKEN, invalidations
from tests.test_e2e_sync import REPO_ROOT, write_config

serve = purger_tests.serve   # the purger tests' fixtures: scripted servers, moto's CloudFront
cloudfront = purger_tests.cloudfront
distribution = purger_tests.distribution

SRC, DST = "src", "dst"
BASES = ("https://registry-eu.example.com", "http://eu-mirror.example.net:8443")
BASE_LAYER = si.layer({"etc/os-release": b"ID=cdn-sync\n"})
CLI_TIMEOUT = 60


def image(text: str) -> si.Image:
    return si.image([BASE_LAYER, si.layer({"srv/app": text.encode()})])


X, Y, Z = image("x"), image("y"), image("z")


def expected_urls(name: str, tag: str, bases: tuple[str, ...] = BASES) -> list[str]:
    """The purge set of ``name:tag``, sorted: written out here, not taken from the product."""
    return sorted(url for base in bases
                  for url in (f"{base}/v2/{name}/manifests/{tag}", f"{base}/v2/{name}/tags/list"))


def provider_block(name: str, url: str) -> tuple[str, dict]:
    """(provider key, its block) for the scripted API or node at ``url``; names as API_PURGERS."""
    return {
        "cloudflare": ("cloudflare", {"zoneid": "zone123", "apitoken": TOKEN, "endpoint": url}),
        "fastly": ("fastly", {"serviceid": "svc123", "apitoken": TOKEN, "endpoint": url}),
        "fastly-keys": ("fastly", {"serviceid": "svc123", "apitoken": TOKEN, "endpoint": url,
                                   "mode": "surrogatekey"}),
        "http": ("http", {"nodes": [url]}),
    }[name]


def cloudflare_urls(requests: list[Recorded]) -> list[str]:
    """Every URL the Cloudflare API was asked to purge, sorted."""
    return sorted(url for request in requests for url in request.json()["files"])


class World:
    """``src`` -> ``dst`` on filesystems, ``dst`` behind a CDN; the config as a file and loaded."""

    def __init__(self, tmp: Path, provider: str, params: dict, *, bases: tuple[str, ...] = BASES,
                 delete: bool = False, cdn_timeout: str | None = None):
        self.tmp = tmp
        tmp.mkdir(parents=True)
        document = {
            "state": {"path": str(tmp / "state.db")},
            "regions": {
                SRC: {"storage": reg.filesystem_storage(tmp / SRC)},
                DST: {"storage": reg.filesystem_storage(tmp / DST),
                      "cdn": {"baseurls": list(bases), provider: params,
                              **({"timeout": cdn_timeout} if cdn_timeout else {})}},
            },
            "policies": [{"name": "p", "source": SRC, "destinations": [DST], "delete": delete}],
        }
        self.path = write_config(tmp / "replicator.yml", document)
        self.config = config_module.load(self.path)
        self.region = self.config.regions[DST]
        self.state = StateStore(self.config.state_path)
        self.destination = reg.Store(reg.filesystem_storage(tmp / DST))

    @property
    def purger(self):
        return self.region.cdn.purger

    def publish(self, name: str, tag: str, image: si.Image) -> None:
        publish(self.config.regions[SRC].storage, name, tag, image)

    def remove(self, name: str, tag: str) -> None:
        """Delete the tag at the source, as the registry's tag delete does."""
        shutil.rmtree(self.tmp / SRC / reg.V2 / "repositories" / name / "_manifests" / "tags" / tag)

    def sync(self, **options) -> PassReport:
        [report] = run_policy(self.config, self.config.policies[0], self.state, RunOptions(**options))
        return report

    def link(self, name: str, tag: str) -> str | None:
        """The digest the destination's tag link holds now, None without one."""
        key = reg.tag_current_key(name, tag)
        return self.destination.get(key).decode() if self.destination.exists(key) else None

    def outstanding(self) -> list[str]:
        return sorted(item.url for item in self.state.outstanding_purges(DST))

    def command(self, *args: str) -> list[str]:
        command, *rest = args
        return [sys.executable, "-m", "replicator", command, "--config", str(self.path), *rest]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(self.command(*args), capture_output=True, text=True, cwd=REPO_ROOT,
                                env=cli_env(), timeout=CLI_TIMEOUT, check=False)
        assert TOKEN not in result.stdout + result.stderr, "the API token leaked"
        return result

    def sync_json(self, *args: str) -> tuple[int, dict, str]:
        """``sync --json [args]``: (exit code, the document, stderr)."""
        result = self.cli("sync", "--json", *args)
        try:
            return result.returncode, json.loads(result.stdout), result.stderr
        except json.JSONDecodeError:
            pytest.fail(f"sync exited {result.returncode} without JSON:\n{result.stdout}\n{result.stderr}")

    def status(self) -> dict:
        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        [status] = json.loads(result.stdout)["destinations"]
        return status


def cli_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "REPLICATOR_CONFIG"}


@pytest.fixture
def fast_tmp(tmp_path):
    """A folder on tmpfs when there is one: the filesystem driver fsyncs every file it writes,
    which costs more than everything else these tests do."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="cdn-sync-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def make_world(fast_tmp):
    """Builds Worlds (closing their state stores after the test)."""
    worlds: list[World] = []

    def make(provider: str, params: dict, **options) -> World:
        world = World(fast_tmp / f"world{len(worlds)}", provider, params, **options)
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        world.state.close()


def cloudflare_world(make_world, server: RecordingServer, **options) -> World:
    return make_world(*provider_block("cloudflare", server.url), **options)


# --- what is purged ----------------------------------------------------------------------------

def test_purge_set_is_the_tags_manifest_and_tag_list_under_every_base_url(serve, make_world):
    server = serve(then=CLOUDFLARE_OK)
    world = cloudflare_world(make_world, server, delete=True)
    world.publish("app", "2", X)
    world.publish("other", "1", X)
    first = world.sync()
    assert (first.tags_replicated, first.purges_sent) == (2, 8)
    assert cloudflare_urls(server.requests) == sorted(expected_urls("app", "2")
                                                      + expected_urls("other", "1"))

    def next_pass() -> tuple[PassReport, list[Recorded], list[str]]:
        requests_before, calls_before = len(server.requests), world.purger.calls
        report = world.sync()
        requests = server.requests[requests_before:]
        assert world.purger.calls - calls_before == len(requests)
        urls = cloudflare_urls(requests)
        assert report.purges_sent == len(urls)
        assert not any("/blobs/" in url or "sha256" in url for url in urls)
        return report, requests, urls

    world.publish("app", "1", X)
    report, requests, urls = next_pass()
    assert (report.tags_replicated, len(requests)) == (1, 1)
    assert urls == expected_urls("app", "1")

    report, requests, urls = next_pass()
    assert (report.tags_unchanged, report.tags_replicated, requests) == (3, 0, [])

    world.publish("app", "1", Y)
    report, requests, urls = next_pass()
    assert (report.tags_replicated, len(requests)) == (1, 1)
    assert urls == expected_urls("app", "1")

    world.remove("app", "1")
    report, requests, urls = next_pass()
    assert (report.tags_deleted, len(requests)) == (1, 1)
    assert urls == expected_urls("app", "1")
    assert world.link("app", "1") is None

    report, requests, urls = next_pass()
    assert requests == [] and world.outstanding() == []


def test_the_purge_arrives_only_after_the_destination_link_holds_the_change(make_world):
    seen: list[tuple[list[str], str | None]] = []

    def respond(request: Recorded) -> Reply:
        seen.append((sorted(request.json()["files"]), world.link("app", "1")))
        return CLOUDFLARE_OK

    with RecordingServer(respond) as server:
        world = cloudflare_world(make_world, server, delete=True)
        world.publish("app", "1", X)
        world.sync()
        assert seen == [(expected_urls("app", "1"), X.digest)]
        world.publish("app", "1", Y)
        world.sync()
        assert seen[1:] == [(expected_urls("app", "1"), Y.digest)]
        world.remove("app", "1")
        world.sync()
        assert seen[2:] == [(expected_urls("app", "1"), None)]


MOVED_TAG_CALLS = {
    # provider: {(tags moved in a pass, base URLs): API calls}; each tag in its own repository,
    # so a pass purges 2 URLs per tag per base URL (tags of one repository share tags/list)
    "cloudflare": {(1, 1): 1, (1, 2): 1, (10, 1): 1, (10, 2): 2},     # 30 URLs per request
    "fastly": {(1, 1): 2, (1, 2): 4, (10, 1): 20, (10, 2): 40},       # one request per URL
    "fastly-keys": {(1, 1): 1, (1, 2): 1, (10, 1): 1, (10, 2): 1},    # 256 keys (paths) per request
    "http": {(1, 1): 2, (1, 2): 4, (10, 1): 20, (10, 2): 40},         # per URL per node (one node)
}


@pytest.mark.parametrize("provider", MOVED_TAG_CALLS)
@pytest.mark.parametrize("bases", [1, 2])
def test_purge_calls_for_moved_tags_and_none_for_a_pass_without_change(serve, make_world, provider,
                                                                       bases):
    server = serve(then=API_PURGERS[provider][1])
    world = make_world(*provider_block(provider, server.url), bases=BASES[:bases])
    names = [f"team/app{index}" for index in range(10)]
    for name in names:
        world.publish(name, "1", X)
    world.sync()
    for moved, to in ((1, Y), (10, Z)):
        calls = world.purger.calls
        for name in names[:moved]:
            world.publish(name, "1", to)
        report = world.sync()
        assert (report.tags_replicated, report.purges_sent) == (moved, 2 * moved * bases)
        assert world.purger.calls - calls == MOVED_TAG_CALLS[provider][(moved, bases)], moved
    assert world.purger.calls == len(server.requests)
    unchanged = world.sync()
    assert (unchanged.tags_unchanged, unchanged.purges_sent) == (10, 0)
    assert world.purger.calls == len(server.requests)


# --- provider request shapes through the engine ------------------------------------------------

def test_fastly_surrogate_key_mode_purges_the_paths_as_keys_in_one_request(serve, make_world):
    server = serve(then=API_PURGERS["fastly-keys"][1])
    world = make_world(*provider_block("fastly-keys", server.url))
    world.publish("app", "1", X)
    world.sync()
    before = len(server.requests)
    world.publish("app", "1", Y)
    assert world.sync().purges_sent == 4
    [request] = server.requests[before:]
    assert (request.method, request.path) == ("POST", "/service/svc123/purge")
    keys = request.headers["surrogate-key"].split(" ")
    assert sorted(keys) == ["/v2/app/manifests/1", "/v2/app/tags/list"]
    assert request.headers["fastly-key"] == TOKEN


def test_http_ban_mode_bans_every_url_with_its_host(serve, make_world):
    node = serve()
    world = make_world("http", {"nodes": [node.url], "method": "BAN"})
    world.publish("app", "1.0", X)
    world.sync()
    before = len(node.requests)
    world.publish("app", "1.0", Y)
    assert world.sync().purges_sent == 4
    shapes = sorted((r.method, r.path, r.headers["host"], r.headers["x-ban-url"], r.headers["x-ban-host"])
                    for r in node.requests[before:])
    assert shapes == sorted(
        ("BAN", path, host, regex, host)
        for host in ("registry-eu.example.com", "eu-mirror.example.net:8443")
        for path, regex in (("/v2/app/manifests/1.0", r"^/v2/app/manifests/1\.0$"),
                            ("/v2/app/tags/list", r"^/v2/app/tags/list$")))


# --- failures, retries and back-off -------------------------------------------------------------

def test_a_throttled_purge_in_a_pass_that_does_not_wait_stays_queued_with_back_off(serve, make_world):
    """``serve``'s passes try a purge once; its timer sends it again when the back-off says."""
    server = serve([Reply(429, {"success": False, "errors": [{"code": 971, "message": "slow down"}]},
                          {"Retry-After": "1"}),
                    Reply(500, {"success": False, "errors": [{"code": 10002, "message": "oops"}]})],
                   then=CLOUDFLARE_OK)
    world = cloudflare_world(make_world, server)
    world.publish("app", "1", X)
    started = time.time()
    report = world.sync()
    assert (report.tags_replicated, report.purges_sent, report.purges_retrying) == (1, 0, 4)
    assert world.link("app", "1") == X.digest
    assert world.outstanding() == expected_urls("app", "1")
    assert all("HTTP 429" in item.error and "971: slow down" in item.error
               for item in world.state.outstanding_purges(DST))

    status = world.status()
    assert status["purges_outstanding"] == 4
    assert status["lag_seconds"] > 0 and status["in_sync"] is False
    assert (status["pending_tags"], status["failing_tags"]) == (0, 0)
    metrics = Metrics(world.config, world.state)
    metrics.observe(report, None)
    sample = metrics.registry.get_sample_value
    assert sample("replicator_cdn_purge_queue", {"destination": DST}) == 4
    assert sample("replicator_cdn_purges_total",
                  {"destination": DST, "provider": "cloudflare", "result": "retrying"}) == 4
    assert sample("replicator_lag_seconds", {"policy": "p", "source": SRC, "destination": DST}) > 0

    # back-off: 1 s after the first failure (as its Retry-After asked), 2 s after the second
    assert send_purges(world.region, world.state, now=started + 0.5).sent == 0
    assert len(server.requests) == 1
    second = time.time()
    retried = send_purges(world.region, world.state, now=second + 1.5)
    answered = time.time() - second   # the wait counts from the answer, on the caller's clock
    assert (retried.sent, retried.retrying, len(server.requests)) == (0, 4, 2)
    assert all("HTTP 500" in item.error and item.attempts == 2
               for item in world.state.outstanding_purges(DST))
    assert send_purges(world.region, world.state, now=second + 1.5 + 1.9).sent == 0
    assert len(server.requests) == 2
    done = send_purges(world.region, world.state, now=second + 1.5 + answered + 2.1)
    assert (done.sent, done.retrying, done.failed) == (4, 0, 0)
    assert cloudflare_urls(server.requests[2:]) == expected_urls("app", "1")

    assert world.outstanding() == []
    [status] = destination_statuses(world.config, world.state)   # what status --json prints
    assert (status.purges_outstanding, status.lag_seconds, status.in_sync) == (0, 0, True)
    assert sample("replicator_cdn_purge_queue", {"destination": DST}) == 0


def test_a_refused_token_is_recorded_with_the_providers_message_and_never_shown(serve, make_world,
                                                                                 monkeypatch):
    server = serve([Reply(401, {"success": False, "errors": [
        {"code": 10000, "message": f"Authentication error: token {TOKEN} is not valid"}]})])
    monkeypatch.setenv("CDN_SYNC_TEST_TOKEN", TOKEN)
    name, block = provider_block("cloudflare", server.url)
    world = make_world(name, {**block, "apitoken": "${CDN_SYNC_TEST_TOKEN}"})
    world.publish("app", "1", X)

    code, document, stderr = world.sync_json()
    assert code == 1 and document["ok"] is False   # replicated, but the edge may serve it stale
    [entry] = document["passes"]
    assert (entry["tags_replicated"], entry["purges_sent"], entry["purges_failed"]) == (1, 0, 4)
    assert document["cdn_calls"] == {DST: 1}
    assert "10000: Authentication error: token *** is not valid" in stderr
    [request] = server.requests
    assert request.headers["authorization"] == f"Bearer {TOKEN}"

    items = world.state.outstanding_purges(DST)
    assert sorted(item.url for item in items) == expected_urls("app", "1")
    for item in items:
        assert "HTTP 401" in item.error
        assert "10000: Authentication error: token *** is not valid" in item.error
        assert item.attempts == 1
    assert world.state.due_purges(DST, time.time() + 300) == []   # permanent: the long wait

    status = world.status()
    assert (status["purges_outstanding"], status["in_sync"]) == (4, False)
    for path in [world.path, *world.config.state_path.parent.glob("state.db*")]:
        assert TOKEN.encode() not in path.read_bytes(), path


# --- a durable queue ---------------------------------------------------------------------------

def test_a_purge_in_flight_when_the_process_is_killed_is_sent_by_the_next_run(make_world):
    held, release, holding = threading.Event(), threading.Event(), [True]
    seen: list[str | None] = []

    def respond(request: Recorded) -> Reply:
        if holding[0]:
            seen.append(world.link("app", "1"))
            held.set()
            release.wait(CLI_TIMEOUT)
        return CLOUDFLARE_OK

    with RecordingServer(respond) as server:
        world = cloudflare_world(make_world, server)
        world.publish("app", "1", X)
        process = subprocess.Popen(world.command("sync", "--json"), cwd=REPO_ROOT, env=cli_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert held.wait(CLI_TIMEOUT), "the purge never arrived"
            process.kill()
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=CLI_TIMEOUT)
            release.set()
        assert process.returncode == -signal.SIGKILL
        assert seen == [X.digest] and world.link("app", "1") == X.digest
        ready = world.state.due_purges(DST)   # recorded, ready, never acknowledged
        assert sorted(item.url for item in ready) == expected_urls("app", "1")

        holding[0] = False
        before = len(server.requests)
        code, document, stderr = world.sync_json()
        assert code == 0, stderr
        [entry] = document["passes"]
        assert (entry["tags_unchanged"], entry["purges_sent"]) == (1, 4)
        [request] = server.requests[before:]
        assert sorted(request.json()["files"]) == expected_urls("app", "1")
        assert world.outstanding() == []


def test_a_purge_recorded_but_not_ready_when_the_process_died_is_sent_after_recovery(serve,
                                                                                     make_world):
    server = serve(then=CLOUDFLARE_OK)
    world = cloudflare_world(make_world, server)
    world.publish("app", "1", X)
    world.sync()
    before = len(server.requests)
    # as if killed after enqueue_purges (and the link write) but before ready_purges
    world.state.enqueue_purges(DST, expected_urls("app", "1"))
    report = world.sync()   # the same process: the rows may belong to a write under way
    assert (report.tags_unchanged, report.purges_sent, server.requests[before:]) == (1, 0, [])
    assert world.outstanding() == expected_urls("app", "1")

    code, document, stderr = world.sync_json()   # a new process: recover_purges at start
    assert code == 0, stderr
    assert document["passes"][0]["purges_sent"] == 4
    [request] = server.requests[before:]
    assert sorted(request.json()["files"]) == expected_urls("app", "1")
    assert world.outstanding() == []


def test_a_link_write_that_applied_and_then_raised_still_gets_its_purge(serve, make_world):
    server = serve(then=CLOUDFLARE_OK)
    world = cloudflare_world(make_world, server)
    world.publish("app", "1", X)
    world.sync()
    before = len(server.requests)
    world.publish("app", "1", Y)
    storage = world.region.storage
    write = storage.write

    def write_then_fail(key: str, data: bytes) -> str:
        etag = write(key, data)
        if key == reg.tag_current_key("app", "1"):
            raise TransientError("the answer to the write was lost")
        return etag

    storage.write = write_then_fail
    try:
        assert world.sync().tags_failed == 1
    finally:
        del storage.write
    assert world.link("app", "1") == Y.digest
    assert world.sync().tags_unchanged == 1   # the same process, as in serve
    send_purges(world.region, world.state, now=time.time() + 3600)
    assert cloudflare_urls(server.requests[before:]) == expected_urls("app", "1")


# --- dry run -----------------------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    "moved",
    "deleted",
])
def test_dry_run_lists_the_purges_it_would_send_and_sends_none(serve, make_world, change):
    server = serve(then=CLOUDFLARE_OK)
    world = cloudflare_world(make_world, server, delete=True)
    world.publish("app", "1", X)
    world.sync()
    before = len(server.requests)
    if change == "moved":
        world.publish("app", "1", Y)
    else:
        world.remove("app", "1")

    code, document, stderr = world.sync_json("--dry-run")
    assert code == 0, stderr
    [entry] = document["passes"]
    assert (entry["purges_sent"], document["cdn_calls"]) == (0, {DST: 0})
    assert server.requests[before:] == []
    assert world.outstanding() == []
    assert world.link("app", "1") == X.digest
    purges = sorted(action.removeprefix("purge ") for action in entry["planned"]
                    if action.startswith("purge "))
    assert purges == expected_urls("app", "1")


# --- CloudFront through the engine, against moto -------------------------------------------------

def test_cloudfront_one_invalidation_per_batch_and_caller_reference_per_change(
        moto, cloudfront, distribution, make_world, monkeypatch):
    world = make_world("cloudfront", {
        "distributionid": distribution, "endpoint": moto.url, "batchsize": 2,
        "accesskey": S3_CREDENTIALS["accesskey"], "secretkey": S3_CREDENTIALS["secretkey"]},
        bases=BASES[:1])
    names = ["app0", "app1", "app2"]

    def new_invalidations(action) -> dict[tuple[str, ...], str]:
        """Paths -> CallerReference of the invalidations ``action`` made."""
        before = {item["Id"] for item in invalidations(cloudfront, distribution)}
        action()
        made = [item["InvalidationBatch"] for item in invalidations(cloudfront, distribution)
                if item["Id"] not in before]
        found = {tuple(sorted(batch["Paths"]["Items"])): batch["CallerReference"] for batch in made}
        assert len(found) == len(made), "two invalidations of the same paths"
        return found

    def per_tag(*tags: str) -> set[tuple[str, ...]]:
        return {(f"/v2/{name}/manifests/1", f"/v2/{name}/tags/list") for name in tags}

    for name in names:
        world.publish(name, "1", X)
    created = new_invalidations(world.sync)
    assert set(created) == per_tag(*names) and world.purger.calls == 3

    for name in names:
        world.publish(name, "1", Y)
    with monkeypatch.context() as patch:   # the provider's answers are lost: nothing acknowledged
        patch.setattr(world.state, "purges_done", lambda items: None)
        moved = new_invalidations(world.sync)
    assert set(moved) == per_tag(*names)
    assert len(world.outstanding()) == 6
    retried = new_invalidations(lambda: send_purges(world.region, world.state))
    assert retried == moved   # the same batches, the same CallerReferences
    assert world.outstanding() == []
    assert not set(moved.values()) & set(created.values())

    world.publish("app0", "1", Z)
    later = new_invalidations(world.sync)
    assert set(later) == per_tag("app0")
    assert not set(later.values()) & (set(moved.values()) | set(created.values()))
    assert world.purger.calls == 10
