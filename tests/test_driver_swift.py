import hashlib
import os
import uuid

import pytest

from drivers import open_storage
from drivers.base import UNKNOWN_SIZE
from drivers.errors import AccessDenied, ConfigError, NotFound, TransientError
from drivers.retry import ATTEMPTS
from drivers.swift import EMPTY_MD5, EMPTY_SHA1, SwiftDriver
from tests.conformance import MIB, DriverConformance, assert_config_error, listed, requests_sent
from tests.faults import FaultProxy
from tests.services import free_port

SECRETS = {"password": "SWIFT-SECRET-PASSWORD", "secretkey": "SWIFT-SECRET-TEMPURL-KEY",
           "accesskey": "SWIFT-SECRET-ACCESS-KEY"}
BLOB = "docker/registry/v2/blobs/sha256/ab/abcd/data"


@pytest.fixture
def container(swift):
    name = f"test-{uuid.uuid4().hex}"
    swift.connection().put_container(name)
    return name


@pytest.fixture
def config(swift, container):
    return swift.driver_params(container, chunksize=MIB)


@pytest.fixture
def raw(swift):
    return swift.connection()


def objects(raw, container: str, prefix: str = "") -> dict[str, int]:
    """Every object in ``container`` under ``prefix``, with its listed size."""
    _, entries = raw.get_container(container, prefix=prefix, full_listing=True)
    return {entry["name"]: entry["bytes"] for entry in entries}


def stream_into(driver: SwiftDriver, key: str, data: bytes, commit: bool = True):
    writer = driver.writer(key)
    writer.write(data)
    if commit:
        writer.commit()
    return writer


class TestSwift(DriverConformance):
    @pytest.fixture
    def driver(self, config):
        return SwiftDriver.from_config({**config, "prefix": "/conformance"})


# --- layout: byte-compatible with Distribution 2.8 ------------------------------------------

def test_large_object_is_a_dlo_laid_out_as_the_registry_lays_it_out(raw, container, config):
    driver = SwiftDriver.from_config({**config, "prefix": "/w1"})
    data = os.urandom(2 * MIB + 1000)
    stream_into(driver, BLOB, data)
    head = raw.head_object(container, "w1/files/" + BLOB)
    manifest_container, _, directory = head["x-object-manifest"].partition("/")
    assert manifest_container == container
    assert directory.startswith("w1/segments/2f6/46f636b65722f")
    name = directory[len("w1/segments/"):].replace("/", "", 1)
    assert name.startswith(("/" + BLOB).encode().hex()) and name.endswith(EMPTY_SHA1)
    assert len(name) == 2 * len("/" + BLOB) + 64 + 40
    assert objects(raw, container, "w1/") == {
        "w1/files/" + BLOB: 0, f"{directory}/0000000000000001": MIB,
        f"{directory}/0000000000000002": MIB, f"{directory}/0000000000000003": 1000}
    assert int(head["content-length"]) == len(data)
    assert raw.get_object(container, "w1/files/" + BLOB)[1] == data


def test_keys_are_swift_paths_with_and_without_a_prefix(raw, container, config):
    for prefix, expected in [(None, "files/k"), ("/w1", "w1/files/k"), ("w2", "w2/files/k"),
                             ("/w3/", "w3//files/k")]:
        params = config if prefix is None else {**config, "prefix": prefix}
        SwiftDriver.from_config(params).write("k", b"x")
        assert expected in objects(raw, container)


def test_rootdirectory_is_an_alias_of_prefix(raw, container, config):
    SwiftDriver.from_config({**config, "rootdirectory": "/w1"}).write("k", b"x")
    assert listed(SwiftDriver.from_config({**config, "prefix": "w1"})) == ["k"]
    assert_config_error(SwiftDriver, {**config, "prefix": "/a", "rootdirectory": "/a"},
                        "rootdirectory")


def test_an_object_within_one_chunk_is_one_plain_put(raw, container, config):
    driver = SwiftDriver.from_config(config)
    assert requests_sent(driver, lambda: stream_into(driver, BLOB, b"x" * MIB)) == {"put": 1}
    assert "x-object-manifest" not in raw.head_object(container, "files/" + BLOB)
    assert objects(raw, container) == {"files/" + BLOB: MIB}


def test_a_dlo_costs_a_put_per_segment_a_manifest_put_and_a_head(config):
    driver = SwiftDriver.from_config(config)
    assert requests_sent(driver, lambda: stream_into(driver, BLOB, b"x" * (3 * MIB + 1))) == \
        {"put": 5, "head": 1}


def test_a_dlo_lists_with_an_unknown_size_and_stats_with_its_real_one(config):
    driver = SwiftDriver.from_config(config)
    stream_into(driver, "large", b"x" * (2 * MIB + 5))
    driver.write("small", b"12345")
    assert {info.key: info.size for page in driver.list() for info in page} == \
        {"large": UNKNOWN_SIZE, "small": 5}
    assert driver.stat("large").size == 2 * MIB + 5


