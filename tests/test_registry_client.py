"""drivers.registry against Debian's docker-registry 2.8.2, skopeo as the peer: authentication
(anonymous over TLS, htpasswd, tokens), reading what skopeo pushed, writing what skopeo pulls,
mounts, an interrupted 64 MiB chunked upload, throttling. Blob contents are fresh random bytes
wherever uploads or mounts are counted (skopeo's blob-info cache outlives test runs)."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from drivers.errors import AccessDenied, ConfigError, NotFound, StorageError
from drivers.registry import CatalogUnavailable, RegistryClient, Unsupported
from drivers.registry.blob import _Source
from drivers.registry.client import default_tls
from drivers.registry.tag import next_page
from replicator import sample_images as si
from tests import registry as reg
from tests.faults import REGISTRY, FaultProxy
from tests.registry_auth import TOKEN_LIFETIME, TokenServer, make_tls, tls_section, write_htpasswd

MIB = 1024 * 1024
PASSWORD = "s3cret-Passw0rd-for-tests"
WRONG = "wr0ng-Passw0rd-for-tests"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fresh_image(*, oci: bool = True, layer_size: int = 2000, rng: random.Random | None = None) -> si.Image:
    """An image of one layer of random bytes (from ``rng``, when given, for repeatable digests)."""
    content = rng.randbytes(layer_size) if rng else os.urandom(layer_size)
    return si.image([si.layer({"random": content}, oci=oci)], oci=oci)


def counts(client: RegistryClient) -> dict[str, int]:
    return {kind: n for kind, n in client.requests.snapshot().items() if n}


def sessions(root: Path, repository: str) -> list[Path]:
    """The live upload sessions of ``repository`` in a filesystem registry (a cancelled one
    keeps its directory in 2.8.2, without ``startedat``)."""
    return list((root / reg.V2 / "repositories" / repository / "_uploads").glob("*/startedat"))


def push_image(client: RegistryClient, repository: str, tag: str, image: si.Image) -> None:
    """Blobs, then manifests by digest (children first), then the tag."""
    for blob in image.all_blobs():
        if not reg.is_manifest(blob):
            client.blob_upload(repository, blob.digest, [blob.data], len(blob.data))
    for blob in image.all_blobs():
        if reg.is_manifest(blob):
            client.manifest_put(repository, blob.digest, blob.data, blob.media_type)
    client.manifest_put(repository, tag, image.manifest.data, image.manifest.media_type)


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def registry(root, tmp_path):
    service = reg.start_registry(reg.filesystem_storage(root), tmp_path / "logs")
    yield service
    service.stop()


# --- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("params, field", [
    ({}, "url"),
    ({"url": "ftp://127.0.0.1"}, "url"),
    ({"url": f"https://user:{PASSWORD}@127.0.0.1"}, "url"),
    ({"url": "https://127.0.0.1", "username": "u"}, "password"),
    ({"url": "https://127.0.0.1", "password": PASSWORD}, "username"),
    ({"url": "https://127.0.0.1", "requests_per_second": 0}, "requests_per_second"),
    ({"url": "https://127.0.0.1", "cacert": "/nonexistent/ca.pem"}, "cacert"),
    ({"url": "https://127.0.0.1", "token": PASSWORD}, "token"),
])
def test_bad_configuration_names_the_field_and_no_value(params, field):
    with pytest.raises(ConfigError) as raised:
        RegistryClient.from_config(params)
    assert raised.value.field == field
    assert PASSWORD not in str(raised.value)


def test_description_and_repr_hold_no_secret():
    client = RegistryClient.from_config({"url": "https://127.0.0.1:5000", "username": "alice",
                                         "password": PASSWORD, "repositories": ["org/*"]})
    assert client.describe() == "https://127.0.0.1:5000"
    assert PASSWORD not in repr(client) and client.repositories == ("org/*",)


def test_link_paging_follows_rel_next():
    """2.8.2 ignores ``n`` and ``last`` on tags/list, so paging is checked on an in-process fake."""
    pages = {"": ('</v2/app/tags/list?n=2&last=b>; rel="next"', ["a", "b"]),
             "b": (None, ["c"])}

    def answer(request: httpx.Request) -> httpx.Response:
        link, tags = pages[request.url.params.get("last", "")]
        return httpx.Response(200, json={"name": "app", "tags": tags},
                              headers={"Link": link} if link else {})

    client = RegistryClient("http://registry.invalid", transport=httpx.MockTransport(answer))
    assert list(client.tag_list("app", page_size=2)) == [["a", "b"], ["c"]]
    assert counts(client) == {"list": 2}
    response = httpx.Response(200, headers={"Link": '<https://o.invalid/x?n=1>; rel="next"'},
                              request=httpx.Request("GET", "http://registry.invalid/v2/_catalog"))
    assert next_page(response) == "https://o.invalid/x?n=1"


def test_upload_source_rereads_only_the_chunk_in_hand_unless_it_can_reopen():
    data = bytes(range(256)) * 40
    pieces = _Source(data[start:start + 1000] for start in range(0, len(data), 1000))
    assert pieces.read(0, 1500) == data[:1500]
    assert pieces.read(1000, 1500) == data[1000:2500]   # still in hand: sent again
    with pytest.raises(StorageError, match="cannot read the blob again") as raised:
        pieces.read(0, 10)
    assert not raised.value.retryable
    opened = []
    reopening = _Source(lambda offset: opened.append(offset) or [data[offset:]])
    assert reopening.read(0, 1000) == data[:1000] and reopening.read(9000, 5000) == data[9000:]
    assert reopening.read(10, 5) == data[10:15] and opened == [0, 10]


# --- authentication and TLS ------------------------------------------------------------------

def test_anonymous_over_tls_with_the_test_ca(root, tmp_path, no_backoff):
    tls = make_tls(tmp_path / "tls")
    with reg.start_registry(reg.filesystem_storage(root), tmp_path / "logs",
                            tls=tls_section(tls)) as service:
        assert service.url.startswith("https://")
        image = fresh_image()
        digest = reg.push(service.url, "tls/app", "v1", image, tmp_path)
        trusted = RegistryClient.from_config({"url": service.url, "cacert": str(tls.ca)})
        assert trusted.manifest_head("tls/app", "v1").digest == digest
        unverified = RegistryClient.from_config({"url": service.url, "tlsverify": False})
        assert list(unverified.catalog()) == [["tls/app"]]
        default_tls.cache_clear()
        with pytest.raises(StorageError, match="CERTIFICATE_VERIFY_FAILED"):
            RegistryClient.from_config({"url": service.url}).manifest_head("tls/app", "v1")
        assert default_tls().bundle_loaded and default_tls().cert_store_stats()["x509_ca"] > 0


def test_a_registry_over_http_loads_no_ca_bundle(registry):
    """The default trust's CA bundle is loaded at the first TLS handshake (above), not before."""
    default_tls.cache_clear()
    assert RegistryClient.from_config({"url": registry.url}).manifest_head("plain/app", "v1") is None
    assert not default_tls().bundle_loaded and default_tls().cert_store_stats()["x509_ca"] == 0


