"""A policy's destinations at once, on real storage: each blob read from the source once.

The source is a moto bucket behind a counting proxy (``FaultProxy`` at rate 0, which counts
requests and the body bytes it passes), the destinations are three more buckets of the same
moto server, every blob streamed (``server_side_copy: false``). Figures are counts of bytes and
requests, never times: a first pass into three empty destinations reads the unique bytes
once; a destination whose storage fails every request fails its own pass while the others
complete; a destination held to a low bandwidth is still copying when the others are done.
The tee itself (:mod:`replicator.tee`) is also driven chunk by chunk over a filesystem source,
to show a reader falling behind its window, or asking late, reading from the source itself.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from pathlib import Path

import pytest
import yaml

from drivers import open_storage
from drivers.filesystem import FilesystemDriver
from replicator import config as config_module
from replicator import sample_images as si
from replicator.demo import publish
from replicator.endpoints import StorageEndpoint
from replicator.engine import RunOptions, run_policy
from replicator.manifests import Descriptor
from replicator.report import PassReport
from replicator.tee import SourceTee
from replicator.verify import verify
from state.store import StateStore
from tests import registry as reg
from tests.faults import FaultProxy

MiB = 1 << 20
BLOBS_PATH = "/docker/registry/v2/blobs/"


def raw_layer(size: int, seed: int) -> si.Blob:
    """A layer of about ``size`` random bytes (gzip without compression: cheap to build)."""
    data = os.urandom(size - 8) + seed.to_bytes(8, "big")
    return si.Blob(si.OCI_LAYER, gzip.compress(data, compresslevel=0, mtime=0))


def images() -> dict[tuple[str, str], si.Image]:
    """Eight tags in two repositories: a shared base layer, layers of 0.5 to 2 MiB (each within
    the tee's window), one layer shared by two tags of different repositories."""
    base = raw_layer(3 * MiB, 0)
    shared = raw_layer(MiB, 1)
    tags = {}
    for n in range(8):
        layers = [base, raw_layer((n % 4 + 1) * MiB // 2, 10 + n)]
        if n in (2, 6):
            layers.append(shared)
        tags[("apps/web" if n % 2 else "apps/api", f"v{n}")] = si.image(layers)
    return tags


class Source:
    """A source bucket holding :func:`images`, published once for the module."""

    def __init__(self, moto_url: str):
        self.moto_url = moto_url
        self.images = images()
        self.bucket = reg.create_bucket(moto_url)
        self.storage = open_storage(reg.s3_storage(moto_url, self.bucket))
        for (name, tag), image in self.images.items():
            publish(self.storage, name, tag, image)


class World:
    """The source behind a fresh counting proxy, and fresh destination buckets on its moto."""

    def __init__(self, source: Source, tmp: Path, destinations: list,
                 proxies: dict[str, FaultProxy] | None = None):
        moto_url = self.moto_url = source.moto_url
        self.images = source.images
        self.source = source.storage
        self.source_proxy = FaultProxy(moto_url).start()
        self.names = [entry if isinstance(entry, str) else entry["region"] for entry in destinations]
        self.buckets = {name: reg.create_bucket(moto_url) for name in self.names}
        proxies = proxies or {}
        regions = {"src": {"storage": reg.s3_storage(self.source_proxy.url, source.bucket)}}
        for name in self.names:
            url = proxies[name].url if name in proxies else moto_url
            regions[name] = {"storage": reg.s3_storage(url, self.buckets[name])}
        path = tmp / "replicator.yml"
        path.write_text(yaml.safe_dump({
            "state": {"path": str(tmp / "state.db")}, "server_side_copy": False,
            "regions": regions,
            "policies": [{"name": "fan", "source": "src", "destinations": destinations}]}))
        self.config = config_module.load(path)

    def sync(self, **options) -> list[PassReport]:
        state = StateStore(self.config.state_path)
        try:
            return run_policy(self.config, self.config.policies[0], state,
                              RunOptions.from_config(self.config, **options))
        finally:
            state.close()

    def blob_reads(self) -> tuple[int, int]:
        """Body bytes and GETs of blob data (layers, configs and manifests) the source served."""
        read = sum(n for path, n in self.source_proxy.body_bytes.items() if BLOBS_PATH in path)
        gets = sum(1 for event in self.source_proxy.events
                   if event.kind == "get" and BLOBS_PATH in event.target)
        return read, gets

    def unique(self) -> dict[str, si.Blob]:
        return reg.unique_blobs(self.images.values())

    def assert_complete(self, name: str, report: PassReport) -> None:
        layers = {d: b for d, b in self.unique().items() if not reg.is_manifest(b)}
        assert (report.error, report.tags_failed, report.tags_replicated) == (None, 0, len(self.images))
        assert report.blobs_copied == len(layers)
        destination = open_storage(reg.s3_storage(self.moto_url, self.buckets[name]))
        result = verify(StorageEndpoint("src", self.source), StorageEndpoint(name, destination),
                        sorted(self.images), deep=True)
        assert result.drift == [] and result.bytes_hashed >= sum(len(b.data) for b in layers.values())

    def stop(self) -> None:
        self.source_proxy.stop()


@pytest.fixture(scope="module")
def source(moto) -> Source:
    return Source(moto.url)


@pytest.fixture
def world_factory(source, tmp_path):
    made: list[World] = []

    def make(destinations: list, **kwargs) -> World:
        made.append(World(source, tmp_path, destinations, **kwargs))
        return made[-1]

    yield make
    for world in made:
        world.stop()


def test_a_first_pass_into_three_empty_destinations_reads_each_blob_once(world_factory):
    world = world_factory(["eu", "ap", "sa"])
    reports = world.sync()
    unique = world.unique()
    layers = {d: b for d, b in unique.items() if not reg.is_manifest(b)}
    assert [report.destination for report in reports] == ["eu", "ap", "sa"]
    for name, report in zip(world.names, reports):
        world.assert_complete(name, report)
    read, gets = world.blob_reads()
    assert read == sum(len(blob.data) for blob in unique.values())     # 1.0x, not 3.0x
    assert gets == len(unique)
    assert sum(report.source_blob_bytes for report in reports) == sum(len(b.data) for b in layers.values())
    assert sum(report.blobs_shared for report in reports) == 2 * len(layers)
    assert sum(report.blobs_reread for report in reports) == 0
    assert all(report.bytes_copied == reports[0].bytes_copied for report in reports)


def test_a_destination_failing_every_request_fails_alone(world_factory, moto):
    broken = FaultProxy(moto.url, rate=1.0, faults=("error500",)).start()
    try:
        world = world_factory(["eu", "broken", "sa"], proxies={"broken": broken})
        eu, failed, sa = world.sync()
    finally:
        broken.stop()
    assert failed.destination == "broken" and failed.error is not None and not failed.ok
    assert failed.blobs_copied == failed.tags_replicated == 0
    assert broken.faults["error500"] == broken.requests.total() > 0
    world.assert_complete("eu", eu)
    world.assert_complete("sa", sa)
    read, _ = world.blob_reads()
    assert read == sum(len(blob.data) for blob in world.unique().values())


def test_a_slow_destination_is_still_copying_when_the_others_are_done(world_factory):
    world = world_factory(["eu", {"region": "slow", "bandwidth": "2MiB/s"}, "sa"])
    live: dict[str, PassReport] = {}
    slow_when_done: dict[str, int] = {}
    lock = threading.Lock()
    tags = len(world.images)
    moved: dict[str, int] = {}

    def on_change(change) -> None:
        with lock:
            moved[change.destination] = moved.get(change.destination, 0) + 1
            if change.destination != "slow" and moved[change.destination] == tags:
                slow = live.get("slow")
                slow_when_done[change.destination] = slow.blobs_copied if slow else 0

    eu, slow, sa = world.sync(on_pass=lambda report, _: live.setdefault(report.destination, report),
                              on_change=on_change)
    layers = [b for b in world.unique().values() if not reg.is_manifest(b)]
    assert set(slow_when_done) == {"eu", "sa"}
    assert all(copied < len(layers) for copied in slow_when_done.values()), slow_when_done
    for name, report in (("eu", eu), ("slow", slow), ("sa", sa)):
        world.assert_complete(name, report)
    assert slow.bandwidth_waits > 0 and eu.bandwidth_waits == sa.bandwidth_waits == 0
    read, _ = world.blob_reads()     # the slow one took what it lagged behind from the buffer
    assert read == sum(len(blob.data) for blob in world.unique().values())


# --- the tee, chunk by chunk ------------------------------------------------------------------

@pytest.fixture
def blob(tmp_path) -> tuple[StorageEndpoint, Descriptor, bytes]:
    """A blob of about 6 MiB at a filesystem source (its driver yields 1 MiB chunks)."""
    layer = raw_layer(6 * MiB - 100, 0)
    data = layer.data
    source = FilesystemDriver(str(tmp_path / "src"))
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    publish(source, "apps/one", "1", si.image([layer]))
    return StorageEndpoint("src", source), Descriptor(digest, len(data), si.OCI_LAYER), data


def test_a_reader_behind_the_window_is_detached_and_reads_the_rest_itself(blob):
    endpoint, descriptor, data = blob
    tee = SourceTee(endpoint, window=2 * MiB)
    fast_report, slow_report = PassReport("p", "src", "fast"), PassReport("p", "src", "slow")
    tee.join("fast", lambda b: True)
    tee.join("slow", lambda b: True)
    fast = tee.open("fast", "apps/one", descriptor, fast_report)
    slow = tee.open("slow", "apps/one", descriptor, slow_report)
    first = next(slow)
    rest_fast = b"".join(fast)                      # runs ahead; nobody waits for the slow one
    rest_slow = b"".join(slow)
    assert first + rest_slow == data and rest_fast == data
    assert (fast_report.blobs_reread, slow_report.blobs_reread) == (0, 1)
    assert slow_report.blobs_shared == 1
    assert fast_report.source_blob_bytes + slow_report.source_blob_bytes < 2 * len(data)
    assert slow_report.source_blob_bytes >= len(data) - 3 * MiB   # the rest, from its offset


def test_a_destination_asking_after_the_first_chunk_went_reads_alone(blob):
    endpoint, descriptor, data = blob
    tee = SourceTee(endpoint, window=2 * MiB)
    early, late = PassReport("p", "src", "early"), PassReport("p", "src", "late")
    tee.join("early", lambda b: True)
    tee.join("late", lambda b: False)               # known to hold it: not waited for
    reader = tee.open("early", "apps/one", descriptor, early)
    assert len(next(reader)) + len(next(reader)) == 2 * MiB
    assert b"".join(tee.open("late", "apps/one", descriptor, late)) == data
    assert b"".join(reader) == data[2 * MiB:]
    assert (early.blobs_reread, late.blobs_reread, late.blobs_shared) == (0, 1, 0)
    assert early.source_blob_bytes == late.source_blob_bytes == len(data)


def test_a_destination_that_may_ask_gets_the_kept_chunks_and_leaving_frees_them(blob):
    endpoint, descriptor, data = blob
    tee = SourceTee(endpoint)
    first, second = PassReport("p", "src", "first"), PassReport("p", "src", "second")
    tee.join("first", lambda b: True)
    tee.join("second", lambda b: True)
    assert b"".join(tee.open("first", "apps/one", descriptor, first)) == data
    assert tee._kept == len(data)
    assert b"".join(tee.open("second", "apps/one", descriptor, second)) == data
    assert (second.source_blob_bytes, second.blobs_shared, tee._kept) == (0, 1, 0)
    assert b"".join(tee.open("first", "apps/one", descriptor, first)) == data   # again
    assert first.blobs_reread == 1 and tee._kept == len(data)    # kept: "second" may ask
    tee.leave("second")
    assert tee._kept == 0 and not tee._reads
