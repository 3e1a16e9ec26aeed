"""Notification envelopes (replicator/notifications.py) and the debouncer (replicator/debounce.py).

``event`` and ``envelope`` build bodies shaped like the ones Distribution 2.8.2 really sends
(captured from ``docker-registry`` pushing with skopeo): one event per envelope, blob pushes
and index children by digest with no ``tag``, nanosecond timestamps in UTC.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime, timezone

import pytest

from replicator.debounce import Debouncer
from replicator.notifications import EnvelopeError, Event, parse_envelope

MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
DIGEST = "sha256:" + "ab" * 32
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc).timestamp()
WAIT = 5.0
"""Generous bound on any wait for a debounced call (the windows below are 0.05 s)."""


def event(action: str, repository: str, tag: str | None = None, *,
          timestamp: str | None = None, **target) -> dict:
    """One event as Distribution sends it; ``tag=None`` leaves ``tag`` out (a push by digest)."""
    target = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 528,
              "digest": DIGEST, "length": 528, "repository": repository,
              "url": f"http://127.0.0.1:5000/v2/{repository}/manifests/{DIGEST}", **target}
    if tag is not None:
        target["tag"] = tag
    stamp = timestamp or datetime.now(timezone.utc).isoformat(timespec="microseconds").replace(
        "+00:00", "123Z")
    return {"id": str(uuid.uuid4()), "timestamp": stamp, "action": action, "target": target,
            "request": {"id": str(uuid.uuid4()), "addr": "127.0.0.1:40000", "host": "127.0.0.1:5000",
                        "method": "PUT", "useragent": "skopeo/1.9.3"},
            "actor": {}, "source": {"addr": "registry:5000", "instanceID": str(uuid.uuid4())}}


def envelope(*events: dict) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def parse(*events: dict) -> list[Event]:
    return parse_envelope(envelope(*events), now=NOW)


# --- valid envelopes -------------------------------------------------------------------------

def test_push_with_tag():
    [found] = parse(event("push", "apps/web", "1.0", timestamp="2024-05-06T07:08:08.250000000Z"))
    assert found == Event("push", "apps/web", "1.0", pytest.approx(NOW - 0.75))


def test_push_by_digest_has_no_tag():
    [found] = parse(event("push", "apps/web", mediaType="application/octet-stream"))
    assert (found.action, found.repository, found.tag) == ("push", "apps/web", "")


def test_pull_mount_and_delete():
    events = parse(event("pull", "apps/web", "1.0"),
                   event("mount", "apps/tools", fromRepository="apps/web"),
                   event("delete", "apps/web"))
    assert [(e.action, e.repository, e.tag) for e in events] \
        == [("pull", "apps/web", "1.0"), ("mount", "apps/tools", ""), ("delete", "apps/web", "")]


def test_empty_event_list():
    assert parse_envelope(b'{"events": []}', now=NOW) == []


def test_tags_and_names_at_the_edges_of_the_grammar():
    name = "/".join(["a" * 50] * 5)  # 254 characters
    tag = "_" + "A.b-9" * 25 + "xx"  # 128 characters
    [found] = parse(event("push", name, tag))
    assert (found.repository, found.tag) == (name, tag)


@pytest.mark.parametrize("stamp, expected", [
    ("2024-05-06T07:08:09Z", NOW),
    ("2024-05-06T07:08:08.123456789Z", NOW - 1 + 0.123456),   # nanoseconds: cut to micro
    ("2024-05-06T07:08:08.5Z", NOW - 0.5),
    ("2024-05-06T09:08:08.5+02:00", NOW - 0.5),                 # an offset
    ("2024-05-06T02:08:07.000000001-05:00", NOW - 2),
    ("2024-05-06T07:08:09.000000000+00:00", NOW),
], ids=["seconds", "nanoseconds", "one-digit-fraction", "plus-offset", "minus-offset-ns",
        "explicit-utc"])
def test_timestamps(stamp, expected):
    [found] = parse(event("push", "apps/web", "1.0", timestamp=stamp))
    assert found.timestamp == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("stamp", [None, 1714979289, "yesterday", "2024-13-45T99:00:00Z",
                                   "2099-01-01T00:00:00Z"],
                         ids=["missing", "number", "words", "impossible-date", "future"])
def test_missing_unreadable_or_future_timestamps_are_now(stamp):
    item = event("push", "apps/web", "1.0")
    if stamp is None:
        del item["timestamp"]
    else:
        item["timestamp"] = stamp
    [found] = parse(item)
    assert found.timestamp == NOW


# --- malformed envelopes: the whole envelope is refused ------------------------------------

def with_target(**changes) -> dict:
    item = event("push", "apps/web", "1.0")
    item["target"].update(changes)
    return item


def without(key: str) -> dict:
    item = event("push", "apps/web", "1.0")
    del item[key]
    return item


def target_without(key: str) -> dict:
    item = event("push", "apps/web", "1.0")
    del item["target"][key]
    return item


@pytest.mark.parametrize("body, words", [
    (b"not json", ["not JSON"]),
    (b'{"events": ["\xc3\x28"]}', ["not JSON"]),
    (b"", ["not JSON"]),
    (b'[{"events": []}]', ["object", "events"]),
    (b'"events"', ["object", "events"]),
    (b"{}", ["events"]),
    (b'{"events": {}}', ["events"]),
    (b'{"events": null}', ["events"]),
    (envelope("push"), ["events[0]", "target"]),
    (envelope(without("target")), ["events[0]", "target"]),
    (envelope({**event("push", "apps/web", "1.0"), "target": "apps/web:1.0"}), ["events[0]", "target"]),
    (envelope(without("action")), ["events[0].action"]),
    (envelope({**event("push", "apps/web", "1.0"), "action": "tag"}), ["events[0].action"]),
    (envelope({**event("push", "apps/web", "1.0"), "action": "PUSH"}), ["events[0].action"]),
    (envelope(target_without("repository")), ["events[0].target", "repository"]),
    (envelope(with_target(repository="../x")), ["events[0].target", "'../x'"]),
    (envelope(with_target(repository="UPPER")), ["events[0].target", "'UPPER'"]),
    (envelope(with_target(repository="a//b")), ["events[0].target", "repository"]),
    (envelope(with_target(repository="apps/web/")), ["events[0].target", "repository"]),
    (envelope(with_target(repository="a" * 256)), ["events[0].target", "repository"]),
    (envelope(with_target(tag="-x")), ["events[0].target", "tag"]),
    (envelope(with_target(tag="../latest")), ["events[0].target", "tag"]),
    (envelope(with_target(tag="a b")), ["events[0].target", "tag"]),
    (envelope(with_target(tag="x" * 129)), ["events[0].target", "tag"]),
], ids=["not-json", "not-utf8", "empty", "list", "string", "no-events", "events-object",
        "events-null", "event-not-object", "no-target", "target-not-object", "no-action",
        "unknown-action", "action-case", "no-repository", "repository-dotdot",
        "repository-upper", "repository-empty-component", "repository-trailing-slash",
        "repository-too-long", "tag-leading-dash", "tag-path", "tag-space", "tag-too-long"])
def test_malformed_envelopes(body, words):
    with pytest.raises(EnvelopeError) as raised:
        parse_envelope(body, now=NOW)
    for word in words:
        assert word in str(raised.value)


def test_one_bad_event_refuses_the_envelope_naming_it():
    with pytest.raises(EnvelopeError, match=r"events\[1\]"):
        parse(event("push", "apps/web", "1.0"), event("push", "UPPER", "1.0"),
              event("push", "apps/web", "2.0"))


# --- the debouncer -----------------------------------------------------------------------------

QUIET = 0.05


class Calls:
    """Records the keys an action is called with; can block inside the action or raise."""

    def __init__(self, fail: set = frozenset()):
        self.keys: list = []
        self.fail = fail
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self._condition = threading.Condition()

    def __call__(self, key) -> None:
        self.entered.set()
        self.release.wait(WAIT)
        with self._condition:
            self.keys.append(key)
            self._condition.notify_all()
        if key in self.fail:
            raise RuntimeError(f"action for {key} broke")

    def wait_for(self, count: int) -> list:
        """The keys once ``count`` calls were made (or after ``WAIT``, whatever was made)."""
        with self._condition:
            self._condition.wait_for(lambda: len(self.keys) >= count, WAIT)
            return list(self.keys)

    def settled(self) -> list:
        """The keys after several quiet windows more, to catch calls that should not come."""
        time.sleep(QUIET * 6)
        with self._condition:
            return list(self.keys)


@pytest.fixture
def debouncer():
    """Starts Debouncers made by the test (``make(action, quiet, max_delay)``) and stops them."""
    made = []

    def make(action, quiet=QUIET, max_delay=QUIET * 10):
        made.append(Debouncer(action, quiet, max_delay))
        made[-1].start()
        return made[-1]

    yield make
    for item in made:
        item.stop()


def test_a_burst_for_one_key_is_one_call(debouncer):
    calls = Calls()
    events = debouncer(calls, max_delay=WAIT)
    for _ in range(20):
        events.hint(("prod", "apps/web"))
    assert calls.wait_for(1) == [("prod", "apps/web")]
    assert calls.settled() == [("prod", "apps/web")]
    assert events.pending() == 0


def test_two_keys_are_two_calls(debouncer):
    calls = Calls()
    events = debouncer(calls)
    for key in ("apps/web", "apps/tools", "apps/web", "apps/tools"):
        events.hint(key)
    assert sorted(calls.wait_for(2)) == ["apps/tools", "apps/web"]
    assert sorted(calls.settled()) == ["apps/tools", "apps/web"]


def test_a_hint_during_the_action_calls_it_again(debouncer):
    calls = Calls()
    calls.release.clear()
    events = debouncer(calls)
    events.hint("apps/web")
    assert calls.entered.wait(WAIT)
    events.hint("apps/web")
    assert events.pending() == 1
    calls.release.set()
    assert calls.wait_for(2) == ["apps/web", "apps/web"]
    assert calls.settled() == ["apps/web", "apps/web"]


def test_max_delay_bounds_the_wait_under_a_continuous_stream(debouncer):
    calls = Calls()
    events = debouncer(calls, quiet=0.5, max_delay=0.2)  # never quiet for 0.5 s below
    deadline = time.monotonic() + WAIT
    while not calls.keys and time.monotonic() < deadline:
        events.hint("apps/web")
        time.sleep(0.01)
    assert calls.keys == ["apps/web"], "a continuous stream of hints postponed the call forever"


def test_an_action_that_raises_is_logged_and_the_worker_goes_on(debouncer, caplog):
    calls = Calls(fail={"apps/broken"})
    events = debouncer(calls)
    with caplog.at_level(logging.ERROR, logger="replicator.debounce"):
        events.hint("apps/broken")
        assert calls.wait_for(1) == ["apps/broken"]
        events.hint("apps/web")
        assert calls.wait_for(2) == ["apps/broken", "apps/web"]
    assert any("apps/broken" in record.getMessage() and record.exc_info
               for record in caplog.records)


def test_stop_returns_and_drops_hints_not_yet_due():
    calls = Calls()
    events = Debouncer(calls, 60.0, 600.0)
    events.start()
    events.hint("apps/web")
    stopper = threading.Thread(target=events.stop)
    stopper.start()
    stopper.join(WAIT)
    assert not stopper.is_alive(), "stop() did not return"
    assert calls.keys == []


def test_stop_waits_for_the_action_under_way():
    calls = Calls()
    calls.release.clear()
    events = Debouncer(calls, QUIET, QUIET * 10)
    events.start()
    events.hint("apps/web")
    assert calls.entered.wait(WAIT)
    stopper = threading.Thread(target=events.stop)
    stopper.start()
    stopper.join(QUIET * 4)
    assert stopper.is_alive(), "stop() returned while the action was still running"
    calls.release.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert calls.keys == ["apps/web"]


def test_stop_without_start_returns():
    Debouncer(Calls(), QUIET, QUIET * 10).stop()
