import base64
import uuid

import pytest
from azure.storage.blob import BlobClient, BlobProperties, BlobServiceClient

import drivers.azure
from drivers.azure import AzureDriver
from drivers.errors import AccessDenied, ConfigError, NotFound, StorageError, TransientError
from drivers.retry import ATTEMPTS
from tests.conformance import (LINK, MIB, DriverConformance, assert_config_error, listed, requests_sent,
                               sent_nothing)
from tests.faults import cut_header_outcomes
from tests.services import AZURITE_DEV_ACCOUNT, AZURITE_SECOND_ACCOUNT, free_port

SECRET_KEY = base64.b64encode(b"SECRET-ACCOUNT-KEY-" + bytes(range(45))).decode()


def connection_string(url: str, account: tuple[str, str]) -> str:
    name, key = account
    return (f"DefaultEndpointsProtocol=http;AccountName={name};AccountKey={key};"
            f"BlobEndpoint={url}/{name};")


@pytest.fixture(scope="session")
def blobs(azurite):
    """A raw client on Azurite's dev account, for setting up and inspecting containers."""
    return BlobServiceClient.from_connection_string(connection_string(azurite.url, AZURITE_DEV_ACCOUNT))


@pytest.fixture
def container(blobs):
    name = f"test-{uuid.uuid4().hex}"
    blobs.create_container(name)
    return name


@pytest.fixture
def config(azurite, container):
    name, key = AZURITE_DEV_ACCOUNT
    return {"accountname": name, "accountkey": key, "container": container,
            "endpoint": f"{azurite.url}/{name}", "chunksize": MIB}


@pytest.fixture
def second_config(azurite, container):
    """A container of the same name in Azurite's second account (same server)."""
    name, key = AZURITE_SECOND_ACCOUNT
    account = connection_string(azurite.url, AZURITE_SECOND_ACCOUNT)
    BlobServiceClient.from_connection_string(account).create_container(container)
    return {"accountname": name, "accountkey": key, "container": container,
            "endpoint": f"{azurite.url}/{name}", "chunksize": MIB}


class TestAzure(DriverConformance):
    @pytest.fixture
    def driver(self, config):
        return AzureDriver.from_config({**config, "rootdirectory": "/conformance/"})

    @pytest.fixture
    def second_driver(self, second_config):
        return AzureDriver.from_config({**second_config, "rootdirectory": "/second/"})


def test_from_config_accepts_distribution_keys(config):
    driver = AzureDriver.from_config({**config, "realm": "core.windows.net", "rootdirectory": "/registry",
                                      "chunksize": str(2 * MIB), "maxconcurrency": 8})
    assert driver.describe() == f"azure://{config['accountname']}/{config['container']}/registry"
    assert driver.chunk_size == 2 * MIB
    del config["endpoint"]
    assert AzureDriver.from_config({**config, "realm": "example.net"})._container.url == \
        f"https://{config['accountname']}.blob.example.net/{config['container']}"


def test_default_azure_credential_without_a_key(config):
    from azure.identity import DefaultAzureCredential

    del config["accountkey"]
    assert_config_error(AzureDriver, config, "endpoint")
    driver = AzureDriver.from_config({**config, "endpoint": "https://127.0.0.1:1/devstoreaccount1"})
    assert isinstance(driver._container.credential, DefaultAzureCredential)


def test_connection_string_and_second_account(azurite, container):
    for name, key in (AZURITE_DEV_ACCOUNT, AZURITE_SECOND_ACCOUNT):
        params = {"connectionstring": connection_string(azurite.url, (name, key)), "accountname": name,
                  "container": f"cs-{container}"}
        service = BlobServiceClient.from_connection_string(params["connectionstring"])
        service.create_container(params["container"])
        driver = AzureDriver.from_config(params)
        assert driver.describe() == f"azure://{name}/cs-{container}"
        driver.write("key", name.encode())
        assert driver.read("key") == name.encode()


