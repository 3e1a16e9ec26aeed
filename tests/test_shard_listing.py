"""What each shard lists, counted by the drivers over real HTTP to moto's S3 server.

A pass of shard ``i/N`` over an unchanged registry lists about 1/N of what one full listing
costs, plus a constant (the discovery page and a partial last page per owned repository),
at the source and at the destination; the shards together still replicate everything.
"""

import math
import uuid
from collections import Counter

import boto3
import pytest

from replicator import config as config_module
from replicator import layout, sample_images
from replicator.engine import RunOptions, run_policy
from replicator.listing import costs, outermost, repository_of, targeted
from replicator.sharding import Shard, owner
from state.store import StateStore
from tests.services import S3_CREDENTIALS
from tests.test_request_counts import BASE, IMAGES, NON_LIST, fill, s3_block

TAGS_PER_REPOSITORY = 370
"""About 760 keys a repository (two per tag, plus layer and revision links): one page each, four
in a full listing of the four. Small, because moto scans the whole bucket for every page."""


def test_keys_belong_to_the_repository_before_their_first_underscore_directory():
    root = layout.REPOSITORIES_PREFIX
    assert repository_of(root + "apps/web/_layers/sha256/aa/link") == "apps/web"
    assert repository_of(root + "my_app/_manifests/tags/v1/current/link") == "my_app"
    assert repository_of(root + "stray-file") == ""
    assert outermost(["apps/web", "base", "apps", "apps-x", "ns/deep/one"]) == [
        "apps", "apps-x", "base", "ns/deep/one"]


@pytest.mark.parametrize("known, wanted, expected", [
    ({}, {"a"}, (1, 1, False)),                                            # nothing known: full
    (dict.fromkeys("abcd", 2500), {"a"}, (10, 1 + 3, True)),
    (dict.fromkeys("abcd", 2500), set("abcd"), (10, 1 + 12, False)),       # one shard
    (dict.fromkeys("abcdefgh", 300), {"a", "b"}, (3, 1 + 2, False)),       # small ones: full
    ({"apps": 500, "apps/web": 900, "b": 4000}, {"apps"}, (6, 1 + 2, True)),  # lists apps/web too
])
def test_the_cheaper_listing_is_chosen(known, wanted, expected):
    full, target, chosen = expected
    assert targeted(known, wanted.__contains__, 1000) is chosen
    if known:
        assert costs(known, wanted.__contains__, 1000) == (full, target)


def test_key_counts_of_repositories_not_listed_are_kept(tmp_path):
    state = StateStore(tmp_path / "state.db")
    state.record_listing_keys("r", {"a": 10, "b": 20, "": 1}, set())
    state.record_listing_keys("r", {"a": 12}, {"b", ""})
    assert state.listing_keys("r") == {"a": 12, "b": 20, "": 1}
    assert state.listing_keys("other") == {}


def balanced_names() -> list[str]:
    """Four repository names of which each shard of 4 owns one and each shard of 2 owns two."""
    candidates = [f"team/app{i}" for i in range(1000)]
    return [next(name for name in candidates if (owner(name, 4), owner(name, 2)) == (index, index % 2))
            for index in range(4)]


REPOSITORIES = balanced_names()


def s3_client(moto):
    return boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                        aws_access_key_id=S3_CREDENTIALS["accesskey"],
                        aws_secret_access_key=S3_CREDENTIALS["secretkey"])


def keys_by_repository(moto, bucket: str) -> Counter[str]:
    """The bucket's keys under the repositories prefix, by repository, listed apart from the
    drivers."""
    pages = s3_client(moto).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="registry/" + layout.REPOSITORIES_PREFIX)
    return Counter(repository_of(item["Key"].removeprefix("registry/"))
                   for page in pages for item in page.get("Contents", []))


def pages(keys: int) -> int:
    return max(1, math.ceil(keys / 1000))


def current_links(storage) -> dict[str, str]:
    """Every tag's ``current/link`` with its etag (S3's: the MD5 of its bytes), from a listing."""
    return {info.key: info.etag for page in storage.list(layout.REPOSITORIES_PREFIX) for info in page
            if info.key.endswith("/current/link")}


@pytest.fixture(scope="module")
def world(moto, tmp_path_factory):
    buckets = {name: f"shards-{name}-{uuid.uuid4().hex[:8]}" for name in ("src", "dst")}
    for bucket in buckets.values():
        s3_client(moto).create_bucket(Bucket=bucket)
    config = config_module.parse({
        "state": {"path": str(tmp_path_factory.mktemp("state") / "state.db")},
        "concurrency": 16,
        "regions": {name: {"storage": s3_block(moto, bucket)} for name, bucket in buckets.items()},
        "policies": [{"name": "p", "source": "src", "destinations": ["dst"]}],
    })
    fill(config.regions["src"].storage, {(name, f"v{t}"): IMAGES[(r + t) % len(IMAGES)]
                                          for r, name in enumerate(REPOSITORIES)
                                          for t in range(TAGS_PER_REPOSITORY)})
    state = StateStore(config.state_path)
    yield config, state, buckets
    state.close()


