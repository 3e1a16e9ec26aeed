"""Server-side copies between two moto buckets on one endpoint with one key, end to end.

Images are pushed with skopeo to Debian's docker-registry on bucket A; then a layer of one
image is corrupted in place (same size, one byte flipped), as bit rot or a bad write would.
``server_side_copy: verified`` (the default) copies each blob with one CopyObject whose answer
carries the SHA-256 S3 computed: the corrupt layer's copy is deleted at once, its tags are
neither created nor moved, the failure names repository, tag and digest, every other tag
replicates and ``sync`` exits 1; a registry on the destination serves the healthy images to
skopeo. ``trusted`` copies it as it is (size checked only) and ``verify --deep`` names it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from replicator import sample_images as si
from tests import registry as reg
from tests.services import S3_CREDENTIALS
from tests.test_e2e_sync import REPO_ROOT, expected_pull, write_config

BASE = si.layer({"etc/os-release": b"ID=verified\n"})
GOOD = si.image([BASE, si.layer({"srv/app": b"good\n" * 1000})])
OLD = si.image([BASE, si.layer({"srv/app": b"old\n" * 1000})])
BAD = si.image([BASE, si.layer({"srv/app": b"bad\n" * 1000})])
BAD_LAYER = BAD.blobs[-1]


def sync(config: Path, *args: str) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "replicator", *args, "--config", str(config),
                             "--json"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                            check=False)
    assert S3_CREDENTIALS["secretkey"] not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.fixture(scope="module")
def world(moto, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verified-copy")
    storage = {name: reg.s3_storage(moto.url, reg.create_bucket(moto.url))
               for name in ("primary", "verified", "trusted")}
    primary = reg.start_registry(storage["primary"], tmp / "logs")
    try:
        for repository, tag, image in (("team/app", "1", GOOD), ("team/job", "1", OLD)):
            reg.push(primary.url, repository, tag, image, tmp / "work")
    finally:
        primary.stop()
    configs = {}
    for mode in ("verified", "trusted"):
        configs[mode] = write_config(tmp / f"{mode}.yml", {
            "state": {"path": str(tmp / f"{mode}.db")}, "server_side_copy": mode,
            "regions": {"primary": {"storage": storage["primary"]}, mode: {"storage": storage[mode]}},
            "policies": [{"name": "p", "source": "primary", "destinations": [mode]}]})
        code, _ = sync(configs[mode], "sync")
        assert code == 0
    primary = reg.start_registry(storage["primary"], tmp / "logs")
    try:
        reg.push(primary.url, "team/job", "1", BAD, tmp / "work")   # the tag moves to BAD
        reg.push(primary.url, "team/new", "1", BAD, tmp / "work")   # a new tag needs it too
        reg.push(primary.url, "team/app", "2", GOOD, tmp / "work")
    finally:
        primary.stop()
    source = reg.Store(storage["primary"])
    key = reg.blob_key(BAD_LAYER.digest)
    data = source.get(key)
    corrupt = data[:-1] + bytes([data[-1] ^ 0xFF])
    source.put(key, corrupt)
    return tmp, storage, configs, "sha256:" + hashlib.sha256(corrupt).hexdigest()


def test_verified_never_shows_the_corrupt_blob_nor_moves_its_tags(world):
    tmp, storage, configs, actual = world
    code, document = sync(configs["verified"], "sync")
    assert code == 1 and document["ok"] is False
    [entry] = document["passes"]
    assert entry["server_side_verified"] == entry["server_side_copies"] >= 1
    assert entry["server_side_trusted"] == 0 and entry["tags_replicated"] == 1   # team/app:2
    failures = {(f["repository"], f["tag"]): f for f in entry["failures"]}
    assert set(failures) == {("team/job", "1"), ("team/new", "1")}
    for failure in failures.values():
        assert failure["kind"] == "source_content"
        assert failure["error"] == (f"blob {BAD_LAYER.digest} is corrupt at the source: its bytes "
                                    f"hash to {actual}")
    destination = reg.Store(storage["verified"])
    assert not destination.exists(reg.blob_key(BAD_LAYER.digest))
    assert not destination.exists(reg.tag_current_key("team/new", "1"))
    assert document["requests"]["verified"]["get"] == 0   # no blob's bytes streamed
    replica = reg.start_registry(storage["verified"], tmp / "logs", readonly=True)
    try:
        assert reg.manifest_digest(replica.url, "team/job", "1") == OLD.digest   # not moved
        for repository, tag in (("team/app", "1"), ("team/app", "2")):
            assert reg.pull(replica.url, repository, tag, tmp / "pulls" / f"{repository}-{tag}") \
                == expected_pull(GOOD)[1]
            assert reg.manifest_digest(replica.url, repository, tag) == GOOD.digest
    finally:
        replica.stop()


def test_trusted_copies_it_as_it_is_and_verify_deep_names_it(world):
    tmp, storage, configs, _ = world
    code, document = sync(configs["trusted"], "sync")
    assert code == 0
    [entry] = document["passes"]
    assert entry["server_side_trusted"] == entry["server_side_copies"] >= 1
    assert entry["server_side_verified"] == 0 and entry["tags_failed"] == 0
    code, report = sync(configs["trusted"], "verify", "--deep")
    assert code == 1
    [result] = report["destinations"]
    [drift] = result["drift"]   # each blob is re-hashed once, for the first tag that needs it
    assert drift["kind"] == "wrong-digest" and BAD_LAYER.digest in drift["detail"]
    assert (drift["repository"], drift["tag"]) in {("team/job", "1"), ("team/new", "1")}
