"""BlobCopier's server-side copies, on filesystem regions whose destination pretends to have
the ability (so that every path, refusals included, runs without a cloud emulator).

What holds: a blob of known size is copied storage to storage after its size at the source is
checked; bytes never stream through the replicator for it; manifests are still written from
memory; a refused copy falls back to streaming for the rest of the pass; the switch turns it off.
Verified (the default): only copies whose answer carries the SHA-256 of what was stored, which
must be the digest, else the copy is deleted and its tags fail as for a corrupt streamed blob.
Trusted: size checked only, same-size corruption left to ``verify --deep``.
"""

import hashlib
import logging
from pathlib import Path

import pytest

from drivers.base import HashedCopy, HashedServerSideCopy, StorageDriver, check_key
from drivers.errors import AccessDenied, ConfigError, NotFound
from drivers.filesystem import FilesystemDriver
from replicator import config as config_module
from replicator import layout, sample_images
from replicator.config import Region
from replicator.copier import SOURCE_READS
from tests.test_engine import make_config, published, sync, verify_storage

BASE = sample_images.layer({"base": b"shared base layer" * 100})
WEB = sample_images.image([BASE, sample_images.layer({"web": b"web"})])
MULTI = sample_images.index([WEB, sample_images.image([BASE, sample_images.layer({"web": b"arm"})],
                                                      architecture="arm64")])
TOOLS = sample_images.image([BASE, sample_images.layer({"tools": b"tools"})])
IMAGES = {("web", "1.0"): WEB, ("web", "multi"): MULTI, ("tools/cli", "latest"): TOOLS}
MANIFESTS = {image.digest: image.manifest for top in IMAGES.values() for image in (top, *top.children)}
BLOBS = {blob.digest: blob for image in IMAGES.values() for blob in image.all_blobs()
         if blob.digest not in MANIFESTS}


class CopyingFilesystem(FilesystemDriver, HashedServerSideCopy):
    """A filesystem that copies from another filesystem "server-side": the file's bytes go
    from path to path without the caller reading them. ``refuse`` makes it answer AccessDenied;
    ``hashing`` says whether a hashed copy's answer carries the SHA-256 of the stored bytes;
    ``limit`` is the largest object it copies hashed."""

    refuse = False
    hashing = True
    limit = 1 << 40

    def can_copy_from(self, source: StorageDriver) -> bool:
        return isinstance(source, FilesystemDriver)

    def copy_from(self, source: StorageDriver, key: str, size: int | None = None) -> str:
        check_key(key)
        self.requests.add("copy")
        if self.refuse:
            raise AccessDenied(f"copy {key}: refused")
        try:
            data = Path(source._path(key)).read_bytes()
        except FileNotFoundError:
            raise NotFound(key) from None
        return self.write(key, data)

    def hashes_copy(self, size: int) -> bool:
        return size <= self.limit

    def copy_from_hashed(self, source: StorageDriver, key: str, size: int) -> HashedCopy:
        etag = self.copy_from(source, key, size)
        stored = Path(self._path(key)).read_bytes()
        return HashedCopy(etag, hashlib.sha256(stored).hexdigest() if self.hashing else None)


@pytest.fixture
def config(tmp_path):
    config = published(make_config(tmp_path), IMAGES)
    config.regions["dst"] = Region("dst", CopyingFilesystem(str(tmp_path / "dst")))
    return config


def storage(config, region):
    return config.regions[region].storage


@pytest.mark.parametrize("mode", ["verified", "trusted"])
def test_blobs_are_copied_server_side_and_only_manifests_stream(config, mode):
    source_before = storage(config, "src").requests.snapshot()
    report = sync(config, concurrency=1, server_side_copy=mode)  # exact counts: tags sharing a
    assert (report.tags_replicated, report.tags_failed) == (len(IMAGES), 0)  # manifest may both read it
    assert report.blobs_copied == report.server_side_copies == len(BLOBS)
    assert (report.server_side_verified, report.server_side_trusted) == \
        ((len(BLOBS), 0) if mode == "verified" else (0, len(BLOBS)))
    assert report.server_side_bytes == sum(len(blob.data) for blob in BLOBS.values())
    assert report.manifests_copied == len(MANIFESTS)
    assert report.bytes_copied == sum(len(blob.data) for blob in MANIFESTS.values())
    source = storage(config, "src").requests.snapshot()
    assert source["head"] - source_before["head"] == len(BLOBS)  # each blob's size, no bytes
    assert source["get"] - source_before["get"] == len(IMAGES) + len(MANIFESTS)  # links, manifests
    assert storage(config, "dst").requests.snapshot()["copy"] == len(BLOBS)
    result = verify_storage(storage(config, "src"), storage(config, "dst"), sorted(IMAGES), deep=True)
    assert result.drift == []


