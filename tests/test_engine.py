"""The engine on filesystem regions: ordering, verification, copy-once, failures, deletion."""

import json
import threading

import pytest
import yaml

from drivers.base import StorageDriver
from drivers.filesystem import FilesystemDriver
from replicator import config as config_module
from replicator import layout, sample_images
from replicator.demo import publish
from replicator.endpoints import StorageEndpoint
from replicator.engine import RunOptions, run_policy
from replicator.manifests import digest_of
from replicator.verify import verify
from state.store import StateStore
from tests.conformance import too_deep

BASE = sample_images.layer({"base": b"shared base layer" * 100})
WEB = sample_images.image([BASE, sample_images.layer({"web": b"web"})])
WEB_ARM = sample_images.image([BASE, sample_images.layer({"web": b"web-arm"})], architecture="arm64")
MULTI = sample_images.index([WEB, WEB_ARM])
TOOLS = sample_images.image([BASE, sample_images.layer({"tools": b"tools"})])
DANGLING_KINDS = {"missing-tag", "bad-link", "missing-manifest", "bad-manifest", "missing-link",
                  "missing-blob", "wrong-size", "wrong-digest"}


def filesystem_document(tmp_path, state="state.db", **policy) -> dict:
    """A configuration of two filesystem regions under ``tmp_path``, ``src`` -> ``dst``."""
    return {"state": {"path": str(tmp_path / state)},
            "regions": {name: {"storage": {"filesystem": {"rootdirectory": str(tmp_path / name)}}}
                        for name in ("src", "dst")},
            "policies": [{"name": "p", "source": "src", "destinations": ["dst"], **policy}]}


def write_filesystem_config(tmp_path, state="state.db", **policy):
    path = tmp_path / f"{state}.yml"
    path.write_text(yaml.safe_dump(filesystem_document(tmp_path, state, **policy)))
    return path


def verify_storage(source: StorageDriver, destination: StorageDriver, tags, deep: bool = False):
    """``verify`` between two storage drivers' registries."""
    return verify(StorageEndpoint("source", source), StorageEndpoint("destination", destination),
                  tags, deep)


def make_config(tmp_path, **policy):
    return config_module.parse(filesystem_document(tmp_path, **policy), base=tmp_path)


def sync(config, **options):
    state = StateStore(config.state_path)
    try:
        [report] = run_policy(config, config.policies[0], state, RunOptions(**options))
    finally:
        state.close()
    return report


def published(config, images):
    for (name, tag), image in images.items():
        publish(config.regions["src"].storage, name, tag, image)
    return config


def unique_blobs(*images):
    blobs = {blob.digest: blob for image in images for blob in image.all_blobs()}
    manifests = {image.digest for top in images for image in (top, *top.children)}
    return ({d: b for d, b in blobs.items() if d not in manifests},
            {d: b for d, b in blobs.items() if d in manifests})


def test_replicates_and_verifies_deeply(tmp_path):
    images = {("web", "1.0"): WEB, ("web", "multi"): MULTI, ("tools/cli", "latest"): TOOLS}
    config = published(make_config(tmp_path), images)
    report = sync(config)
    blobs, manifests = unique_blobs(WEB, MULTI, TOOLS)
    assert (report.tags_replicated, report.tags_failed) == (3, 0)
    assert report.blobs_copied == len(blobs)
    assert report.manifests_copied == len(manifests)
    assert report.bytes_copied == sum(len(b.data) for b in (*blobs.values(), *manifests.values()))
    result = verify_storage(config.regions["src"].storage, config.regions["dst"].storage, sorted(images), deep=True)
    assert result.drift == [] and result.bytes_hashed > 0


def test_both_regions_are_walked_at_once_in_processes_of_their_own_and_none_is_left(
        tmp_path, walks, monkeypatch):
    config = published(make_config(tmp_path), {("web", "1.0"): WEB})
    walking = []
    snapshot = StorageEndpoint.snapshot

    def spied(endpoint, *args):
        walking.append((endpoint.name, len(walks)))
        return snapshot(endpoint, *args)

    monkeypatch.setattr(StorageEndpoint, "snapshot", spied)
    sync(config)
    assert walking == [("src", 2), ("dst", 2)]
    assert [child.args[-3] for child in walks] == [
        str(tmp_path / name / layout.REPOSITORIES_PREFIX.rstrip("/")) for name in ("src", "dst")]
    assert all(child.returncode == 0 for child in walks)
    too_deep(tmp_path / "src" / layout.REPOSITORIES_PREFIX)
    walks.clear()
    report = sync(config)
    assert "name too long" in report.error
    assert len(walks) == 2 and all(child.returncode is not None for child in walks)