def test_basic_auth_with_htpasswd(root, tmp_path):
    auth = write_htpasswd(tmp_path / "htpasswd", {"alice": PASSWORD})
    with reg.start_registry(reg.filesystem_storage(root), tmp_path / "logs", auth=auth) as service:
        image = fresh_image()
        reg.push(service.url, "basic/app", "v1", image, tmp_path, creds=f"alice:{PASSWORD}")
        client = RegistryClient.from_config({"url": service.url, "username": "alice",
                                             "password": PASSWORD})
        assert client.manifest_head("basic/app", "v1").digest == image.digest
        assert client.manifest_head("basic/app", image.digest).size == len(image.manifest.data)
        assert list(client.catalog()) == [["basic/app"]]
        # the first request learns the Basic challenge (401) and is sent again; then no 401s
        assert counts(client) == {"head": 3, "list": 1} and client.token_requests == 0

        for config in ({"username": "alice", "password": WRONG}, {}):
            stranger = RegistryClient.from_config({"url": service.url, **config})
            with pytest.raises(AccessDenied) as raised:
                stranger.manifest_head("basic/app", "v1")
            assert WRONG not in str(raised.value) and "alice" not in str(raised.value)


@pytest.fixture
def token_registry(root, tmp_path):
    grants = {"alice": {"org/app": ["pull", "push"], "org/base": ["pull", "push"]},
              "admin": {"catalog": ["*"], "org/app": ["pull"], "org/base": ["pull"]}}
    with TokenServer(tmp_path / "token", {"alice": PASSWORD, "admin": PASSWORD}, grants) as tokens:
        service = reg.start_registry(reg.filesystem_storage(root), tmp_path / "logs",
                                     auth=tokens.auth_section())
        yield service, tokens
        service.stop()


