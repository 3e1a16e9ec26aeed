import json

from replicator import layout, sample_images
from replicator.manifests import digest_of, parse_manifest
from replicator.planner import is_foreign, plan_tag

BASE = sample_images.layer({"base": b"b"})
AMD = sample_images.image([BASE, sample_images.layer({"app": b"amd"})])
ARM = sample_images.image([BASE, sample_images.layer({"app": b"arm"})], architecture="arm64")
INDEX = sample_images.index([AMD, ARM])
MANIFESTS = {image.digest: parse_manifest(image.manifest.data, image.digest)
             for image in (AMD, ARM, INDEX)}


def test_empty_destination_gets_everything_current_link_after_all_a_pull_needs():
    plan = plan_tag("app", "multi", INDEX.digest, MANIFESTS, set(), set())
    blob_digests = {blob.digest for image in (AMD, ARM) for blob in image.blobs}
    assert {blob.digest for blob in plan.blobs} == blob_digests
    assert len(plan.blobs) == len(blob_digests)
    assert [m.digest for m in plan.manifests] == [AMD.digest, ARM.digest, INDEX.digest]
    keys = [key for key, _ in plan.links]
    assert keys[-2] == layout.tag_current_key("app", "multi")
    assert keys[-1] == layout.tag_index_key("app", "multi", INDEX.digest)
    assert len(keys) == len(set(keys))


def test_links_are_bottom_up_children_before_index():
    plan = plan_tag("app", "multi", INDEX.digest, MANIFESTS, set(), set())
    keys = [key for key, _ in plan.links]
    position = keys.index
    for child in (AMD, ARM):
        revision = position(layout.revision_link_key("app", child.digest))
        assert revision < position(layout.revision_link_key("app", INDEX.digest))
        for blob in child.blobs:
            assert position(layout.layer_link_key("app", blob.digest)) < revision


def test_present_blobs_and_links_are_reused_not_copied():
    present_blobs = {BASE.digest, AMD.digest}
    present_links = {layout.layer_link_key("app", BASE.digest)}
    plan = plan_tag("app", "1.0", AMD.digest, MANIFESTS, present_blobs, present_links)
    assert BASE.digest not in {blob.digest for blob in plan.blobs}
    assert plan.manifests == ()
    assert plan.reused == frozenset({BASE.digest, AMD.digest})
    assert layout.layer_link_key("app", BASE.digest) not in dict(plan.links)


def test_current_link_is_written_even_when_everything_else_is_present():
    links = {layout.revision_link_key("app", AMD.digest), layout.tag_index_key("app", "1.0", AMD.digest)}
    links |= {layout.layer_link_key("app", blob.digest) for blob in AMD.blobs}
    plan = plan_tag("app", "1.0", AMD.digest, MANIFESTS, {b.digest for b in AMD.all_blobs()}, links)
    assert plan.links == ((layout.tag_current_key("app", "1.0"), AMD.digest),)


def test_foreign_layers_are_neither_copied_nor_linked():
    foreign = {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
               "digest": "sha256:" + "f" * 64, "size": 10, "urls": ["https://example.invalid/l"]}
    document = json.loads(AMD.manifest.data)
    document["layers"].append(foreign)
    data = json.dumps(document).encode()
    manifest = parse_manifest(data, digest_of(data))
    assert is_foreign(manifest.blobs[-1])
    plan = plan_tag("app", "win", manifest.digest, {manifest.digest: manifest}, set(), set())
    assert foreign["digest"] not in {blob.digest for blob in plan.blobs}
    assert layout.layer_link_key("app", foreign["digest"]) not in dict(plan.links)
    assert len(plan.blobs) == len(AMD.blobs)


def test_a_tag_already_pointing_right_only_gets_its_missing_index_link():
    links = {layout.revision_link_key("app", AMD.digest)}
    links |= {layout.layer_link_key("app", blob.digest) for blob in AMD.blobs}
    plan = plan_tag("app", "1.0", AMD.digest, MANIFESTS, {b.digest for b in AMD.all_blobs()}, links,
                    current=AMD.digest)
    assert plan.links == ((layout.tag_index_key("app", "1.0", AMD.digest), AMD.digest),)
