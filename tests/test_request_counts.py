"""What passes cost in storage requests, counted by moto's S3 server over real HTTP.

Design invariant 4: a pass over an unchanged registry costs listings only, and no more list
requests than there are listing pages.
"""

import math
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from replicator import config as config_module
from replicator import layout, sample_images
from replicator.engine import RunOptions, run_policy
from replicator.manifests import parse_manifest
from replicator.planner import plan_tag
from state.store import StateStore
from tests.services import S3_CREDENTIALS

REPOSITORIES, TAGS_PER_REPOSITORY = 10, 100
BASE = sample_images.layer({"base": b"base"})
IMAGES = [sample_images.image([BASE, sample_images.layer({"app": str(i).encode()})]) for i in range(5)]
NON_LIST = ("get", "head", "put", "copy", "delete")


def s3_block(moto, bucket):
    return {"s3": {**S3_CREDENTIALS, "bucket": bucket, "regionendpoint": moto.url,
                   "rootdirectory": "/registry", "secure": False}}


def fill(storage, tags):
    """Write ``tags`` ((repository, tag) -> image) as a registry would, in parallel."""
    writes = {}
    for (name, tag), image in tags.items():
        for blob in image.all_blobs():
            writes[layout.blob_key(blob.digest)] = blob.data
        manifests = {image.digest: parse_manifest(image.manifest.data, image.digest)}
        for key, digest in plan_tag(name, tag, image.digest, manifests, set(), set()).links:
            writes[key] = layout.link_bytes(digest)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: storage.write(*item), writes.items()))


def page_count(moto, bucket, prefix):
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                          aws_access_key_id=S3_CREDENTIALS["accesskey"],
                          aws_secret_access_key=S3_CREDENTIALS["secretkey"])
    keys = sum(page.get("KeyCount", 0) for page in
               client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix))
    return max(1, math.ceil(keys / 1000))


@pytest.fixture(scope="module")
def world(moto, tmp_path_factory):
    buckets = {name: f"counts-{name}-{uuid.uuid4().hex[:8]}" for name in ("src", "dst")}
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                          aws_access_key_id=S3_CREDENTIALS["accesskey"],
                          aws_secret_access_key=S3_CREDENTIALS["secretkey"])
    for bucket in buckets.values():
        client.create_bucket(Bucket=bucket)
    config = config_module.parse({
        "state": {"path": str(tmp_path_factory.mktemp("state") / "state.db")},
        "concurrency": 16,
        "regions": {name: {"storage": s3_block(moto, bucket)} for name, bucket in buckets.items()},
        "policies": [{"name": "p", "source": "src", "destinations": ["dst"]}],
    })
    tags = {(f"team/app{r}", f"v{t}"): IMAGES[(r + t) % len(IMAGES)]
            for r in range(REPOSITORIES) for t in range(TAGS_PER_REPOSITORY)}
    fill(config.regions["src"].storage, tags)
    state = StateStore(config.state_path)
    yield config, state, buckets
    state.close()


def counted_pass(config, state):
    before = {name: region.storage.requests.snapshot() for name, region in config.regions.items()}
    [report] = run_policy(config, config.policies[0], state, RunOptions(concurrency=16))
    after = {name: region.storage.requests.snapshot() for name, region in config.regions.items()}
    return report, {name: {kind: after[name][kind] - before[name][kind] for kind in after[name]}
                    for name in after}


def test_first_pass_replicates_1000_tags(world):
    config, state, _ = world
    report, requests = counted_pass(config, state)
    assert (report.tags_replicated, report.tags_failed) == (1000, 0)
    assert report.blobs_copied == 1 + 2 * len(IMAGES) and report.manifests_copied == len(IMAGES)
    assert requests["src"]["put"] == requests["src"]["delete"] == 0


def test_unchanged_pass_over_1000_tags_costs_listing_pages_only(world, moto):
    config, state, buckets = world
    report, requests = counted_pass(config, state)
    assert report.tags_unchanged == 1000 and report.tags_replicated == 0
    for region in ("src", "dst"):
        assert {kind: requests[region][kind] for kind in NON_LIST} == dict.fromkeys(NON_LIST, 0)
        pages = page_count(moto, buckets[region], "registry/" + layout.REPOSITORIES_PREFIX)
        assert requests[region]["list"] == pages


def test_moving_one_tag_costs_a_handful_of_reads_and_its_new_blobs(world):
    config, state, _ = world
    moved = sample_images.image([BASE, sample_images.layer({"app": b"moved"})])
    fill(config.regions["src"].storage, {("team/app3", "v7"): moved})
    report, requests = counted_pass(config, state)
    assert (report.tags_replicated, report.tags_unchanged) == (1, 999)
    assert (report.blobs_copied, report.manifests_copied) == (2, 1)
    # one moto server, one set of credentials: the layer and config are copied server-side
    assert report.server_side_copies == 2
    assert requests["src"]["get"] == 1 + 1  # tag link, manifest
    assert requests["src"]["head"] == 2  # the size of the layer and of the config
    new_links = 2 + 1 + 1 + 1  # layer links, revision link, tag index link, current link
    assert requests["dst"]["put"] == 1 + new_links  # the manifest, the links
    assert requests["dst"]["copy"] == 2
    assert requests["dst"]["get"] == requests["dst"]["head"] == 0