def test_token_auth_reads_writes_mounts_and_caches_tokens(token_registry, tmp_path):
    service, tokens = token_registry
    alice = RegistryClient.from_config({"url": service.url, "username": "alice", "password": PASSWORD})
    base = fresh_image()
    push_image(alice, "org/base", "v1", base)
    assert alice.manifest_get("org/base", "v1") == (base.manifest.data, base.manifest.media_type,
                                                     base.digest)
    layer = base.blobs[1]
    before = counts(alice)
    assert alice.blob_mount("org/app", layer.digest, "org/base") is True
    assert alice.blob_head("org/app", layer.digest) == len(layer.data)
    assert counts(alice) == {**before, "copy": 1, "head": before.get("head", 0) + 1}
    # one token per set of scopes: push org/base, pull org/base, the mount's pair, pull org/app
    assert alice.token_requests == tokens.issued == 4
    assert reg.pull(service.url, "org/base", "v1", tmp_path / "pulled",
                    creds=f"alice:{PASSWORD}")[base.digest] == len(base.manifest.data)

    with pytest.raises(CatalogUnavailable):
        list(alice.catalog())
    admin = RegistryClient.from_config({"url": service.url, "username": "admin", "password": PASSWORD})
    assert list(admin.catalog()) == [["org/app", "org/base"]]
    with pytest.raises(AccessDenied):
        admin.manifest_put("org/app", "v1", base.manifest.data, base.manifest.media_type)

    refused = tokens.refused
    stranger = RegistryClient.from_config({"url": service.url, "username": "alice", "password": WRONG})
    with pytest.raises(AccessDenied) as raised:
        stranger.manifest_head("org/base", "v1")
    assert WRONG not in str(raised.value) and PASSWORD not in str(raised.value)
    assert tokens.refused == refused + 1


def test_a_refused_token_is_renewed_once(token_registry):
    service, tokens = token_registry
    client = RegistryClient.from_config({"url": service.url, "username": "alice", "password": PASSWORD})
    tokens.valid_for = -120
    with pytest.raises(AccessDenied):     # the challenge, then a token the registry refuses
        client.manifest_head("org/app", "v1")
    assert counts(client) == {"head": 2} and client.token_requests == 1
    tokens.valid_for = TOKEN_LIFETIME
    assert client.manifest_head("org/app", "v1") is None   # cached token refused, renewed once
    assert counts(client) == {"head": 4} and client.token_requests == 2
    assert client.manifest_head("org/app", "v2") is None   # the renewed token, cached
    assert counts(client) == {"head": 5} and client.token_requests == 2


# --- reading what skopeo pushed --------------------------------------------------------------

def test_reads_what_skopeo_pushed(registry, tmp_path):
    client = RegistryClient.from_config({"url": registry.url})
    amd64, arm64 = fresh_image(), si.image([si.layer({"arm": os.urandom(500)})], architecture="arm64")
    multi = si.index([amd64, arm64])
    docker = fresh_image(oci=False)
    reg.push(registry.url, "multi/app", "v1", multi, tmp_path)
    for tag in ("v2", "v3"):
        reg.push(registry.url, "multi/app", tag, multi, tmp_path)
    reg.push(registry.url, "docker/app", "latest", docker, tmp_path)
    for n in range(3):
        reg.push(registry.url, f"more/app{n}", "v1", amd64, tmp_path)

    assert list(client.catalog(page_size=2)) == [["docker/app", "more/app0"], ["more/app1", "more/app2"],
                                                 ["multi/app"]]
    assert sorted(tag for page in client.tag_list("multi/app") for tag in page) == ["v1", "v2", "v3"]
    with pytest.raises(NotFound):
        list(client.tag_list("no/such"))

    for repository, tag, image in (("multi/app", "v1", multi), ("docker/app", "latest", docker)):
        info = client.manifest_head(repository, tag)
        assert info.digest == reg.manifest_digest(registry.url, repository, tag) == image.digest
        assert info.media_type == image.manifest.media_type
        data, media_type, digest = client.manifest_get(repository, tag)
        assert data == reg.raw_manifest(registry.url, repository, tag) and digest == image.digest
    for child in multi.children:
        data, media_type, digest = client.manifest_get("multi/app", child.digest)
        assert (data, media_type, digest) == (child.manifest.data, si.OCI_MANIFEST, child.digest)
        for blob in child.blobs:
            assert client.blob_head("multi/app", blob.digest) == len(blob.data)
            assert digest_of(b"".join(client.blob_open("multi/app", blob.digest))) == blob.digest
    layer = amd64.blobs[1]
    assert b"".join(client.blob_open("multi/app", layer.digest, offset=100)) == layer.data[100:]
    assert client.manifest_head("multi/app", "nope") is None
    assert client.blob_head("multi/app", digest_of(b"nothing")) is None
    with pytest.raises(NotFound):
        list(client.blob_open("multi/app", digest_of(b"nothing")))


