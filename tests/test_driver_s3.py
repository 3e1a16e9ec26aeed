import os
import uuid

import boto3
import botocore.exceptions
import pytest
import tenacity
import urllib3.exceptions

import drivers.retry
from drivers.errors import AccessDenied, ConfigError, NotFound, StorageError, TransientError
from drivers.retry import ATTEMPTS
from drivers.s3 import S3Driver
from tests.conformance import (MIB, DriverConformance, assert_config_error, listed, requests_sent,
                               sent_nothing)
from tests.services import S3_CREDENTIALS, free_port

SECRETS = {"accesskey": "AKIA-SECRET-ID", "secretkey": "SECRET-KEY-VALUE",
           "sessiontoken": "SECRET-TOKEN"}


@pytest.fixture(scope="session")
def s3(moto):
    """A raw boto3 client on the moto server, for setting up and inspecting buckets."""
    return boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                        aws_access_key_id=S3_CREDENTIALS["accesskey"],
                        aws_secret_access_key=S3_CREDENTIALS["secretkey"])


@pytest.fixture
def bucket(s3):
    name = f"test-{uuid.uuid4().hex}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def config(moto, bucket):
    return {**S3_CREDENTIALS, "bucket": bucket, "regionendpoint": moto.url, "chunksize": 5 * MIB}


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(drivers.retry, "_policy", drivers.retry._policy.copy(wait=tenacity.wait_none()))
    monkeypatch.setattr(drivers.retry, "pause", lambda failures: None)


class TestS3(DriverConformance):
    @pytest.fixture
    def driver(self, config):
        return S3Driver.from_config({**config, "rootdirectory": "/conformance/"})

    @pytest.fixture
    def second_driver(self, s3, config):
        """Another bucket of the same moto server, with the same credentials."""
        other = f"test-{uuid.uuid4().hex}"
        s3.create_bucket(Bucket=other)
        return S3Driver.from_config({**config, "bucket": other, "rootdirectory": "/second/"})


def test_from_config_accepts_distribution_keys(config):
    driver = S3Driver.from_config({
        **config, "encrypt": "false", "secure": False, "skipverify": "true", "v4auth": True,
        "multipartcopychunksize": 33554432, "multipartcopymaxconcurrency": 100,
        "multipartcopythresholdsize": 33554432, "rootdirectory": "/registry", "storageclass": "NONE",
        "objectacl": "private", "useragent": "replicator-test", "usedualstack": False,
        "accelerate": False, "loglevel": "off", "forcepathstyle": True, "maxconnections": "8",
        "keyid": None, "sessiontoken": None})
    assert driver.describe() == f"s3://{config['bucket']}/registry"
    assert driver.put_args == {"ACL": "private"}


@pytest.mark.parametrize("change, field", [
    ({"bucket": None}, "bucket"),
    ({"bucket": ""}, "bucket"),
    ({"region": None}, "region"),
    ({"bogus": 1}, "bogus"),
    ({"chunksize": 4 * MIB}, "chunksize"),
    ({"chunksize": "big"}, "chunksize"),
    ({"secure": "maybe"}, "secure"),
    ({"maxconnections": 0}, "maxconnections"),
    ({"rootdirectory": "a/../b"}, "rootdirectory"),
    ({"secretkey": None}, "secretkey"),
    ({"multipartcopychunksize": 4 * MIB}, "multipartcopychunksize"),
    ({"multipartcopychunksize": 5 * 1024 * MIB + 1}, "multipartcopychunksize"),
    ({"multipartcopythresholdsize": 5 * 1024 * MIB + 1}, "multipartcopythresholdsize"),
    ({"multipartcopymaxconcurrency": 0}, "multipartcopymaxconcurrency"),
])
def test_from_config_errors_name_the_key(config, change, field):
    params = {key: value for key, value in {**config, **change}.items() if value is not None}
    assert_config_error(S3Driver, params, field)


def test_credentials_from_the_environment(config, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", config.pop("accesskey"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", config.pop("secretkey"))
    driver = S3Driver.from_config(config)
    driver.write("key", b"x")
    assert driver.read("key") == b"x"


def test_rootdirectory_puts_keys_under_it(s3, config):
    driver = S3Driver.from_config({**config, "rootdirectory": "/registry"})
    driver.write("docker/registry/v2/blobs/data", b"x")
    raw = s3.list_objects_v2(Bucket=config["bucket"])["Contents"]
    assert [item["Key"] for item in raw] == ["registry/docker/registry/v2/blobs/data"]
    assert listed(driver) == ["docker/registry/v2/blobs/data"]
    assert S3Driver.from_config(config).stat("registry/docker/registry/v2/blobs/data").size == 1


