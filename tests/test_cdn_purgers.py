"""The CDN purgers against local stand-ins: a recording HTTP server for the Cloudflare and Fastly
APIs (and for CloudFront's error answers), moto's CloudFront over real HTTP, and Varnish with
``registry-cdn.vcl`` in front of a tiny origin for the ``http`` purger."""

from __future__ import annotations

import email.utils
import time
import urllib.request
import uuid

import boto3
import pytest

from drivers.cdn import open_purger
from drivers.cdn.base import PurgeError
from drivers.cdn.cloudfront import CloudFrontPurger
from drivers.cdn.http import HttpPurger
from drivers.cdn.httpapi import retry_after
from drivers.errors import ConfigError
from tests.cdn_servers import RecordingServer, Reply, origin, scripted, start_varnish
from tests.services import S3_CREDENTIALS, free_port

TOKEN = "SECRET-API-TOKEN-0123456789"
AWS_SECRETS = {"accesskey": "AKIASECRETACCESSID", "secretkey": "SECRET-AWS-KEY-VALUE",
               "sessiontoken": "SECRET-AWS-SESSION"}
HOST = "registry-eu.example.com"
URLS = [f"https://{HOST}/v2/app/manifests/1.0", f"https://{HOST}/v2/app/tags/list"]


@pytest.fixture
def serve():
    """Starts RecordingServers answering ``replies`` (then 200 ``then``); stops them after the test."""
    servers = []

    def start(replies: list[Reply] = (), then: Reply | None = None) -> RecordingServer:
        server = RecordingServer(scripted(list(replies), then))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def cloudflare(url: str, **extra):
    return open_purger("cloudflare", {"zoneid": "zone123", "apitoken": TOKEN, "endpoint": url, **extra})


def fastly(url: str, **extra):
    return open_purger("fastly", {"serviceid": "svc123", "apitoken": TOKEN, "endpoint": url, **extra})


def fastly_keys(url: str, **extra):
    return fastly(url, mode="surrogatekey", **extra)


def http_nodes(url: str, **extra):
    return open_purger("http", {"nodes": [url], **extra})


CLOUDFLARE_OK = Reply(200, {"success": True, "errors": [], "messages": [], "result": {"id": "p1"}})
FASTLY_OK = Reply(200, {"status": "ok", "id": "p1"})
API_PURGERS = {
    "cloudflare": (cloudflare, CLOUDFLARE_OK,
                   lambda text: {"success": False, "errors": [{"code": 10000, "message": text}]}),
    "fastly": (fastly, FASTLY_OK, lambda text: {"msg": text, "detail": "purge refused"}),
    "fastly-keys": (fastly_keys, FASTLY_OK, lambda text: {"msg": text}),
    "http": (http_nodes, Reply(200, b"Purged"), lambda text: text.encode()),
}
"""name: (make purger from an endpoint URL, a success reply, an error body carrying a text)."""


def assert_config_error(kind: str, params: dict, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_purger(kind, params)
    assert caught.value.field == field
    for secret in (TOKEN, *AWS_SECRETS.values()):
        assert secret not in str(caught.value)


# --- configuration -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind, params, field", [
    ("cloudfront", {}, "cloudfront.distributionid"),
    ("cloudfront", {"distributionid": "E1", "accesskey": AWS_SECRETS["accesskey"]}, "cloudfront.secretkey"),
    ("cloudfront", {"distributionid": "E1", "batchsize": 3001}, "cloudfront.batchsize"),
    ("cloudfront", {"distributionid": "E1", "distribution": "E1"}, "cloudfront.distribution"),
    ("cloudfront", {"distributionid": "E1", "endpoint": "ftp://x"}, "cloudfront.endpoint"),
    ("cloudflare", {"apitoken": TOKEN}, "cloudflare.zoneid"),
    ("cloudflare", {"zoneid": "z"}, "cloudflare.apitoken"),
    ("cloudflare", {"zoneid": "z", "apitoken": ""}, "cloudflare.apitoken"),
    ("cloudflare", {"zoneid": "z", "apitoken": TOKEN, "token": TOKEN}, "cloudflare.token"),
    ("cloudflare", {"zoneid": "z", "apitoken": TOKEN, "batchsize": 0}, "cloudflare.batchsize"),
    ("cloudflare", {"zoneid": "z", "apitoken": TOKEN, "endpoint": f"https://u:{TOKEN}@x"},
     "cloudflare.endpoint"),
    ("fastly", {"apitoken": TOKEN}, "fastly.serviceid"),
    ("fastly", {"serviceid": "s"}, "fastly.apitoken"),
    ("fastly", {"serviceid": "s", "apitoken": TOKEN, "mode": "tags"}, "fastly.mode"),
    ("fastly", {"serviceid": "s", "apitoken": TOKEN, "softpurge": "yes"}, "fastly.softpurge"),
    ("fastly", {"serviceid": "s", "apitoken": TOKEN, "mode": "surrogatekey", "batchsize": 257},
     "fastly.batchsize"),
    ("fastly", {"serviceid": "s", "apitoken": TOKEN, "key": TOKEN}, "fastly.key"),
    ("http", {}, "http.nodes"),
    ("http", {"nodes": []}, "http.nodes"),
    ("http", {"nodes": "http://127.0.0.1:6081"}, "http.nodes"),
    ("http", {"nodes": ["http://127.0.0.1:6081", "10.0.0.5:6081"]}, "http.nodes[1]"),
    ("http", {"nodes": ["http://127.0.0.1:6081"], "method": "DELETE"}, "http.method"),
    ("http", {"nodes": ["http://127.0.0.1:6081"], "host": HOST}, "http.host"),
])
def test_config_errors_name_the_field(kind, params, field):
    assert_config_error(kind, params, field)