def test_second_pass_writes_nothing(tmp_path):
    config = published(make_config(tmp_path), {("web", "multi"): MULTI})
    sync(config)
    before = config.regions["dst"].storage.requests.snapshot()
    report = sync(config)
    after = config.regions["dst"].storage.requests.snapshot()
    assert (report.tags_unchanged, report.tags_replicated, report.blobs_copied) == (1, 0, 0)
    assert after["put"] == before["put"] and after["delete"] == before["delete"]


def test_shared_blob_is_copied_once_with_many_concurrent_tags(tmp_path):
    images = {(f"repo{i}", f"t{j}"): sample_images.image([BASE, sample_images.layer({"n": f"{i}-{j}".encode()})])
              for i in range(4) for j in range(5)}
    config = published(make_config(tmp_path), images)
    report = sync(config, concurrency=8)
    assert report.tags_replicated == 20
    assert report.blobs_copied == 1 + 20 + 20  # base once, one layer and one config per image
    assert report.manifests_copied == 20


def test_reader_never_sees_a_dangling_tag(tmp_path):
    """After every single write at the destination, every visible tag resolves completely."""
    config = published(make_config(tmp_path), {("web", "multi"): MULTI, ("web", "1.0"): WEB})
    destination = config.regions["dst"].storage
    checks = []
    lock = threading.Lock()
    original_write = destination.write

    def check():
        with lock:
            tags = _visible_tags(destination)
            drift = verify_storage(destination, destination, tags).drift
            checks.append(len(tags))
            assert not [d for d in drift if d.kind in DANGLING_KINDS], drift

    def write(key, data):
        original_write(key, data)
        check()

    destination.write = write
    sync(config)
    publish(config.regions["src"].storage, "web", "1.0", TOOLS)
    sync(config)
    assert len(checks) > 10 and checks[-1] == 2


def _visible_tags(storage):
    return sorted({(entry.name, entry.tag) for page in storage.list(layout.REPOSITORIES_PREFIX)
                   for info in page if isinstance(entry := layout.parse_key(info.key), layout.TagCurrent)})


def test_moved_tag_copies_only_new_content(tmp_path):
    config = published(make_config(tmp_path), {("web", "1.0"): WEB})
    sync(config)
    moved = sample_images.image([BASE, sample_images.layer({"web": b"v2"})])
    publish(config.regions["src"].storage, "web", "1.0", moved)
    report = sync(config)
    assert (report.tags_replicated, report.blobs_copied, report.manifests_copied) == (1, 2, 1)
    assert report.blobs_present == 1
    current = config.regions["dst"].storage.read(layout.tag_current_key("web", "1.0"))
    assert layout.parse_link(current) == moved.digest


def corrupt(storage, digest):
    storage.write(layout.blob_key(digest), b"these are not the bytes you are looking for")


def test_corrupt_blob_fails_only_its_tag_and_is_never_committed(tmp_path):
    broken = sample_images.image([sample_images.layer({"x": b"broken"})])
    config = published(make_config(tmp_path), {("web", "1.0"): WEB, ("bad", "1"): broken})
    corrupt(config.regions["src"].storage, broken.blobs[1].digest)
    report = sync(config)
    assert (report.tags_replicated, report.tags_failed) == (1, 1)
    [failure] = report.failures
    assert (failure.repository, failure.tag) == ("bad", "1")
    assert broken.blobs[1].digest in failure.error and "corrupt" in failure.error
    destination = config.regions["dst"].storage
    with pytest.raises(Exception):
        destination.stat(layout.blob_key(broken.blobs[1].digest))
    with pytest.raises(Exception):
        destination.stat(layout.tag_current_key("bad", "1"))
    assert not list(destination.list(".replicator-tmp/"))


