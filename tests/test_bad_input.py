"""Hostile or broken source content: each fails alone, clearly, and nothing else is affected."""

import json
import os

import pytest

from drivers.filesystem import FilesystemDriver
from replicator import layout, sample_images
from replicator.demo import publish
from replicator.manifests import OCI_MANIFEST, digest_of
from tests.test_engine import make_config, sync

GOOD = sample_images.image([sample_images.layer({"good": b"good"})])


def world(tmp_path):
    config = make_config(tmp_path)
    publish(config.regions["src"].storage, "good", "1", GOOD)
    return config, config.regions["src"].storage, config.regions["dst"].storage


def keys(storage):
    return sorted(info.key for page in storage.list("") for info in page)


def tag_manifest(source, name, tag, data: bytes):
    source.write(layout.blob_key(digest_of(data)), data)
    source.write(layout.tag_current_key(name, tag), layout.link_bytes(digest_of(data)))


def test_manifest_over_4_mib_fails_its_tag(tmp_path):
    config, source, destination = world(tmp_path)
    document = json.loads(GOOD.manifest.data)
    document["annotations"] = {"padding": "x" * (4 * 1024 * 1024)}
    tag_manifest(source, "huge", "1", json.dumps(document).encode())
    report = sync(config)
    assert report.tags_replicated == 1
    [failure] = report.failures
    assert failure.repository == "huge" and "4 MiB" in failure.error
    assert not [key for key in keys(destination) if "/huge/" in key]


def test_manifest_referencing_a_blob_absent_at_the_source(tmp_path):
    config, source, destination = world(tmp_path)
    document = json.loads(GOOD.manifest.data)
    document["layers"].append({"mediaType": sample_images.OCI_LAYER, "digest": "sha256:" + "e" * 64,
                               "size": 10})
    tag_manifest(source, "absent", "1", json.dumps(document).encode())
    report = sync(config)
    [failure] = report.failures
    assert "sha256:" + "e" * 64 in failure.error and "missing at the source" in failure.error
    assert layout.tag_current_key("absent", "1") not in keys(destination)


def test_blob_whose_size_differs_from_the_manifest(tmp_path):
    config, source, destination = world(tmp_path)
    layer = sample_images.layer({"sized": b"sized"})
    document = json.loads(GOOD.manifest.data)
    document["layers"] = [{**layer.descriptor(), "size": len(layer.data) + 1}]
    source.write(layout.blob_key(layer.digest), layer.data)
    tag_manifest(source, "sized", "1", json.dumps(document).encode())
    [failure] = sync(config).failures
    assert layer.digest in failure.error and "bytes" in failure.error
    assert layout.blob_key(layer.digest) not in keys(destination)


@pytest.mark.parametrize("name, tag", [("UPPER", "1"), ("a..b", "1"), ("ok", ".hidden"),
                                       ("ok", "-dash"), ("_private", "1")])
def test_names_and_tags_breaking_the_grammar_are_never_replicated(tmp_path, name, tag):
    config, source, destination = world(tmp_path)
    key = f"docker/registry/v2/repositories/{name}/_manifests/tags/{tag}/current/link"
    source.write(key, layout.link_bytes(GOOD.digest))
    report = sync(config)
    assert (report.tags_replicated, report.tags_failed) == (1, 0)
    assert key not in keys(destination)


def test_symlinks_in_a_filesystem_source_never_leak_outside_content(tmp_path):
    config, source, destination = world(tmp_path)
    secret = tmp_path / "outside-secret"
    secret.write_bytes(b"host secret")
    layer = sample_images.layer({"linked": b"linked"})
    image = sample_images.image([layer])
    publish(source, "linked", "1", image)
    blob_path = tmp_path / "src" / layout.blob_key(layer.digest)
    blob_path.unlink()
    os.symlink(secret, blob_path)
    outside = FilesystemDriver(str(tmp_path / "outside-registry"))
    publish(outside, "evil", "1", GOOD)
    os.symlink(tmp_path / "outside-registry" / layout.repository_prefix("evil"),
               tmp_path / "src" / layout.repository_prefix("evil").rstrip("/"))
    report = sync(config)
    assert report.tags_replicated == 1
    [failure] = report.failures
    assert failure.repository == "linked"
    for key in keys(destination):
        assert (tmp_path / "dst" / key).read_bytes() != b"host secret"
        assert "/evil/" not in key


def test_unknown_media_type_in_an_index_child(tmp_path):
    config, source, destination = world(tmp_path)
    child = json.dumps({"schemaVersion": 2, "mediaType": "application/x-unknown"}).encode()
    source.write(layout.blob_key(digest_of(child)), child)
    index = json.dumps({"schemaVersion": 2, "mediaType": sample_images.OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": digest_of(child), "size": len(child)}]}).encode()
    tag_manifest(source, "odd", "1", index)
    [failure] = sync(config).failures
    assert "unknown media type" in failure.error
    assert layout.tag_current_key("odd", "1") not in keys(destination)


def test_destination_keys_never_escape_its_root(tmp_path):
    config, _, destination = world(tmp_path)
    sync(config)
    root = os.path.realpath(tmp_path / "dst")
    for key in keys(destination):
        assert os.path.realpath(os.path.join(root, key)).startswith(root + os.sep)
    assert not keys(destination) or all(not key.startswith(".replicator-tmp") for key in keys(destination))