@pytest.mark.parametrize("change, field", [
    ({"container": None}, "container"),
    ({"container": ""}, "container"),
    ({"accountname": None}, "accountname"),
    ({"bogus": 1}, "bogus"),
    ({"chunksize": 1024}, "chunksize"),
    ({"chunksize": "big"}, "chunksize"),
    ({"maxconcurrency": 0}, "maxconcurrency"),
    ({"realm": 5}, "realm"),
    ({"rootdirectory": "a/../b"}, "rootdirectory"),
    ({"accountkey": "not base64!"}, "accountkey"),
    ({"connectionstring": "AccountName=x;AccountKey=y"}, "accountkey"),
    ({"connectionstring": "AccountName=x;AccountKey=y", "accountkey": None}, "endpoint"),
    ({"connectionstring": "garbage", "accountkey": None, "endpoint": None}, "connectionstring"),
])
def test_from_config_errors_name_the_key(config, change, field):
    params = {key: value for key, value in {**config, **change}.items() if value is not None}
    assert_config_error(AzureDriver, params, field)


def test_accountname_must_match_the_connection_string(azurite, container):
    params = {"connectionstring": connection_string(azurite.url, AZURITE_DEV_ACCOUNT),
              "accountname": "someoneelse", "container": container}
    assert_config_error(AzureDriver, params, "accountname")


def test_secrets_never_appear_in_descriptions_or_errors(azurite, config, no_backoff):
    wrong_key = AzureDriver.from_config({**config, "accountkey": SECRET_KEY})
    with pytest.raises(AccessDenied) as denied:
        wrong_key.stat("key")
    dead = connection_string(f"http://127.0.0.1:{free_port()}", (config["accountname"], SECRET_KEY))
    unreachable = AzureDriver.from_config({"connectionstring": dead, "container": config["container"]})
    with pytest.raises(TransientError) as broken:
        unreachable.write("key", b"x")
    with pytest.raises(ConfigError) as bad_config:
        AzureDriver.from_config({"connectionstring": dead + "Bogus", "container": "c"})
    assert bad_config.value.field == "connectionstring"
    texts = [wrong_key.describe(), repr(wrong_key), unreachable.describe(), repr(unreachable),
             str(denied.value), str(broken.value), str(bad_config.value)]
    assert not [text for text in texts if SECRET_KEY in text or SECRET_KEY[:20] in text]


def test_rootdirectory_puts_keys_under_it(blobs, config):
    driver = AzureDriver.from_config({**config, "rootdirectory": "/registry"})
    driver.write("docker/registry/v2/blobs/data", b"x")
    raw = blobs.get_container_client(config["container"]).list_blob_names()
    assert list(raw) == ["registry/docker/registry/v2/blobs/data"]
    assert listed(driver) == ["docker/registry/v2/blobs/data"]
    assert AzureDriver.from_config(config).stat("registry/docker/registry/v2/blobs/data").size == 1


def test_aborted_writers_commit_nothing(blobs, config):
    driver = AzureDriver.from_config(config)
    writer = driver.writer("aborted")
    writer.write(b"x" * (3 * MIB))
    assert requests_sent(driver, writer.abort) == {}
    with pytest.raises(RuntimeError), driver.writer("broken") as broken:
        broken.write(b"x" * (3 * MIB))
        raise RuntimeError("source broke")
    raw = blobs.get_container_client(config["container"])
    assert list(raw.list_blob_names()) == []
    for key in ("aborted", "broken"):
        with pytest.raises(NotFound):
            driver.stat(key)


