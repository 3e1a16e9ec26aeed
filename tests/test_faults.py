"""The replicator against S3 behind a fault-injecting proxy (``tests.faults``).

(a) the proxy itself: each fault kind reaches boto3 as the error it stands for, and at rate 0
everything passes through byte for byte; (b) convergence (DESIGN invariants 2, 5, 6): passes
at 10% and 30% faults, on the destination alone and on the source too, converge to a
destination identical to the source byte for byte, with no multipart upload left behind;
(c) the reader's view (invariant 1): while such a sync runs, every tag a direct reader of the
destination can see resolves completely.

Waits between retries are zero here (``no_backoff``); the number of attempts is production's.
More seeds per case: ``REPLICATOR_FAULT_SEEDS=N`` (seeds 1..N; default 1).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.config
import botocore.exceptions
import pytest

from drivers.errors import StorageError, TransientError
from drivers.retry import ATTEMPTS
from drivers.s3 import S3Driver
from replicator import config as config_module
from replicator import layout, sample_images
from replicator.demo import publish
from replicator.engine import RunOptions, run_policy
from state.store import StateStore
from tests.faults import FAULTS, FaultProxy, cut_header_outcomes
from tests.services import S3_CREDENTIALS
from tests.test_engine import DANGLING_KINDS, _visible_tags, verify_storage
from tests.test_request_counts import fill, s3_block

MIB = 1024 * 1024
ROOT = "registry/" + layout.ROOT
SEEDS = range(1, int(os.environ.get("REPLICATOR_FAULT_SEEDS", "1")) + 1)
MAX_PASSES = 8
MAX_CHECKS = 200


def raw_client(url: str):
    """A plain boto3 client, its own retries off, for setting up and inspecting buckets."""
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=S3_CREDENTIALS["accesskey"],
                        aws_secret_access_key=S3_CREDENTIALS["secretkey"],
                        config=botocore.config.Config(retries={"total_max_attempts": 1}))


def new_bucket(moto, purpose: str) -> str:
    name = f"faults-{purpose}-{uuid.uuid4().hex[:8]}"
    raw_client(moto.url).create_bucket(Bucket=name)
    return name


def driver_params(endpoint, bucket: str, root: str = "/registry") -> dict:
    """An S3 region block's parameters, at ``endpoint`` (moto or a proxy), 5 MiB parts."""
    return {**s3_block(endpoint, bucket)["s3"], "chunksize": 5 * MIB, "rootdirectory": root}


def direct(moto, bucket: str) -> S3Driver:
    return S3Driver.from_config(driver_params(moto, bucket))


@pytest.fixture
def bucket(moto):
    return new_bucket(moto, "unit")


# -- (a) the proxy itself ---------------------------------------------------------------


