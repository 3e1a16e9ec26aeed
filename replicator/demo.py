"""``replicator demo``: the whole job on an embedded default, with no cloud account.

Builds a small source registry on the filesystem (real layout, gzip'd tar layers, a
multi-arch index, two repositories sharing a layer), replicates it into two filesystem
regions, verifies every digest by re-hashing, runs a second pass that must copy nothing,
and prints what happened. It leaves its configuration in the work folder and ends with the
commands to try on it next.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import yaml

from drivers.base import StorageDriver
from replicator import config as config_module
from replicator import layout, sample_images
from replicator.audit import AuditWriter
from replicator.endpoints import endpoint_for
from replicator.engine import RunOptions, run_policy
from replicator.manifests import parse_manifest
from replicator.planner import plan_tag
from replicator.report import run_text
from replicator.verify import verify
from state.store import StateStore

SOURCE, DESTINATIONS = "primary", ("eu-west", "ap-south")


def sample_registry() -> dict[tuple[str, str], sample_images.Image]:
    """The demo's images by (repository, tag)."""
    base = sample_images.layer({"etc/os-release": b"NAME=demo\n",
                                "usr/lib/libdemo.so": random.Random(1).randbytes(256 * 1024)})
    web_amd64 = sample_images.image([base, sample_images.layer({"srv/app": b"web v1 amd64\n"})])
    web_arm64 = sample_images.image([base, sample_images.layer({"srv/app": b"web v1 arm64\n"})],
                                    architecture="arm64")
    worker = sample_images.image([base, sample_images.layer({"srv/worker": b"worker v3\n"})])
    return {
        ("demo/web", "1.0"): web_amd64,
        ("demo/web", "multi"): sample_images.index([web_amd64, web_arm64]),
        ("demo/worker", "latest"): worker,
    }


def publish(storage: StorageDriver, name: str, tag: str, image: sample_images.Image) -> None:
    """Write ``image`` into ``storage`` as a registry push would, links bottom-up."""
    for blob in image.all_blobs():
        storage.write(layout.blob_key(blob.digest), blob.data)
    manifests = {item.digest: parse_manifest(item.manifest.data, item.digest)
                 for item in (image, *image.children)}
    for key, digest in plan_tag(name, tag, image.digest, manifests, set(), set()).links:
        storage.write(key, layout.link_bytes(digest))


def run(workdir: Path) -> int:
    """Run the demo in ``workdir`` (emptied first). Returns 0 when every check passed."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    regions = {name: {"storage": {"filesystem": {"rootdirectory": str((workdir / name).resolve())}}}
               for name in (SOURCE, *DESTINATIONS)}
    config_path = workdir / "replicator.yml"
    config_path.write_text(yaml.safe_dump({
        "state": {"path": "replicator.db"},
        "server": {"listen": "127.0.0.1:9100"},
        "audit": {"path": "audit.jsonl"},
        "regions": regions,
        "policies": [{"name": "demo", "source": SOURCE, "destinations": list(DESTINATIONS)}],
    }, sort_keys=False))
    config = config_module.load(config_path)
    images = sample_registry()
    source = config.regions[SOURCE].storage
    for (name, tag), image in images.items():
        publish(source, name, tag, image)
    print(f"Built a source registry in {workdir / SOURCE}: "
          f"{len(images)} tags in {len({name for name, _ in images})} repositories.")

    policy = config.policies[0]
    state = StateStore(config.state_path)
    trail = AuditWriter(config.audit_log)
    first = run_policy(config, policy, state, RunOptions.from_config(config, on_change=trail.append))
    print("First pass:\n" + run_text(first, 0, False).rsplit("\n", 1)[0])
    second = run_policy(config, policy, state, RunOptions.from_config(config))
    state.close()
    copied_again = sum(r.blobs_copied + r.manifests_copied for r in second)
    print(f"Second pass: {copied_again} objects copied (nothing changed at the source).")

    ok = copied_again == 0 and not any(r.tags_failed for r in first + second)
    for destination in DESTINATIONS:
        result = verify(endpoint_for(config.regions[SOURCE]), endpoint_for(config.regions[destination]),
                        sorted(images), deep=True)
        print(f"Verified {destination}: {result.tags_checked} tags, {result.manifests_checked} "
              f"manifests, {result.blobs_checked} blob references, "
              f"{result.bytes_hashed} bytes re-hashed, {len(result.drift)} problems.")
        for drift in result.drift:
            print(f"  {drift.repository}:{drift.tag}: {drift.kind}: {drift.detail}")
        ok = ok and not result.drift
    print("Demo OK: every region serves the same digests." if ok else "Demo FAILED.")
    print(next_steps(config_path))
    return 0 if ok else 1


def next_steps(config_path: Path) -> str:
    """What to try next on the demo's configuration."""
    config = f"--config {config_path}"
    return "\n".join([
        f"The configuration is in {config_path}. Next, try:",
        f"  replicator status {config}           # lag, pending and failing tags",
        f"  replicator verify {config} --deep    # re-hash every blob at every destination",
        f"  replicator wait {config} demo/web:multi --timeout 1m   # a deploy barrier: 0 once "
        f"every region serves it",
        f"  replicator history {config} demo/web # what each region was given, and when",
        f"  replicator sync {config} --dry-run   # after changing the source: what would move",
        f"  replicator serve {config}            # schedules, webhook, the status page at "
        f"http://127.0.0.1:9100/ and /metrics",
    ])