def test_blob_redirects_reach_storage_without_the_registry_credentials(moto, tmp_path):
    authorizations = []

    def record(request) -> bool:
        if request.method == "GET" and "X-Amz-Signature" in request.target:
            authorizations.append(request.header("authorization"))
        return False

    with FaultProxy(moto.url, where=record) as storage_proxy:
        storage = reg.s3_storage(storage_proxy.url, reg.create_bucket(moto.url))
        auth = write_htpasswd(tmp_path / "htpasswd", {"alice": PASSWORD})
        with reg.start_registry(storage, tmp_path / "logs", auth=auth, redirect=True) as service:
            client = RegistryClient.from_config({"url": service.url, "username": "alice",
                                                 "password": PASSWORD})
            data = os.urandom(100_000)
            client.blob_upload("redirect/app", digest_of(data), [data], len(data))
            before = counts(client).get("get", 0)
            assert b"".join(client.blob_open("redirect/app", digest_of(data))) == data
    assert counts(client)["get"] - before == 2    # the registry's 307, then the storage
    assert authorizations == [None]


# --- writing what skopeo pulls ---------------------------------------------------------------

def test_writes_that_skopeo_pulls_with_identical_digests(registry, root, tmp_path):
    client = RegistryClient.from_config({"url": registry.url, "chunksize": 64 * 1024})
    children = [si.image([si.layer({"big": os.urandom(300_000)})]),
                si.image([si.layer({"small": os.urandom(100)})], architecture="arm64")]
    multi = si.index(children)
    push_image(client, "written/app", "v1", multi)
    pulled = reg.pull(registry.url, "written/app", "v1", tmp_path / "pulled")
    assert pulled == {blob.digest: len(blob.data) for blob in multi.all_blobs()}
    big = len(children[0].blobs[1].data)
    chunked = 1 + -(-big // (64 * 1024))    # POST, PATCHes, PUT with the last chunk
    # the other three blobs are POST + PUT each; three manifests by digest and the tag
    assert counts(client) == {"put": chunked + 3 * 2 + 3 + 1}
    assert sessions(root, "written/app") == []


def test_mounts_count_as_copies_and_a_failed_mount_leaves_no_session(registry, root):
    client = RegistryClient.from_config({"url": registry.url})
    data = os.urandom(5000)
    digest = digest_of(data)
    client.blob_upload("mount/source", digest, [data], len(data))
    assert counts(client) == {"put": 2}
    assert client.blob_mount("mount/target", digest, "mount/source") is True
    assert counts(client) == {"put": 2, "copy": 1}
    assert client.blob_head("mount/target", digest) == len(data)

    assert client.blob_mount("mount/other", digest, "mount/empty") is False
    assert counts(client) == {"put": 2, "copy": 2, "head": 1, "delete": 1}
    assert sessions(root, "mount/other") == []
    assert client.blob_head("mount/other", digest) is None


def test_manifest_delete_and_a_registry_without_writes(root, tmp_path, registry):
    client = RegistryClient.from_config({"url": registry.url})
    image = fresh_image()
    push_image(client, "delete/app", "v1", image)
    client.manifest_delete("delete/app", image.digest)
    assert client.manifest_head("delete/app", "v1") is None
    with pytest.raises(NotFound):
        client.manifest_get("delete/app", image.digest)
    push_image(client, "delete/app", "v2", image)
    registry.stop()
    with reg.start_registry(reg.filesystem_storage(root), tmp_path / "logs", delete=False) as kept:
        with pytest.raises(Unsupported, match="HTTP 405 UNSUPPORTED"):
            RegistryClient.from_config({"url": kept.url}).manifest_delete("delete/app", image.digest)
    with reg.start_registry(reg.filesystem_storage(root), tmp_path / "logs", readonly=True) as readonly:
        client = RegistryClient.from_config({"url": readonly.url})
        with pytest.raises(Unsupported, match="does not offer"):
            client.manifest_delete("delete/app", image.digest)
        with pytest.raises(Unsupported):
            client.manifest_put("delete/app", "v3", image.manifest.data, image.manifest.media_type)
        with pytest.raises(ValueError):
            client.manifest_put("delete/app", digest_of(b"other"), image.manifest.data, si.OCI_MANIFEST)
        assert counts(client) == {"delete": 1, "put": 1}


# --- interrupted uploads and throttling ------------------------------------------------------

@pytest.mark.parametrize("fault, resumed", [("reset", True), ("reset_body", False)])
def test_a_64_mib_chunked_upload_cut_midway_resumes_or_restarts(registry, root, fault, resumed):
    """``reset``: the 4th PATCH never reaches the registry, so its session resumes at the
    registry's offset. ``reset_body``: the registry applies it but the answer is lost; the
    Location in hand is then stale (404 ``BLOB_UPLOAD_INVALID``) and the upload starts over
    from byte 0. 2.8.2 keeps that first session, reachable only through the Location that was
    lost: it stays until the registry's upload purging (a week, by default)."""
    data = os.urandom(64 * MIB)
    digest = digest_of(data)
    patches = []

    def fourth_patch(request) -> bool:
        if request.method == "PATCH":
            patches.append(request.target)
        return request.method == "PATCH" and len(patches) == 4

    with FaultProxy(registry.url, rate=1.0, faults=[fault], where=fourth_patch, limit=1,
                    protocol=REGISTRY) as proxy:
        client = RegistryClient.from_config({"url": proxy.url})
        client.blob_upload("big/app", digest, lambda offset: [data[offset:]], len(data))
    assert proxy.faults == {fault: 1}
    chunks = 64 // 8    # 8 MiB chunks: POST, 7 PATCHes, PUT with the last chunk
    if resumed:   # the cut PATCH is sent again after one status GET
        assert counts(client) == {"put": 1 + chunks + 1, "head": 1}
    else:         # 4 PATCHes were applied before the status GET found the session gone
        assert counts(client) == {"put": 1 + 4 + 1 + chunks, "head": 1}
    assert dict(proxy.requests) == counts(client)
    direct = RegistryClient.from_config({"url": registry.url})
    assert direct.blob_head("big/app", digest) == len(data)
    hasher = hashlib.sha256()
    for chunk in direct.blob_open("big/app", digest):
        hasher.update(chunk)
    assert "sha256:" + hasher.hexdigest() == digest
    assert len(sessions(root, "big/app")) == (0 if resumed else 1)


def test_an_upload_from_an_iterable_that_cannot_restart_cancels_its_session(registry, root):
    """The second PATCH is applied and its answer lost: the session must start over, and the
    first chunk is no longer in hand."""
    chunk = 64 * 1024
    data = os.urandom(3 * chunk + 10)
    patches = []

    def second_patch(request) -> bool:
        patches.extend([request.target] if request.method == "PATCH" else [])
        return request.method == "PATCH" and len(patches) == 2

    with FaultProxy(registry.url, rate=1.0, faults=["reset_body"], limit=1, protocol=REGISTRY,
                    where=second_patch) as proxy:
        client = RegistryClient.from_config({"url": proxy.url, "chunksize": chunk})
        pieces = (data[start:start + chunk] for start in range(0, len(data), chunk))
        with pytest.raises(StorageError, match="cannot read the blob again") as raised:
            client.blob_upload("iterable/app", digest_of(data), pieces, len(data))
    assert not raised.value.retryable
    assert len(sessions(root, "iterable/app")) == 1   # the first one, orphaned as above
    assert dict(proxy.requests) == counts(client) == {"put": 4, "head": 1, "delete": 1}
    assert RegistryClient.from_config({"url": registry.url}).blob_head("iterable/app",
                                                                       digest_of(data)) is None


def test_requests_per_second_spaces_the_requests_to_a_host(registry):
    client = RegistryClient.from_config({"url": registry.url, "requests_per_second": 5})
    start = time.monotonic()
    for n in range(6):
        assert client.manifest_head("paced/app", f"v{n}") is None
    assert time.monotonic() - start >= 5 / 5 and counts(client) == {"head": 6}


def test_a_429_holds_back_every_request_to_the_host(registry):
    """A 429 to one request (in a thread) makes another request, sent afterwards for something
    else, wait out the ``Retry-After`` too."""
    with FaultProxy(registry.url, rate=1.0, faults=["throttle"], limit=1, protocol=REGISTRY) as proxy:
        client = RegistryClient.from_config({"url": proxy.url})
        answers = []
        first = threading.Thread(target=lambda: answers.append(client.send(
            "HEAD", client.endpoint("/v2/first/app/manifests/v1"), kind="head")))
        first.start()
        first.join()
        assert answers[0].status_code == 429
        assert client.manifest_head("second/app", "v1") is None
    throttled, second = proxy.events
    assert throttled.fault == "throttle" and "/second/" in second.target
    assert second.at - throttled.at >= 1.0
    assert counts(client) == {"head": 2}


def test_after_a_throttle_one_request_goes_first_and_the_rest_follow_its_answer(registry):
    """Five requests waiting out a 429 do not arrive together when it ends: one goes alone, the
    others only once its answer came back."""
    with FaultProxy(registry.url, rate=1.0, faults=["throttle"], limit=1, protocol=REGISTRY) as proxy:
        client = RegistryClient.from_config({"url": proxy.url})
        url = client.endpoint("/v2/first/app/manifests/v1")
        assert client.send("HEAD", url, kind="head").status_code == 429
        waiting = [threading.Thread(target=client.manifest_head, args=(f"waiting{n}/app", "v1"))
                   for n in range(5)]
        for thread in waiting:
            thread.start()
        for thread in waiting:
            thread.join()
    events, answered = proxy.events, proxy.answered
    assert [event.fault for event in events] == ["throttle"] + [None] * 5
    assert events[1].at - events[0].at >= 1.0
    assert all(event.at >= answered[1] for event in events[2:])
    assert counts(client) == {"head": 6}


def test_throttling_is_waited_out_per_host(registry, tmp_path):
    """Repeatable: the images' digests, and so the requests and the faults they draw, are the
    same in every run (the registry is new, so nothing is there before)."""
    rng = random.Random(7)
    with FaultProxy(registry.url, seed=7, rate=0.3, faults=["throttle", "error503"],
                    protocol=REGISTRY) as proxy:
        client = RegistryClient.from_config({"url": proxy.url, "chunksize": 64 * 1024})
        images = [fresh_image(layer_size=200_000, rng=rng) for _ in range(2)]
        for n, image in enumerate(images):
            push_image(client, "throttled/app", f"v{n}", image)
        for n, image in enumerate(images):
            assert client.manifest_head("throttled/app", f"v{n}").digest == image.digest
            assert client.manifest_get("throttled/app", image.digest)[0] == image.manifest.data
            for blob in image.blobs:
                assert digest_of(b"".join(client.blob_open("throttled/app", blob.digest))) == blob.digest
        assert sorted(next(client.tag_list("throttled/app"))) == ["v0", "v1"]
        assert client.blob_mount("throttled/other", images[0].blobs[1].digest, "throttled/app")
    events = proxy.events
    throttled = [n for n, event in enumerate(events[:-1]) if event.fault == "throttle"]
    assert proxy.faults["throttle"] >= 3 and proxy.faults["error503"] >= 3
    for n in throttled:
        assert events[n + 1].at - events[n].at >= 1.0
    assert dict(proxy.requests) == counts(client)
    assert reg.pull(registry.url, "throttled/app", "v1", tmp_path / "pulled")[images[1].digest]