def test_rate_zero_passes_everything_through_byte_exact(moto, bucket):
    big = random.Random(12).randbytes(12 * MIB)
    direct_client = raw_client(moto.url)
    with FaultProxy(moto.url, seed=1, rate=0.0) as proxy:
        client = raw_client(proxy.url)
        client.put_object(Bucket=bucket, Key="big", Body=big)  # one PUT, Expect: 100-continue
        driver = S3Driver.from_config(driver_params(proxy, bucket, root=""))
        with driver.writer("parts") as writer:
            writer.write(big)  # three parts of a multipart upload
            writer.commit()
        client.put_object(Bucket=bucket, Key="small", Body=b"small")
        through = {key: client.get_object(Bucket=bucket, Key=key)["Body"].read()
                   for key in ("big", "parts", "small")}
        ranged = client.get_object(Bucket=bucket, Key="big", Range=f"bytes={5 * MIB}-")
        ranged = ranged["Body"].read()
        head = client.head_object(Bucket=bucket, Key="big")
        listed = [item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]]
        client.delete_object(Bucket=bucket, Key="small")
    assert through == {"big": big, "parts": big, "small": b"small"}
    assert ranged == big[5 * MIB:] and head["ContentLength"] == len(big)
    for key in ("big", "parts"):
        assert direct_client.get_object(Bucket=bucket, Key=key)["Body"].read() == big
    assert listed == ["big", "parts", "small"]
    assert "Contents" not in direct_client.list_objects_v2(Bucket=bucket, Prefix="small")
    assert proxy.faults == {}
    assert proxy.requests == {"put": 7, "get": 4, "head": 1, "list": 1, "delete": 1}


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_kind_reaches_boto3_as_its_error(moto, bucket, fault, no_backoff):
    data = random.Random(1).randbytes(300_000)
    raw_client(moto.url).put_object(Bucket=bucket, Key="object", Body=data)
    with FaultProxy(moto.url, seed=1, rate=1.0, faults=[fault]) as proxy:
        client = raw_client(proxy.url)
        driver = S3Driver.from_config(driver_params(proxy, bucket, root=""))
        started = time.monotonic()
        if fault == "latency":
            assert client.get_object(Bucket=bucket, Key="object")["Body"].read() == data
            assert time.monotonic() - started >= 0.05
            assert driver.read("object", limit=len(data)) == data
            driver.write("other", b"x")
        elif fault in ("error500", "error503"):
            with pytest.raises(botocore.exceptions.ClientError) as caught:
                client.get_object(Bucket=bucket, Key="object")["Body"].read()
            code, status = ("InternalError", 500) if fault == "error500" else ("SlowDown", 503)
            assert caught.value.response["Error"]["Code"] == code
            assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        else:
            with pytest.raises((botocore.exceptions.HTTPClientError,
                                botocore.exceptions.IncompleteReadError)):
                client.get_object(Bucket=bucket, Key="object")["Body"].read()
        # The driver retries each call ATTEMPTS times, then reports a retryable error; a read
        # that got some bytes before its answer broke resumes there, with fresh attempts.
        for call, kind in ((lambda: driver.read("object", limit=len(data)), "get"),
                           (lambda: driver.stat("object"), "head"),
                           (lambda: driver.write("other", b"x"), "put")):
            if fault == "latency":
                break
            before = proxy.requests[kind]
            with pytest.raises(TransientError):
                call()
            resumed = kind == "get" and fault in ("reset_body", "truncate")
            assert proxy.requests[kind] - before >= ATTEMPTS if resumed else ATTEMPTS
    assert proxy.faults == {fault: proxy.requests.total()}
    written = "Contents" in raw_client(moto.url).list_objects_v2(Bucket=bucket, Prefix="other")
    # These forward the request, then break its answer: the PUT was applied all the same.
    assert written == (fault in ("reset_body", "truncate", "latency"))


def test_answers_cut_inside_their_headers_are_right_or_transient(moto, bucket, no_backoff):
    """A connection closed inside the headers gives an answer without some of them and no
    body. Where the driver lacks what it needs (an ETag, a length, a listing's body) it retries
    like a 5xx and then reports ``TransientError``: never a KeyError, never a listing that looks
    empty, never a short read taken for the object."""
    data = random.Random(3).randbytes(300_000)
    raw_client(moto.url).put_object(Bucket=bucket, Key="object", Body=data)
    outcomes = cut_header_outcomes(
        moto.url, lambda proxy: S3Driver.from_config(driver_params(proxy, bucket, root="")),
        data, range(1, 9))
    assert all(seen <= {True, "transient"} for seen in outcomes.values()), outcomes
    assert any("transient" in seen for seen in outcomes.values()), outcomes


def test_a_multipart_commit_whose_answer_was_cut_is_found_complete(moto, bucket, no_backoff):
    data = random.Random(4).randbytes(12 * MIB)

    def completion(request) -> bool:
        return request.method == "POST" and "uploadId" in request.query

    with FaultProxy(moto.url, seed=4, rate=1.0, faults=["cut_headers"], where=completion,
                    limit=1) as proxy:
        driver = S3Driver.from_config(driver_params(proxy, bucket, root=""))
        with driver.writer("big") as writer:
            writer.write(data)
            etag = writer.commit()
    assert proxy.faults == {"cut_headers": 1}
    assert S3Driver.from_config(driver_params(moto, bucket, root="")).stat("big").etag == etag
    assert raw_client(moto.url).get_object(Bucket=bucket, Key="big")["Body"].read() == data
    assert leftover_uploads(moto, bucket) == []


def test_faults_hit_only_the_chosen_kinds(moto, bucket):
    raw_client(moto.url).put_object(Bucket=bucket, Key="object", Body=b"data")
    with FaultProxy(moto.url, rate=1.0, faults=["error503"], kinds=["put"]) as proxy:
        client = raw_client(proxy.url)
        assert client.get_object(Bucket=bucket, Key="object")["Body"].read() == b"data"
        assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 1
        with pytest.raises(botocore.exceptions.ClientError, match="SlowDown"):
            client.put_object(Bucket=bucket, Key="object", Body=b"new")
    assert proxy.requests == {"get": 1, "list": 1, "put": 1} and proxy.faults == {"error503": 1}