def test_put_arguments_apply_to_single_and_multipart_puts(s3, config):
    driver = S3Driver.from_config({**config, "encrypt": True, "storageclass": "REDUCED_REDUNDANCY"})
    driver.write("small", b"x")
    with driver.writer("large") as writer:
        writer.write(b"x" * (6 * MIB))
        writer.commit()
    for key in ("small", "large"):
        head = s3.head_object(Bucket=config["bucket"], Key=key)
        assert (head["ServerSideEncryption"], head["StorageClass"]) == ("AES256", "REDUCED_REDUNDANCY")


def test_aborted_writers_leave_no_multipart_upload(s3, config):
    driver = S3Driver.from_config(config)
    writer = driver.writer("aborted")
    writer.write(b"x" * (6 * MIB))
    writer.abort()
    with pytest.raises(RuntimeError), driver.writer("broken") as writer:
        writer.write(b"x" * (6 * MIB))
        raise RuntimeError("source broke")
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=config["bucket"])


def test_multipart_requests_count_as_puts(config):
    driver = S3Driver.from_config(config)

    def upload():
        with driver.writer("big") as writer:
            writer.write(b"x" * (12 * MIB))
            writer.commit()

    assert requests_sent(driver, upload) == {"put": 5}
    assert requests_sent(driver, lambda: driver.writer("small").commit()) == {"put": 1}


def test_secrets_never_appear_in_descriptions_or_errors(config, no_backoff):
    params = {**config, **SECRETS, "regionendpoint": f"http://127.0.0.1:{free_port()}"}
    driver = S3Driver.from_config(params)
    with pytest.raises(StorageError) as caught:
        driver.stat("key")
    with pytest.raises(ConfigError) as bad_config:
        S3Driver.from_config({**params, "chunksize": "big"})
    texts = [driver.describe(), repr(driver), str(caught.value), str(bad_config.value)]
    assert not [secret for secret in SECRETS.values() for text in texts if secret in text]


def test_connection_errors_are_retried_then_transient(config, no_backoff):
    nothing_listens = f"127.0.0.1:{free_port()}"
    driver = S3Driver.from_config({**config, "regionendpoint": nothing_listens, "secure": False})
    with pytest.raises(TransientError, match="head_object"):
        driver.stat("key")
    assert driver.requests.snapshot()["head"] == ATTEMPTS


def test_broken_stream_resumes_where_it_broke(config, no_backoff, monkeypatch):
    driver = S3Driver.from_config(config)
    data = bytes(range(256)) * 8192
    driver.write("blob", data)
    real_get_object = driver._client.get_object
    ranges = []

    class BreaksOnce:
        def __init__(self, body):
            self.body = body

        def iter_chunks(self, size):
            yield self.body.read(1000)
            raise urllib3.exceptions.ProtocolError("connection reset")

        def close(self):
            self.body.close()

    def get_object(**args):
        ranges.append(args.get("Range"))
        response = real_get_object(**args)
        if len(ranges) == 1:
            response["Body"] = BreaksOnce(response["Body"])
        return response

    monkeypatch.setattr(driver._client, "get_object", get_object)
    assert driver.read("blob", limit=len(data)) == data
    assert ranges == [None, "bytes=1000-"]


# --- server-side copy -------------------------------------------------------------------------

SMALL_COPY_PARTS = {"multipartcopythresholdsize": 5 * MIB, "multipartcopychunksize": 5 * MIB}
"""Multipart copies above 5 MiB, in 5 MiB parts: an 11 MiB object is parts of 5, 5 and 1 MiB."""


@pytest.fixture
def source(s3, config):
    """A driver on another bucket of the same server, with the same credentials."""
    other = f"test-{uuid.uuid4().hex}"
    s3.create_bucket(Bucket=other)
    return S3Driver.from_config({**config, "bucket": other, "rootdirectory": "/source/"})


def test_copy_only_between_the_same_endpoint_and_credentials(config, monkeypatch):
    driver = S3Driver.from_config(config)
    candidates = {
        "other bucket and root": S3Driver.from_config({**config, "bucket": "b", "rootdirectory": "r"}),
        "other access key": S3Driver.from_config({**config, "accesskey": "someone-else"}),
        "other endpoint": S3Driver.from_config({**config, "regionendpoint": "http://127.0.0.2:9000"}),
    }
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", config["accesskey"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", config["secretkey"])
    chain = {key: value for key, value in config.items() if key not in ("accesskey", "secretkey")}
    candidates["credential chain"] = S3Driver.from_config(chain)
    assert {name: driver.can_copy_from(other) for name, other in candidates.items()} == {
        "other bucket and root": True, "other access key": False, "other endpoint": False,
        "credential chain": False}
    assert S3Driver.from_config(chain).can_copy_from(candidates["credential chain"])
    aws = {"bucket": "b", "region": "us-east-1"}
    assert S3Driver.from_config(aws).can_copy_from(S3Driver.from_config({**aws, "region": "eu-west-1"}))
    assert not S3Driver.from_config(aws).can_copy_from(
        S3Driver.from_config({**aws, "region": "cn-north-1"}))
    assert sent_nothing(driver, *candidates.values())