def test_the_switch_turns_server_side_copy_off(config):
    report = sync(config, server_side_copy="off")
    assert (report.blobs_copied, report.server_side_copies, report.server_side_bytes) == \
        (len(BLOBS), 0, 0)
    assert report.bytes_copied == sum(len(b.data) for b in (*BLOBS.values(), *MANIFESTS.values()))
    assert storage(config, "dst").requests.snapshot()["copy"] == 0


@pytest.mark.parametrize("mode", ["verified", "trusted"])
def test_a_refused_copy_streams_that_blob_and_every_later_one(config, caplog, mode):
    storage(config, "dst").refuse = True
    with caplog.at_level(logging.WARNING, logger="replicator.copier"):
        report = sync(config, concurrency=1, server_side_copy=mode)
    assert (report.tags_replicated, report.tags_failed) == (len(IMAGES), 0)
    assert (report.blobs_copied, report.server_side_copies) == (len(BLOBS), 0)
    assert storage(config, "dst").requests.snapshot()["copy"] == 1
    [warning] = [record.message for record in caplog.records if "server-side copy" in record.message]
    assert warning.startswith(f"server-side copy to {storage(config, 'dst').describe()} refused (copy ")
    assert warning.endswith(": refused); streaming blobs through the replicator instead for the "
                            "rest of this pass")
    assert verify_storage(storage(config, "src"), storage(config, "dst"), sorted(IMAGES), deep=True).drift == []


@pytest.mark.parametrize("spoil, reason", [
    (lambda path: path.write_bytes(b"shorter"), "is 7 bytes at the source, the manifest says"),
    (lambda path: path.unlink(), "is missing at the source"),
], ids=["other-size", "missing"])
def test_a_blob_of_the_wrong_size_or_missing_fails_its_tags_before_any_copy(config, spoil, reason):
    layer = TOOLS.blobs[-1]
    spoil(Path(storage(config, "src")._path(layout.blob_key(layer.digest))))
    report = sync(config)
    assert [(f.repository, f.tag) for f in report.failures] == [("tools/cli", "latest")]
    assert layer.digest in report.failures[0].error and reason in report.failures[0].error
    assert report.server_side_copies == len(BLOBS) - 1
    with pytest.raises(NotFound):
        storage(config, "dst").stat(layout.blob_key(layer.digest))
    assert storage(config, "dst").requests.snapshot()["copy"] == len(BLOBS) - 1


def flip_last_byte(config, layer) -> None:
    path = Path(storage(config, "src")._path(layout.blob_key(layer.digest)))
    path.write_bytes(layer.data[:-1] + bytes([layer.data[-1] ^ 0xFF]))


def test_verified_same_size_corruption_is_deleted_and_fails_its_tags_like_a_streamed_one(config):
    layer = WEB.blobs[-1]
    flip_last_byte(config, layer)
    actual = "sha256:" + hashlib.sha256(layer.data[:-1] + bytes([layer.data[-1] ^ 0xFF])).hexdigest()
    report = sync(config)
    failed = {(f.repository, f.tag): f for f in report.failures}
    assert set(failed) == {("web", "1.0"), ("web", "multi")}
    for failure in failed.values():
        assert failure.kind == "source_content"
        assert failure.error == f"blob {layer.digest} is corrupt at the source: its bytes hash to {actual}"
    assert report.tags_replicated == 1   # tools/cli:latest does not need that layer
    with pytest.raises(NotFound):
        storage(config, "dst").stat(layout.blob_key(layer.digest))
    assert not Path(storage(config, "dst")._path(layout.tag_current_key("web", "1.0"))).exists()

    streamed = sync(config, server_side_copy="off")   # the same failure, streaming
    assert {(f.repository, f.tag, f.error) for f in streamed.failures} == \
        {(name, tag, failure.error) for (name, tag), failure in failed.items()}


