"""`replicator serve` as a real process: webhook, targeted passes, /metrics, status, SIGTERM.

The regions are directories; the source is filled with ``replicator.demo.publish``. The schedule
is one hour, so after the startup pass only events make passes run. The service is reached over
HTTP on a free loopback port and ``replicator status --json`` runs as its own process beside it.

``Replicator``, ``serve_config`` and ``Scrape`` are shared with tests/test_e2e_serve.py and
bench/lag.py.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivers.filesystem import FilesystemDriver
from replicator import sample_images as si
from replicator.demo import publish, sample_registry
from replicator.notifications import MAX_BODY
from tests import registry as reg
from tests.services import Service, free_port
from tests.test_e2e_sync import REPO_ROOT, config_document, write_config
from tests.test_notifications import MEDIA_TYPE, envelope, event

TOKEN = "webhook-token-for-tests"
WAIT = 20.0
"""Bound on any wait for the service to act on an event."""
DESTINATION_GAUGES = ("replicator_lag_seconds", "replicator_pending_tags",
                      "replicator_failing_tags", "replicator_last_success_timestamp_seconds")
METRIC_NAMES = (*DESTINATION_GAUGES, "replicator_tags_replicated_total",
                "replicator_blobs_copied_total", "replicator_bytes_copied_total",
                "replicator_pass_duration_seconds", "replicator_storage_requests_total",
                "replicator_errors_total", "replicator_events_received_total")


# --- the service and how to read it ------------------------------------------------------------

def serve_config(storage: dict[str, dict], state_path: Path, port: int, *, debounce: str,
                 interval: str = "1h") -> dict:
    """One policy ``prod`` from ``primary`` to every other region of ``storage``, on a schedule,
    with the webhook on 127.0.0.1:``port`` behind ``TOKEN``."""
    document = config_document(storage, state_path)
    policy = document["policies"][0]
    policy["destinations"] = [name for name in storage if name != "primary"]
    policy["schedule"] = {"interval": interval}
    document["server"] = {"listen": f"127.0.0.1:{port}", "webhook_token": TOKEN,
                          "debounce": debounce}
    return document


def wait_for(predicate, what, timeout: float = WAIT, *, interval: float = 0.1):
    """The first truthy value of ``predicate()``; fails naming ``what`` (a string, or a function
    giving one when the wait has failed) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what() if callable(what) else what}: not within {timeout}s")
        time.sleep(interval)


