"""Artifacts travel with their image: cosign signatures, attestations and SBOMs (by tag) and
OCI 1.1 referrers (by digest, found through the fallback index tag), real registries end to end.

Registry A (Debian's docker-registry on a filesystem root) gets images pushed with skopeo in
repository ``apps/app``: ``v1`` (one platform), ``v2`` (a two-platform index) and ``dev``. Each
gets artifacts made as cosign and oras make them: ``v1`` a signature, an attestation, an SBOM
and an OCI referrer (an SPDX document with ``subject``) which is itself signed; ``v2`` a
signature of the index, one of each child and a referrer of one child; ``dev`` a signature and
a referrer. A policy selecting ``v*`` replicates A's storage into a filesystem region (then
served by registry B) and into registry C through its API: every artifact of ``v1`` and ``v2``
arrives, none of ``dev``'s. A policy with ``artifacts: tags`` into another filesystem region
replicates the two tags alone. A second pass of each costs the same requests: following
artifacts costs nothing beyond the listings when nothing changed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from replicator import audit
from replicator import sample_images as si
from tests import registry as reg
from tests import supply_chain as sc
from tests.test_e2e_sync import REPO_ROOT, write_config

REPO = "apps/app"
V1 = si.image([si.layer({"srv/app": b"artifacts v1\n"})])
V2 = si.index([si.image([si.layer({"srv/app": b"artifacts v2 amd64\n"})]),
               si.image([si.layer({"srv/app": b"artifacts v2 arm64\n"})], architecture="arm64")])
DEV = si.image([si.layer({"srv/app": b"artifacts dev\n"})])


def sync(config: Path, *args: str) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "replicator", "sync", "--config", str(config),
                             "--json", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=300, check=False)
    assert result.returncode in (0, 1), result.stdout[-2000:] + result.stderr[-3000:]
    return result.returncode, json.loads(result.stdout)


def passes(document: dict) -> dict[str, dict]:
    return {report["destination"]: report for report in document["passes"]}


def artifact_tags(api: sc.Api) -> dict[str, str]:
    """The source's artifact tags in ``REPO`` and their digests."""
    return {tag: sc.descriptor(api, REPO, tag)["digest"] for tag in api.tags(REPO)
            if tag.startswith("sha256-")}