def test_the_same_seed_draws_the_same_faults(moto, bucket):
    def draw(seed):
        with FaultProxy(moto.url, seed=seed, rate=0.5, latency=(0, 0),
                        faults=["error500", "error503", "latency"]) as proxy:
            client = raw_client(proxy.url)
            for i in range(40):
                try:
                    client.head_object(Bucket=bucket, Key=f"key{i % 10}")
                except botocore.exceptions.ClientError:
                    pass
        return [(event.target, event.fault) for event in proxy.events]

    first = draw(7)
    assert first == draw(7) and first != draw(8)
    assert 5 < sum(fault is not None for _, fault in first) < 35


def test_reads_resume_where_a_mid_body_reset_broke_them(moto, bucket, no_backoff):
    data = random.Random(2).randbytes(12 * MIB)
    raw_client(moto.url).put_object(Bucket=bucket, Key="blob", Body=data)
    with FaultProxy(moto.url, seed=2, rate=1.0, faults=["reset_body"], kinds=["get"],
                    limit=3) as proxy:
        driver = S3Driver.from_config(driver_params(proxy, bucket, root=""))
        read = driver.read("blob", limit=len(data))
    assert hashlib.sha256(read).digest() == hashlib.sha256(data).digest()
    gets = [(event.fault, event.range) for event in proxy.events]
    assert [fault for fault, _ in gets] == ["reset_body"] * 3 + [None]
    assert gets[0][1] is None and any(rng for _, rng in gets[1:])  # reopened at the break
    print(f"\nresumed read of 12 MiB: {gets}")


@pytest.mark.parametrize("how", ["stream", "server-side"])
def test_a_lost_create_multipart_answer_leaves_no_upload_behind(moto, bucket, no_backoff, how):
    with FaultProxy(moto.url, rate=1.0, faults=["reset_body"], limit=1,
                    where=lambda request: "uploads" in request.query) as proxy:
        params = {**driver_params(proxy, bucket, root=""), "multipartcopythresholdsize": 5 * MIB}
        if how == "stream":
            with S3Driver.from_config(params).writer("blob") as writer:
                writer.write(b"x" * 6 * MIB)
                writer.commit()
        else:
            raw_client(moto.url).put_object(Bucket=bucket, Key="blob", Body=b"x" * 6 * MIB)
            S3Driver.from_config({**params, "rootdirectory": "copy"}).copy_from(
                S3Driver.from_config(params), "blob")
    assert len(proxy.lost_uploads) == 1
    uploads = raw_client(moto.url).list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == []


# -- (b) convergence ------------------------------------------------------------------------


def big_layer(seed: int, size: int) -> sample_images.Blob:
    """An incompressible gzip'd layer of about ``size`` bytes (compressed fast)."""
    data = gzip.compress(random.Random(seed).randbytes(size), compresslevel=1, mtime=0)
    return sample_images.Blob(sample_images.OCI_LAYER, data)


def registry() -> dict[tuple[str, str], sample_images.Image]:
    """32 tags in 5 repositories: a shared base layer, three 6-12 MiB layers shared by six
    images across repositories, and two multi-arch indexes."""
    base = sample_images.layer({"etc/os-release": b"NAME=faults\n" * 50})
    bigs = [big_layer(6, 6 * MIB), big_layer(9, 9 * MIB), big_layer(12, 12 * MIB)]
    images = {}
    for r, name in enumerate(["base/os", "team/web", "team/api", "team/worker", "tools/cli"]):
        for t in range(6):
            layers = [base] + ([bigs[r % 3]] if (r + t) % 5 == 0 else [])
            layers.append(sample_images.layer({f"srv/{name}": f"{name} v{t}\n".encode()}))
            images[(name, f"v{t}")] = sample_images.image(layers)
    for name in ("team/web", "tools/cli"):
        arm = sample_images.image([base, sample_images.layer({f"srv/{name}": b"arm64\n"})],
                                  architecture="arm64")
        images[(name, "multi")] = sample_images.index([images[(name, "v1")], arm])
    return images


@pytest.fixture(scope="module")
def source(moto):
    """A source bucket holding ``registry()`` (and an upload in flight), filled once; its
    name, its tags and the SHA-256 of every key the replicator must copy."""
    images = registry()
    bucket = new_bucket(moto, "source")
    storage = direct(moto, bucket)
    fill(storage, {key: image for key, image in images.items() if not image.children})
    for (name, tag), image in images.items():
        if image.children:
            publish(storage, name, tag, image)
    storage.write(layout.repository_prefix("team/web") + "_uploads/abc/data", b"in flight")
    expected = [key for key in keys(raw_client(moto.url), bucket) if "/_uploads/" not in key]
    return bucket, sorted(images), dict(zip(expected, hashes(moto, bucket, expected)))