@pytest.mark.parametrize("kind, params, description, batch_size", [
    ("cloudfront", {"distributionid": "E123ABC", **AWS_SECRETS}, "cloudfront:E123ABC", 1000),
    ("cloudfront", {"distributionid": "E123ABC", "batchsize": "3000"}, "cloudfront:E123ABC", 3000),
    ("cloudflare", {"zoneid": "zone123", "apitoken": TOKEN}, "cloudflare:zone123", 30),
    ("cloudflare", {"zoneid": "zone123", "apitoken": TOKEN, "batchsize": 100}, "cloudflare:zone123", 100),
    ("fastly", {"serviceid": "svc123", "apitoken": TOKEN}, "fastly:svc123", 30),
    ("fastly", {"serviceid": "svc123", "apitoken": TOKEN, "mode": "surrogatekey"}, "fastly:svc123", 256),
    ("fastly", {"serviceid": "svc123", "apitoken": TOKEN, "batchsize": 10}, "fastly:svc123", 10),
    ("http", {"nodes": ["http://10.0.0.5:6081/", "http://10.0.0.6:6081"], "method": "ban"},
     "http:http://10.0.0.5:6081,http://10.0.0.6:6081", 100),
])
def test_describe_and_batch_size_from_config(kind, params, description, batch_size):
    purger = open_purger(kind, params)
    assert purger.kind == kind
    assert purger.describe() == description
    assert purger.batch_size == batch_size
    for secret in (TOKEN, *AWS_SECRETS.values()):
        assert secret not in repr(purger) and secret not in purger.describe()


@pytest.mark.parametrize("name", API_PURGERS)
def test_a_batch_larger_than_batch_size_is_refused_before_any_request(serve, name):
    make, ok, _ = API_PURGERS[name]
    server = serve(then=ok)
    purger = make(server.url, batchsize=5)
    urls = [f"https://{HOST}/v2/app{index}/manifests/latest" for index in range(6)]
    with pytest.raises(ValueError):
        purger.purge(urls)
    with pytest.raises(ValueError):
        purger.purge(["/v2/app/manifests/latest"])
    assert server.requests == [] and purger.calls == 0
    purger.purge(urls[:5])
    assert server.requests


# --- request shapes ----------------------------------------------------------------------------

def test_cloudflare_sends_one_post_per_batch(serve):
    server = serve(then=CLOUDFLARE_OK)
    purger = cloudflare(server.url + "/client/v4/")
    urls = [f"https://{HOST}/v2/app{index}/manifests/latest" for index in range(30)]
    purger.purge(urls)
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/client/v4/zones/zone123/purge_cache")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {"files": urls}
    assert purger.calls == 1


def test_cloudflare_success_false_in_a_200_is_a_permanent_error(serve):
    server = serve([Reply(200, {"success": False, "errors": [{"code": 1012, "message": "bad file"}]})])
    with pytest.raises(PurgeError) as caught:
        cloudflare(server.url).purge(URLS)
    assert not caught.value.retryable
    assert "1012: bad file" in str(caught.value)