class Scrape:
    """One /metrics scrape: sample values by name and labels."""

    def __init__(self, text: str):
        self.families = list(text_string_to_metric_families(text))
        self.samples = [sample for family in self.families for sample in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(sample.value for sample in self.samples if sample.name == name
                   and labels.items() <= sample.labels.items())

    def destination(self, **labels: str) -> dict[str, float]:
        """The four per-destination gauges (of the one destination ``labels`` narrow to)."""
        return {name: self.value(name, **labels) for name in DESTINATION_GAUGES}


class Replicator:
    """``python -m replicator serve`` on ``port`` over the config at ``config_path``."""

    def __init__(self, config_path: Path, port: int, log_dir: Path):
        self.config_path = config_path
        env = {key: value for key, value in os.environ.items() if key != "REPLICATOR_CONFIG"}
        argv = [sys.executable, "-m", "replicator", "--log-level", "info", "serve",
                "--config", str(config_path)]
        self.service = Service("replicator", argv, port, ready_path="/healthz", env=env,
                               cwd=REPO_ROOT, log_dir=log_dir)
        self.url = self.service.url

    @classmethod
    def start(cls, storage: dict[str, dict], workdir: Path, *, debounce: str,
              interval: str = "1h") -> Replicator:
        """Write a config (``serve_config``) in ``workdir``, start the service and wait for its
        startup pass."""
        port = free_port()
        document = serve_config(storage, workdir / "state.db", port, debounce=debounce,
                                interval=interval)
        replicator = cls(write_config(workdir / f"replicator-{port}.yml", document), port, workdir)
        try:
            replicator.wait_for_pass()
        except BaseException:
            replicator.stop()
            raise
        return replicator

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def scrape(self) -> Scrape:
        code, body = self.get("/metrics")
        assert code == 200, body
        return Scrape(body.decode())

    def wait_for_pass(self, timeout: float = WAIT) -> Scrape:
        """Wait until every destination has had a full pass (the startup pass)."""
        def passed():
            scrape = self.scrape()
            times = [s.value for s in scrape.samples
                     if s.name == "replicator_last_success_timestamp_seconds"]
            return scrape if times and all(times) else None
        return wait_for(passed, lambda: f"the startup pass (service log: {self.log()})", timeout)

    def status(self) -> dict:
        """``replicator status --json`` of the service's config, run as its own process."""
        result = subprocess.run([sys.executable, "-m", "replicator", "status", "--config",
                                 str(self.config_path), "--json"], capture_output=True,
                                text=True, cwd=REPO_ROOT, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def post(self, body: bytes, *, region: str = "primary", token: str | None = TOKEN,
             content_type: str | None = MEDIA_TYPE) -> tuple[int, dict]:
        """POST ``body`` to /events/``region``; the status and the JSON answer."""
        connection = http.client.HTTPConnection(self.service.url.split("://")[1], timeout=10)
        try:
            connection.putrequest("POST", f"/events/{region}", skip_accept_encoding=True)
            connection.putheader("Content-Length", str(len(body)))
            if token is not None:
                connection.putheader("Authorization", f"Bearer {token}")
            if content_type is not None:
                connection.putheader("Content-Type", content_type)
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def log(self) -> str:
        return self.service.log()

    def stop(self) -> None:
        self.service.stop()


# --- the world: directories, the source filled, the service --------------------------------

class World:
    def __init__(self, workdir: Path, *, debounce: str):
        self.workdir = workdir
        self.storage = {name: reg.filesystem_storage(workdir / name)
                        for name in ("primary", "replica")}
        for block in self.storage.values():
            Path(block["filesystem"]["rootdirectory"]).mkdir(parents=True)
        self.source = FilesystemDriver(str(workdir / "primary"))
        for (name, tag), image in sample_registry().items():
            publish(self.source, name, tag, image)
        self.replicator = Replicator.start(self.storage, workdir, debounce=debounce)

    def replica_digest(self, repository: str, tag: str) -> str | None:
        """What the replica's ``current/link`` of the tag holds (None while it has none)."""
        store = reg.Store(self.storage["replica"])
        key = reg.tag_current_key(repository, tag)
        return store.get(key).decode() if store.exists(key) else None

    def stop(self) -> None:
        self.replicator.stop()


def new_image(label: str) -> si.Image:
    return si.image([si.layer({"srv/app": f"{label}\n".encode()})])


def lag_fields(status: dict) -> dict:
    [destination] = status["destinations"]
    return {"replicator_lag_seconds": destination["lag_seconds"],
            "replicator_pending_tags": destination["pending_tags"],
            "replicator_failing_tags": destination["failing_tags"]}


def without_last_success(gauges: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in gauges.items()
            if name != "replicator_last_success_timestamp_seconds"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The demo images replicated once; a 3 s debounce leaves time to see a change pending."""
    world = World(tmp_path_factory.mktemp("serve"), debounce="3s")
    yield world
    world.stop()


# --- health ----------------------------------------------------------------------------------

def test_healthz_and_readyz(world):
    code, body = world.replicator.get("/healthz")
    assert code == 200, body
    code, body = world.replicator.get("/readyz")
    assert code == 200, body
    assert json.loads(body) == {"ready": True, "regions": {"primary": "ok", "replica": "ok"}}


def test_the_startup_pass_replicated_everything(world):
    for (name, tag), image in sample_registry().items():
        assert world.replica_digest(name, tag) == image.digest
    [destination] = world.replicator.status()["destinations"]
    assert destination["in_sync"] is True
    assert destination["last_success"] is not None


# --- the webhook refuses bad input and queues nothing --------------------------------------

VALID = envelope(event("push", "demo/web", "1.0"))


def oversized() -> bytes:
    """A valid envelope of more than ``MAX_BODY`` bytes."""
    one = event("push", "demo/web", "1.0")
    count = MAX_BODY // len(json.dumps(one)) + 1
    body = envelope(*[one] * count)
    assert len(body) > MAX_BODY
    return body


BAD_REQUESTS = {
    "no-token": (401, dict(body=VALID, token=None)),
    "wrong-token": (401, dict(body=VALID, token="not-" + TOKEN)),
    "malformed-json": (400, dict(body=b'{"events": [')),
    "wrong-content-type": (400, dict(body=VALID, content_type="text/plain")),
    "no-content-type": (400, dict(body=VALID, content_type=None)),
    "bad-repository": (400, dict(body=envelope(event("push", "demo/web", "1.0"),
                                               event("push", "../x", "1.0")))),
    "upper-case-repository": (400, dict(body=envelope(event("push", "UPPER", "1.0")))),
    "over-1-MiB": (413, dict(body=oversized())),
    "unknown-region": (404, dict(body=VALID, region="atlantis")),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_webhook_refuses_bad_input_and_queues_nothing(world, case):
    expected, request = BAD_REQUESTS[case]
    replicator = world.replicator
    pending = [d["pending_tags"] for d in replicator.status()["destinations"]]
    events = replicator.scrape().value("replicator_events_received_total")
    code, answer = replicator.post(**request)
    assert (code, sorted(answer)) == (expected, ["error"])
    assert TOKEN not in json.dumps(answer)
    assert [d["pending_tags"] for d in replicator.status()["destinations"]] == pending
    assert replicator.scrape().value("replicator_events_received_total") == events


# --- events trigger targeted passes; pulls trigger nothing -----------------------------------

def test_push_event_replicates_a_moved_tag_and_pull_events_trigger_nothing(world):
    """The pull event comes first: had it queued a pass, that pass would be due (and run, on
    the one worker) before the push event's, so checking after the push's pass is enough."""
    moved, pulled = new_image("worker moved"), new_image("never pushed to the replica")
    old = world.replica_digest("demo/worker", "latest")
    publish(world.source, "demo/worker", "latest", moved)
    publish(world.source, "demo/pulled", "1", pulled)
    pulls = world.replicator.scrape().value("replicator_events_received_total", action="pull")

    assert world.replicator.post(envelope(event("pull", "demo/pulled", "1"))) \
        == (200, {"accepted": 1, "triggered": 0})
    assert world.replicator.post(envelope(event("push", "demo/worker", "latest"))) \
        == (200, {"accepted": 1, "triggered": 1})
    assert old != moved.digest
    wait_for(lambda: world.replica_digest("demo/worker", "latest") == moved.digest,
             "the replica serving the moved tag")

    scrape = world.replicator.scrape()
    assert scrape.value("replicator_events_received_total", action="pull") == pulls + 1
    assert scrape.value("replicator_events_received_total", region="primary", action="push") >= 1
    assert world.replica_digest("demo/pulled", "1") is None


def test_a_client_resetting_its_connection_leaves_no_traceback(world):
    with socket.create_connection(("127.0.0.1", world.replicator.service.port)) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: replicator\r\n\r\n")
        time.sleep(0.2)  # the answer arrives and stays unread: closing now sends a reset
    time.sleep(0.2)
    assert world.replicator.get("/healthz")[0] == 200
    assert "Traceback" not in world.replicator.log()


# --- /metrics and status agree ----------------------------------------------------------------

def test_metrics_and_status_agree_on_lag_pending_and_failing(world):
    replicator = world.replicator
    in_sync = {"replicator_lag_seconds": 0, "replicator_pending_tags": 0,
               "replicator_failing_tags": 0}
    assert without_last_success(replicator.scrape().destination()) == in_sync
    assert lag_fields(replicator.status()) == in_sync

    moved = new_image("web moved")
    publish(world.source, "demo/web", "1.0", moved)
    pushed_at = time.time() - 5
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(pushed_at)) + ".000000000Z"
    assert replicator.post(envelope(event("push", "demo/web", "1.0", timestamp=stamp)))[0] == 200

    # lag grows with time: the status read between two scrapes lies between them
    before = without_last_success(replicator.scrape().destination())
    status = lag_fields(replicator.status())
    after = without_last_success(replicator.scrape().destination())
    assert before["replicator_pending_tags"] >= 1
    assert before["replicator_lag_seconds"] >= 5 - 1  # the timestamp has whole seconds
    for gauges in (before, after):
        assert gauges["replicator_pending_tags"] == status["replicator_pending_tags"]
        assert gauges["replicator_failing_tags"] == status["replicator_failing_tags"] == 0
    assert before["replicator_lag_seconds"] - 0.001 <= status["replicator_lag_seconds"] \
        <= after["replicator_lag_seconds"] + 0.001

    wait_for(lambda: replicator.scrape().value("replicator_pending_tags") == 0,
             "the targeted pass emptying the pending set")
    assert world.replica_digest("demo/web", "1.0") == moved.digest
    assert without_last_success(replicator.scrape().destination()) == in_sync
    assert lag_fields(replicator.status()) == in_sync


# --- a corrupt blob at the source ---------------------------------------------------------------

BROKEN_LAYER = si.layer({"srv/broken": b"this layer is corrupted at the source\n"})
BROKEN = si.image([BROKEN_LAYER])


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A world whose source gets a corrupt layer after the startup pass, announced by a push
    event: (world, scrape before the event, scrape once the tag failed)."""
    world = World(tmp_path_factory.mktemp("broken"), debounce="0.1s")
    try:
        publish(world.source, "demo/broken", "1", BROKEN)
        data = BROKEN_LAYER.data
        reg.Store(world.storage["primary"]).put(reg.blob_key(BROKEN_LAYER.digest),
                                                data[:-1] + bytes([data[-1] ^ 0xFF]))
        before = world.replicator.scrape()
        assert world.replicator.post(envelope(event("push", "demo/broken", "1")))[0] == 200

        def failed() -> Scrape | None:
            # the failing-tags gauge reads the state store, written as the tag fails; counters
            # move when the pass ends
            scrape = world.replicator.scrape()
            return scrape if (scrape.value("replicator_failing_tags")
                              and scrape.value("replicator_errors_total")) else None

        after = wait_for(failed, "the tag failing and its error counted")
        yield world, before, after
    finally:
        world.stop()


def test_corrupt_blob_shows_as_a_failing_tag(broken):
    world, before, after = broken
    [destination] = world.replicator.status()["destinations"]
    assert destination["failing_tags"] == 1
    assert destination["in_sync"] is False
    [failure] = destination["failures"]
    assert (failure["repository"], failure["tag"]) == ("demo/broken", "1")
    assert BROKEN_LAYER.digest.removeprefix("sha256:") in failure["error"]
    assert after.value("replicator_failing_tags") == 1
    assert after.value("replicator_pending_tags") == destination["pending_tags"] == 1
    assert world.replica_digest("demo/broken", "1") is None


def test_corrupt_blob_counts_a_source_content_error(broken):
    _, before, after = broken
    assert before.value("replicator_errors_total", kind="source_content") == 0
    assert after.value("replicator_errors_total", destination="replica",
                       kind="source_content") == 1


def test_every_metric_is_exposed(broken):
    _, _, scrape = broken
    names = {sample.name for sample in scrape.samples}
    for name in METRIC_NAMES:
        if name == "replicator_pass_duration_seconds":
            assert {f"{name}_bucket", f"{name}_count", f"{name}_sum"} <= names
        else:
            assert name in names, name
    labels = {name: {key for s in scrape.samples if s.name == name for key in s.labels}
              for name in METRIC_NAMES}
    for name in (*DESTINATION_GAUGES, "replicator_tags_replicated_total"):
        assert labels[name] == {"policy", "source", "destination"}, name
    assert labels["replicator_storage_requests_total"] == {"region", "op"}
    assert labels["replicator_errors_total"] == {"destination", "kind"}
    assert labels["replicator_events_received_total"] == {"region", "action"}


# --- SIGTERM ----------------------------------------------------------------------------------

def test_sigterm_exits_0_and_leaves_a_usable_state_store(tmp_path):
    world = World(tmp_path, debounce="30s")
    try:
        # an event whose pass is not yet due must not hold the exit up
        assert world.replicator.post(envelope(event("push", "demo/web", "1.0")))[0] == 200
        process = world.replicator.service.process
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0, world.replicator.log()
    finally:
        world.stop()
    [destination] = world.replicator.status()["destinations"]
    assert destination["pending_tags"] == 1  # the change the event announced is remembered
    assert destination["last_success"] is not None
    assert "Traceback" not in world.replicator.log()