def config_document(tmp_path, source_endpoint, source_bucket, destination_endpoint,
                    destination_bucket, **s3_params) -> dict:
    regions = {name: {"storage": {"s3": {**driver_params(endpoint, bucket), **s3_params}}}
               for name, endpoint, bucket in (("src", source_endpoint, source_bucket),
                                              ("dst", destination_endpoint, destination_bucket))}
    return {"state": {"path": str(tmp_path / "state.db")}, "concurrency": 8, "regions": regions,
            "policies": [{"name": "faults", "source": "src", "destinations": ["dst"]}]}


def make_config(*args, **s3_params):
    return config_module.parse(config_document(*args, **s3_params))


def converge(config, server_side_copy: str = "verified") -> tuple[list, list[str]]:
    """Run passes until one reports no failure. Return each pass's failed tag count (or the
    error of a pass that could not run at all) and the reasons tags failed."""
    outcomes, reasons = [], []
    state = StateStore(config.state_path)
    try:
        for _ in range(MAX_PASSES):
            try:
                [report] = run_policy(config, config.policies[0], state,
                                      RunOptions(concurrency=8, server_side_copy=server_side_copy))
            except StorageError as error:  # a region could not be listed at all
                outcomes.append(type(error).__name__)
                reasons.append(str(error))
                continue
            outcomes.append(report.tags_failed)
            reasons += [f"{failure.repository}:{failure.tag}: {failure.error}"
                        for failure in report.failures]
            if report.tags_failed == 0:
                return outcomes, reasons
    finally:
        state.close()
    raise AssertionError(f"no clean pass in {MAX_PASSES}: {outcomes}: {reasons}")


def keys(client, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=ROOT)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def hashes(moto, bucket: str, names: list[str]) -> list[bytes]:
    """The SHA-256 of each object, read directly from moto."""
    client = raw_client(moto.url)

    def digest(key: str) -> bytes:
        return hashlib.sha256(client.get_object(Bucket=bucket, Key=key)["Body"].read()).digest()

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(digest, names))


def assert_identical(moto, source, destination_bucket: str) -> None:
    """The destination holds exactly the source's registry (``_uploads`` aside), byte for byte."""
    source_bucket, tags, expected = source
    result = verify_storage(direct(moto, source_bucket), direct(moto, destination_bucket), tags, deep=True)
    assert result.drift == [] and result.tags_checked == len(tags) and result.bytes_hashed > 0
    present = keys(raw_client(moto.url), destination_bucket)
    assert present == list(expected)
    differing = [key for key, digest in zip(present, hashes(moto, destination_bucket, present))
                 if digest != expected[key]]
    assert differing == []


def leftover_uploads(moto, bucket: str) -> list[str]:
    uploads = raw_client(moto.url).list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [upload["UploadId"] for upload in uploads]


ROUTES = {
    "destination": "the destination behind the proxy; blobs stream through the replicator",
    "both": "the source behind a proxy of its own too (another endpoint, so blobs still "
            "stream): reads break mid-body and resume",
    "server-side": "both regions behind one proxy (one endpoint, one key): blobs are copied "
                   "server-side, trusted, over 5 MiB in UploadPartCopy parts",
    "verified": "as server-side, verified: one CopyObject with its SHA-256 per blob",
}
CASES = [(0.1, "destination"), (0.3, "destination"), (0.1, "both"), (0.3, "both"),
         (0.3, "server-side"), (0.3, "verified")]