def test_copy_concurrency_is_capped_by_the_connection_pool(config):
    assert S3Driver.from_config(config)._copy_concurrency == 32
    assert S3Driver.from_config({**config, "maxconnections": 8})._copy_concurrency == 8
    assert S3Driver.from_config({**config, "multipartcopymaxconcurrency": 3})._copy_concurrency == 3


def test_multipart_copy_above_the_threshold(config, source):
    driver = S3Driver.from_config({**config, **SMALL_COPY_PARTS, "multipartcopymaxconcurrency": 2})
    data = os.urandom(11 * MIB)
    source.write("big", data)
    source.write("at-threshold", data[:5 * MIB])
    etags = []
    assert requests_sent(driver, lambda: etags.append(driver.copy_from(source, "big", len(data)))) \
        == {"put": 2, "copy": 3}  # create, 3 x UploadPartCopy, complete
    assert driver.read("big", limit=len(data)) == data
    assert etags == [driver.stat("big").etag] and etags[0].endswith("-3")
    at_threshold = requests_sent(driver, lambda: driver.copy_from(source, "at-threshold", 5 * MIB))
    assert at_threshold == {"copy": 1}
    assert requests_sent(source, lambda: driver.copy_from(source, "big")) == {"head": 1}
    assert driver.read("at-threshold", limit=5 * MIB) == data[:5 * MIB]


def test_copies_get_the_put_arguments(s3, config, source):
    driver = S3Driver.from_config({**config, **SMALL_COPY_PARTS, "encrypt": True,
                                   "storageclass": "REDUCED_REDUNDANCY"})
    source.write("small", b"x")
    source.write("large", b"x" * (6 * MIB))
    for key in ("small", "large"):
        driver.copy_from(source, key)
        head = s3.head_object(Bucket=config["bucket"], Key=key)
        assert (head["ServerSideEncryption"], head["StorageClass"]) == ("AES256", "REDUCED_REDUNDANCY")


def _source_deleted_after_start(driver, source, monkeypatch):
    real = driver._client.create_multipart_upload

    def create(**args):
        response = real(**args)
        source.delete("big")
        return response

    monkeypatch.setattr(driver._client, "create_multipart_upload", create)
    return NotFound


def _second_part_denied(driver, source, monkeypatch):
    real = driver._client.upload_part_copy

    def upload_part_copy(**args):
        if args["PartNumber"] == 2:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "AccessDenied", "Message": "denied"},
                 "ResponseMetadata": {"HTTPStatusCode": 403}}, "UploadPartCopy")
        return real(**args)

    monkeypatch.setattr(driver._client, "upload_part_copy", upload_part_copy)
    return AccessDenied


@pytest.mark.parametrize("breaking", [_source_deleted_after_start, _second_part_denied],
                         ids=["source-deleted", "one-part-denied"])
def test_failed_multipart_copy_leaves_no_upload(s3, config, source, monkeypatch, breaking):
    driver = S3Driver.from_config({**config, **SMALL_COPY_PARTS})
    source.write("big", os.urandom(11 * MIB))
    error = breaking(driver, source, monkeypatch)
    with pytest.raises(error):
        driver.copy_from(source, "big", 11 * MIB)
    assert driver.requests.snapshot()["delete"] == 1  # the abort
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=config["bucket"])
    assert list(driver.list()) == []


def test_abandoned_uploads_under_the_prefix_are_swept_when_old_enough(s3, config):
    driver = S3Driver.from_config({**config, "rootdirectory": "/registry"})
    for key in ("blobs/a/data", "blobs/b/data", "repositories/x/_uploads/1/data"):
        s3.create_multipart_upload(Bucket=config["bucket"], Key="registry/" + key)
    assert driver.sweep_abandoned_uploads("blobs/", older_than=10 * 365 * 86400 * 100) == 0
    assert driver.sweep_abandoned_uploads("blobs/", older_than=0) == 2  # moto dates them 2010
    left = [upload["Key"] for upload in s3.list_multipart_uploads(Bucket=config["bucket"])["Uploads"]]
    assert left == ["registry/repositories/x/_uploads/1/data"]


def test_multipart_copy_requests_are_what_the_driver_says(config, source):
    driver = S3Driver.from_config({**config, **SMALL_COPY_PARTS})
    size = 11 * MIB
    source.write("blob", os.urandom(size))
    assert driver.copy_requests(size, hashed=False) == {"put": 2, "copy": 3}
    assert requests_sent(driver, lambda: driver.copy_from(source, "blob", size)) == {"put": 2, "copy": 3}
    assert driver.copy_requests(size, hashed=True) == {"copy": 1}
