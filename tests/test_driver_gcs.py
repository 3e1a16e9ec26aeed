import json
import uuid

import pytest
import requests
import urllib3.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from drivers.errors import AccessDenied, ConfigError, NotFound, TransientError
from drivers.gcs import GCSDriver
from drivers.retry import ATTEMPTS
from tests.conformance import (MIB, DriverConformance, assert_config_error, listed, requests_sent,
                               sent_nothing)
from tests.services import free_port


@pytest.fixture(scope="session")
def gcs(fake_gcs):
    """A raw client on fake-gcs-server, for setting up and inspecting buckets."""
    return storage.Client(project="test", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": fake_gcs.url})


@pytest.fixture
def bucket(gcs):
    return gcs.create_bucket(f"test-{uuid.uuid4().hex}").name


@pytest.fixture
def config(fake_gcs, bucket):
    return {"bucket": bucket, "endpoint": fake_gcs.url, "chunksize": MIB}


@pytest.fixture(scope="session")
def service_account(fake_gcs):
    """A service-account key whose token endpoint (on fake-gcs-server) always answers 404."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "replicator-test",
            "private_key_id": "SECRET-KEY-ID-0123456789", "private_key": pem,
            "client_email": "replicator@replicator-test.iam.gserviceaccount.com",
            "client_id": "1234567890", "token_uri": f"{fake_gcs.url}/no-token-here"}


class TestGCS(DriverConformance):
    server_pages_prefixes = False  # fake-gcs-server 1.54 pages objects only; GCS pages both

    @pytest.fixture
    def driver(self, config):
        return GCSDriver.from_config({**config, "rootdirectory": "/conformance/"})

    @pytest.fixture
    def second_driver(self, gcs, config):
        """Another bucket of the same fake-gcs-server."""
        other = gcs.create_bucket(f"test-{uuid.uuid4().hex}").name
        return GCSDriver.from_config({**config, "bucket": other, "rootdirectory": "/second/"})


def test_from_config_accepts_distribution_keys(config, tmp_path, service_account):
    keyfile = tmp_path / "key.json"
    keyfile.write_text(json.dumps(service_account))
    driver = GCSDriver.from_config({**config, "keyfile": str(keyfile), "rootdirectory": "/registry",
                                    "chunksize": "524288", "maxconcurrency": 8,
                                    "useragent": "replicator-test", "project": None})
    assert driver.describe() == f"gs://{config['bucket']}/registry"
    assert driver.chunk_size == 512 * 1024
    assert GCSDriver.from_config({**config, "credentials": json.dumps(service_account)})
    assert GCSDriver.from_config({**config, "credentials": service_account}).describe() == \
        f"gs://{config['bucket']}"


@pytest.mark.parametrize("change, field", [
    ({"bucket": None}, "bucket"),
    ({"bucket": ""}, "bucket"),
    ({"bogus": 1}, "bogus"),
    ({"chunksize": 300_000}, "chunksize"),
    ({"chunksize": 1024}, "chunksize"),
    ({"chunksize": "big"}, "chunksize"),
    ({"maxconcurrency": 0}, "maxconcurrency"),
    ({"endpoint": 5}, "endpoint"),
    ({"rootdirectory": "a/../b"}, "rootdirectory"),
    ({"keyfile": "/nonexistent/key.json"}, "keyfile"),
    ({"credentials": "{not json"}, "credentials"),
    ({"credentials": {"type": "service_account"}}, "credentials"),
    ({"credentials": ["a", "list"]}, "credentials"),
])
def test_from_config_errors_name_the_key(config, change, field):
    params = {key: value for key, value in {**config, **change}.items() if value is not None}
    assert_config_error(GCSDriver, params, field)


def test_application_default_credentials_without_keyfile(fake_gcs, bucket, tmp_path, service_account,
                                                         monkeypatch):
    keyfile = tmp_path / "adc.json"
    keyfile.write_text(json.dumps(service_account))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(keyfile))
    driver = GCSDriver.from_config({"bucket": bucket})
    assert driver._client._credentials.service_account_email == service_account["client_email"]
    assert driver._client.project == service_account["project_id"]


def test_keyfile_and_credentials_together_are_refused(config, tmp_path, service_account):
    keyfile = tmp_path / "key.json"
    keyfile.write_text(json.dumps(service_account))
    assert_config_error(GCSDriver, {**config, "keyfile": str(keyfile), "credentials": service_account},
                        "credentials")
    keyfile.write_text("not a key")
    assert_config_error(GCSDriver, {**config, "keyfile": str(keyfile)}, "keyfile")


def test_secrets_never_appear_in_descriptions_or_errors(config, service_account, no_backoff):
    secrets = [service_account["private_key_id"],
               *[line for line in service_account["private_key"].splitlines() if "-----" not in line]]
    driver = GCSDriver.from_config({**config, "credentials": service_account})
    with pytest.raises(AccessDenied) as caught:
        driver.stat("key")
    broken = {**service_account, "private_key": service_account["private_key"][:200]}
    with pytest.raises(ConfigError) as bad_config:
        GCSDriver.from_config({**config, "credentials": broken})
    texts = [driver.describe(), repr(driver), str(caught.value), str(bad_config.value)]
    assert not [secret for secret in secrets for text in texts if secret in text]


def test_upload_session_urls_never_appear_in_errors(config, no_backoff, monkeypatch):
    driver = GCSDriver.from_config(config)
    real_request = driver._session.request

    def request(method, url, **args):
        if "upload_id=" in url:
            raise requests.ConnectionError(f"Max retries exceeded with url: {url} (reset)")
        return real_request(method, url, **args)

    monkeypatch.setattr(driver._session, "request", request)
    writer = driver.writer("key")
    with pytest.raises(TransientError) as caught:
        writer.write(b"x" * (2 * MIB))
    assert writer._session_url and "upload_id" not in str(caught.value)
    writer.abort()


def test_rootdirectory_puts_keys_under_it(gcs, config):
    driver = GCSDriver.from_config({**config, "rootdirectory": "/registry"})
    driver.write("docker/registry/v2/blobs/data", b"x")
    assert [blob.name for blob in gcs.list_blobs(config["bucket"])] == \
        ["registry/docker/registry/v2/blobs/data"]
    assert listed(driver) == ["docker/registry/v2/blobs/data"]
    assert GCSDriver.from_config(config).stat("registry/docker/registry/v2/blobs/data").size == 1


def test_aborted_writers_cancel_their_resumable_sessions(gcs, config, monkeypatch):
    """fake-gcs-server answers the cancel with 499 as GCS does, but keeps the session usable,
    so the cancel is checked as sent and answered rather than by probing the session."""
    driver = GCSDriver.from_config(config)
    real_request = driver._session.request
    answered = []

    def request(method, url, **args):
        response = real_request(method, url, **args)
        answered.append((method, url, response.status_code))
        return response

    monkeypatch.setattr(driver._session, "request", request)
    writer = driver.writer("aborted")
    writer.write(b"x" * (3 * MIB))
    assert requests_sent(driver, writer.abort) == {"delete": 1}
    with pytest.raises(RuntimeError), driver.writer("broken") as broken:
        broken.write(b"x" * (3 * MIB))
        raise RuntimeError("source broke")
    cancels = [(method, url, status) for method, url, status in answered if method == "DELETE"]
    assert cancels == [("DELETE", writer._session_url, 499), ("DELETE", broken._session_url, 499)]
    assert list(gcs.list_blobs(config["bucket"])) == []


def test_resumable_chunks_count_as_puts(config):
    driver = GCSDriver.from_config(config)
    data = b"x" * (3 * MIB + MIB // 2)

    def upload():
        with driver.writer("big") as writer:
            writer.write(data)
            writer.commit()

    assert requests_sent(driver, upload) == {"put": 5}
    assert driver.read("big", limit=len(data)) == data
    assert requests_sent(driver, lambda: driver.writer("small").commit()) == {"put": 1}


def test_object_ending_on_a_chunk_boundary(config):
    driver = GCSDriver.from_config(config)
    with driver.writer("exact") as writer:
        writer.write(b"x" * (2 * MIB))
        etag = writer.commit()
    assert driver.stat("exact").size == 2 * MIB
    assert driver.stat("exact").etag == etag


def test_connection_errors_are_retried_then_transient(config, no_backoff):
    driver = GCSDriver.from_config({**config, "endpoint": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(TransientError, match="stat"):
        driver.stat("key")
    assert driver.requests.snapshot()["head"] == ATTEMPTS


def test_lost_chunk_answer_resumes_from_the_offset_the_session_holds(config, no_backoff, monkeypatch):
    """fake-gcs-server appends whatever it is sent and finalises on a status query, so the
    status query is answered here the way GCS does (308 with the persisted range)."""
    driver = GCSDriver.from_config(config)
    real_request = driver._session.request
    held = {"bytes": 0, "lost": 0}

    def request(method, url, **args):
        content_range = args.get("headers", {}).get("Content-Range", "")
        if content_range == "bytes */*":
            answer = requests.Response()
            answer.status_code = 308
            if held["bytes"]:
                answer.headers["Range"] = f"bytes=0-{held['bytes'] - 1}"
            answer._content = b""
            return answer
        response = real_request(method, url, **args)
        if response.status_code == 308:
            held["bytes"] = int(response.headers["Range"].rpartition("-")[2]) + 1
            if held["lost"] == 0:
                held["lost"] += 1
                raise requests.ConnectionError("answer lost")
        return response

    monkeypatch.setattr(driver._session, "request", request)
    data = bytes(range(256)) * (12 * 1024)
    with driver.writer("resumed") as writer:
        writer.write(data)
        writer.commit()
    assert held["lost"] == 1
    assert driver.read("resumed", limit=len(data)) == data


def test_broken_stream_resumes_where_it_broke(config, no_backoff, monkeypatch):
    driver = GCSDriver.from_config(config)
    data = bytes(range(256)) * 8192
    driver.write("blob", data)
    real_request = driver._session.request
    ranges = []

    def request(method, url, **args):
        response = real_request(method, url, **args)
        if method == "GET" and "alt=media" in url:
            ranges.append(args.get("headers", {}).get("Range"))
            if len(ranges) == 1:
                def breaks_once(amount, decode_content):
                    yield response.raw.read(1000)
                    raise urllib3.exceptions.ProtocolError("connection reset")
                monkeypatch.setattr(response.raw, "stream", breaks_once)
        return response

    monkeypatch.setattr(driver._session, "request", request)
    assert driver.read("blob", limit=len(data)) == data
    assert ranges == [None, "bytes=1000-"]


def test_missing_bucket_is_not_found(config):
    driver = GCSDriver.from_config({**config, "bucket": f"missing-{uuid.uuid4().hex}"})
    with pytest.raises(NotFound):
        list(driver.list())
    with pytest.raises(NotFound):
        driver.write("key", b"x")


# --- server-side copy -------------------------------------------------------------------------

@pytest.fixture
def source(gcs, config):
    """A driver on another bucket of the same fake-gcs-server."""
    other = gcs.create_bucket(f"test-{uuid.uuid4().hex}").name
    return GCSDriver.from_config({**config, "bucket": other, "rootdirectory": "/source/"})


def test_copy_only_between_the_same_endpoint_and_credentials(config, service_account):
    driver = GCSDriver.from_config(config)
    robot = GCSDriver.from_config({**config, "credentials": service_account})
    other_robot = {**service_account, "client_email": "other@replicator-test.iam.gserviceaccount.com"}
    candidates = {
        "other bucket": GCSDriver.from_config({**config, "bucket": "other", "rootdirectory": "r"}),
        "other endpoint": GCSDriver.from_config({**config, "endpoint": "http://127.0.0.2:4443"}),
        "service account": robot,
    }
    assert {name: driver.can_copy_from(other) for name, other in candidates.items()} == {
        "other bucket": True, "other endpoint": False, "service account": False}
    assert robot.can_copy_from(
        GCSDriver.from_config({**config, "bucket": "b", "credentials": service_account}))
    assert not robot.can_copy_from(GCSDriver.from_config({**config, "credentials": other_robot}))
    assert sent_nothing(driver, *candidates.values())


def test_rewrite_goes_on_with_its_token_until_done(config, source, monkeypatch):
    """fake-gcs-server finishes every rewrite in one call; real GCS may answer ``done: false``
    with a token (large objects, other locations or storage classes), as the first answer here."""
    driver = GCSDriver.from_config(config)
    source.write("obj", b"rewritten")
    real_request = driver._session.request
    rewrites = []

    def request(method, url, **args):
        if "/rewriteTo/" in url:
            rewrites.append(url)
            if len(rewrites) == 1:
                answer = requests.Response()
                answer.status_code = 200
                answer.headers["Content-Type"] = "application/json"
                answer._content = json.dumps({"kind": "storage#rewriteResponse", "done": False,
                                              "totalBytesRewritten": "0", "objectSize": "9",
                                              "rewriteToken": "token-1"}).encode()
                return answer
        return real_request(method, url, **args)

    monkeypatch.setattr(driver._session, "request", request)
    etag = driver.copy_from(source, "obj")
    assert len(rewrites) == 2
    assert "rewriteToken" not in rewrites[0] and "rewriteToken=token-1" in rewrites[1]
    assert driver.read("obj") == b"rewritten"
    assert driver.stat("obj").etag == etag