@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed{seed}")
@pytest.mark.parametrize("rate, route", CASES, ids=[f"{route}-{rate:.0%}" for rate, route in CASES])
def test_passes_under_faults_converge_to_an_identical_destination(
        moto, source, tmp_path, no_backoff, rate, route, seed):
    seed += 100 * list(ROUTES).index(route)  # other faults in other places on each route
    destination_bucket = new_bucket(moto, "dst")
    with FaultProxy(moto.url, seed=seed, rate=rate) as proxy, \
            FaultProxy(moto.url, seed=seed + 1000, rate=rate) as reads:
        source_endpoint = {"destination": moto, "both": reads}.get(route, proxy)
        copy_params = {"multipartcopythresholdsize": 5 * MIB, "multipartcopychunksize": 5 * MIB}
        server_side = route in ("server-side", "verified")
        config = make_config(tmp_path, source_endpoint, source[0], proxy, destination_bucket,
                             **(copy_params if server_side else {}))
        outcomes, reasons = converge(config, "trusted" if route == "server-side" else "verified")
    assert_identical(moto, source, destination_bucket)
    leftovers = leftover_uploads(moto, destination_bucket)
    assert leftovers == []
    assert (proxy.requests["copy"] > 0) == server_side
    multipart = sum(event.method == "POST" and event.target.endswith("?uploads")
                    for event in proxy.events)
    assert (multipart >= 3) == (route != "verified")  # the three 6-12 MiB blobs, at least once each
    faults = proxy.faults + reads.faults
    print(f"\nfaults rate={rate} route={route} seed={seed}: {len(outcomes)} passes (failed tags "
          f"per pass {outcomes}); requests {dict(proxy.requests + reads.requests)}; faults "
          f"{dict(faults)} = {faults.total()}; {len(source[2])} keys identical, 0 differing; "
          f"multipart uploads started {multipart}, left behind {len(leftovers)} (creation "
          f"answers lost {len(proxy.lost_uploads)}); failures: {reasons}")


def test_syncs_whose_answers_are_cut_inside_their_headers_report_and_converge(moto, source, tmp_path):
    """30% of the answers at both ends cut inside their headers: every ``sync`` process prints
    its JSON report and exits 0 or 1 (never a traceback), and a later one converges."""
    destination_bucket = new_bucket(moto, "cut")
    runs = []
    with FaultProxy(moto.url, seed=500, rate=0.3, faults=["cut_headers"]) as proxy, \
            FaultProxy(moto.url, seed=501, rate=0.3, faults=["cut_headers"]) as reads:
        path = tmp_path / "replicator.json"
        path.write_text(json.dumps(config_document(tmp_path, reads, source[0], proxy,
                                                   destination_bucket)))
        for _ in range(MAX_PASSES):
            result = subprocess.run([sys.executable, "-m", "replicator", "sync", "--config",
                                     str(path), "--json"], capture_output=True, text=True,
                                    timeout=600, check=False)
            assert "Traceback" not in result.stderr, result.stderr[-3000:]
            assert result.returncode in (0, 1), result.stderr[-3000:]
            document = json.loads(result.stdout)
            runs.append((result.returncode, [entry["tags_failed"] for entry in document["passes"]],
                         [entry["error"] for entry in document["passes"] if entry["error"]]))
            if result.returncode == 0:
                break
        faults = proxy.faults + reads.faults
    assert runs[-1][0] == 0, runs
    assert faults["cut_headers"] > 0
    assert_identical(moto, source, destination_bucket)
    assert leftover_uploads(moto, destination_bucket) == []
    print(f"\ncut headers at 30% both ends: {len(runs)} sync runs (exit code, failed tags, pass "
          f"errors) {runs}; faults {faults.total()}")


# -- (c) the reader's view ----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed{seed}")
def test_a_reader_never_sees_a_dangling_tag_while_a_faulty_sync_runs(
        moto, source, tmp_path, no_backoff, seed):
    source_bucket, tags, _ = source
    destination_bucket = new_bucket(moto, "reader")
    reader = direct(moto, destination_bucket)
    outcome: dict = {}
    visible_counts = []

    def check():
        visible = _visible_tags(reader)
        drift = verify_storage(reader, reader, visible).drift
        assert not [d for d in drift if d.kind in DANGLING_KINDS], drift
        visible_counts.append(len(visible))

    seed += 300  # not the faults of the convergence cases
    with FaultProxy(moto.url, seed=seed, rate=0.3) as proxy:
        config = make_config(tmp_path, moto, source_bucket, proxy, destination_bucket)

        def sync():
            try:
                outcome["passes"], _ = converge(config)
            except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
                outcome["error"] = error

        thread = threading.Thread(target=sync, name="faulty-sync")
        thread.start()
        try:
            while thread.is_alive() and len(visible_counts) < MAX_CHECKS:
                check()
        finally:
            thread.join()
    if "error" in outcome:
        raise outcome["error"]
    check()
    assert len(visible_counts) > 1 and visible_counts[-1] == len(tags)
    print(f"\nreader under faults seed={seed}: {len(visible_counts)} checks, none dangling; "
          f"visible tags per check {visible_counts}; failed tags per pass {outcome['passes']}; "
          f"faults {dict(proxy.faults)} = {proxy.faults.total()}")