def test_fastly_url_mode_posts_each_url(serve):
    server = serve(then=FASTLY_OK)
    purger = fastly(server.url)
    purger.purge(URLS + ["http://registry-us.example.com:8443/v2/team/app/manifests/sha256:abc"])
    assert [(request.method, request.path) for request in server.requests] == [
        ("POST", f"/purge/{HOST}/v2/app/manifests/1.0"),
        ("POST", f"/purge/{HOST}/v2/app/tags/list"),
        ("POST", "/purge/registry-us.example.com:8443/v2/team/app/manifests/sha256:abc")]
    for request in server.requests:
        assert request.headers["fastly-key"] == TOKEN
        assert "fastly-soft-purge" not in request.headers
    assert purger.calls == 3


def test_fastly_surrogate_keys_are_the_paths_in_one_request(serve):
    server = serve(then=FASTLY_OK)
    purger = fastly_keys(server.url, softpurge=True)
    purger.purge(URLS + ["https://registry-us.example.com/v2/app/tags/list"])
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/service/svc123/purge")
    assert request.headers["surrogate-key"] == "/v2/app/manifests/1.0 /v2/app/tags/list"
    assert request.headers["fastly-key"] == TOKEN
    assert request.headers["fastly-soft-purge"] == "1"
    purger.purge([f"https://{HOST}/v2/app{index}/tags/list" for index in range(256)])
    assert len(server.requests[1].headers["surrogate-key"].split(" ")) == 256


def test_http_purger_asks_every_node_for_every_url_with_the_users_host(serve):
    nodes = [serve(), serve()]
    purger = open_purger("http", {"nodes": [node.url for node in nodes], "softpurge": True})
    purger.purge(URLS + ["http://registry-us.example.com:5000/v2/app/manifests/1.0?x=1"])
    for node in nodes:
        assert [(r.method, r.path, r.headers["host"]) for r in node.requests] == [
            ("PURGE", "/v2/app/manifests/1.0", HOST), ("PURGE", "/v2/app/tags/list", HOST),
            ("PURGE", "/v2/app/manifests/1.0?x=1", "registry-us.example.com:5000")]
        assert all(r.headers["fastly-soft-purge"] == "1" for r in node.requests)
    assert purger.calls == 6


def test_http_ban_sends_an_anchored_escaped_regex(serve):
    node = serve()
    open_purger("http", {"nodes": [node.url], "method": "BAN"}).purge(URLS[:1])
    [request] = node.requests
    assert (request.method, request.path, request.headers["host"]) == (
        "BAN", "/v2/app/manifests/1.0", HOST)
    assert request.headers["x-ban-url"] == r"^/v2/app/manifests/1\.0$"
    assert request.headers["x-ban-host"] == HOST
    assert "fastly-soft-purge" not in request.headers


# --- error classes -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", API_PURGERS)
def test_429_is_retryable_after_the_providers_wait(serve, name):
    make, ok, error_body = API_PURGERS[name]
    server = serve([Reply(429, error_body("rate limited"), {"Retry-After": "1"})], then=ok)
    purger = make(server.url)
    with pytest.raises(PurgeError) as caught:
        purger.purge(URLS)
    assert caught.value.retryable and caught.value.retry_after == 1.0
    assert "429" in str(caught.value) and TOKEN not in str(caught.value)
    purger.purge(URLS)


@pytest.mark.parametrize("name", API_PURGERS)
@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retryable(serve, name, status):
    make, _, error_body = API_PURGERS[name]
    server = serve([Reply(status, error_body("upstream broke"))])
    with pytest.raises(PurgeError) as caught:
        make(server.url).purge(URLS)
    assert caught.value.retryable and caught.value.retry_after is None


@pytest.mark.parametrize("name", API_PURGERS)
@pytest.mark.parametrize("status", [401, 403, 400])
def test_4xx_is_permanent_with_the_providers_message_and_no_secret(serve, name, status):
    make, _, error_body = API_PURGERS[name]
    server = serve([Reply(status, error_body(f"Invalid token {TOKEN}"))])
    with pytest.raises(PurgeError) as caught:
        make(server.url).purge(URLS)
    assert not caught.value.retryable
    message = str(caught.value)
    assert str(status) in message and TOKEN not in message
    if name != "http":
        assert "Invalid token ***" in message


@pytest.mark.parametrize("name", API_PURGERS)
def test_refused_connection_is_retryable(name):
    make, _, _ = API_PURGERS[name]
    with pytest.raises(PurgeError) as caught:
        make(refused_url()).purge(URLS)
    assert caught.value.retryable and TOKEN not in str(caught.value)


