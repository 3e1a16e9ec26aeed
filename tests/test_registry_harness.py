"""The test harness itself, against real parts: docker-registry 2.8.2, skopeo and moto.

If these fail, nothing built on tests/registry.py (the end-to-end tests above all) can be
trusted: they prove that images pushed with skopeo keep their digests, that the registry lays
them out where the replicator expects, and that the registry serves its storage as it is.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from replicator import sample_images as si
from tests import registry as reg

BASE = si.layer({"etc/os-release": b"ID=harness\n"})


def platform_image(architecture: str, *, oci: bool = True) -> si.Image:
    app = si.layer({"usr/bin/app": f"app for {architecture}\n".encode()}, oci=oci)
    base = BASE if oci else si.layer({"etc/os-release": b"ID=harness\n"}, oci=False)
    return si.image([base, app], architecture=architecture, oci=oci)


def two_platforms(*, oci: bool = True) -> si.Image:
    return si.index([platform_image("amd64", oci=oci), platform_image("arm64", oci=oci)], oci=oci)


@pytest.fixture
def s3_registry(moto, tmp_path):
    """A registry over a fresh moto bucket; yields (registry, its storage block)."""
    storage = reg.s3_storage(moto.url, reg.create_bucket(moto.url))
    service = reg.start_registry(storage, tmp_path / "logs")
    yield service, storage
    service.stop()


def push_pull_and_check(service, storage, repository, tag, image, tmp_path) -> None:
    """Push, then prove the served digest, the pulled blob set and the storage keys."""
    assert reg.push(service.url, repository, tag, image, tmp_path) == image.digest
    assert reg.manifest_digest(service.url, repository, tag) == image.digest
    pulled = reg.pull(service.url, repository, tag, tmp_path / f"pull-{tag}")
    expected = {digest: len(blob.data) for digest, blob in reg.unique_blobs([image]).items()}
    assert pulled == expected
    assert reg.missing_keys(reg.Store(storage), repository, tag, image) == []


def test_oci_layout_names_each_tag(tmp_path):
    image = platform_image("amd64")
    layout = reg.write_oci_layout(tmp_path / "layout", {"a": image, "b": two_platforms()})
    index = json.loads((layout / "index.json").read_text())
    assert [(entry["digest"], entry["annotations"][reg.REF_NAME]) for entry in index["manifests"]] \
        == [(image.digest, "a"), (two_platforms().digest, "b")]
    for path in (layout / "blobs" / "sha256").iterdir():
        assert reg.digest_of(path.read_bytes()) == f"sha256:{path.name}"


def test_single_platform_oci_image_on_s3(s3_registry, tmp_path):
    service, storage = s3_registry
    image = platform_image("amd64")
    push_pull_and_check(service, storage, "apps/web", "1.0", image, tmp_path)

    store = reg.Store(storage)
    link = store.get(reg.tag_current_key("apps/web", "1.0"))
    assert len(link) == 71 and link == image.digest.encode()
    # rootdirectory /registry puts every key under registry/docker/registry/v2/
    listed = store.client.list_objects_v2(Bucket=store.bucket)["Contents"]
    assert listed and all(item["Key"].startswith("registry/docker/registry/v2/") for item in listed)


def test_multi_arch_index_with_shared_base_on_s3(s3_registry, tmp_path):
    service, storage = s3_registry
    image = two_platforms()
    push_pull_and_check(service, storage, "apps/web", "multi", image, tmp_path)

    keys = reg.Store(storage).keys()
    for child in image.children:  # index children: revisions, but no tags of their own
        assert reg.revision_link_key("apps/web", child.digest) in keys
    tags = {key.split("/_manifests/tags/")[1].split("/")[0] for key in keys if "/tags/" in key}
    assert tags == {"multi"}
    # two children, one shared base: five blobs + three manifests, stored once each
    data_keys = {key for key in keys if key.endswith("/data")}
    assert data_keys == {reg.blob_key(digest) for digest in reg.unique_blobs([image])}
    assert len(data_keys) == 8


def test_docker_schema2_image_and_manifest_list_keep_their_digests(s3_registry, tmp_path):
    service, storage = s3_registry
    single = platform_image("amd64", oci=False)
    assert single.manifest.media_type == si.DOCKER_MANIFEST
    push_pull_and_check(service, storage, "legacy/app", "v2", single, tmp_path)
    listed = two_platforms(oci=False)
    assert listed.manifest.media_type == si.DOCKER_LIST
    push_pull_and_check(service, storage, "legacy/app", "list", listed, tmp_path)
    assert reg.raw_manifest(service.url, "legacy/app", "list") == listed.manifest.data


def test_filesystem_registry(tmp_path):
    storage = reg.filesystem_storage(tmp_path / "storage")
    with reg.start_registry(storage, tmp_path / "logs") as service:
        push_pull_and_check(service, storage, "base/tools", "latest", platform_image("arm64"),
                            tmp_path)
    assert (tmp_path / "storage" / reg.V2 / "repositories" / "base" / "tools").is_dir()


def test_read_only_registry_serves_but_refuses_pushes(tmp_path):
    storage = reg.filesystem_storage(tmp_path / "storage")
    image = platform_image("amd64")
    with reg.start_registry(storage, tmp_path / "logs") as service:
        reg.push(service.url, "apps/web", "1.0", image, tmp_path)
    with reg.start_registry(storage, tmp_path / "logs", readonly=True) as service:
        assert reg.manifest_digest(service.url, "apps/web", "1.0") == image.digest
        with pytest.raises(reg.SkopeoError):
            reg.push(service.url, "apps/web", "2.0", platform_image("arm64"), tmp_path)


def head_status(registry_url: str, repository: str, digest: str) -> int:
    request = urllib.request.Request(f"{registry_url}/v2/{repository}/blobs/{digest}",
                                     method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_registry_serves_its_storage_as_it_is(tmp_path):
    """No blob descriptor cache: changes made behind the registry's back show at once."""
    storage = reg.filesystem_storage(tmp_path / "storage")
    store = reg.Store(storage)
    first, second = platform_image("amd64"), platform_image("arm64")
    with reg.start_registry(storage, tmp_path / "logs") as service:
        reg.push(service.url, "apps/web", "a", first, tmp_path)
        reg.push(service.url, "apps/web", "b", second, tmp_path)
        reg.pull(service.url, "apps/web", "b", tmp_path / "warm")  # would fill a cache

        store.put(reg.tag_current_key("apps/web", "a"), second.digest.encode())
        assert reg.manifest_digest(service.url, "apps/web", "a") == second.digest

        gone = second.blobs[-1].digest
        assert head_status(service.url, "apps/web", gone) == 200
        (store.root / reg.blob_key(gone)).unlink()
        assert head_status(service.url, "apps/web", gone) == 404  # a cache would still say 200


def test_registry_without_its_bucket_does_not_start(moto, tmp_path):
    storage = reg.s3_storage(moto.url, "no-such-bucket")
    with pytest.raises(RuntimeError, match="cannot read its storage"):
        reg.start_registry(storage, tmp_path / "logs")
