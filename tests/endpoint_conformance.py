"""The conformance suite every endpoint kind passes (``replicator.endpoints``).

A kind's test module declares ``class TestX(EndpointConformance)`` and provides the fixture
``endpoint``: a fresh, empty :class:`~replicator.endpoints.base.Destination`. Images are
written through the interface alone, as a pass writes them (:func:`write_image`), and read back
through it; the suite never looks behind the endpoint.
"""

from __future__ import annotations

import json

import pytest

from drivers.errors import NotFound
from replicator import sample_images as si
from replicator.endpoints.base import Destination
from replicator.manifests import MAX_MANIFEST_SIZE, parse_manifest

BASE = si.layer({"etc/os-release": b"ID=endpoint-suite\n"})
ONE = si.image([BASE, si.layer({"srv/app": b"one\n"})])
TWO = si.image([BASE, si.layer({"srv/app": b"two\n"})])
MULTI = si.index([ONE, si.image([BASE, si.layer({"srv/app": b"arm\n"})], architecture="arm64")])
DOCKER = si.image([si.layer({"srv/app": b"docker\n"}, oci=False)], oci=False)


def _referrers(subject: si.Image) -> si.Image:
    """An OCI 1.1 referrer of ``subject`` (an SBOM with ``subject`` and ``artifactType``, the
    empty config) under the fallback index that lists it, as oras writes them."""
    empty = si.Blob("application/vnd.oci.empty.v1+json", b"{}")
    sbom = si.Blob("application/spdx+json", b'{"spdxVersion": "SPDX-2.3"}')
    referrer = si.Image(si.Blob(si.OCI_MANIFEST, json.dumps({
        "schemaVersion": 2, "mediaType": si.OCI_MANIFEST, "artifactType": sbom.media_type,
        "config": empty.descriptor(), "layers": [sbom.descriptor()],
        "subject": subject.manifest.descriptor()}).encode()), (empty, sbom))
    return si.Image(si.Blob(si.OCI_INDEX, json.dumps({
        "schemaVersion": 2, "mediaType": si.OCI_INDEX,
        "manifests": [referrer.manifest.descriptor(artifactType=sbom.media_type)]}).encode()),
        (), (referrer,))


REFERRERS = _referrers(ONE)


def tree_of(image: si.Image) -> dict:
    return {item.digest: parse_manifest(item.manifest.data, item.digest)
            for item in (image, *image.children)}


def write_image(endpoint: Destination, name: str, tag: str, image: si.Image, after_step=None):
    """Write ``name:tag`` at ``image`` as a pass does: plan, copy what the plan lists, then make
    its steps in order (``after_step()`` is called after each). Returns the plan."""
    held = endpoint.destination_snapshot(None, None, True)
    plan = held.plan(name, tag, image.digest, tree_of(image), held.tag_digest(name, tag))
    data = {blob.digest: blob.data for blob in image.all_blobs()}
    for blob in plan.blobs:
        endpoint.blob_write(name, blob.digest, blob.size, [data[blob.digest]])
    for manifest in plan.manifests:
        endpoint.manifest_write(name, manifest)
    for step in plan.links:
        if not held.made(step):
            token = held.apply(step)
            if step == plan.move:
                held.record_tag(name, tag, token, image.digest)
        if after_step is not None:
            after_step()
    return plan


def pullable(endpoint: Destination, name: str, image: si.Image) -> bool:
    """Whether everything a pull of ``image`` from ``name`` needs can be read back, byte-exact."""
    for item in (image, *image.children):
        if endpoint.manifest_read(name, item.digest, MAX_MANIFEST_SIZE) != item.manifest.data:
            return False
        for blob in item.blobs:
            if b"".join(endpoint.blob_open(name, blob.digest)) != blob.data:
                return False
            if endpoint.blob_size(name, blob.digest) != len(blob.data):
                return False
    return True