def test_a_rewritten_dlo_gets_a_new_etag(config):
    driver = SwiftDriver.from_config(config)
    stream_into(driver, "large", b"x" * (2 * MIB))
    [[before]] = list(driver.list())
    stream_into(driver, "large", b"y" * (2 * MIB))
    [[after]] = list(driver.list())
    assert before.etag != after.etag and after.etag.startswith(EMPTY_MD5 + "-")
    assert driver.stat("large").etag == after.etag


def test_a_registry_written_object_reads_as_any_other(raw, container, config):
    """What Distribution writes for an uploaded layer: segments under another upload path, a
    manifest moved to the blob's path."""
    directory = "segments/2f6/" + ("/docker/registry/v2/repositories/app/_uploads/1/data".encode()
                                   + os.urandom(32)).hex()[3:] + EMPTY_SHA1
    for number, part in enumerate((b"a" * 10, b"b" * 5), 1):
        raw.put_object(container, f"{directory}/{number:016d}", part)
    raw.put_object(container, "files/" + BLOB, b"", headers={"X-Object-Manifest": f"{container}/{directory}"})
    driver = SwiftDriver.from_config(config)
    assert driver.read(BLOB) == b"a" * 10 + b"b" * 5
    assert b"".join(driver.open(BLOB, 8)) == b"aabbbbb"
    assert driver.sweep_abandoned_uploads("", older_than=0) == 0
    driver.delete(BLOB)
    assert objects(raw, container) == {}


# --- segments: abort, delete, sweep ----------------------------------------------------------

def test_abort_and_a_failed_source_remove_the_segments_written(raw, container, config):
    driver = SwiftDriver.from_config(config)
    stream_into(driver, "aborted", b"x" * (3 * MIB), commit=False).abort()
    with pytest.raises(RuntimeError), driver.writer("broken") as writer:
        writer.write(b"x" * (3 * MIB))
        raise RuntimeError("source broke")
    assert objects(raw, container) == {}


def test_delete_of_a_dlo_deletes_its_segments_and_nothing_else(raw, container, config):
    driver = SwiftDriver.from_config(config)
    stream_into(driver, "a", b"x" * (2 * MIB + 1))
    stream_into(driver, "b", b"y" * (2 * MIB + 1))
    assert requests_sent(driver, lambda: driver.delete("a")) == {"head": 1, "delete": 4, "list": 1}
    assert driver.read("b", limit=3 * MIB) == b"y" * (2 * MIB + 1)
    assert len(objects(raw, container)) == 4


def test_sweep_deletes_unreferenced_old_segments_only(raw, container, config):
    driver = SwiftDriver.from_config({**config, "prefix": "/w1"})
    stream_into(driver, "blobs/killed", b"x" * (3 * MIB), commit=False)  # 2 segments sent, then killed
    stream_into(driver, "blobs/kept", b"k" * (2 * MIB + 1))
    stream_into(driver, "blobs/rewritten", b"1" * (2 * MIB + 1))
    stream_into(driver, "blobs/rewritten", b"2" * (2 * MIB + 1))
    stream_into(driver, "repositories/other", b"o" * (3 * MIB), commit=False)
    before = objects(raw, container)
    assert driver.sweep_abandoned_uploads("blobs/", older_than=3600) == 0
    assert objects(raw, container) == before
    swept = {}
    assert requests_sent(driver, lambda: swept.update(n=driver.sweep_abandoned_uploads(
        "blobs/", older_than=0))) == {"list": 1, "head": 4, "delete": 2 + 3}
    assert swept == {"n": 2}
    assert driver.read("blobs/kept", limit=3 * MIB) == b"k" * (2 * MIB + 1)
    assert driver.read("blobs/rewritten", limit=3 * MIB) == b"2" * (2 * MIB + 1)
    left = {name for name in objects(raw, container) if "/segments/" in name}
    assert len(left) == 3 + 3 + 2  # kept, rewritten (new), repositories/other
    assert driver.sweep_abandoned_uploads("", older_than=0) == 1
    assert listed(driver) == ["blobs/kept", "blobs/rewritten"]


# --- errors and configuration ----------------------------------------------------------------

def test_writing_into_a_missing_container_is_not_found(swift):
    driver = SwiftDriver.from_config(swift.driver_params(f"missing-{uuid.uuid4().hex}"))
    with pytest.raises(NotFound):
        driver.write("k", b"x")
    with pytest.raises(NotFound):
        next(driver.list())


def test_a_wrong_password_is_access_denied_and_never_quoted(swift, container):
    driver = SwiftDriver.from_config({**swift.driver_params(container), **SECRETS})
    with pytest.raises(AccessDenied) as caught:
        driver.stat("k")
    with pytest.raises(ConfigError) as bad_config:
        SwiftDriver.from_config({**swift.driver_params(container), **SECRETS, "chunksize": "big"})
    texts = [driver.describe(), repr(driver), str(caught.value), str(bad_config.value)]
    assert not [secret for secret in SECRETS.values() for text in texts if secret in text]