@pytest.mark.parametrize("damage, message", [
    ("manifest-json", "not valid JSON"),
    ("manifest-missing", "missing at the source"),
    ("blob-missing", "missing at the source"),
    ("link-junk", "link file"),
    ("media-type", "unknown media type"),
])
def test_bad_source_content_fails_that_tag_with_a_reason(tmp_path, damage, message):
    config = published(make_config(tmp_path), {("web", "1.0"): WEB, ("bad", "1"): TOOLS})
    source = config.regions["src"].storage
    if damage == "manifest-json":
        data = b"{not json"
        source.write(layout.blob_key(digest_of(data)), data)
        source.write(layout.tag_current_key("bad", "1"), layout.link_bytes(digest_of(data)))
    elif damage == "manifest-missing":
        source.delete(layout.blob_key(TOOLS.digest))
    elif damage == "blob-missing":
        source.delete(layout.blob_key(TOOLS.blobs[-1].digest))
    elif damage == "link-junk":
        source.write(layout.tag_current_key("bad", "1"), b"junk")
    else:
        data = json.dumps({"schemaVersion": 2, "mediaType": "application/x-nope"}).encode()
        source.write(layout.blob_key(digest_of(data)), data)
        source.write(layout.tag_current_key("bad", "1"), layout.link_bytes(digest_of(data)))
    report = sync(config)
    assert report.tags_replicated == 1
    [failure] = report.failures
    assert failure.repository == "bad" and message in failure.error


def test_filters_select_repositories_and_tags(tmp_path):
    images = {("web", "1.0"): WEB, ("web", "dev-1"): WEB, ("internal/x", "1"): TOOLS}
    config = published(make_config(tmp_path, repositories={"exclude": ["internal/*"]},
                                   tags={"include": ["*"], "exclude": ["dev-*"]}), images)
    sync(config)
    assert _visible_tags(config.regions["dst"].storage) == [("web", "1.0")]


@pytest.mark.parametrize("delete", [False, True])
def test_tag_deletion_follows_the_policy(tmp_path, delete):
    config = published(make_config(tmp_path, delete=delete), {("web", "1.0"): WEB, ("web", "old"): WEB})
    sync(config)
    source = config.regions["src"].storage
    for page in list(source.list(layout.tag_prefix("web", "old"))):
        for info in page:
            source.delete(info.key)
    report = sync(config)
    expected = [("web", "1.0")] if delete else [("web", "1.0"), ("web", "old")]
    assert _visible_tags(config.regions["dst"].storage) == expected
    assert report.tags_deleted == (1 if delete else 0)
    if delete:
        assert not list(config.regions["dst"].storage.list(layout.tag_prefix("web", "old")))


def test_dry_run_plans_everything_and_writes_nothing(tmp_path):
    config = published(make_config(tmp_path), {("web", "multi"): MULTI})
    report = sync(config, dry_run=True)
    assert config.regions["dst"].storage.requests.snapshot()["put"] == 0
    assert not (tmp_path / "dst").exists() or not list(config.regions["dst"].storage.list(""))
    copies = [a for a in report.planned if a.startswith("copy ")]
    writes = [a for a in report.planned if a.startswith("write ")]
    assert len(copies) == len(set(copies)) == len({b.digest for b in MULTI.all_blobs()})
    assert writes[-2].startswith("write " + layout.tag_current_key("web", "multi"))
    assert writes[-1].startswith("write " + layout.tag_index_key("web", "multi", MULTI.digest))


def test_uploads_in_flight_are_never_replicated(tmp_path):
    config = published(make_config(tmp_path), {("web", "1.0"): WEB})
    config.regions["src"].storage.write("docker/registry/v2/repositories/web/_uploads/abc/data", b"partial")
    sync(config)
    keys = [info.key for page in config.regions["dst"].storage.list("") for info in page]
    assert not [key for key in keys if "_uploads" in key]


def test_filesystem_root_is_the_config_rootdirectory(tmp_path):
    config = published(make_config(tmp_path), {("web", "1.0"): WEB})
    sync(config)
    assert (tmp_path / "dst" / layout.tag_current_key("web", "1.0")).read_bytes() == WEB.digest.encode()
    assert isinstance(config.regions["dst"].storage, FilesystemDriver)
