"""A seconds-long smoke run of the benchmark's registry and scenarios (no rclone, no timings).

``bench/registry_gen.py`` builds a small registry with shared layers, aliases and a multi-arch
index in a filesystem region; the replicator copies it into an empty region, passes again
with nothing changed, and after one tag moves. Only counts are checked.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from drivers.filesystem import FilesystemDriver
from replicator import config as config_module
from replicator import layout
from replicator.engine import RunOptions, run_policy
from state.store import StateStore

BENCH = Path(__file__).resolve().parent.parent / "bench"
NON_LIST = ("get", "head", "put", "copy", "delete")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


registry_gen = _load("registry_gen")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-smoke")
    config = config_module.parse({
        "state": {"path": str(root / "state.db")},
        "regions": {name: {"storage": {"filesystem": {"rootdirectory": str(root / name)}}}
                    for name in ("src", "dst")},
        "policies": [{"name": "smoke", "source": "src", "destinations": ["dst"]}],
    })
    content = registry_gen.Content(7)
    registry = registry_gen.generate(config.regions["src"].storage, size=2 * 1024 * 1024,
                                     tags=30, repositories=5, seed=7, content=content)
    state = StateStore(config.state_path)
    yield config, state, registry, content
    state.close()


def counted_pass(config, state):
    """One pass; its report, the requests per region, and the bytes read per source key."""
    source = config.regions["src"].storage
    reads: dict[str, int] = {}
    plain_open = FilesystemDriver.open

    def counting_open(key, offset=0):
        for chunk in plain_open(source, key, offset):
            reads[key] = reads.get(key, 0) + len(chunk)
            yield chunk

    source.open = counting_open
    before = {name: region.storage.requests.snapshot() for name, region in config.regions.items()}
    try:
        [report] = run_policy(config, config.policies[0], state, RunOptions.from_config(config))
    finally:
        del source.open
    after = {name: region.storage.requests.snapshot() for name, region in config.regions.items()}
    requests = {name: {kind: after[name][kind] - before[name][kind] for kind in after[name]}
                for name in after}
    return report, requests, reads


def test_the_generated_registry_is_realistic(world):
    _, _, registry, _ = world
    summary = registry.summary()
    assert (summary["repositories"], summary["tags"]) == (5, 30)
    assert summary["indexes"] >= 1
    assert len(set(registry.tags.values())) < len(registry.tags)  # aliases such as `latest`
    shared = [digest for digest in registry.layer_names
              if sum(digest in registry.tag_blobs(*key) for key in registry.tags) > 3]
    assert shared  # base layers shared by many tags
    assert 1.5 * 2**20 < registry.total_bytes < 2.5 * 2**20


def test_first_pass_copies_each_unique_blob_once(world):
    config, state, registry, _ = world
    report, _, reads = counted_pass(config, state)
    referenced: dict[str, int] = {}
    for name, tag in registry.tags:
        referenced.update(registry.tag_blobs(name, tag))
    assert (report.tags_replicated, report.tags_failed) == (30, 0)
    assert report.blobs_copied + report.manifests_copied == len(referenced)
    assert report.bytes_copied == sum(referenced.values())  # dedup ratio 1.0
    manifests = {layout.blob_key(digest) for digest in registry.manifests}
    blob_reads = {key: n for key, n in reads.items()
                  if isinstance(layout.parse_key(key), layout.BlobData) and key not in manifests}
    assert blob_reads == {layout.blob_key(digest): size for digest, size in referenced.items()
                          if layout.blob_key(digest) not in manifests}


def test_unchanged_pass_makes_listing_requests_only(world):
    config, state, registry, _ = world
    report, requests, _ = counted_pass(config, state)
    assert report.tags_unchanged == len(registry.tags) and report.bytes_copied == 0
    for region in ("src", "dst"):
        assert {kind: requests[region][kind] for kind in NON_LIST} == dict.fromkeys(NON_LIST, 0)
        assert requests[region]["list"] >= 1


def test_a_moved_tag_copies_exactly_its_new_blobs(world):
    config, state, registry, content = world
    name, tag = sorted(registry.tags)[3]
    move = registry_gen.move_tag(config.regions["src"].storage, registry, name, tag,
                                 new_layers=2, layer_size=4096, content=content)
    report, requests, _ = counted_pass(config, state)
    assert (report.tags_replicated, report.tags_unchanged) == (1, len(registry.tags) - 1)
    assert len(move.new_blobs) == 2 + 2  # two layers, a config, a manifest
    assert report.blobs_copied + report.manifests_copied == len(move.new_blobs)
    assert report.bytes_copied == move.new_bytes
    assert requests["dst"]["put"] == len(move.new_blobs) + len(move.new_links)


@pytest.mark.parametrize("mode, threads, batch", [("fsync", 1, 1), ("fsync", 4, 1),
                                                  ("syncfs", 1, 7), ("none", 1, 1)])
def test_the_floor_copies_copy_every_file_exactly(world, tmp_path, mode, threads, batch):
    floor_copy = _load("floor_copy")
    config = world[0]
    source = config.regions["src"].storage.root
    assert floor_copy.main([mode, source, str(tmp_path), str(threads), str(batch)]) == 0
    copied = floor_copy.files(str(tmp_path))
    assert copied == floor_copy.files(source) and len(copied) > 30
    assert all(Path(tmp_path, key).read_bytes() == Path(source, key).read_bytes() for key in copied)
