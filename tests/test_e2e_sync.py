"""End to end: `replicator sync` between the storage of real registries, checked with skopeo.

One world per module: moto with buckets A (region ``primary``) and B (``replica``), a directory
(region ``local``), registry A serving bucket A (images are pushed there with skopeo), and, once
the first pass has run, read-only registries over bucket B and the directory. The registries keep
no blob descriptor cache (see tests/registry.py), so they serve what their storage holds.

The scenarios build on each other through a chain of module fixtures, each one a sync pass:
first -> unchanged -> moved -> corrupt -> repaired. Running one test runs the passes before it.
Each pass records what the destination registries served right after it.

CLI contract: ``python -m replicator sync --config FILE --json``; exit 0 when everything was
replicated, 1 when some tag failed, 2 for a bad configuration (message on stderr).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from replicator import sample_images as si
from tests import registry as reg
from tests.services import S3_CREDENTIALS

REPO_ROOT = Path(__file__).resolve().parents[1]
DESTINATIONS = ("replica", "local")
PASS_FIELDS = {"policy", "source", "destination", "tags_replicated", "tags_unchanged",
               "tags_deleted", "tags_failed", "manifests_copied", "blobs_copied",
               "blobs_present", "bytes_copied", "failures"}
REQUEST_KINDS = {"list", "get", "head", "put", "copy", "delete"}
WRITES = ("put", "copy", "delete")

# --- the images: small, deterministic, one base layer shared by everything but the signature ---
BASE = si.layer({"etc/os-release": b"ID=e2e\nVERSION_ID=1\n"})
WEB_1_0 = si.image([BASE, si.layer({"srv/web": b"web 1.0\n"})])
WEB_MULTI = si.index([
    si.image([BASE, si.layer({"srv/web": b"web for amd64\n"})], architecture="amd64"),
    si.image([BASE, si.layer({"srv/web": b"web for arm64\n"})], architecture="arm64"),
])
TOOLS = si.image([BASE, si.layer({"usr/bin/tool": b"#!/bin/sh\necho tool\n"})])
SIGNATURE = si.image([si.layer({"signature.json": b'{"critical": {"type": "e2e"}}'})],
                     labels={"org.example.kind": "signature"})
SIGNATURE_TAG = f"sha256-{WEB_1_0.digest.removeprefix('sha256:')}.sig"
INITIAL = {("apps/web", "1.0"): WEB_1_0, ("apps/web", "multi"): WEB_MULTI,
           ("base/tools", "latest"): TOOLS, ("apps/web", SIGNATURE_TAG): SIGNATURE}

WEB_1_1 = si.image([BASE, si.layer({"srv/web": b"web 1.1\n"})])  # moves apps/web:1.0
WEB_2_0 = si.image([BASE, si.layer({"srv/web": b"web 2.0\n"})])
BROKEN = si.image([BASE, si.layer({"srv/broken": b"this layer is corrupted at the source\n"})])
BROKEN_LAYER = BROKEN.blobs[-1]


# --- running the CLI ------------------------------------------------------------------------

def run_cli(config_path: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "REPLICATOR_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "replicator", "sync", "--config", str(config_path), "--json"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
    assert S3_CREDENTIALS["secretkey"] not in result.stdout + result.stderr, "secret leaked"
    return result


def config_document(storage: dict[str, dict], state_path: Path) -> dict:
    return {
        "state": {"path": str(state_path)},
        # primary and replica share moto and credentials, so blobs would be copied server-side,
        # unhashed; this module proves the streamed, hashed copy (corrupt blobs never land).
        # Server-side copy is proven in tests/test_e2e_cross_cloud.py.
        "server_side_copy": False,
        "regions": {name: {"storage": block} for name, block in storage.items()},
        "policies": [{
            "name": "prod",
            "source": "primary",
            "destinations": list(DESTINATIONS),
            "repositories": {"include": ["*"], "exclude": []},
            "tags": {"include": ["*"], "exclude": []},
            "delete": False,
        }],
    }


def write_config(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def expected_pull(image: si.Image) -> tuple[str, dict[str, int]]:
    """What pulling ``image`` gives: its digest and digest -> size of all its blobs."""
    return image.digest, {digest: len(blob.data) for digest, blob in reg.unique_blobs([image]).items()}


def copied(images) -> dict[str, int]:
    """The exact counters a pass copying the unique blobs of ``images`` reports."""
    blobs = reg.unique_blobs(images).values()
    return {"blobs_copied": sum(not reg.is_manifest(blob) for blob in blobs),
            "manifests_copied": sum(reg.is_manifest(blob) for blob in blobs),
            "bytes_copied": sum(len(blob.data) for blob in blobs)}


@dataclass
class Pass:
    """One `replicator sync` run and what the destination registries served right after it."""

    returncode: int
    report: dict
    stderr: str
    served: dict[str, dict[tuple[str, str], object]]

    def by_destination(self) -> dict[str, dict]:
        entries = self.report["passes"]
        assert sorted((entry["policy"], entry["source"], entry["destination"]) for entry in entries) \
            == [("prod", "primary", destination) for destination in sorted(DESTINATIONS)]
        for entry in entries:
            assert PASS_FIELDS <= set(entry), f"pass entry lacks {PASS_FIELDS - set(entry)}"
        return {entry["destination"]: entry for entry in entries}

    def counters(self, destination: str, *names: str) -> dict[str, int]:
        entry = self.by_destination()[destination]
        return {name: entry[name] for name in names}

    def writes(self, region: str) -> dict[str, int]:
        counts = self.report["requests"][region]
        assert REQUEST_KINDS <= set(counts), f"requests[{region}] lacks {REQUEST_KINDS - set(counts)}"
        return {kind: counts[kind] for kind in WRITES}


def moto_storage(moto_url: str, tmp: Path) -> dict[str, dict]:
    """Regions ``primary`` and ``replica`` on two moto buckets, ``local`` in a directory."""
    return {
        "primary": reg.s3_storage(moto_url, reg.create_bucket(moto_url)),
        "replica": reg.s3_storage(moto_url, reg.create_bucket(moto_url)),
        "local": reg.filesystem_storage(tmp / "local"),
    }


class World:
    """The regions' storage blocks, registries over them, the replicator config and what was
    pushed to ``primary``."""

    def __init__(self, storage: dict[str, dict], tmp: Path):
        self.tmp = tmp
        self.storage = storage
        self.config = write_config(tmp / "replicator.yml",
                                   config_document(self.storage, tmp / "state.db"))
        self.registries: dict[str, object] = {}
        self.tags: dict[tuple[str, str], si.Image] = {}

    def registry(self, region: str):
        """The registry serving ``region`` (destinations read-only), started on first use."""
        if region not in self.registries:
            self.registries[region] = reg.start_registry(
                self.storage[region], self.tmp / "logs", readonly=region != "primary")
        return self.registries[region]

    def store(self, region: str) -> reg.Store:
        return reg.Store(self.storage[region])

    def push(self, repository: str, tag: str, image: si.Image) -> None:
        reg.push(self.registry("primary").url, repository, tag, image, self.tmp / "work")
        self.tags[(repository, tag)] = image

    def serve(self, region: str, repository: str, tag: str):
        """(digest, blobs) that skopeo pulls for the tag from the region's registry, or the error."""
        url = self.registry(region).url
        try:
            digest = reg.manifest_digest(url, repository, tag)
            blobs = reg.pull(url, repository, tag, self.tmp / "pulls" / uuid.uuid4().hex)
        except reg.SkopeoError as error:
            return str(error)
        return digest, blobs

    def sync(self, *tags: tuple[str, str]) -> Pass:
        result = run_cli(self.config)
        try:
            report = json.loads(result.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"sync exited {result.returncode} without a JSON report on stdout:\n"
                        f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-4000:]}")
        served = {region: {key: self.serve(region, *key) for key in tags}
                  for region in ("primary", *DESTINATIONS)}
        return Pass(result.returncode, report, result.stderr, served)

    def stop(self) -> None:
        for service in self.registries.values():
            service.stop()