def fallback(digest: str) -> str:
    return f"sha256-{sc.hex_of(digest)}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("artifacts")
    with sc.primary_registry(tmp) as (primary, local, services, api):
        a = services[0].url
        for tag, image in (("v1", V1), ("v2", V2), ("dev", DEV)):
            reg.push(a, REPO, tag, image, tmp / "work")
        key = sc.new_key()
        followed: set[str] = set()
        referrers: set[str] = set()
        for image in (V1, V2):
            sc.sign(api, REPO, image.digest, key)
            followed.add(f"{fallback(image.digest)}.sig")
        for suffix in ("att", "sbom"):
            sc.attach(api, REPO, V1.digest, suffix, key)
            followed.add(f"{fallback(V1.digest)}.{suffix}")
        sbom, _ = sc.refer(api, REPO, V1.manifest.descriptor(), sc.SPDX, b'{"spdx": "v1"}')
        sc.sign(api, REPO, sbom, key)           # a signature of a referrer: found by digest only
        followed |= {fallback(V1.digest), f"{fallback(sbom)}.sig"}
        for child in V2.children:
            sc.sign(api, REPO, child.digest, key)
            followed.add(f"{fallback(child.digest)}.sig")
        child_sbom, _ = sc.refer(api, REPO, V2.children[1].manifest.descriptor(), sc.SPDX,
                                 b'{"spdx": "v2 arm64"}')
        followed.add(fallback(V2.children[1].digest))
        referrers |= {sbom, child_sbom}
        sc.sign(api, REPO, DEV.digest, key)
        dev_referrer, _ = sc.refer(api, REPO, DEV.manifest.descriptor(), sc.SPDX, b'{"spdx": "dev"}')
        source_artifacts = artifact_tags(api)
        regions = {"primary": {"storage": primary},
                   "local": {"storage": local},
                   "plain": {"storage": reg.filesystem_storage(tmp / "plain")},
                   "typed": {"storage": reg.filesystem_storage(tmp / "typed")}}
        services.append(reg.start_registry(reg.filesystem_storage(tmp / "c"), tmp / "logs"))
        regions["c"] = {"registry": {"url": services[-1].url}}
        tags = {"include": ["v*"]}
        follow = write_config(tmp / "follow.yml", {
            "state": {"path": str(tmp / "follow.db")}, "concurrency": 2, "regions": regions,
            "audit": {"path": str(tmp / "audit.jsonl")},
            "policies": [{"name": "follow", "source": "primary", "destinations": ["local", "c"],
                          "tags": tags}]})
        by_tags = write_config(tmp / "tags.yml", {
            "state": {"path": str(tmp / "tags.db")}, "concurrency": 2, "regions": regions,
            "policies": [{"name": "tags", "source": "primary", "destinations": ["plain"],
                          "tags": tags, "artifacts": "tags"}]})
        typed = write_config(tmp / "typed.yml", {
            "state": {"path": str(tmp / "typed.db")}, "regions": regions,
            "policies": [{"name": "typed", "source": "primary", "destinations": ["typed"],
                          "tags": tags, "artifact_types": {"exclude": [sc.SPDX]}}]})
        planned = sync(follow, "--dry-run")
        first = {"follow": sync(follow), "tags": sync(by_tags), "typed": sync(typed)}
        second = {"follow": sync(follow), "tags": sync(by_tags)}
        third = {"follow": sync(follow), "tags": sync(by_tags)}
        verified = subprocess.run([sys.executable, "-m", "replicator", "verify", "--config",
                                   str(follow), "--json"], capture_output=True, text=True,
                                  cwd=REPO_ROOT, timeout=300, check=False)
        services.append(reg.start_registry(regions["local"]["storage"], tmp / "logs"))
        services.append(reg.start_registry(regions["plain"]["storage"], tmp / "logs"))
        services.append(reg.start_registry(regions["typed"]["storage"], tmp / "logs"))
        yield {"tmp": tmp, "source": source_artifacts, "sbom": sbom, "followed": followed,
               "referrers": referrers, "dev": {f"{fallback(DEV.digest)}.sig", fallback(DEV.digest)},
               "dev_referrer": dev_referrer, "planned": planned, "first": first,
               "second": second, "third": third, "verified": verified, "b": sc.Api(services[2].url),
               "c": sc.Api(services[1].url), "plain": sc.Api(services[3].url),
               "typed": sc.Api(services[4].url), "sboms": {
                   fallback(V1.digest), fallback(V2.children[1].digest), f"{fallback(sbom)}.sig"}}


def test_the_source_holds_every_kind_of_artifact(world):
    assert set(world["source"]) == world["followed"] | world["dev"]
    assert len(world["followed"]) == 9


@pytest.mark.parametrize("destination", ["b", "c"], ids=["storage-served-by-b", "registry-c"])
def test_every_artifact_of_a_selected_image_arrives_and_is_served(world, destination):
    api = world[destination]
    served = set(api.tags(REPO))
    assert served == {"v1", "v2"} | world["followed"]
    for tag in world["followed"]:
        assert sc.descriptor(api, REPO, tag)["digest"] == world["source"][tag], tag
    for referrer in world["referrers"]:
        assert api.get(REPO, referrer).status_code == 200, referrer
    assert sc.descriptor(api, REPO, "v2")["digest"] == V2.digest


@pytest.mark.parametrize("destination", ["b", "c"], ids=["storage-served-by-b", "registry-c"])
def test_no_artifact_of_an_unselected_image_arrives(world, destination):
    api = world[destination]
    assert not world["dev"] & set(api.tags(REPO))
    assert api.get(REPO, world["dev_referrer"]).status_code == 404
    assert api.get(REPO, DEV.digest).status_code == 404