def test_an_expired_token_is_renewed_once(config):
    driver = SwiftDriver.from_config(config)
    driver.write("k", b"x")
    driver._connection().token = "AUTH_tk" + "0" * 32
    assert requests_sent(driver, lambda: driver.stat("k")) == {"head": 2}
    assert driver.read("k") == b"x"


def test_connection_errors_are_retried_then_transient(swift, no_backoff):
    driver = SwiftDriver.from_config(swift.driver_params("c"))
    dead = SwiftDriver(driver._connect, "c")
    dead._token = (f"http://127.0.0.1:{free_port()}/v1/AUTH_test", "AUTH_tk" + "0" * 32)
    with pytest.raises(TransientError, match="swift head"):
        dead.stat("k")
    assert dead.requests.snapshot()["head"] == ATTEMPTS


@pytest.mark.parametrize("fault, method", [("truncate", "GET"), ("reset_body", "GET"),
                                           ("error503", "HEAD"), ("error500", "PUT")])
def test_one_fault_is_retried_and_counted(swift, config, no_backoff, fault, method):
    """Through a proxy that spoils one storage request: a body shorter than announced, a reset
    mid-body (the read resumes where it broke) or a 5xx, then the same request again."""
    data = os.urandom(3 * MIB)
    SwiftDriver.from_config(config).write("k", data)
    with FaultProxy(f"http://127.0.0.1:{swift.proxy_port}", rate=1.0, faults=[fault], limit=1,
                    where=lambda request: request.method == method and "/v1/" in request.path) as proxy:
        driver = SwiftDriver.from_config({**config, "authurl": proxy.url + "/auth/v1.0"})
        operation = {"GET": lambda: driver.read("k", limit=len(data)) == data,
                     "HEAD": lambda: driver.stat("k").size == len(data),
                     "PUT": lambda: driver.write("k", data) == hashlib.md5(data).hexdigest()}[method]
        assert operation()
    assert proxy.faults == {fault: 1}
    assert driver.requests.snapshot()[method.lower()] == 2


def test_an_answer_lacking_what_the_driver_needs_is_transient(config):
    driver = SwiftDriver.from_config(config)
    complete = {"content-length": "3", "etag": '"abc"', "x-timestamp": "1796158465.15004"}
    assert driver._info("k", complete).size == 3
    for missing in complete:
        with pytest.raises(TransientError, match=missing):
            driver._info("k", {name: value for name, value in complete.items() if name != missing})
    with pytest.raises(TransientError):
        driver._listed({"name": "files/k", "bytes": 3, "hash": "abc"})


def test_open_storage_builds_the_swift_driver(config):
    driver = open_storage({"swift": config, "delete": {"enabled": True}})
    assert isinstance(driver, SwiftDriver)
    assert driver.describe() == f"swift://{config['container']}/files"


def test_from_config_accepts_distribution_keys(config):
    driver = SwiftDriver.from_config({
        **config, "tenant": 12345, "tenantid": "abc", "domain": "d", "domainid": "di",
        "tenantdomain": "td", "tenantdomainid": "tdi", "region": "RegionOne",
        "endpointtype": "public", "insecureskipverify": "false", "chunksize": "5242880",
        "secretkey": "s", "accesskey": "a", "tempurlcontainerkey": True,
        "tempurlmethods": ["GET"], "prefix": "/w1"})
    assert driver.chunk_size == 5 * MIB and driver.files_root == "w1/files/"


@pytest.mark.parametrize("change, field", [
    ({"username": None}, "username"),
    ({"password": ""}, "password"),
    ({"authurl": None}, "authurl"),
    ({"container": None}, "container"),
    ({"chunksize": MIB - 1}, "chunksize"),
    ({"chunksize": "big"}, "chunksize"),
    ({"authversion": 4}, "authversion"),
    ({"insecureskipverify": "maybe"}, "insecureskipverify"),
    ({"tenant": ["x"]}, "tenant"),
    ({"prefix": "a/../b"}, "prefix"),
    ({"trustid": "t"}, "trustid"),
    ({"bogus": 1}, "bogus"),
])
def test_from_config_errors_name_the_key(config, change, field):
    params = {key: value for key, value in {**config, **change}.items() if value is not None}
    assert_config_error(SwiftDriver, params, field)


def test_write_returns_the_md5_or_for_an_empty_object_the_timestamped_etag(config):
    driver = SwiftDriver.from_config(config)
    assert driver.write("k", b"abc") == hashlib.md5(b"abc").hexdigest()
    assert requests_sent(driver, lambda: driver.write("empty", b"")) == {"put": 1, "head": 1}
    assert driver.stat("empty").etag.startswith(EMPTY_MD5 + "-")