@pytest.mark.parametrize("header, seconds", [
    ("120", 120.0), ("0.5", 0.5), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("soon", None), (None, None)])
def test_retry_after_reads_seconds_or_a_date(header, seconds):
    assert retry_after(header) == seconds


def test_retry_after_a_date_to_come():
    assert 50 < retry_after(email.utils.formatdate(time.time() + 60, usegmt=True)) <= 60


def test_http_purger_purges_the_healthy_nodes_when_one_is_down(serve):
    node = serve()
    purger = open_purger("http", {"nodes": [refused_url(), node.url]})
    with pytest.raises(PurgeError) as caught:
        purger.purge(URLS)
    assert caught.value.retryable
    assert len(node.requests) == 2


def test_http_purger_failure_is_permanent_if_any_node_refuses_for_good(serve):
    purger = open_purger("http", {"nodes": [serve([Reply(500)]).url, serve([Reply(403)]).url]})
    with pytest.raises(PurgeError) as caught:
        purger.purge(URLS)
    assert not caught.value.retryable
    assert "HTTP 500" in str(caught.value) and "HTTP 403" in str(caught.value)


# --- CloudFront --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cloudfront(moto):
    return boto3.client("cloudfront", endpoint_url=moto.url, region_name="us-east-1",
                        aws_access_key_id=S3_CREDENTIALS["accesskey"],
                        aws_secret_access_key=S3_CREDENTIALS["secretkey"])


@pytest.fixture
def distribution(cloudfront) -> str:
    origin_config = {"Id": "registry", "DomainName": "registry.example.com",
                     "CustomOriginConfig": {"HTTPPort": 80, "HTTPSPort": 443,
                                            "OriginProtocolPolicy": "https-only"}}
    created = cloudfront.create_distribution(DistributionConfig={
        "CallerReference": uuid.uuid4().hex, "Comment": "", "Enabled": True,
        "Origins": {"Quantity": 1, "Items": [origin_config]},
        "DefaultCacheBehavior": {"TargetOriginId": "registry", "ViewerProtocolPolicy": "https-only",
                                 "CachePolicyId": "658327ea-f89d-4fab-a63d-7e88639e58f6"}})
    return created["Distribution"]["Id"]


def cloudfront_purger(endpoint: str, distribution_id: str, **extra) -> CloudFrontPurger:
    return open_purger("cloudfront", {"distributionid": distribution_id, "endpoint": endpoint,
                                      "accesskey": S3_CREDENTIALS["accesskey"],
                                      "secretkey": S3_CREDENTIALS["secretkey"], **extra})


def invalidations(cloudfront, distribution_id: str) -> list[dict]:
    """Every invalidation of the distribution, oldest first, as get_invalidation answers it."""
    listed = cloudfront.list_invalidations(DistributionId=distribution_id)["InvalidationList"]
    return [cloudfront.get_invalidation(DistributionId=distribution_id, Id=item["Id"])["Invalidation"]
            for item in listed.get("Items") or []]


def test_cloudfront_invalidates_exactly_the_paths(moto, cloudfront, distribution):
    purger = cloudfront_purger(moto.url, distribution)
    purger.purge(URLS + ["https://registry-us.example.com/v2/app/tags/list",
                         f"https://{HOST}/v2/we*rd%20app/manifests/1.0?x=1"])
    [invalidation] = invalidations(cloudfront, distribution)
    assert invalidation["InvalidationBatch"]["Paths"] == {"Quantity": 3, "Items": [
        "/v2/app/manifests/1.0", "/v2/app/tags/list", "/v2/we%2Ard%20app/manifests/1.0"]}
    assert invalidation["InvalidationBatch"]["CallerReference"].startswith("replicator-")
    assert purger.calls == 1


def test_cloudfront_caller_reference_is_the_same_only_for_the_same_batch(moto, cloudfront, distribution):
    purger = cloudfront_purger(moto.url, distribution)
    purger.purge(URLS, batch_id="change-7")
    purger.purge(list(reversed(URLS)), batch_id="change-7")
    purger.purge(URLS, batch_id="change-8")
    purger.purge(URLS)
    purger.purge(URLS)
    references = [item["InvalidationBatch"]["CallerReference"]
                  for item in invalidations(cloudfront, distribution)]
    assert references[0] == references[1]
    assert len(set(references)) == 4