def test_first_pass_counts_each_artifact_once(world):
    code, document = world["first"]["follow"]
    assert code == 0, document
    for report in passes(document).values():
        assert (report["tags_replicated"], report["artifacts_replicated"]) == (2, 9)
        assert report["artifacts_left_out"] == 0 and not report["failures"]


def test_the_audit_trail_names_the_artifacts_that_came_with_each_image(world):
    lines = list(audit.entries(world["tmp"] / "audit.jsonl"))
    source = world["source"]
    of = {V1.digest: {f"{fallback(V1.digest)}.sig", f"{fallback(V1.digest)}.att",
                      f"{fallback(V1.digest)}.sbom", fallback(V1.digest),
                      f"{fallback(world['sbom'])}.sig"},
          V2.digest: {f"{fallback(V2.digest)}.sig", *(f"{fallback(c.digest)}.sig" for c in V2.children),
                      fallback(V2.children[1].digest)}}
    for destination in ("local", "c"):
        changes = [line for line in lines if line["destination"] == destination]
        assert len(changes) == 2 + 9 and all(line["action"] == "create" for line in changes)
        images = {line["new_digest"]: line for line in changes if line["tag"] in ("v1", "v2")}
        for digest, tags in of.items():
            assert sorted(images[digest]["artifacts"]) == sorted(source[tag] for tag in tags)
        artifact_lines = {line["tag"]: line["new_digest"] for line in changes if line["artifacts"] == []}
        assert artifact_lines == {tag: source[tag] for tag in world["followed"]}


def test_dry_run_lists_artifacts_apart_and_writes_nothing(world):
    code, document = world["planned"]
    assert code == 0
    for report in passes(document).values():
        planned = report["planned_artifacts"]
        assert sorted(entry.split(" ")[0] for entry in planned) == sorted(
            f"{REPO}:{tag}" for tag in world["followed"])
        assert all(entry.endswith(("(of apps/app:v1)", "(of apps/app:v2)")) for entry in planned)


def test_artifacts_tags_keeps_the_old_behaviour(world):
    code, document = world["first"]["tags"]
    assert code == 0
    assert passes(document)["plain"]["artifacts_replicated"] == 0
    assert world["plain"].tags(REPO) == ["v1", "v2"]


def test_artifact_types_leave_out_referrers_of_an_excluded_type(world):
    """Both referrers indexes list SPDX documents: left out whole, and with them the signature
    of the SBOM referrer (reached only through its index)."""
    code, document = world["first"]["typed"]
    assert code == 0
    assert passes(document)["typed"]["artifacts_replicated"] == 9 - 3
    assert set(world["typed"].tags(REPO)) == {"v1", "v2"} | (world["followed"] - world["sboms"])
    for referrer in world["referrers"]:
        assert world["typed"].get(REPO, referrer).status_code == 404


def test_no_change_pass_costs_nothing_for_artifacts(world):
    """Following artifacts costs no request on a pass that changes nothing, beyond what a
    policy that treats them as tags costs (both list the same source; each destination is
    listed once). The first such pass reads, once, the tag links of the unselected image and
    its artifacts (to know that their subject is a tag): three GETs, remembered after."""
    second = world["second"]["follow"][1]["requests"]["primary"]
    assert second["get"] - world["second"]["tags"][1]["requests"]["primary"]["get"] == 3
    follow, tags = world["third"]["follow"][1], world["third"]["tags"][1]
    for report in passes(follow).values():
        # found from the listing alone: those of v1 and v2 by their tags' digests (the others
        # hang below manifests that, unchanged, are not read)
        assert (report["tags_unchanged"], report["artifacts_unchanged"]) == (2, 5)
        assert report["artifacts_replicated"] == report["blobs_copied"] == 0
    assert follow["requests"]["primary"] == tags["requests"]["primary"]
    assert follow["requests"]["local"] == tags["requests"]["plain"]
    sent = {kind: n for kind, n in follow["requests"]["c"].items() if n}
    assert sent == {"list": 1}   # a registry's tag list: every tag, artifacts too, moved there by us


def test_verify_finds_every_artifact(world):
    result = world["verified"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