def assert_never_wrote_to_source(sync: Pass) -> None:
    assert sync.writes("primary") == {"put": 0, "copy": 0, "delete": 0}


# --- the chain of passes --------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(moto, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    world = World(moto_storage(moto.url, tmp), tmp)
    try:
        for (repository, tag), image in INITIAL.items():
            world.push(repository, tag, image)
        yield world
    finally:
        world.stop()


@pytest.fixture(scope="module")
def first(world) -> Pass:
    return world.sync(*INITIAL)


@pytest.fixture(scope="module")
def unchanged(first, world) -> Pass:
    return world.sync()


@pytest.fixture(scope="module")
def moved(unchanged, world) -> Pass:
    world.push("apps/web", "1.0", WEB_1_1)
    return world.sync(("apps/web", "1.0"), ("apps/web", "multi"))


@pytest.fixture(scope="module")
def corrupt(moved, world) -> Pass:
    world.push("apps/broken", "1", BROKEN)
    world.push("apps/web", "2.0", WEB_2_0)
    data = BROKEN_LAYER.data
    world.store("primary").put(reg.blob_key(BROKEN_LAYER.digest),
                               data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size, other bytes
    return world.sync(("apps/web", "2.0"), ("apps/web", "1.0"))


@pytest.fixture(scope="module")
def repaired(corrupt, world) -> Pass:
    world.store("primary").put(reg.blob_key(BROKEN_LAYER.digest), BROKEN_LAYER.data)
    return world.sync(("apps/broken", "1"))


# --- a. the first pass replicates every tag, digests and blobs identical ----------------------

def test_first_pass_replicates_every_tag(first, world):
    assert first.returncode == 0, first.stderr
    assert first.report["ok"] is True
    assert isinstance(first.report["duration_seconds"], float)
    for destination in DESTINATIONS:
        assert first.counters(destination, "tags_replicated", "tags_unchanged", "tags_failed",
                              "tags_deleted") == {"tags_replicated": len(INITIAL),
                                                  "tags_unchanged": 0, "tags_failed": 0,
                                                  "tags_deleted": 0}
        assert first.by_destination()[destination]["failures"] == []
    assert_never_wrote_to_source(first)


@pytest.mark.parametrize("destination", DESTINATIONS)
def test_first_pass_destinations_serve_what_the_source_serves(first, destination):
    for key, image in INITIAL.items():
        assert first.served["primary"][key] == expected_pull(image), key
        assert first.served[destination][key] == first.served["primary"][key], key


@pytest.mark.parametrize("destination", DESTINATIONS)
def test_first_pass_lays_out_storage_like_the_registry(first, world, destination):
    store = world.store(destination)
    for (repository, tag), image in INITIAL.items():
        assert reg.missing_keys(store, repository, tag, image) == [], (repository, tag)
    assert not [key for key in store.keys() if "/_uploads/" in key]


# --- b. a blob shared by tags and repositories crosses once per destination ------------------

@pytest.mark.parametrize("destination", DESTINATIONS)
def test_first_pass_copies_each_unique_blob_once(first, destination):
    assert len(reg.unique_blobs(INITIAL.values())) < sum(
        len(list(image.all_blobs())) for image in INITIAL.values())  # BASE really is shared
    counters = copied(INITIAL.values())
    assert first.counters(destination, *counters) == counters


# --- c. nothing changed: nothing written --------------------------------------------------

def test_unchanged_pass_copies_nothing(unchanged):
    assert unchanged.returncode == 0, unchanged.stderr
    assert unchanged.report["ok"] is True
    for destination in DESTINATIONS:
        assert unchanged.counters(
            destination, "tags_replicated", "tags_unchanged", "tags_failed", "blobs_copied",
            "manifests_copied", "bytes_copied") == {
                "tags_replicated": 0, "tags_unchanged": len(INITIAL), "tags_failed": 0,
                "blobs_copied": 0, "manifests_copied": 0, "bytes_copied": 0}
        assert unchanged.writes(destination) == {"put": 0, "copy": 0, "delete": 0}
    assert_never_wrote_to_source(unchanged)


def test_unchanged_pass_costs_only_listings(unchanged):
    """Design invariant 4: change is seen in listing metadata, not one request per object."""
    reads = {region: {kind: counts[kind] for kind in ("get", "head")}
             for region, counts in unchanged.report["requests"].items()}
    assert reads == {region: {"get": 0, "head": 0} for region in reads}
    assert unchanged.report["requests"]["primary"]["list"] > 0


# --- d. a tag moved at the source: the new image, and only its new blobs ---------------------

def test_moved_tag_is_served_everywhere(moved):
    assert moved.returncode == 0, moved.stderr
    for destination in DESTINATIONS:
        assert moved.served[destination][("apps/web", "1.0")] == expected_pull(WEB_1_1)
        assert moved.served[destination][("apps/web", "multi")] == expected_pull(WEB_MULTI)
        assert moved.counters(destination, "tags_replicated", "tags_unchanged", "tags_failed") \
            == {"tags_replicated": 1, "tags_unchanged": len(INITIAL) - 1, "tags_failed": 0}
    assert_never_wrote_to_source(moved)


@pytest.mark.parametrize("destination", DESTINATIONS)
def test_moved_tag_copies_only_new_blobs(moved, world, destination):
    before = reg.unique_blobs(INITIAL.values())
    new = [blob for digest, blob in reg.unique_blobs([WEB_1_1]).items() if digest not in before]
    assert len(new) == 3  # the new layer, its config, its manifest
    expected = {"blobs_copied": 2, "manifests_copied": 1,
                "bytes_copied": sum(len(blob.data) for blob in new)}
    assert moved.counters(destination, *expected) == expected
    store = world.store(destination)
    assert reg.missing_keys(store, "apps/web", "1.0", WEB_1_1) == []
    # the tag's history keeps the digest it had before
    assert store.exists(reg.tag_index_key("apps/web", "1.0", WEB_1_0.digest))


# --- e. a corrupt blob at the source fails its tag and only its tag --------------------------

def test_corrupt_blob_fails_its_tag(corrupt):
    assert corrupt.returncode == 1, corrupt.stderr
    assert corrupt.report["ok"] is False
    for destination in DESTINATIONS:
        entry = corrupt.by_destination()[destination]
        assert [(failure["repository"], failure["tag"]) for failure in entry["failures"]] \
            == [("apps/broken", "1")]
        assert BROKEN_LAYER.digest.removeprefix("sha256:") in entry["failures"][0]["error"]
        assert corrupt.counters(destination, "tags_failed", "tags_replicated", "tags_unchanged") \
            == {"tags_failed": 1, "tags_replicated": 1, "tags_unchanged": len(INITIAL)}
    assert_never_wrote_to_source(corrupt)


@pytest.mark.parametrize("destination", DESTINATIONS)
def test_corrupt_blob_is_never_visible(corrupt, world, destination):
    store = world.store(destination)
    assert not store.exists(reg.blob_key(BROKEN_LAYER.digest))
    assert not store.exists(reg.tag_current_key("apps/broken", "1"))
    # bottom-up: a manifest whose layer is missing is not reachable by digest either
    assert not store.exists(reg.revision_link_key("apps/broken", BROKEN.digest))


@pytest.mark.parametrize("destination", DESTINATIONS)
def test_other_tags_replicate_beside_a_corrupt_one(corrupt, destination):
    assert corrupt.served[destination][("apps/web", "2.0")] == expected_pull(WEB_2_0)
    assert corrupt.served[destination][("apps/web", "1.0")] == expected_pull(WEB_1_1)


# --- after the source is repaired, the next pass converges -----------------------------------

def test_repaired_source_converges(repaired, world):
    assert repaired.returncode == 0, repaired.stderr
    for destination in DESTINATIONS:
        assert repaired.served[destination][("apps/broken", "1")] == expected_pull(BROKEN)
        assert repaired.counters(destination, "tags_failed", "tags_replicated") \
            == {"tags_failed": 0, "tags_replicated": 1}
        assert world.store(destination).get(reg.blob_key(BROKEN_LAYER.digest)) == BROKEN_LAYER.data


# --- f. bad configurations exit 2 and say what is wrong --------------------------------------

def valid_config(tmp_path: Path) -> dict:
    storage = {name: reg.filesystem_storage(tmp_path / name) for name in ("primary", *DESTINATIONS)}
    for block in storage.values():
        Path(block["filesystem"]["rootdirectory"]).mkdir(parents=True)
    return config_document(storage, tmp_path / "state.db")


def unknown_destination(document: dict) -> None:
    document["policies"][0]["destinations"] = ["replica", "atlantis"]


def s3_without_bucket(document: dict) -> None:
    block = reg.s3_storage("http://127.0.0.1:9", "unused")
    del block["s3"]["bucket"]
    document["regions"]["replica"]["storage"] = block


def unknown_storage_kind(document: dict) -> None:
    document["regions"]["local"]["storage"] = {"gopherfs": {"rootdirectory": "/nowhere"}}


def test_valid_config_over_empty_regions_exits_0(tmp_path):
    """The control for the bad configurations below: only their one fault makes them bad."""
    result = run_cli(write_config(tmp_path / "replicator.yml", valid_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True


@pytest.mark.parametrize("spoil, words", [
    (unknown_destination, ["destinations", "atlantis"]),
    (s3_without_bucket, ["bucket"]),
    (unknown_storage_kind, ["gopherfs"]),
], ids=["unknown-destination", "s3-without-bucket", "unknown-storage-kind"])
def test_bad_config_exits_2_naming_the_field(tmp_path, spoil, words):
    document = valid_config(tmp_path)
    spoil(document)
    result = run_cli(write_config(tmp_path / "replicator.yml", document))
    assert result.returncode == 2, (result.stdout, result.stderr)
    for word in words:
        assert word in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_yaml_exits_2_naming_the_file(tmp_path):
    config_path = tmp_path / "broken.yml"
    config_path.write_text("state: {path: state.db}\nregions:\n  primary: {storage: [\n")
    result = run_cli(config_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "YAML" in result.stderr or "broken.yml" in result.stderr
    assert "Traceback" not in result.stderr