def test_cloudfront_unknown_distribution_is_permanent(moto):
    with pytest.raises(PurgeError) as caught:
        cloudfront_purger(moto.url, "ENOSUCHDIST").purge(URLS)
    assert not caught.value.retryable
    assert "NoSuchDistribution" in str(caught.value)


def cloudfront_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0"?><ErrorResponse xmlns="http://cloudfront.amazonaws.com/doc/'
            f'2020-05-31/"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message>'
            f'</Error><RequestId>r1</RequestId></ErrorResponse>').encode()


@pytest.mark.parametrize("status, code, retryable", [
    (400, "TooManyInvalidationsInProgress", True),
    (400, "Throttling", True),
    (503, "ServiceUnavailable", True),
    (403, "AccessDenied", False),
    (400, "InvalidArgument", False),
    (413, "BatchTooLarge", False),
])
def test_cloudfront_error_classes(serve, status, code, retryable):
    server = serve([Reply(status, cloudfront_error(code, f"for {AWS_SECRETS['accesskey']}"),
                          {"Content-Type": "text/xml", "Retry-After": "2"})])
    purger = open_purger("cloudfront", {"distributionid": "E123ABC", "endpoint": server.url,
                                        **AWS_SECRETS})
    with pytest.raises(PurgeError) as caught:
        purger.purge(URLS)
    assert caught.value.retryable is retryable
    assert caught.value.retry_after == 2.0
    assert code in str(caught.value)
    for secret in AWS_SECRETS.values():
        assert secret not in str(caught.value)
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/2020-05-31/distribution/E123ABC/invalidation")


def test_cloudfront_refuses_a_batch_larger_than_batch_size():
    purger = cloudfront_purger(refused_url(), "E123ABC", batchsize=5)
    with pytest.raises(ValueError):
        purger.purge([f"https://{HOST}/v2/app{index}/manifests/latest" for index in range(6)])
    assert purger.calls == 0


def test_cloudfront_refused_connection_is_retryable():
    with pytest.raises(PurgeError) as caught:
        cloudfront_purger(refused_url(), "E123ABC").purge(URLS)
    assert caught.value.retryable


# --- a real Varnish edge -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """(Varnish service, the origin's mutable bodies) with registry-cdn.vcl; started once."""
    bodies: dict[str, bytes] = {}
    with RecordingServer(origin(bodies)) as server:
        varnish = start_varnish(server.port, tmp_path_factory.mktemp("varnish"))
        try:
            yield varnish, bodies
        finally:
            varnish.stop()


def fetch(varnish, path: str, host: str = HOST) -> tuple[bytes, str]:
    request = urllib.request.Request(varnish.url + path, headers={"Host": host})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read(), response.headers["X-Cache"]


@pytest.mark.parametrize("method", ["PURGE", "BAN"])
def test_varnish_serves_the_new_body_after_a_purge(edge, method):
    varnish, bodies = edge
    path = f"/v2/app-{method.lower()}/manifests/1.0"
    other = f"/v2/app-{method.lower()}/manifests/1x0"
    bodies[path], bodies[other] = b"old", b"other"
    assert fetch(varnish, path) == (b"old", "MISS")
    assert fetch(varnish, path) == (b"old", "HIT")
    assert fetch(varnish, other) == (b"other", "MISS")
    assert fetch(varnish, path, "registry-us.example.com") == (b"old", "MISS")
    bodies[path] = b"new"
    assert fetch(varnish, path) == (b"old", "HIT")
    purger = HttpPurger.from_config({"nodes": [varnish.url], "method": method})
    purger.purge([f"https://{HOST}{path}"])
    assert fetch(varnish, path) == (b"new", "MISS")
    assert fetch(varnish, other) == (b"other", "HIT")
    assert fetch(varnish, path, "registry-us.example.com") == (b"old", "HIT")
    purger.purge([f"https://{HOST}/v2/never/cached"])


def test_varnish_soft_purge_serves_the_stale_body_once_then_the_new_one(edge):
    varnish, bodies = edge
    path = "/v2/app-soft/manifests/1.0"
    bodies[path] = b"old"
    fetch(varnish, path)
    bodies[path] = b"new"
    HttpPurger.from_config({"nodes": [varnish.url], "softpurge": True}).purge([f"https://{HOST}{path}"])
    assert fetch(varnish, path)[0] == b"old"
    for _ in range(50):
        if fetch(varnish, path)[0] == b"new":
            break
        time.sleep(0.02)
    else:
        pytest.fail("the soft-purged object was never refetched")
