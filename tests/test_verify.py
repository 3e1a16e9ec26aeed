"""`verify` finds each kind of drift precisely; `sync --audit` repairs what it finds."""

import json
import subprocess
import sys

import pytest

from drivers.filesystem import FilesystemDriver
from replicator import layout, sample_images
from replicator.demo import publish
from tests.test_engine import write_filesystem_config

BASE = sample_images.layer({"base": b"base" * 1000})
WEB = sample_images.image([BASE, sample_images.layer({"web": b"web"})])
MULTI = sample_images.index([WEB, sample_images.image([BASE], architecture="arm64")])


def cli(config_path, *args):
    result = subprocess.run([sys.executable, "-m", "replicator", *args, "--config", str(config_path)],
                            capture_output=True, text=True)
    return result.returncode, result.stdout, result.stderr


@pytest.fixture
def world(tmp_path):
    src, dst = FilesystemDriver(str(tmp_path / "src")), FilesystemDriver(str(tmp_path / "dst"))
    publish(src, "web", "1.0", WEB)
    publish(src, "web", "multi", MULTI)
    path = write_filesystem_config(tmp_path)
    assert cli(path, "sync")[0] == 0
    return path, src, dst


def drift(config_path, *flags):
    code, out, _ = cli(config_path, "verify", "--json", *flags)
    [result] = json.loads(out)["destinations"]
    return code, {(item["kind"], item["repository"], item["tag"]) for item in result["drift"]}, result


def test_clean_destination_verifies_deeply(world):
    code, found, result = drift(world[0], "--deep")
    assert (code, found) == (0, set())
    blobs = {blob.digest: len(blob.data) for image in (WEB, *MULTI.children) for blob in image.blobs}
    assert result["tags_checked"] == 2 and result["bytes_hashed"] == sum(blobs.values())


def test_missing_blob_is_reported_and_repaired_by_audit(world):
    path, _, dst = world
    dst.delete(layout.blob_key(BASE.digest))
    code, found, _ = drift(path)
    assert code == 1
    assert found == {("missing-blob", "web", "1.0"), ("missing-blob", "web", "multi")}
    assert cli(path, "sync")[0] == 0 and drift(path)[0] == 1  # a plain pass trusts its state
    assert cli(path, "sync", "--audit")[0] == 0
    assert drift(path, "--deep")[:2] == (0, set())


def test_wrong_size_and_wrong_digest(world):
    path, _, dst = world
    layer = WEB.blobs[-1]
    dst.write(layout.blob_key(layer.digest), b"x" * len(layer.data))
    assert drift(path)[:2] == (0, set())  # same size: only a deep check sees it
    assert ("wrong-digest", "web", "1.0") in drift(path, "--deep")[1]
    dst.write(layout.blob_key(layer.digest), b"short")
    assert ("wrong-size", "web", "1.0") in drift(path)[1]


def test_tag_mismatch_missing_tag_and_missing_links(world):
    path, src, dst = world
    publish(src, "web", "new", WEB)
    dst.write(layout.tag_current_key("web", "1.0"), layout.link_bytes(MULTI.digest))
    dst.delete(layout.revision_link_key("web", MULTI.digest))
    found = drift(path)[1]
    assert ("missing-tag", "web", "new") in found
    assert ("tag-mismatch", "web", "1.0") in found
    assert ("missing-link", "web", "multi") in found
    assert cli(path, "sync", "--audit")[0] == 0
    assert drift(path, "--deep")[:2] == (0, set())


def test_junk_tag_link_at_destination_is_bad_link(world):
    path, _, dst = world
    dst.write(layout.tag_current_key("web", "1.0"), b"junk")
    assert ("bad-link", "web", "1.0") in drift(path)[1]
    assert cli(path, "sync")[0] == 0
    assert drift(path)[:2] == (0, set())


def test_a_missing_tag_index_link_is_reported_and_a_plain_pass_adds_it(world):
    path, _, dst = world
    dst.delete(layout.tag_index_key("web", "1.0", WEB.digest))
    code, found, _ = drift(path)
    assert (code, found) == (1, {("missing-tag-index", "web", "1.0")})
    assert cli(path, "sync")[0] == 0
    assert drift(path)[:2] == (0, set())
