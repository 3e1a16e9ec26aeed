"""Crashes and faults with a Swift destination (DESIGN invariants 1, 2 and 6), after
tests/test_crash.py and tests/test_faults.py.

(a) ``kill -9``: ``replicator sync`` into Swift (1 MiB segments) is killed right after the
N-th segment of a large blob was stored. No partial object is visible (every listed blob
hashes to its digest; the blob being written is not there) and the killed upload's segments
are left, referenced by no manifest. The next run sees the pass died, sweeps them
(``abandoned_uploads_after: 0``) and converges: a deep verify finds no drift and every segment
left is referenced by a manifest.

(b) faults: passes through ``tests.faults.FaultProxy`` in front of the Swift proxy (its login
included) at 10% and 30% converge to a destination identical to the source; segments of
writers whose abort could not delete them are then swept, leaving none unreferenced.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid

import pytest

from drivers.filesystem import FilesystemDriver
from drivers.swift import SwiftDriver
from replicator import config as config_module
from replicator import layout, sample_images
from replicator.demo import publish
from tests.faults import FaultProxy
from tests.services import PROJECT
from tests.test_engine import verify_storage
from tests.test_faults import big_layer, converge

MIB = 1024 * 1024
BASE = sample_images.layer({"etc/os-release": b"NAME=swift-failures\n"})
IMAGES = {("team/big", "1"): sample_images.image([BASE, big_layer(1, 3 * MIB + MIB // 2)]),
          ("team/big", "2"): sample_images.image([BASE, big_layer(2, 2 * MIB + 1)]),
          ("team/small", "1"): sample_images.image([BASE, sample_images.layer({"a": b"a"})])}
TAGS = sorted(IMAGES)

LAUNCHER = r'''
"""``replicator`` killed with SIGKILL right after the N-th DLO segment it stores."""
import os
import signal
import sys

from drivers import swift
from replicator import cli

limit, sent = int(os.environ["KILL_AFTER_SEGMENTS"]), [0]
send_part = swift._SegmentWriter._send_part


def killing_send_part(self, part):
    send_part(self, part)
    sent[0] += 1
    if sent[0] == limit:
        os.kill(os.getpid(), signal.SIGKILL)


swift._SegmentWriter._send_part = killing_send_part
sys.exit(cli.main(sys.argv[1:]))
'''


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> FilesystemDriver:
    storage = FilesystemDriver(str(tmp_path_factory.mktemp("swift-failures-source")))
    for (name, tag), image in IMAGES.items():
        publish(storage, name, tag, image)
    return storage


def destination_params(swift, auth_url: str | None = None) -> dict:
    container = f"failures-{uuid.uuid4().hex[:12]}"
    swift.connection().put_container(container)
    params = swift.driver_params(container, prefix="/registry", chunksize=MIB)
    return {**params, "authurl": auth_url} if auth_url else params


def config_document(source: FilesystemDriver, params: dict, state: str) -> dict:
    return {"state": {"path": state}, "concurrency": 1, "abandoned_uploads_after": 0,
            "regions": {"src": {"storage": {"filesystem": {"rootdirectory": source.root}}},
                        "dst": {"storage": {"swift": params}}},
            "policies": [{"name": "swift", "source": "src", "destinations": ["dst"]}]}


def unreferenced_segments(driver: SwiftDriver) -> list[str]:
    """Segments under the driver's ``segments/`` that no manifest under ``files/`` names."""
    connection = driver._connection()
    _, files = connection.get_container(driver.container, prefix=driver.files_root, full_listing=True)
    referenced = {connection.head_object(driver.container, entry["name"]).get("x-object-manifest")
                  for entry in files if entry["bytes"] == 0}
    _, segments = connection.get_container(driver.container, prefix=driver.segments_root,
                                           full_listing=True)
    return [entry["name"] for entry in segments
            if f"{driver.container}/{entry['name'].rpartition('/')[0]}" not in referenced]


def assert_blobs_whole(driver: SwiftDriver) -> list[str]:
    """Every listed blob hashes to its digest; the digests listed."""
    digests = []
    for page in driver.list(layout.BLOBS_PREFIX):
        for info in page:
            digest = layout.parse_key(info.key).digest
            hasher = hashlib.sha256()
            for chunk in driver.open(info.key):
                hasher.update(chunk)
            assert "sha256:" + hasher.hexdigest() == digest, info.key
            digests.append(digest)
    return digests


def assert_converged(source: FilesystemDriver, driver: SwiftDriver) -> None:
    result = verify_storage(source, driver, TAGS, deep=True)
    assert result.drift == [] and result.tags_checked == len(TAGS) and result.bytes_hashed > 0
    assert unreferenced_segments(driver) == []


def sync(config_path, *prefix: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, "sync", "--config", str(config_path), "--json"],
                          capture_output=True, text=True, cwd=PROJECT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(PROJECT), **env})


@pytest.mark.parametrize("segments", [1, 3])
def test_a_sync_killed_mid_segments_hides_the_blob_and_its_segments_are_swept(
        swift, source, tmp_path, segments):
    params = destination_params(swift)
    config_path = tmp_path / "replicator.json"
    config_path.write_text(json.dumps(config_document(source, params, str(tmp_path / "state.db"))))
    driver = SwiftDriver.from_config(params)
    killed = sync(config_path, sys.executable, "-c", LAUNCHER, KILL_AFTER_SEGMENTS=str(segments))
    assert killed.returncode == -9, killed.stderr
    big = IMAGES[("team/big", "1")].blobs[-1].digest
    assert big not in assert_blobs_whole(driver)
    orphans = unreferenced_segments(driver)
    assert orphans and all(name.rsplit("/", 1)[1] <= f"{segments:016d}" for name in orphans)
    rerun = sync(config_path, sys.executable, "-m", "replicator")
    assert rerun.returncode == 0, rerun.stderr
    assert_converged(source, driver)
    print(f"\nkilled after segment {segments}: {len(orphans)} unreferenced segments, swept by "
          f"the next run; requests of the next run {json.loads(rerun.stdout)['requests']['dst']}")


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_passes_under_faults_converge_and_leave_no_segment_unreferenced(
        swift, source, tmp_path, no_backoff, rate):
    with FaultProxy(f"http://127.0.0.1:{swift.proxy_port}", seed=int(rate * 100), rate=rate) as proxy:
        params = destination_params(swift, proxy.url + "/auth/v1.0")
        config = config_module.parse(config_document(source, params, str(tmp_path / "state.db")))
        outcomes, reasons = converge(config)
    driver = SwiftDriver.from_config({**params, "authurl": swift.auth_url})
    left = unreferenced_segments(driver)
    driver.sweep_abandoned_uploads(layout.BLOBS_PREFIX, older_than=0)
    assert_converged(source, driver)
    print(f"\nswift faults rate={rate}: {len(outcomes)} passes (failed tags per pass {outcomes}); "
          f"requests {dict(proxy.requests)}; faults {dict(proxy.faults)} = {proxy.faults.total()}; "
          f"{len(left)} segments unreferenced before the sweep; failures: {reasons}")