def counted_pass(config, state, shard: Shard):
    before = {name: region.storage.requests.snapshot() for name, region in config.regions.items()}
    [report] = run_policy(config, config.policies[0], state, RunOptions(concurrency=16, shard=shard))
    after = {name: region.storage.requests.snapshot() for name, region in config.regions.items()}
    return report, {name: {kind: after[name][kind] - before[name][kind] for kind in after[name]}
                    for name in after}


def test_two_shards_replicate_every_tag_once(world):
    config, state, _ = world
    replicated = [counted_pass(config, state, Shard(index, 2))[0].tags_replicated
                  for index in range(2)]
    assert replicated == [2 * TAGS_PER_REPOSITORY] * 2
    assert current_links(config.regions["dst"].storage) == current_links(config.regions["src"].storage)


def test_one_shard_lists_everything_in_one_listing(world, moto):
    config, state, buckets = world
    report, requests = counted_pass(config, state, Shard(0, 1))
    assert report.tags_unchanged == len(REPOSITORIES) * TAGS_PER_REPOSITORY
    for region in ("src", "dst"):
        keys = keys_by_repository(moto, buckets[region])
        assert requests[region]["list"] == pages(sum(keys.values())) == 4


@pytest.mark.parametrize("count", [2, 4])
def test_each_shard_lists_its_share_plus_a_constant(world, moto, count):
    config, state, buckets = world
    keys = {region: keys_by_repository(moto, bucket) for region, bucket in buckets.items()}
    full = {region: pages(sum(counts.values())) for region, counts in keys.items()}
    for index in range(count):
        report, requests = counted_pass(config, state, Shard(index, count))
        owned = [name for name in REPOSITORIES if owner(name, count) == index]
        assert report.tags_unchanged == len(owned) * TAGS_PER_REPOSITORY
        assert report.tags_replicated == report.tags_failed == 0
        for region in buckets:
            assert {kind: requests[region][kind] for kind in NON_LIST} == dict.fromkeys(NON_LIST, 0)
            own_pages = sum(pages(keys[region][name]) for name in owned)
            assert requests[region]["list"] == 1 + own_pages  # the discovery, then its own
            assert requests[region]["list"] <= full[region] / count + 1 + len(owned)
            assert requests[region]["list"] < full[region]


def test_four_shards_replicate_a_moved_tag_in_every_repository(world):
    config, state, _ = world
    moved = {(name, "v7"): sample_images.image([BASE, sample_images.layer({"app": name.encode()})])
             for name in REPOSITORIES}
    fill(config.regions["src"].storage, moved)
    replicated = [counted_pass(config, state, Shard(index, 4))[0].tags_replicated
                  for index in range(4)]
    assert replicated == [1, 1, 1, 1]
    assert current_links(config.regions["dst"].storage) == current_links(config.regions["src"].storage)


def test_discovery_finds_the_repositories_a_real_registry_catalogs(tmp_path):
    """skopeo pushes to Debian's docker-registry (nested, underscored and plain names), and an
    upload is left open in a repository of its own: one discovery listing of its storage finds
    every repository of its ``_catalog``, plus the one holding only ``_uploads`` (which the
    catalog leaves out, and whose listing finds no tag)."""
    from drivers.filesystem import FilesystemDriver
    from drivers.registry import RegistryClient
    from replicator.listing import discover
    from tests import registry as reg

    image = sample_images.image([sample_images.layer({"app": b"discovered\n"})])
    root = tmp_path / "registry"
    with reg.start_registry(reg.filesystem_storage(root), tmp_path / "logs") as registry:
        for name in ("apps/web", "apps/web/api", "my_app", "tools"):
            reg.push(registry.url, name, "1", image, tmp_path / "work")
        client = RegistryClient.from_config({"url": registry.url})
        client.send("POST", client.endpoint("/v2/pending/blobs/uploads/"), kind="put").close()
        catalog = sorted(name for page in client.catalog() for name in page)
    storage = FilesystemDriver(str(root))
    assert catalog == ["apps/web", "apps/web/api", "my_app", "tools"]
    assert sorted(discover(storage)) == sorted([*catalog, "pending"])
    assert storage.requests.snapshot()["list"] == 1
