"""End to end on Swift, with Debian's Distribution 2.8.2 and skopeo.

Swift as the source: registry ``primary`` stores in a Swift container with 1 MiB segments;
images are pushed to it with skopeo, one with a layer of several segments. ``replicator sync``
copies them to moto S3 (``replica``) and a directory (``local``), where read-only registries
serve skopeo the same digests. A second pass copies nothing.

Swift as a destination: a directory in the registry layout (``primary``) is replicated into a
Swift container (``replica``, written by the swift driver in 1 MiB segments) and a directory
(``local``); a registry on that container serves skopeo the same digests, including the
multi-segment layer, and ``garbage-collect --dry-run`` marks every blob. A second pass copies
nothing.

The request counts of each region for the first and the no-change pass are printed (``-s``).
"""

from __future__ import annotations

import json
import random
import uuid

import pytest

from drivers.filesystem import FilesystemDriver
from drivers.swift import SwiftDriver
from replicator import sample_images as si
from replicator.demo import publish
from tests import registry as reg
from tests.test_engine import verify_storage
from tests.test_e2e_sync import (BASE, DESTINATIONS, INITIAL, World, assert_never_wrote_to_source,
                                 copied, expected_pull)

MIB = 1024 * 1024
SEGMENT = MIB
BIG_LAYER = si.layer({"opt/big.bin": random.Random(7).randbytes(3 * MIB + MIB // 2)})
BIG = si.image([BASE, BIG_LAYER])
IMAGES = {**INITIAL, ("apps/big", "1"): BIG}


def swift_block(swift, prefix: str) -> dict:
    container = f"e2e-{uuid.uuid4().hex[:12]}"
    swift.connection().put_container(container)
    return reg.swift_storage(swift.driver_params(container, prefix=prefix), SEGMENT)


def segments_of(swift, storage: dict, digest: str) -> list[str]:
    """The segments of a blob's DLO, as its X-Object-Manifest names them."""
    params = storage["swift"]
    connection = swift.connection()
    name = (params["prefix"] + "/files/").lstrip("/") + reg.blob_key(digest)
    container, _, prefix = connection.head_object(params["container"], name)["x-object-manifest"] \
        .partition("/")
    assert container == params["container"]
    _, entries = connection.get_container(container, prefix=prefix, full_listing=True)
    return [entry["name"] for entry in entries]


def two_passes(world: World, title: str) -> tuple[World, object, object]:
    """A first and a no-change pass of every image; their request counts printed."""
    passes = world.sync(*IMAGES), world.sync()
    for name, sync in zip(("first pass", "no-change pass"), passes):
        print(f"\n{title}, {name}: {json.dumps(sync.report['requests'], sort_keys=True)}")
    return world, *passes


def assert_served_everywhere(sync, images) -> None:
    assert sync.returncode == 0, sync.stderr
    for key, image in images.items():
        for region in ("primary", *DESTINATIONS):
            assert sync.served[region][key] == expected_pull(image), (region, key)


def assert_copies_nothing(sync, images) -> None:
    assert sync.returncode == 0, sync.stderr
    for destination in DESTINATIONS:
        assert sync.counters(destination, "tags_replicated", "tags_unchanged", "blobs_copied",
                             "bytes_copied") == {"tags_replicated": 0, "tags_unchanged": len(images),
                                                 "blobs_copied": 0, "bytes_copied": 0}
        assert sync.writes(destination) == {"put": 0, "copy": 0, "delete": 0}
    reads = {region: {kind: counts[kind] for kind in ("get", "head")}
             for region, counts in sync.report["requests"].items()}
    assert reads == {region: {"get": 0, "head": 0} for region in reads}
    assert_never_wrote_to_source(sync)


# --- Swift as the source ------------------------------------------------------------------

@pytest.fixture(scope="module")
def from_swift(swift, moto, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e-swift-source")
    world = World({"primary": swift_block(swift, "/registry"),
                   "replica": reg.s3_storage(moto.url, reg.create_bucket(moto.url)),
                   "local": reg.filesystem_storage(tmp / "local")}, tmp)
    try:
        for (repository, tag), image in IMAGES.items():
            world.push(repository, tag, image)
        yield two_passes(world, "swift source")
    finally:
        world.stop()


def test_the_registry_wrote_the_big_layer_in_several_segments(swift, from_swift):
    world, _, _ = from_swift
    assert len(segments_of(swift, world.storage["primary"], BIG_LAYER.digest)) == 4


def test_a_swift_source_is_served_identically_by_s3_and_a_directory(from_swift):
    _, first, _ = from_swift
    assert_served_everywhere(first, IMAGES)
    counters = copied(IMAGES.values())
    for destination in DESTINATIONS:
        assert first.counters(destination, *counters) == counters
    assert_never_wrote_to_source(first)


def test_a_second_pass_from_swift_copies_nothing_and_costs_listings(from_swift):
    _, _, unchanged = from_swift
    assert_copies_nothing(unchanged, IMAGES)
    assert unchanged.report["requests"]["primary"]["list"] > 0


# --- Swift as a destination ---------------------------------------------------------------

@pytest.fixture(scope="module")
def into_swift(swift, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e-swift-destination")
    world = World({"primary": reg.filesystem_storage(tmp / "source"),
                   "replica": swift_block(swift, "/mirror"),
                   "local": reg.filesystem_storage(tmp / "local")}, tmp)
    source = FilesystemDriver(str(tmp / "source"))
    try:
        for (repository, tag), image in IMAGES.items():
            publish(source, repository, tag, image)
            world.tags[(repository, tag)] = image
        yield two_passes(world, "swift destination")
    finally:
        world.stop()


def test_a_registry_on_the_swift_destination_serves_identical_digests(swift, into_swift):
    world, first, _ = into_swift
    assert_served_everywhere(first, IMAGES)
    segments = segments_of(swift, world.storage["replica"], BIG_LAYER.digest)
    assert [name.rsplit("/", 1)[1] for name in segments] == [f"{n:016d}" for n in range(1, 5)]
    assert all(name.startswith("mirror/segments/2f6/46f636b65722f") for name in segments)


def test_garbage_collect_marks_every_replicated_blob(into_swift):
    world, _, _ = into_swift
    blobs = len(reg.unique_blobs(IMAGES.values()))
    output = reg.garbage_collect(world.storage["replica"], world.tmp / "gc", dry_run=True)
    assert f"{blobs} blobs marked, 0 blobs and 0 manifests eligible for deletion" in output


def test_verify_stats_only_the_blobs_listed_without_a_size(into_swift):
    world, _, _ = into_swift
    source = FilesystemDriver(world.storage["primary"]["filesystem"]["rootdirectory"])
    destination = SwiftDriver.from_config(world.storage["replica"]["swift"])
    result = verify_storage(source, destination, sorted(IMAGES))
    assert result.drift == [] and result.blobs_checked > 0
    assert destination.requests.snapshot()["head"] == 1  # the big layer, a DLO


def test_a_second_pass_into_swift_copies_nothing(into_swift):
    _, _, unchanged = into_swift
    assert_copies_nothing(unchanged, IMAGES)


def test_the_registry_garbage_collects_a_replicated_dlo_with_its_segments(swift, tmp_path):
    """Deleted through a registry on the destination, a blob the replicator wrote as a DLO goes
    with all its segments when the registry collects garbage."""
    world = World({"primary": reg.filesystem_storage(tmp_path / "source"),
                   "replica": swift_block(swift, "/gc"),
                   "local": reg.filesystem_storage(tmp_path / "local")}, tmp_path)
    publish(FilesystemDriver(str(tmp_path / "source")), "apps/big", "1", BIG)
    storage = world.storage["replica"]
    assert world.sync().returncode == 0
    assert len(segments_of(swift, storage, BIG_LAYER.digest)) == 4
    with reg.start_registry(storage, tmp_path / "logs") as registry:
        reg.delete_manifest(registry.url, "apps/big", BIG.digest)
    output = reg.garbage_collect(storage, tmp_path / "gc", dry_run=False)
    assert "0 blobs marked" in output
    _, left = swift.connection().get_container(storage["swift"]["container"], full_listing=True)
    names = [entry["name"] for entry in left]
    assert not [name for name in names if "/segments/" in name or "/blobs/" in name], names