def test_verified_copies_stream_where_the_provider_cannot_prove_the_hash(config, caplog):
    storage(config, "dst").limit = min(len(blob.data) for blob in BLOBS.values())
    report = sync(config, concurrency=1)
    assert (report.tags_replicated, report.blobs_copied) == (len(IMAGES), len(BLOBS))
    assert 0 < report.server_side_verified == report.server_side_copies < len(BLOBS)
    assert report.server_side_trusted == 0


def test_a_hashed_copy_answered_without_a_hash_is_deleted_and_streamed(config, caplog):
    storage(config, "dst").hashing = False
    with caplog.at_level(logging.WARNING, logger="replicator.copier"):
        report = sync(config, concurrency=1)
    assert (report.tags_replicated, report.blobs_copied, report.server_side_copies) == \
        (len(IMAGES), len(BLOBS), 0)
    assert storage(config, "dst").requests.snapshot()["copy"] == 1
    assert any("answered without the SHA-256 of the copy" in r.message for r in caplog.records)
    assert verify_storage(storage(config, "src"), storage(config, "dst"), sorted(IMAGES), deep=True).drift == []


def test_trusted_same_size_corruption_is_left_to_verify_deep(config):
    """The price of trusting: a same-size corrupt blob is copied as it is; the deep verify
    (which re-hashes every blob at the destination) names it."""
    layer = WEB.blobs[-1]
    flip_last_byte(config, layer)
    assert sync(config, server_side_copy="trusted").tags_failed == 0
    drift = verify_storage(storage(config, "src"), storage(config, "dst"), sorted(IMAGES), deep=True).drift
    assert {(item.kind, item.repository, item.tag) for item in drift} == \
        {("wrong-digest", "web", "1.0")}


def test_server_side_copy_config(tmp_path):
    document = {"regions": {"a": {"storage": {"filesystem": {"rootdirectory": str(tmp_path)}}}},
                "policies": [{"name": "p", "source": "a", "destinations": ["a"]}]}
    document["regions"]["b"] = document["regions"]["a"]
    document["policies"][0]["destinations"] = ["b"]
    assert config_module.parse(document).server_side_copy == "verified"
    for value, mode in ((True, "verified"), ("verified", "verified"), ("trusted", "trusted"),
                        (False, "off")):
        assert config_module.parse({**document, "server_side_copy": value}).server_side_copy == mode
    with pytest.raises(ConfigError) as caught:
        config_module.parse({**document, "server_side_copy": "no"})
    assert caught.value.field == "server_side_copy"


class ShortReadingFilesystem(FilesystemDriver):
    """A source whose first ``short`` reads of each layer or config blob end early without an
    error, as a body cut short without a Content-Length reads back."""

    short = 1
    keys = {layout.blob_key(digest) for digest in BLOBS}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: dict[str, int] = {}

    def _read_range(self, key: str, offset: int):
        self.reads[key] = self.reads.get(key, 0) + 1
        data = b"".join(super()._read_range(key, offset))
        if key in self.keys and self.reads[key] <= self.short and len(data) > 1:
            data = data[:len(data) // 2]
        yield data


@pytest.fixture
def short_reads(tmp_path):
    config = published(make_config(tmp_path), IMAGES)
    source = ShortReadingFilesystem(str(tmp_path / "src"))
    config.regions["src"] = Region("src", source)
    return config, source


def test_a_blob_read_back_short_is_read_again_before_it_is_called_corrupt(short_reads):
    config, source = short_reads
    report = sync(config, concurrency=1)
    assert (report.tags_replicated, report.tags_failed, report.blobs_copied) == (len(IMAGES), 0, len(BLOBS))
    assert all(source.reads[layout.blob_key(digest)] == 2 for digest in BLOBS)
    assert verify_storage(source, storage(config, "dst"), sorted(IMAGES), deep=True).drift == []


def test_a_blob_short_at_every_read_fails_after_a_bounded_number_of_reads(short_reads):
    config, source = short_reads
    source.short = 99
    report = sync(config, concurrency=1)
    assert report.tags_failed == len(IMAGES) and report.blobs_copied == 0
    assert {source.reads[layout.blob_key(digest)] for digest in BLOBS} == {SOURCE_READS}
    assert all("is corrupt at the source" in f.error or "bytes at the source" in f.error
               for f in report.failures)
