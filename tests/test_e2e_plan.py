"""End to end: `replicator plan` against what the `sync` after it reports, and saved plans.

Images are pushed with skopeo to Debian's docker-registry on a moto S3 bucket (region
``primary``). Policy ``prod`` replicates it, at the default concurrency, into four empty
regions: ``replica`` (another bucket on the same moto, same credentials: blobs copied
server-side, verified), ``mirror`` (another bucket reached as ``localhost``: a different
endpoint, so blobs stream through the replicator, the 6 MiB base layer as a multipart upload
of two 5 MiB parts), ``local`` (a directory), ``gcs-west`` (fake-gcs-server, 4 MiB
resumable chunks) and ``hub``, a registry reached through its HTTP API (uploads in 4 MiB
chunks, the base layer mounted into the second repository). Each region is priced from the
shipped tables (``config/pricing``) or inline. Policy ``back`` then replicates ``hub``, as a
registry source, into a directory.

The plan's tag, blob, byte and request figures must be exactly those the following
``sync --json`` reports, and its money the tables applied to them (computed here). Then a
saved plan is applied after one of its tags moved at the source: that tag is skipped and
reported (exit 1), the others applied, and a tag pushed after the plan is left alone.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs_storage

from replicator import sample_images as si
from tests import registry as reg
from tests.cdn_servers import RecordingServer, scripted
from tests.services import S3_CREDENTIALS

REPO_ROOT = Path(__file__).resolve().parents[1]
PRICING = REPO_ROOT / "config" / "pricing"
MIB = 1024 * 1024
GIB = 1024 ** 3
COUNTERS = ("tags_replicated", "tags_unchanged", "tags_deleted", "tags_failed", "manifests_copied",
            "blobs_copied", "blobs_present", "bytes_copied", "server_side_copies",
            "server_side_verified", "server_side_trusted", "server_side_bytes")
KINDS = ("list", "get", "head", "put", "copy", "delete")

BASE = si.layer({"usr/lib/libbase.so": random.Random(16).randbytes(6 * MIB + 12345)})
WEB_1 = si.image([BASE, si.layer({"srv/web": b"web 1\n"})])
WEB_2 = si.image([BASE, si.layer({"srv/web": b"web 2\n"})])
WEB_MULTI = si.index([
    si.image([BASE, si.layer({"srv/web": b"web amd64\n"})], architecture="amd64"),
    si.image([BASE, si.layer({"srv/web": b"web arm64\n"})], architecture="arm64"),
])
TOOLS = si.image([BASE, si.layer({"usr/bin/tool": b"tool 1\n"})])
INITIAL = {("apps/web", "1"): WEB_1, ("apps/web", "2"): WEB_2, ("apps/web", "multi"): WEB_MULTI,
           ("base/tools", "latest"): TOOLS}

TOOLS_2 = si.image([BASE, si.layer({"usr/bin/tool": b"tool 2\n"})])    # moves base/tools:latest
WEB_3 = si.image([BASE, si.layer({"srv/web": b"web 3\n"})])            # new apps/web:3
WEB_3_LATER = si.image([BASE, si.layer({"srv/web": b"web 3, moved after the plan\n"})])
WEB_4 = si.image([BASE, si.layer({"srv/web": b"web 4, pushed after the plan\n"})])

DESTINATIONS = ("replica", "mirror", "local", "gcs-west", "hub")
EDGE_BASES = ("https://registry-eu.example.com", "https://eu.example.org")
"""Region ``local`` is behind a CDN of these base URLs, purged with PURGE at one cache node."""
INLINE = {"egress_per_gib": {"default": 0.01, "internet": 0.05},
          "requests_per_1000": {"put": 0.001, "get": 0.0001}, "cdn_invalidation_path": 0.005}
"""The inline prices of region ``local``."""
PRICED_AS = {"primary": ("aws", "us-east-1"), "replica": ("aws", "us-west-2"),
             "mirror": ("aws", "eu-west-1"), "gcs-west": ("gcp", "europe-west4"),
             "hub": ("aws", "ap-south-1")}


def run(command: str, config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "REPLICATOR_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "replicator", command, "--config", str(config),
                             *args], capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                            timeout=300)
    assert S3_CREDENTIALS["secretkey"] not in result.stdout + result.stderr, "secret leaked"
    return result


def document(result: subprocess.CompletedProcess) -> dict:
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"exit {result.returncode} without JSON:\n{result.stdout[-2000:]}\n"
                    f"{result.stderr[-4000:]}")


class World:
    def __init__(self, moto_url: str, gcs_url: str, tmp: Path):
        self.tmp = tmp
        self.gcs = gcs = gcs_storage.Client(project="test", credentials=AnonymousCredentials(),
                                 client_options={"api_endpoint": gcs_url})
        mirror = reg.s3_storage(moto_url.replace("127.0.0.1", "localhost"), reg.create_bucket(moto_url))
        mirror["s3"]["chunksize"] = 5 * MIB
        self.storage = {
            "primary": reg.s3_storage(moto_url, reg.create_bucket(moto_url)),
            "replica": reg.s3_storage(moto_url, reg.create_bucket(moto_url)),
            "mirror": mirror,
            "local": reg.filesystem_storage(tmp / "local"),
            "gcs-west": {"gcs": {"bucket": gcs.create_bucket(f"plan-{uuid.uuid4().hex[:12]}").name,
                                 "endpoint": gcs_url, "rootdirectory": "/registry",
                                 "chunksize": 4 * MIB}},
        }
        self.storage["hub"] = reg.s3_storage(moto_url, reg.create_bucket(moto_url))
        self.hub = reg.start_registry(self.storage["hub"], tmp / "hub-logs")
        regions = {name: {"storage": block} for name, block in self.storage.items() if name != "hub"}
        regions["hub"] = {"registry": {"url": self.hub.url, "chunksize": 4 * MIB}}
        regions["back"] = {"storage": reg.filesystem_storage(tmp / "back")}
        self.edge = RecordingServer(scripted([]))
        regions["local"]["cdn"] = {"baseurls": list(EDGE_BASES), "http": {"nodes": [self.edge.url]}}
        self.document = {
            "state": {"path": str(tmp / "state.db")},
            "regions": regions,
            "policies": [{"name": "prod", "source": "primary", "destinations": list(DESTINATIONS),
                          "delete": True},
                         {"name": "back", "source": "hub", "destinations": ["back"]}],
            "pricing": {"files": [str(PRICING / "aws.yml"), str(PRICING / "gcp.yml")],
                        "regions": {**{name: entry for name, (_, entry) in PRICED_AS.items()},
                                    "local": INLINE}},
        }
        self.config = tmp / "replicator.yml"
        self.config.write_text(yaml.safe_dump(self.document, sort_keys=False))
        self.registry = reg.start_registry(self.storage["primary"], tmp / "logs")

    def push(self, tags: dict) -> None:
        for (repository, tag), image in tags.items():
            reg.push(self.registry.url, repository, tag, image, self.tmp / "work")

    def keys(self, region: str) -> set[str]:
        if region == "gcs-west":
            return {blob.name for blob in self.gcs.list_blobs(self.storage[region]["gcs"]["bucket"])}
        return reg.Store(self.storage[region]).keys()

    def delete_at_source(self, repository: str, tag: str) -> None:
        """Delete the tag from the source's storage, as the registry's tag delete would."""
        store = reg.Store(self.storage["primary"])
        prefix = reg.tag_current_key(repository, tag).rsplit("/current/", 1)[0] + "/"
        for key in store.keys(prefix):
            store.client.delete_object(Bucket=store.bucket, Key=store.prefix + key)

    def digest_at(self, region: str, repository: str, tag: str) -> str | None:
        """The tag's current link in the region's storage, read directly; ``None`` if absent."""
        key = reg.tag_current_key(repository, tag)
        if region == "gcs-west":
            blob = self.gcs.bucket(self.storage[region]["gcs"]["bucket"]).blob(f"registry/{key}")
            return blob.download_as_bytes().decode() if blob.exists() else None
        store = reg.Store(self.storage[region])
        return store.get(key).decode() if store.exists(key) else None


@pytest.fixture(scope="module")
def world(moto, fake_gcs, tmp_path_factory):
    world = World(moto.url, fake_gcs.url, tmp_path_factory.mktemp("plan"))
    try:
        world.push(INITIAL)
        yield world
    finally:
        world.registry.stop()
        world.hub.stop()
        world.edge.stop()


@pytest.fixture(scope="module")
def first(world):
    """The plan of the initial backfill, its text form, then the sync it predicts; what the
    destinations and the state store held after the plans."""
    planned = run("plan", world.config, "--policy", "prod", "--json")
    text = run("plan", world.config, "--policy", "prod")
    world.after_plan = {region: world.keys(region) for region in DESTINATIONS}
    world.purged_after_plan = len(world.edge.requests)
    world.state_after_plan = (world.tmp / "state.db").exists()
    synced = run("sync", world.config, "--policy", "prod", "--json")
    return document(planned), text, document(synced), planned.returncode, synced.returncode


@pytest.fixture(scope="module")
def from_registry(first, world):
    """Policy ``back``: the registry ``hub`` (filled by the first sync) as a source, planned,
    then synced into a directory."""
    planned = run("plan", world.config, "--policy", "back", "--json")
    synced = run("sync", world.config, "--policy", "back", "--json")
    return document(planned), document(synced)


@pytest.fixture(scope="module")
def unchanged(from_registry, world):
    return document(run("plan", world.config, "--json")), document(run("sync", world.config, "--json"))


def by_destination(doc: dict) -> dict[str, dict]:
    return {entry["destination"]: entry for entry in doc["passes"]}


def test_plan_exits_0_and_lists_every_tag_to_create(first):
    plan, _, _, code, _ = first
    assert code == 0 and plan["ok"]
    for destination in DESTINATIONS:
        tags = by_destination(plan)[destination]["tags"]
        assert {(t["repository"], t["tag"]): (t["action"], t["digest"]) for t in tags} == \
            {key: ("create", image.digest) for key, image in INITIAL.items()}


def test_plan_figures_equal_the_following_sync(first):
    plan, _, synced, _, code = first
    assert code == 0, synced
    planned, done = by_destination(plan), by_destination(synced)
    for destination in DESTINATIONS:
        # into a registry, whether a blob another tag just placed counts as present depends on
        # which tag is planned first: blobs_present is not a fixed figure there
        counters = [c for c in COUNTERS if destination != "hub" or c != "blobs_present"]
        assert {c: planned[destination][c] for c in counters} == {c: done[destination][c] for c in counters}
    assert plan["requests"] == synced["requests"]


def test_plan_counts_the_cdn_purges_the_sync_sends(first, world):
    plan, _, synced, _, _ = first
    repositories = {name for name, _ in INITIAL}
    urls = (len(INITIAL) + len(repositories)) * len(EDGE_BASES)   # each tag, each tag list
    assert plan["purge_paths"] == {"local": urls}
    assert plan["cdn_calls"] == synced["cdn_calls"] == {"local": urls}   # one PURGE per URL, one node
    assert world.purged_after_plan == 0 and len(world.edge.requests) == urls
    assert by_destination(plan)["local"]["purge_urls"] == urls


def test_plan_from_a_registry_source_equals_the_following_sync(from_registry):
    plan, synced = from_registry
    [planned], [done] = plan["passes"], synced["passes"]
    assert planned["tags_replicated"] == len(INITIAL) and done["tags_failed"] == 0
    assert {c: planned[c] for c in COUNTERS} == {c: done[c] for c in COUNTERS}
    assert plan["requests"] == synced["requests"]
    blobs = [blob for blob in reg.unique_blobs(INITIAL.values()).values() if not reg.is_manifest(blob)]
    assert plan["requests"]["hub"]["get"] == len(reg.unique_blobs(INITIAL.values()))   # each once
    assert plan["requests"]["hub"]["get"] - len(blobs) == planned["manifests_copied"]


def test_plan_of_a_registry_destination_mounts_what_another_repository_received(first):
    plan, *_ = first
    blobs = {digest: blob for digest, blob in reg.unique_blobs(INITIAL.values()).items()
             if not reg.is_manifest(blob)}
    children = len(reg.unique_blobs(INITIAL.values())) - len(blobs) - len(
        {image.digest for image in INITIAL.values()})
    chunked = -(-len(BASE.data) // (4 * MIB)) - 1   # PATCHes of the base layer
    # an upload per blob (POST, PUT), the base layer's PATCHes, a PUT per index child and per
    # tag (which stores the tag's manifest), and one mount: the base layer into the second repository
    assert plan["requests"]["hub"]["put"] == 2 * len(blobs) + chunked + children + len(INITIAL)
    assert plan["requests"]["hub"]["copy"] == 1


def test_plan_splits_streamed_and_server_side_copies(first):
    plan, *_ = first
    blobs = {digest: blob for digest, blob in reg.unique_blobs(INITIAL.values()).items()
             if not reg.is_manifest(blob)}
    blob_bytes = sum(len(blob.data) for blob in blobs.values())
    entries = by_destination(plan)
    assert entries["replica"]["server_side_copies"] == entries["replica"]["server_side_verified"] == len(blobs)
    assert entries["replica"]["server_side_bytes"] == blob_bytes
    for destination in ("mirror", "local", "gcs-west", "hub"):
        assert entries[destination]["server_side_copies"] == 0
        assert entries[destination]["blobs_copied"] == len(blobs)
        assert entries[destination]["bytes_copied"] - entries[destination]["manifest_bytes"] == blob_bytes
    assert plan["requests"]["primary"]["put"] == plan["requests"]["primary"]["delete"] == 0


def expected_cost(plan: dict) -> dict[str, float]:
    """The tables applied to the plan's figures, by region: requests where they are served,
    egress where bytes leave (the rate for another region of the same table, or the
    internet's), as the shipped tables and this config's inline prices say."""
    tables = {name: yaml.safe_load((PRICING / f"{name}.yml").read_text()) for name in ("aws", "gcp")}
    prices = {region: tables[table]["regions"][entry] for region, (table, entry) in PRICED_AS.items()}
    prices["local"] = INLINE
    unpriced = {region: 0.0 for region in plan["requests"] if region not in prices}
    cost = {region: sum(plan["requests"][region][kind] * prices[region]["requests_per_1000"].get(kind, 0)
                        for kind in KINDS) / 1000 for region in prices}
    egress_rate = {"replica": prices["primary"]["egress_per_gib"]["default"],   # aws -> aws
                   "hub": prices["primary"]["egress_per_gib"]["default"],
                   "mirror": prices["primary"]["egress_per_gib"]["default"],
                   "gcs-west": prices["primary"]["egress_per_gib"]["internet"],  # aws -> gcp
                   "local": prices["primary"]["egress_per_gib"]["internet"]}     # aws -> inline
    for entry in plan["passes"]:
        moved = entry["bytes_copied"] + entry["server_side_bytes"]
        cost["primary"] += moved / GIB * egress_rate[entry["destination"]]
    cost["local"] += plan["purge_paths"]["local"] * INLINE["cdn_invalidation_path"]
    return {**cost, **unpriced}


def test_plan_cost_is_the_tables_applied_to_its_figures(first):
    plan, *_ = first
    expected = expected_cost(plan)
    assert {region: money["total"] for region, money in plan["cost"]["regions"].items()} == \
        pytest.approx(expected, rel=1e-9)
    assert plan["cost"]["total"] == pytest.approx(sum(expected.values()), rel=1e-9)
    assert plan["cost"]["regions"]["primary"]["egress"] > 0


def test_plan_names_its_tables_and_their_date(first):
    plan, text, *_ = first
    tables = {table["name"]: table for table in plan["pricing"]["tables"]}
    assert tables["aws"]["taken"] == tables["gcp"]["taken"] == "2024-06"
    assert "https://aws.amazon.com/s3/pricing/" in tables["aws"]["sources"]
    assert plan["pricing"]["regions"]["gcs-west"] == "gcp europe-west4"
    assert text.returncode == 0, text.stderr
    assert "priced with aws (prices taken 2024-06" in text.stdout
    assert "priced with gcp (prices taken 2024-06" in text.stdout
    assert "estimated total: $" in text.stdout
    for destination in DESTINATIONS:
        assert f"prod: primary -> {destination}" in text.stdout


def test_plan_writes_nothing_and_leaves_no_state_store(first, world):
    assert world.after_plan == {region: set() for region in DESTINATIONS}
    assert world.state_after_plan is False
    assert world.digest_at("local", "apps/web", "1") == WEB_1.digest   # the sync wrote it


def test_plan_of_an_unchanged_registry_costs_listings_and_equals_the_sync(unchanged):
    plan, synced = unchanged
    for entry in plan["passes"]:
        assert entry["tags"] == [] and entry["tags_unchanged"] == len(INITIAL)
    assert plan["requests"] == synced["requests"]
    for region, counts in plan["requests"].items():
        # a registry, as source one manifest HEAD per tag; as destination its tag lists and
        # the state store's record of the tags moved there
        heads = len(INITIAL) if region == "hub" else 0
        assert {kind: counts[kind] for kind in KINDS if kind != "list"} == {
            "get": 0, "head": heads, "put": 0, "copy": 0, "delete": 0}, region


@pytest.fixture(scope="module")
def applied(unchanged, world):
    """A saved plan (base/tools:latest moves, apps/web:3 is new, apps/web:2 is deleted), then at
    the source apps/web:3 moves, apps/web:4 is pushed and apps/web:1 deleted, then `sync --plan`."""
    world.push({("base/tools", "latest"): TOOLS_2, ("apps/web", "3"): WEB_3})
    world.delete_at_source("apps/web", "2")
    saved = world.tmp / "plan.json"
    made = run("plan", world.config, "--out", str(saved))
    world.push({("apps/web", "3"): WEB_3_LATER, ("apps/web", "4"): WEB_4})
    world.delete_at_source("apps/web", "1")
    result = run("sync", world.config, "--plan", str(saved), "--json")
    return json.loads(saved.read_text()), made, result


def test_saved_plan_records_each_tag_with_its_source_digest(applied):
    saved, made, _ = applied
    assert made.returncode == 0, made.stderr
    for entry in (entry for entry in saved["passes"] if entry["policy"] == "prod"):
        assert {(t["repository"], t["tag"]): (t["action"], t["digest"]) for t in entry["tags"]} == {
            ("base/tools", "latest"): ("move", TOOLS_2.digest), ("apps/web", "3"): ("create", WEB_3.digest),
            ("apps/web", "2"): ("delete", None)}
        assert entry["tags_deleted"] == 1


def test_saved_plan_skips_a_tag_changed_since_and_reports_it(applied, world):
    _, _, result = applied
    assert result.returncode == 1, result.stderr
    report = document(result)
    for entry in (entry for entry in report["passes"] if entry["policy"] == "prod"):
        assert (entry["tags_replicated"], entry["tags_deleted"]) == (1, 1)
        assert [(f["repository"], f["tag"], f["kind"]) for f in entry["failures"]] == \
            [("apps/web", "3", "changed")]
        assert WEB_3.digest in entry["failures"][0]["error"] and WEB_3_LATER.digest in entry["failures"][0]["error"]
    for region in DESTINATIONS:
        assert world.digest_at(region, "base/tools", "latest") == TOOLS_2.digest
        assert world.digest_at(region, "apps/web", "3") is None


def test_saved_plan_deletes_what_it_planned_and_costs_what_it_said(applied, world):
    saved, _, result = applied
    for region in DESTINATIONS:
        assert world.digest_at(region, "apps/web", "2") is None
        assert saved["requests"][region]["delete"] == document(result)["requests"][region]["delete"] > 0


def test_saved_plan_applies_nothing_it_did_not_plan(applied, world):
    for region in DESTINATIONS:
        assert world.digest_at(region, "apps/web", "4") is None
        assert world.digest_at(region, "apps/web", "1") == WEB_1.digest   # deleted after the plan


def test_sync_after_a_saved_plan_replicates_the_rest(applied, world):
    result = run("sync", world.config, "--json")
    assert result.returncode == 0, result.stderr
    for region in DESTINATIONS:
        assert world.digest_at(region, "apps/web", "3") == WEB_3_LATER.digest
        assert world.digest_at(region, "apps/web", "4") == WEB_4.digest
        assert world.digest_at(region, "apps/web", "1") is None


def test_a_malformed_saved_plan_exits_2(world, tmp_path):
    bad = tmp_path / "bad.json"
    for content in ("not json", json.dumps({"format": "something else"}),
                    json.dumps({"format": "replicator-plan/1", "config": {}})):
        bad.write_text(content)
        result = run("sync", world.config, "--plan", str(bad))
        assert result.returncode == 2 and "--plan" in result.stderr, result.stderr


def test_a_plan_for_another_configuration_exits_2(applied, world, tmp_path):
    other = dict(world.document, policies=[{"name": "other", "source": "primary",
                                            "destinations": ["local"]}])
    config = tmp_path / "other.yml"
    config.write_text(yaml.safe_dump(other))
    result = run("sync", config, "--plan", str(world.tmp / "plan.json"))
    assert result.returncode == 2 and "another configuration" in result.stderr, result.stderr
