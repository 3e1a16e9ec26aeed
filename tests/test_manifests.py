import json

import pytest

from replicator import sample_images
from replicator.manifests import (DOCKER_LIST, DOCKER_SCHEMA1_SIGNED, OCI_MANIFEST, ManifestError,
                                  digest_of, parse_manifest)

BASE = sample_images.layer({"a": b"1"})
APP = sample_images.layer({"b": b"2"})


def parse(document: dict | bytes):
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    return parse_manifest(data, digest_of(data))


def test_oci_image_manifest_references_config_then_layers():
    image = sample_images.image([BASE, APP])
    manifest = parse_manifest(image.manifest.data, image.digest)
    assert manifest.media_type == OCI_MANIFEST
    assert [blob.digest for blob in manifest.blobs] == [image.blobs[0].digest, BASE.digest, APP.digest]
    assert [blob.size for blob in manifest.blobs] == [len(blob.data) for blob in image.blobs]
    assert manifest.children == ()


def test_docker_manifest_list_references_children():
    children = [sample_images.image([BASE], oci=False),
                sample_images.image([BASE], oci=False, architecture="arm64")]
    index = sample_images.index(children, oci=False)
    manifest = parse_manifest(index.manifest.data, index.digest)
    assert manifest.media_type == DOCKER_LIST
    assert [child.digest for child in manifest.children] == [child.digest for child in children]
    assert manifest.blobs == ()


def test_oci_manifest_without_media_type_is_inferred():
    image = json.loads(sample_images.image([BASE]).manifest.data)
    del image["mediaType"]
    assert parse(image).media_type == OCI_MANIFEST
    index = {"schemaVersion": 2, "manifests": [{"digest": "sha256:" + "1" * 64, "size": 3}]}
    assert len(parse(index).children) == 1


def test_artifact_with_custom_config_type_is_an_ordinary_manifest():
    artifact = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
                "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                           "digest": "sha256:" + "4" * 64, "size": 2},
                "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                            "digest": "sha256:" + "5" * 64, "size": 10}]}
    assert [blob.digest for blob in parse(artifact).blobs] == ["sha256:" + "4" * 64, "sha256:" + "5" * 64]


def test_schema1_signed_manifest_references_unique_fs_layers():
    document = {"schemaVersion": 1, "name": "a", "tag": "t", "signatures": [],
                "fsLayers": [{"blobSum": "sha256:" + "6" * 64}, {"blobSum": "sha256:" + "6" * 64},
                             {"blobSum": "sha256:" + "7" * 64}]}
    manifest = parse(document)
    assert manifest.media_type == DOCKER_SCHEMA1_SIGNED
    assert [blob.digest for blob in manifest.blobs] == ["sha256:" + "6" * 64, "sha256:" + "7" * 64]


@pytest.mark.parametrize("data, message", [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"schemaVersion": 3}', "schemaVersion"),
    (b'{"schemaVersion": 2, "mediaType": "application/x-unknown"}', "unknown media type"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode(), "config"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": {"digest": "sha256:../../etc", "size": 1}}).encode(), "digest"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": {"digest": "sha256:" + "1" * 64, "size": -1}}).encode(), "size"),
    (json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": "x"}).encode(), "list"),
])
def test_malformed_manifests_raise_manifest_error(data, message):
    with pytest.raises(ManifestError, match=message):
        parse(data)


def test_bytes_that_do_not_match_the_digest_are_rejected():
    data = sample_images.image([BASE]).manifest.data
    with pytest.raises(ManifestError, match="hashes to"):
        parse_manifest(data, "sha256:" + "0" * 64)


def test_manifest_over_4_mib_is_rejected():
    data = b" " * (4 * 1024 * 1024 + 1)
    with pytest.raises(ManifestError, match="4 MiB"):
        parse_manifest(data, digest_of(data))
