"""A ``sync`` delivers the purges its passes enqueued before it returns.

Against scripted Cloudflare and Fastly APIs (``RecordingServer``) in front of a filesystem
destination, through the CLI: a purge answered 429 (``Retry-After: 1``), then 503, then 200 is
retried within the same run, after the wait the provider asked for, and the run exits 0 with
nothing outstanding; a purge still failing when ``cdn.timeout`` runs out stays in the durable
queue, is reported (``--json``, ``status``) and makes the exit code 1, and the next ``sync``
sends it. A no-change pass with nothing outstanding sends no purge.
"""

from __future__ import annotations

import threading

import pytest

from drivers.errors import ConfigError
from replicator import config as config_module

from tests import test_cdn_purgers as purger_tests
from tests import test_cdn_sync as cdn_sync
from tests.cdn_servers import RecordingServer, Reply
from tests.test_cdn_purgers import CLOUDFLARE_OK, FASTLY_OK
from tests.test_cdn_sync import DST, X, Y, cloudflare_urls, expected_urls, provider_block

serve = purger_tests.serve
fast_tmp = cdn_sync.fast_tmp
make_world = cdn_sync.make_world

THROTTLED = Reply(429, {"success": False, "errors": [{"code": 971, "message": "slow down"}]},
                  {"Retry-After": "1"})
UNAVAILABLE = Reply(503, {"success": False, "errors": [{"code": 10002, "message": "busy"}]})
ANSWERS = {"cloudflare": (CLOUDFLARE_OK, 1), "fastly": (FASTLY_OK, 4)}
"""provider -> (its success answer, requests per accepted batch of one tag's 4 URLs)."""


@pytest.mark.parametrize("provider", sorted(ANSWERS))
def test_one_sync_waits_out_429_and_503_and_returns_with_every_purge_accepted(
        serve, make_world, provider):
    ok, per_batch = ANSWERS[provider]
    server = serve([THROTTLED, UNAVAILABLE], then=ok)
    world = make_world(*provider_block(provider, server.url))
    world.publish("app", "1", X)

    code, document, stderr = world.sync_json()
    assert code == 0, stderr
    [entry] = document["passes"]
    assert (entry["tags_replicated"], entry["purges_sent"], entry["purges_retrying"],
            entry["purges_failed"], entry["purges_timed_out"]) == (1, 4, 0, 0, 0)
    assert document["purges_outstanding"] == {}
    assert world.outstanding() == []
    assert document["cdn_calls"] == {DST: 2 + per_batch} == {DST: len(server.requests)}
    first, second, third = server.requests[:3]
    assert second.at - first.at >= 1.0, "the retry did not wait for Retry-After"
    assert third.at - second.at >= 1.0   # the back-off's next step: 2 s after the second failure
    if provider == "cloudflare":
        assert cloudflare_urls(server.requests[2:]) == expected_urls("app", "1")

    code, document, _ = world.sync_json()   # no change, nothing outstanding: no purge call
    assert code == 0 and document["cdn_calls"] == {DST: 0}


def test_a_purge_failing_past_the_timeout_exits_1_stays_queued_and_the_next_sync_sends_it(
        make_world):
    healthy = threading.Event()

    def respond(request):
        return CLOUDFLARE_OK if healthy.is_set() else UNAVAILABLE

    with RecordingServer(respond) as server:
        world = make_world(*provider_block("cloudflare", server.url), cdn_timeout="3s")
        world.publish("app", "1", X)
        world.sync_json()
        world.publish("app", "1", Y)

        code, document, stderr = world.sync_json()
        assert code == 1, stderr
        [entry] = document["passes"]
        assert (entry["tags_replicated"], entry["purges_sent"], entry["purges_timed_out"]) == (1, 0, 4)
        assert document["ok"] is False
        assert document["purges_outstanding"] == {DST: expected_urls("app", "1")}
        assert world.link("app", "1") == Y.digest   # replicated, but the edge may serve it stale
        attempts = len(server.requests)
        assert 2 <= attempts <= 3   # at 0 s, 1 s and 3 s: the back-off within a 3 s bound
        status = world.status()
        assert (status["purges_outstanding"], status["in_sync"]) == (4, False)

        healthy.set()
        code, document, stderr = world.sync_json()
        assert code == 0, stderr
        assert document["passes"][0]["purges_sent"] == 4 and document["purges_outstanding"] == {}
        assert cloudflare_urls(server.requests[attempts:]) == expected_urls("app", "1")
        assert world.outstanding() == []


def test_a_bad_cdn_timeout_names_its_field(tmp_path):
    document = {"regions": {"src": {"storage": {"filesystem": {"rootdirectory": str(tmp_path / "a")}}},
                            "dst": {"storage": {"filesystem": {"rootdirectory": str(tmp_path / "b")}},
                                    "cdn": {"baseurls": ["https://r.example.com"], "timeout": "soon",
                                            "http": {"nodes": ["http://127.0.0.1:1"]}}}},
                "policies": [{"name": "p", "source": "src", "destinations": ["dst"]}]}
    with pytest.raises(ConfigError) as caught:
        config_module.parse(document)
    assert caught.value.field == "regions.dst.cdn.timeout"
    document["regions"]["dst"]["cdn"]["timeout"] = "30s"
    assert config_module.parse(document).regions["dst"].cdn.timeout == 30.0
