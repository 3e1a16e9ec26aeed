"""End to end across clouds: S3 -> GCS and Azure -> a filesystem, pulled with skopeo; then
server-side copies within each provider.

Images are pushed with skopeo to Debian's docker-registry on a moto S3 bucket (region
``primary``): a single-platform OCI image, a multi-arch OCI index and, in a second repository, a
Docker-format image, all sharing one base layer. Policy ``fanout`` replicates ``primary`` into a
GCS region (fake-gcs-server) and an Azure region (Azurite); policy ``onward`` replicates the
Azure region into a filesystem region, where a second docker-registry serves every image to
skopeo. (Debian's registry has no GCS or Azure driver, so the GCS and Azure regions are proven
by ``replicator verify --deep``, and the Azure one also by what it hands on.)

Then one policy per provider replicates into another location of the same provider, which the
destination's storage copies from the source's itself: S3 -> S3 (two moto buckets, one set of
credentials) verified (the default: CopyObject proves each blob's SHA-256) and trusted (a
multipart copy checked by size), GCS -> GCS (two buckets) and Azure -> Azure (two Azurite
accounts on one server) trusted, as their providers prove no SHA-256. Their reports show every
blob copied server-side and only the manifests' bytes streamed; a registry on the verified S3
copy serves every image to skopeo.

Each step is one ``python -m replicator ... --json`` run (a module fixture); running one test
runs the steps before it. ``concurrency: 1`` keeps request counts exact: two tags of one
repository may otherwise both write a layer link they share.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from azure.storage.blob import BlobServiceClient
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs_storage

from replicator import sample_images as si
from tests import registry as reg
from tests.services import AZURITE_DEV_ACCOUNT, AZURITE_SECOND_ACCOUNT, S3_CREDENTIALS

REPO_ROOT = Path(__file__).resolve().parents[1]

MIB = 1024 * 1024
BASE_FILES = {"etc/os-release": b"ID=cross-cloud\nVERSION_ID=1\n",
              "usr/lib/libbase.so": random.Random(0).randbytes(6 * MIB)}  # incompressible
BASE = si.layer(BASE_FILES)
WEB = si.image([BASE, si.layer({"srv/web": b"web 1.0\n"})])
WEB_MULTI = si.index([
    si.image([BASE, si.layer({"srv/web": b"web for amd64\n"})], architecture="amd64"),
    si.image([BASE, si.layer({"srv/web": b"web for arm64\n"})], architecture="arm64"),
])
TOOLS = si.image([si.layer(BASE_FILES, oci=False), si.layer({"usr/bin/tool": b"tool\n"}, oci=False)],
                 oci=False)  # Docker format; its base layer has BASE's bytes, so BASE's digest
TAGS = {("apps/web", "1.0"): WEB, ("apps/web", "multi"): WEB_MULTI, ("base/tools", "latest"): TOOLS}

UNIQUE = reg.unique_blobs(TAGS.values())
MANIFESTS = {digest: blob for digest, blob in UNIQUE.items() if reg.is_manifest(blob)}
BLOBS = {digest: blob for digest, blob in UNIQUE.items() if not reg.is_manifest(blob)}
LINKS = {key for (name, tag), image in TAGS.items()
         for key, content in reg.expected_keys(name, tag, image).items() if content is not None}
MANIFEST_BYTES = sum(len(blob.data) for blob in MANIFESTS.values())
BLOB_BYTES = sum(len(blob.data) for blob in BLOBS.values())

STREAMED = {"fanout": ("primary", ("gcs-west", "azure-north")), "onward": ("azure-north", ("edge",))}
SERVER_SIDE = {"s3-copy": ("primary", "s3-copy"), "s3-trusted": ("primary", "s3-trusted"),
               "gcs-copy": ("gcs-west", "gcs-copy"), "azure-copy": ("azure-north", "azure-copy")}
"""policy -> (source, destination) of the runs whose blobs must be copied server-side."""
TRUSTED = {"s3-trusted", "gcs-copy", "azure-copy"}
"""The policies run with ``server_side_copy: trusted``; the others with the default, verified."""
S3_COPY_PARTS = {"multipartcopythresholdsize": 5 * MIB, "multipartcopychunksize": 5 * MIB}
"""Both S3 copy regions have these: the trusted one copies the base layer (over 6 MiB) as a
multipart copy of two parts, the verified one in one CopyObject all the same."""
MULTIPART_EXTRA = {"s3-trusted": {"copy": 1, "put": 2}}
"""Requests beyond one copy per blob: a second UploadPartCopy, CreateMultipartUpload and
CompleteMultipartUpload."""


@dataclass
class Run:
    returncode: int
    document: dict
    stderr: str

    def passes(self) -> dict[str, dict]:
        return {entry["destination"]: entry for entry in self.document["passes"]}


class World:
    """Buckets, containers and a directory; the primary registry; the config; what was pushed."""

    def __init__(self, moto_url: str, gcs_url: str, azure_url: str, tmp: Path):
        self.tmp = tmp
        self.secrets = [S3_CREDENTIALS["secretkey"], AZURITE_DEV_ACCOUNT[1], AZURITE_SECOND_ACCOUNT[1]]
        gcs = gcs_storage.Client(project="test", credentials=AnonymousCredentials(),
                                 client_options={"api_endpoint": gcs_url})

        def gcs_region() -> dict:
            bucket = gcs.create_bucket(f"cross-{uuid.uuid4().hex[:12]}").name
            return {"gcs": {"bucket": bucket, "endpoint": gcs_url, "rootdirectory": "/registry"}}

        def azure_region(account: tuple[str, str]) -> dict:
            name, key = account
            container = f"cross-{uuid.uuid4().hex[:12]}"
            credential = {"account_name": name, "account_key": key}
            BlobServiceClient(f"{azure_url}/{name}", credential=credential).create_container(container)
            return {"azure": {"accountname": name, "accountkey": key, "container": container,
                              "endpoint": f"{azure_url}/{name}", "rootdirectory": "/registry"}}

        self.storage = {
            "primary": reg.s3_storage(moto_url, reg.create_bucket(moto_url)),
            "gcs-west": gcs_region(),
            "azure-north": azure_region(AZURITE_DEV_ACCOUNT),
            "edge": reg.filesystem_storage(tmp / "edge"),
            "s3-copy": reg.s3_storage(moto_url, reg.create_bucket(moto_url)),
            "s3-trusted": reg.s3_storage(moto_url, reg.create_bucket(moto_url)),
            "gcs-copy": gcs_region(),
            "azure-copy": azure_region(AZURITE_SECOND_ACCOUNT),
        }
        for region in ("s3-copy", "s3-trusted"):
            self.storage[region]["s3"].update(S3_COPY_PARTS)
        policies = [(name, source, list(destinations))
                    for name, (source, destinations) in STREAMED.items()]
        policies += [(name, source, [destination])
                     for name, (source, destination) in SERVER_SIDE.items()]
        document = {
            "state": {"path": str(tmp / "state.db")},
            "concurrency": 1,
            "regions": {name: {"storage": block} for name, block in self.storage.items()},
            "policies": [{"name": name, "source": source, "destinations": destinations}
                         for name, source, destinations in policies],
        }
        self.config = tmp / "replicator.yml"
        self.config.write_text(yaml.safe_dump(document, sort_keys=False))
        self.trusted_config = tmp / "trusted.yml"
        self.trusted_config.write_text(yaml.safe_dump({**document, "server_side_copy": "trusted"},
                                                      sort_keys=False))
        self.registries: dict[str, object] = {}

    def registry(self, region: str):
        if region not in self.registries:
            self.registries[region] = reg.start_registry(self.storage[region], self.tmp / "logs",
                                                         readonly=region != "primary")
        return self.registries[region]

    def push(self) -> None:
        for (repository, tag), image in TAGS.items():
            reg.push(self.registry("primary").url, repository, tag, image, self.tmp / "work")

    def serve(self, region: str, repository: str, tag: str):
        """(digest, digest -> size of every blob) that skopeo pulls from the region's registry."""
        url = self.registry(region).url
        return (reg.manifest_digest(url, repository, tag),
                reg.pull(url, repository, tag, self.tmp / "pulls" / uuid.uuid4().hex))

    def replicator(self, *args: str, trusted: bool = False) -> Run:
        env = {key: value for key, value in os.environ.items() if key != "REPLICATOR_CONFIG"}
        config = self.trusted_config if trusted else self.config
        argv = [sys.executable, "-m", "replicator", *args, "--config", str(config), "--json"]
        result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                                timeout=120, check=False)
        output = result.stdout + result.stderr
        assert not [secret for secret in self.secrets if secret in output], "a secret leaked"
        assert "sig=" not in output, "a shared access signature leaked"
        try:
            return Run(result.returncode, json.loads(result.stdout), result.stderr)
        except json.JSONDecodeError:
            pytest.fail(f"replicator {args} exited {result.returncode} without JSON:\n"
                        f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")

    def stop(self) -> None:
        for service in self.registries.values():
            service.stop()


def picked(entry: dict, expected: dict) -> dict:
    """``entry``'s values for the keys of ``expected``."""
    return {key: entry[key] for key in expected}


def expected_pull(image: si.Image) -> tuple[str, dict[str, int]]:
    return image.digest, {digest: len(blob.data) for digest, blob in reg.unique_blobs([image]).items()}


# --- the steps ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(moto, fake_gcs, azurite, tmp_path_factory):
    world = World(moto.url, fake_gcs.url, azurite.url, tmp_path_factory.mktemp("cross-cloud"))
    try:
        world.push()
        yield world
    finally:
        world.stop()


@pytest.fixture(scope="module")
def fanout(world) -> Run:
    return world.replicator("sync", "--policy", "fanout")


@pytest.fixture(scope="module")
def onward(fanout, world) -> Run:
    return world.replicator("sync", "--policy", "onward")


@pytest.fixture(scope="module")
def copies(onward, world) -> dict[str, Run]:
    return {policy: world.replicator("sync", "--policy", policy, trusted=policy in TRUSTED)
            for policy in SERVER_SIDE}


@pytest.fixture(scope="module")
def verified(copies, world) -> Run:
    return world.replicator("verify", "--deep")


# --- S3 -> GCS, Azure -> filesystem: streamed and hashed ---------------------------------------

@pytest.mark.parametrize("policy", STREAMED)
def test_cross_provider_passes_stream_every_blob(fanout, onward, policy):
    run = {"fanout": fanout, "onward": onward}[policy]
    assert run.returncode == 0, run.stderr
    source, destinations = STREAMED[policy]
    assert sorted(run.passes()) == sorted(destinations)
    expected = {"tags_replicated": len(TAGS), "tags_failed": 0, "blobs_copied": len(BLOBS),
                "manifests_copied": len(MANIFESTS), "bytes_copied": BLOB_BYTES + MANIFEST_BYTES,
                "server_side_copies": 0}
    for entry in run.passes().values():
        assert picked(entry, expected) == expected
    requests = run.document["requests"][source]
    assert requests["get"] >= len(BLOBS) and requests["put"] == requests["copy"] == 0


def test_filesystem_registry_fed_from_azure_serves_identical_digests(onward, world):
    for (repository, tag), image in TAGS.items():
        assert world.serve("edge", repository, tag) == expected_pull(image), (repository, tag)


# --- same provider: copied server-side ----------------------------------------------------------

@pytest.mark.parametrize("policy", SERVER_SIDE)
def test_same_provider_copies_are_server_side(copies, policy):
    run = copies[policy]
    assert run.returncode == 0, run.stderr
    source, destination = SERVER_SIDE[policy]
    check = "trusted" if policy in TRUSTED else "verified"
    expected = {"tags_replicated": len(TAGS), "tags_failed": 0, "blobs_copied": len(BLOBS),
                "server_side_copies": len(BLOBS), f"server_side_{check}": len(BLOBS),
                "server_side_bytes": BLOB_BYTES, "manifests_copied": len(MANIFESTS),
                "bytes_copied": MANIFEST_BYTES}
    assert picked(run.passes()[destination], expected) == expected
    at_source, at_destination = (run.document["requests"][region] for region in (source, destination))
    # the destination got one copy request per blob (per part) and never a blob's bytes
    extra = MULTIPART_EXTRA.get(policy, {})
    expected = {"get": 0, "copy": len(BLOBS) + extra.get("copy", 0),
                "put": len(MANIFESTS) + len(LINKS) + extra.get("put", 0), "delete": 0}
    assert picked(at_destination, expected) == expected
    # the source was asked each blob's size, and read tag links and manifests only
    assert at_source["head"] == len(BLOBS)
    assert at_source["get"] <= len(TAGS) + len(MANIFESTS)
    assert at_source["put"] == at_source["copy"] == at_source["delete"] == 0


def test_registry_on_the_s3_copy_serves_identical_digests(copies, world):
    for (repository, tag), image in TAGS.items():
        assert world.serve("s3-copy", repository, tag) == expected_pull(image), (repository, tag)


# --- verify --deep: every destination re-hashed, no drift ----------------------------------------

def test_verify_deep_finds_no_drift_in_any_region(verified):
    assert verified.returncode == 0, verified.stderr
    assert (verified.document["ok"], verified.document["deep"]) == (True, True)
    results = {entry["destination"]: entry for entry in verified.document["destinations"]}
    assert sorted(results) == sorted(["gcs-west", "azure-north", "edge", *
                                      (destination for _, destination in SERVER_SIDE.values())])
    for destination, result in results.items():
        assert result["drift"] == [], destination
        assert (result["tags_checked"], result["bytes_hashed"]) == (len(TAGS), BLOB_BYTES), destination
