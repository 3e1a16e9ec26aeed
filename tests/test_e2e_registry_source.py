"""A registry over its HTTP API as a policy's source: mirroring an upstream registry into
storage regions.

Images are pushed with skopeo to Debian's docker-registry A (the "upstream"): a single-platform
OCI image, a multi-arch OCI index and a Docker-format image in a second repository, sharing a
base layer. A policy replicates A, read through its API, into a filesystem region and an S3
region (moto); registries on both serve every image to skopeo with A's digests. A second pass
costs A its catalog page, one tags/list per repository and one manifest HEAD per tag, and the
destinations one listing each: nothing else. The same against A behind token auth with its
catalog refused (repositories named in the config) and over TLS with a CA the test makes. A
snapshot's requests, through a proxy that delays them: how many are in flight at once, and
HEADs of listed repositories sent while another's list is awaited.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.filesystem import FilesystemDriver
from drivers.registry import RegistryClient
from replicator.demo import publish
from replicator.endpoints.registry import SNAPSHOT_CONCURRENCY, RegistryEndpoint
from tests import registry as reg
from tests.faults import REGISTRY, FaultProxy
from tests.registry_auth import TokenServer, make_tls, tls_section
from tests.services import S3_CREDENTIALS
from tests.test_e2e_sync import REPO_ROOT, WEB_1_0, WEB_MULTI, expected_pull, write_config
from replicator import sample_images as si

PASSWORD = "upstream-Passw0rd-for-tests"
TOOLS = si.image([si.layer({"usr/bin/tool": b"registry source tool\n"}, oci=False)], oci=False)
TAGS = {("apps/web", "1.0"): WEB_1_0, ("apps/web", "multi"): WEB_MULTI, ("base/tools", "1"): TOOLS}
UNIQUE = reg.unique_blobs(TAGS.values())
MANIFESTS = {digest for digest, blob in UNIQUE.items() if reg.is_manifest(blob)}
BLOBS = {digest for digest in UNIQUE if digest not in MANIFESTS}


def sync(config: Path, command: str = "sync", *args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "replicator", command, *args, "--config",
                             str(config), "--json"], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=180, check=False)
    assert PASSWORD not in result.stdout + result.stderr, "a password leaked"
    assert S3_CREDENTIALS["secretkey"] not in result.stdout + result.stderr
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(result.stdout)


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {kind: n for kind, n in counts.items() if n}


def replicate_and_pull(tmp: Path, moto, upstream: dict, creds: str | None, url: str) -> dict:
    for (repository, tag), image in TAGS.items():
        reg.push(url, repository, tag, image, tmp / "work", creds=creds)
    storage = {"local": reg.filesystem_storage(tmp / "local"),
               "s3": reg.s3_storage(moto.url, reg.create_bucket(moto.url))}
    config = write_config(tmp / "replicator.yml", {
        "state": {"path": str(tmp / "state.db")}, "concurrency": 1,
        "regions": {"upstream": {"registry": upstream},
                    **{name: {"storage": block} for name, block in storage.items()}},
        "policies": [{"name": "mirror", "source": "upstream", "destinations": list(storage)}]})
    first = sync(config)
    for entry in first["passes"]:
        assert (entry["tags_replicated"], entry["tags_failed"]) == (len(TAGS), 0), entry
        assert entry["blobs_copied"] == len(BLOBS) and entry["manifests_copied"] == len(MANIFESTS)
    for name, block in storage.items():
        with reg.start_registry(block, tmp / "logs", readonly=True) as replica:
            for (repository, tag), image in TAGS.items():
                pulled = reg.pull(replica.url, repository, tag, tmp / "pulls" / name / repository / tag)
                assert (reg.manifest_digest(replica.url, repository, tag), pulled) == expected_pull(image)
    second = sync(config)
    for entry in second["passes"]:
        assert (entry["tags_unchanged"], entry["blobs_copied"], entry["manifests_copied"]) == \
            (len(TAGS), 0, 0), entry
    verified = sync(config, "verify", "--deep")   # tags read through the registry's API
    assert verified["ok"] is True
    for result in verified["destinations"]:
        assert (result["drift"], result["tags_checked"]) == ([], len(TAGS)), result
    return {"first": first, "second": second}


def test_an_upstream_registry_is_mirrored_into_storage_regions(moto, tmp_path):
    with reg.start_registry(reg.filesystem_storage(tmp_path / "upstream"), tmp_path / "logs") as upstream:
        runs = replicate_and_pull(tmp_path, moto, {"url": upstream.url}, None, upstream.url)
    first, second = (runs[run]["requests"] for run in ("first", "second"))
    repositories = len({name for name, _ in TAGS})
    # the first pass: the catalog, a tags/list per repository, a HEAD per tag; manifests and
    # blobs read once for both destinations (the source reader shares manifests; the two
    # destinations' passes run at once and share each blob's stream)
    assert first["upstream"]["list"] == 1 + repositories and first["upstream"]["head"] == len(TAGS)
    assert first["upstream"]["get"] == len(MANIFESTS) + len(BLOBS)
    # a pass over an unchanged registry: listings and one HEAD per tag, nothing else
    assert nonzero(second["upstream"]) == {"list": 1 + repositories, "head": len(TAGS)}
    assert nonzero(second["local"]) == {"list": 1} and nonzero(second["s3"]) == {"list": 1}
    print(f"\nregistry source: first pass {first}; no-change pass {second}")


def test_a_token_protected_upstream_without_catalog_over_tls(moto, tmp_path):
    tls = make_tls(tmp_path / "tls")
    grants = {"mirror": {repository: ["pull"] for repository, _ in TAGS},
              "pusher": {repository: ["pull", "push"] for repository, _ in TAGS}}
    users = {"mirror": PASSWORD, "pusher": PASSWORD}
    with TokenServer(tmp_path / "token", users, grants) as tokens, \
            reg.start_registry(reg.filesystem_storage(tmp_path / "upstream"), tmp_path / "logs",
                               auth=tokens.auth_section(), tls=tls_section(tls)) as upstream:
        block = {"url": upstream.url, "username": "mirror", "password": "${UPSTREAM_PASSWORD}",
                 "cacert": str(tls.ca), "repositories": sorted({name for name, _ in TAGS})}
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("UPSTREAM_PASSWORD", PASSWORD)
            runs = replicate_and_pull(tmp_path, moto, block, f"pusher:{PASSWORD}", upstream.url)
    second = runs["second"]["requests"]["upstream"]
    assert nonzero(second)["head"] == len(TAGS) and "get" not in nonzero(second)
    assert tokens.issued >= 1


def test_a_snapshot_heads_many_tags_at_once_each_repository_as_soon_as_it_is_listed(tmp_path):
    """A snapshot keeps ``SNAPSHOT_CONCURRENCY`` requests in flight (not the 8 copy workers),
    and HEADs the tags of the repositories already listed while another's tag list is still
    awaited; each tag is HEADed once, each repository listed once. The proxy delays every HEAD
    and the slow repository's listing, so that requests overlap."""
    root = tmp_path / "root"
    image = si.image([si.layer({"app": b"snapshot width\n"})])
    tags = {name: [f"v{n}" for n in range(20)] for name in ("quick/a", "quick/b", "slow/c")}
    for name, names in tags.items():
        for tag in names:
            publish(FilesystemDriver(str(root)), name, tag, image)

    def delayed(request) -> bool:
        return request.method == "HEAD" or request.path == "/v2/slow/c/tags/list"

    with reg.start_registry(reg.filesystem_storage(root), tmp_path / "logs") as registry, \
            FaultProxy(registry.url, rate=1.0, faults=["latency"], where=delayed,
                       latency=(0.5, 0.5), protocol=REGISTRY) as proxy:
        endpoint = RegistryEndpoint("upstream", RegistryClient.from_config({"url": proxy.url}))
        snapshot = endpoint.snapshot(None, None, False)
    assert {key: entry.etag for key, entry in snapshot.tags.items()} == \
        {(name, tag): image.digest for name, names in tags.items() for tag in names}
    assert dict(proxy.requests) == nonzero(endpoint.requests.snapshot()) == \
        {"list": 1 + len(tags), "head": 60}
    assert proxy.most_in_flight >= SNAPSHOT_CONCURRENCY > 8
    events = proxy.events
    slow_list = next(n for n, event in enumerate(events) if event.target.startswith("/v2/slow/"))
    assert any(event.method == "HEAD" and event.at < proxy.answered[slow_list] for event in events)