class EndpointConformance:
    """Mixin of the tests every endpoint kind passes; subclasses provide ``endpoint``."""

    @pytest.fixture
    def endpoint(self) -> Destination:
        raise NotImplementedError("an endpoint kind's test class provides a fresh, empty endpoint")

    def test_an_empty_endpoint_has_no_tags_and_nothing_to_read(self, endpoint):
        assert dict(endpoint.snapshot(None, None, True).tags) == {}
        with pytest.raises(NotFound):
            endpoint.tag_read("app/web", "1")
        with pytest.raises(NotFound):
            endpoint.blob_size("app/web", BASE.digest)
        with pytest.raises(NotFound):
            endpoint.manifest_read("app/web", ONE.digest, MAX_MANIFEST_SIZE)

    @pytest.mark.parametrize("image", [ONE, MULTI, DOCKER], ids=["oci", "index", "docker"])
    def test_a_written_image_reads_back_byte_exact(self, endpoint, image):
        write_image(endpoint, "app/web", "1", image)
        assert endpoint.tag_read("app/web", "1") == image.digest
        snapshot = endpoint.snapshot(None, None, True)
        assert list(snapshot.tags) == [("app/web", "1")]
        assert snapshot.tag_digest("app/web", "1") == image.digest
        assert pullable(endpoint, "app/web", image)

    def test_a_second_plan_for_the_same_tag_is_empty(self, endpoint):
        write_image(endpoint, "app/web", "1", MULTI)
        held = endpoint.destination_snapshot(None, None, True)
        assert held.tag_digest("app/web", "1") == MULTI.digest
        plan = held.plan("app/web", "1", MULTI.digest, tree_of(MULTI), MULTI.digest)
        assert plan.empty and plan.move is None

    def test_moving_a_tag_copies_only_new_content(self, endpoint):
        write_image(endpoint, "app/web", "1", ONE)
        plan = write_image(endpoint, "app/web", "1", TWO)
        assert BASE.digest in plan.reused
        assert {blob.digest for blob in plan.blobs} == {TWO.blobs[0].digest, TWO.blobs[-1].digest}
        assert plan.move is not None and endpoint.tag_read("app/web", "1") == TWO.digest

    def test_a_tag_is_never_visible_before_everything_a_pull_needs(self, endpoint):
        seen = []

        def check() -> None:
            try:
                digest = endpoint.tag_read("app/web", "multi")
            except NotFound:
                return
            assert digest == MULTI.digest and pullable(endpoint, "app/web", MULTI)
            seen.append(digest)

        write_image(endpoint, "app/web", "multi", MULTI, after_step=check)
        assert seen   # visible after the plan's last steps

    def test_a_blob_whose_chunks_fail_is_not_stored(self, endpoint):
        blob = ONE.blobs[-1]

        def chunks():
            yield blob.data[:1]
            raise RuntimeError("the bytes did not check out")

        with pytest.raises(RuntimeError):
            endpoint.blob_write("app/web", blob.digest, len(blob.data), chunks())
        with pytest.raises(NotFound):
            endpoint.blob_size("app/web", blob.digest)

    def test_referrers_and_their_fallback_tag_read_back(self, endpoint):
        write_image(endpoint, "app/web", "1", ONE)
        tag = ONE.digest.replace(":", "-")
        write_image(endpoint, "app/web", tag, REFERRERS)
        assert endpoint.tag_read("app/web", tag) == REFERRERS.digest
        assert pullable(endpoint, "app/web", REFERRERS)
        (referrer,) = REFERRERS.children
        parsed = parse_manifest(endpoint.manifest_read("app/web", referrer.digest,
                                                       MAX_MANIFEST_SIZE), referrer.digest)
        assert (parsed.subject, parsed.artifact_type) == (ONE.digest, "application/spdx+json")

    def test_steps_describe_themselves(self, endpoint):
        held = endpoint.destination_snapshot(None, None, True)
        plan = held.plan("app/web", "1", ONE.digest, tree_of(ONE), None)
        assert plan.links and plan.move in plan.links
        assert all(ONE.digest in held.describe(step) or step != plan.move for step in plan.links)