def test_blocks_count_as_puts_and_reads_go_by_chunk(config):
    driver = AzureDriver.from_config(config)
    data = b"x" * (3 * MIB + MIB // 2)

    def upload():
        with driver.writer("big") as writer:
            writer.write(data)
            writer.commit()

    assert requests_sent(driver, upload) == {"put": 5}
    assert requests_sent(driver, lambda: driver.read("big", limit=len(data))) == {"get": 4}
    assert requests_sent(driver, lambda: driver.writer("small").commit()) == {"put": 1}
    assert requests_sent(driver, lambda: driver.read("small")) == {"get": 1}


def test_connection_errors_are_retried_then_transient(config, no_backoff):
    driver = AzureDriver.from_config({**config, "endpoint": f"http://127.0.0.1:{free_port()}/account"})
    with pytest.raises(TransientError, match="stat"):
        driver.stat("key")
    assert driver.requests.snapshot()["head"] == ATTEMPTS


def test_answers_cut_inside_their_headers_are_right_or_transient(azurite, config, no_backoff):
    """Through a proxy that closes every connection inside the answer's headers: each call
    returns the right result (the headers it needs arrived) or ``TransientError``, never
    another exception."""
    data = bytes(range(256)) * 1000
    AzureDriver.from_config(config).write("object", data)
    name = AZURITE_DEV_ACCOUNT[0]
    outcomes = cut_header_outcomes(
        azurite.url, lambda proxy: AzureDriver.from_config({**config, "endpoint": f"{proxy.url}/{name}"}),
        data, range(1, 4))
    assert all(seen <= {True, "transient"} for seen in outcomes.values()), outcomes
    assert any("transient" in seen for seen in outcomes.values()), outcomes


def test_missing_container_is_not_found(config):
    driver = AzureDriver.from_config({**config, "container": f"missing-{uuid.uuid4().hex}"})
    with pytest.raises(NotFound):
        list(driver.list())
    with pytest.raises(StorageError):
        driver.write("key", b"x")


# --- server-side copy -------------------------------------------------------------------------

@pytest.fixture
def source(second_config):
    """A driver on the second Azurite account (same server)."""
    return AzureDriver.from_config({**second_config, "rootdirectory": "/source/"})


def test_copy_only_on_the_same_service_from_a_source_with_a_key(azurite, config, second_config):
    driver = AzureDriver.from_config(config)
    keyless = {key: value for key, value in second_config.items() if key != "accountkey"}
    candidates = {
        "second account": AzureDriver.from_config(second_config),
        "connection string": AzureDriver.from_config(
            {"connectionstring": connection_string(azurite.url, AZURITE_SECOND_ACCOUNT),
             "container": "c"}),
        "other server": AzureDriver.from_config({**second_config,
                                                 "endpoint": f"http://127.0.0.2:{azurite.port}/x"}),
        "no account key": AzureDriver.from_config({**keyless, "endpoint": "https://127.0.0.1:1/x"}),
    }
    assert {name: driver.can_copy_from(other) for name, other in candidates.items()} == {
        "second account": True, "connection string": True, "other server": False,
        "no account key": False}
    cloud = {"accountname": "one", "accountkey": SECRET_KEY, "container": "c"}
    assert AzureDriver.from_config(cloud).can_copy_from(
        AzureDriver.from_config({**cloud, "accountname": "two"}))
    assert not AzureDriver.from_config(cloud).can_copy_from(
        AzureDriver.from_config({**cloud, "realm": "core.chinacloudapi.cn"}))
    assert sent_nothing(driver, *candidates.values())


def test_read_sas_is_read_only_and_never_in_errors(config, source, no_backoff):
    driver = AzureDriver.from_config(config)
    source.write("obj", b"x")
    url = source.signed_read_url("obj", 60)
    assert "sp=r&" in url and "sig=" in url
    with pytest.raises(NotFound) as missing:
        driver.copy_from(source, "missing")
    assert "sig=" not in str(missing.value) and SECRET_KEY not in str(missing.value)


@pytest.fixture
def pending_copies(monkeypatch):
    """Azurite finishes every copy at once; this makes the copy look pending ``looks`` times."""
    real_start, real_properties = BlobClient.start_copy_from_url, BlobClient.get_blob_properties
    state = {"looks": 0, "aborted": []}

    def start_copy_from_url(self, url, **args):
        return {**real_start(self, url, **args), "copy_status": "pending"}

    def get_blob_properties(self, **args):
        properties = real_properties(self, **args)
        if state["looks"] > 0:
            state["looks"] -= 1
            properties.copy.status = "pending"
        return properties

    monkeypatch.setattr(BlobClient, "start_copy_from_url", start_copy_from_url)
    monkeypatch.setattr(BlobClient, "get_blob_properties", get_blob_properties)
    monkeypatch.setattr(BlobClient, "abort_copy",
                        lambda self, copy_id, **args: state["aborted"].append(copy_id))
    monkeypatch.setattr(drivers.azure, "COPY_POLL", (0.01, 0.05))
    return state


def test_pending_copy_is_watched_until_it_succeeds(config, source, pending_copies):
    driver = AzureDriver.from_config(config)
    source.write("obj", b"copied")
    pending_copies["looks"] = 2
    etags = []
    assert requests_sent(driver, lambda: etags.append(driver.copy_from(source, "obj"))) == \
        {"copy": 1, "head": 3}
    assert [driver.stat("obj").etag] == etags and driver.read("obj") == b"copied"


def test_copy_pending_too_long_is_aborted_and_leaves_nothing(blobs, config, source, pending_copies):
    driver = AzureDriver.from_config(config)
    driver.copy_wait = 0.2
    source.write("obj", b"never arrives")
    pending_copies["looks"] = 1_000_000
    with pytest.raises(TransientError, match="still pending after 0.2 s; aborted"):
        driver.copy_from(source, "obj")
    assert len(pending_copies["aborted"]) == 1
    assert list(blobs.get_container_client(config["container"]).list_blob_names()) == []


def test_unfinished_copies_are_neither_listed_nor_stated(config, monkeypatch):
    driver = AzureDriver.from_config(config)
    driver.write("done", b"x")
    driver.write("copying", b"x")
    real_properties = BlobClient.get_blob_properties

    def get_blob_properties(self, **args):
        properties = real_properties(self, **args)
        properties.copy.status = "pending"
        return properties

    monkeypatch.setattr(BlobClient, "get_blob_properties", get_blob_properties)
    with pytest.raises(NotFound, match="a copy to it is pending"):
        driver.stat("copying")
    for status, shown in ((None, True), ("success", True), ("pending", False), ("aborted", False),
                          ("failed", False)):
        properties = BlobProperties()
        properties.copy.status = status
        assert drivers.azure._finished(properties) is shown, status


# --- layout flavours and registry 3 keys ------------------------------------------------------

class TestAzure28(DriverConformance):
    """The conformance suite with Distribution 2.8's names: the key behind a leading slash."""

    @pytest.fixture
    def driver(self, config):
        driver = AzureDriver.from_config(config)
        driver.use_flavour("2.8")
        return driver

    @pytest.fixture
    def second_driver(self, second_config):
        driver = AzureDriver.from_config(second_config)
        driver.use_flavour("2.8")
        return driver


def raw_blobs(blobs, config) -> dict[str, str]:
    return {blob.name: blob.blob_type.value
            for blob in blobs.get_container_client(config["container"]).list_blobs()}


def test_each_flavour_names_blobs_as_its_distribution_does(blobs, config):
    drivers_by_flavour = {"2.8": AzureDriver.from_config(config),
                          "3": AzureDriver.from_config({**config, "rootdirectory": "/registry/"})}
    for flavour, driver in drivers_by_flavour.items():
        driver.use_flavour(flavour)
        driver.write("docker/registry/v2/blobs/data", flavour.encode())
        with driver.writer("docker/registry/v2/big") as writer:
            writer.write(b"x" * (2 * MIB + 1))
            writer.commit()
    assert raw_blobs(blobs, config) == {
        "/docker/registry/v2/big": "BlockBlob", "/docker/registry/v2/blobs/data": "BlockBlob",
        "registry/docker/registry/v2/big": "BlockBlob",
        "registry/docker/registry/v2/blobs/data": "BlockBlob"}
    for flavour, driver in drivers_by_flavour.items():
        assert listed(driver) == ["docker/registry/v2/big", "docker/registry/v2/blobs/data"]
        assert driver.read("docker/registry/v2/blobs/data") == flavour.encode()
        assert requests_sent(driver, lambda: driver.flavours_present("docker/")) == {"list": 2}
    # the rooted driver sees the 2.8 names beside its own; the other has no 3.x names at its root
    assert {flavour: driver.flavours_present("docker/") for flavour, driver in
            drivers_by_flavour.items()} == {"2.8": {"2.8"}, "3": {"2.8", "3"}}


def test_flavours_the_configuration_allows(config):
    rooted = AzureDriver.from_config({**config, "rootdirectory": "/registry"})
    plain = AzureDriver.from_config(config)
    assert (rooted.required_flavour(), plain.required_flavour()) == ("3", None)
    assert (plain.flavour, plain.flavour_known) == ("3", False)
    for driver, flavour in ((rooted, "2.8"), (plain, "2.9")):
        with pytest.raises(ConfigError) as caught:
            driver.use_flavour(flavour)
        assert caught.value.field == "layout"
    assert sent_nothing(rooted, plain)


def test_a_blob_of_another_type_is_replaced_as_distribution_replaces_it(blobs, config, monkeypatch):
    """Azure refuses a Put Blob over a blob of another type (409 InvalidBlobType); Azurite
    allows it, so the refusal is played by wrapping the SDK call."""
    from azure.core.exceptions import ResourceExistsError

    real_upload = BlobClient.upload_blob

    def upload_blob(self, data, **args):
        if self.exists() and self.get_blob_properties().blob_type.value != "BlockBlob":
            error = ResourceExistsError("The blob type is invalid for this operation.")
            error.error_code = "InvalidBlobType"
            raise error
        return real_upload(self, data, **args)

    monkeypatch.setattr(BlobClient, "upload_blob", upload_blob)
    driver = AzureDriver.from_config(config)
    link = blobs.get_container_client(config["container"]).get_blob_client("docker/link")
    link.create_append_blob()
    link.append_block(LINK.encode())
    etag = driver.write("docker/link", LINK.replace("a", "b").encode())
    assert raw_blobs(blobs, config) == {"docker/link": "BlockBlob"}
    assert driver.read("docker/link") == LINK.replace("a", "b").encode()
    assert driver.stat("docker/link").etag == etag


def test_registry_3_block_with_serviceurl_and_shared_key(azurite, blobs, config):
    name, key = AZURITE_DEV_ACCOUNT
    block = {"accountname": name, "accountkey": key, "container": config["container"],
             "serviceurl": f"{azurite.url}/{name}", "rootdirectory": "/registry",
             "credentials": {"type": "shared_key"}, "max_retries": -1, "retry_delay": "1m30s",
             "skipverify": True, "realm": "core.windows.net"}
    driver = AzureDriver.from_config(block)
    driver.write("docker/registry/v2/x", b"x")
    assert driver.read("docker/registry/v2/x") == b"x"
    assert raw_blobs(blobs, config) == {"registry/docker/registry/v2/x": "BlockBlob"}
    assert driver._container._pipeline._transport.connection_config.verify is False
    assert AzureDriver.from_config(config)._container._pipeline._transport.connection_config.verify


def test_registry_3_token_credentials(config):
    from azure.identity import ClientSecretCredential, DefaultAzureCredential

    keyless = {name: value for name, value in config.items() if name != "accountkey"}
    secret = {"type": "client_secret", "tenantid": "tenant", "clientid": "client", "secret": SECRET_KEY}
    https = {**keyless, "serviceurl": "https://127.0.0.1:1/devstoreaccount1", "endpoint": None}
    built = {kind: AzureDriver.from_config({key: value for key, value in
                                            {**https, "credentials": credentials}.items()
                                            if value is not None})
             for kind, credentials in (("client_secret", secret),
                                       ("default_credentials", {"type": "default_credentials"}))}
    assert isinstance(built["client_secret"]._container.credential, ClientSecretCredential)
    assert isinstance(built["default_credentials"]._container.credential, DefaultAzureCredential)
    assert not [driver for driver in built.values() if SECRET_KEY in repr(driver) + driver.describe()]
    assert sent_nothing(*built.values())


@pytest.mark.parametrize("change, field", [
    ({"credentials": {"type": "password"}}, "credentials.type"),
    ({"credentials": {}}, "credentials.type"),
    ({"credentials": {"type": "shared_key", "bogus": 1}}, "credentials.bogus"),
    ({"credentials": "shared_key"}, "credentials"),
    ({"credentials": {"type": "shared_key"}, "accountkey": None}, "accountkey"),
    ({"credentials": {"type": "client_secret", "clientid": "c", "secret": "s"}}, "credentials.tenantid"),
    ({"serviceurl": "http://127.0.0.1:1/x"}, "serviceurl"),
    ({"retry_delay": "soon"}, "retry_delay"),
    ({"max_retries": -2}, "max_retries"),
    ({"skipverify": "maybe"}, "skipverify"),
])
def test_registry_3_keys_errors_name_the_key(config, change, field):
    params = {key: value for key, value in {**config, **change}.items() if value is not None}
    assert_config_error(AzureDriver, params, field)


def test_connection_string_conflicts_with_registry_3_credentials(azurite, container):
    params = {"connectionstring": connection_string(azurite.url, AZURITE_DEV_ACCOUNT),
              "container": container, "credentials": {"type": "shared_key"}}
    assert_config_error(AzureDriver, params, "credentials")
