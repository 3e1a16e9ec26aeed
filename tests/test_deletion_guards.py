"""Guarded deletions with ``delete: true``: only tags the replicator made, only after
``delete_delay``, never more than ``max_delete`` in one pass unless forced.

Sources are filesystems written in Distribution's layout; a tag is deleted at the source as the
registry's tag delete does (its ``tags/<tag>/`` folder goes). Destinations are a filesystem and
an S3 bucket on moto, read back through a registry serving them and with skopeo.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from drivers.filesystem import FilesystemDriver
from drivers.registry import RegistryClient
from replicator import config as config_module
from replicator import layout
from replicator import sample_images as si
from replicator.deletions import plan_deletions
from replicator.demo import publish
from replicator.engine import RunOptions, run_policy
from state.store import StateStore
from tests import registry as reg
from tests.test_e2e_sync import REPO_ROOT

BASE = si.layer({"etc/os-release": b"ID=guards\n"})
IMAGES = [si.image([BASE, si.layer({"app": f"app {n}\n".encode()})]) for n in range(6)]


def write_config(tmp_path: Path, destination: dict, **policy) -> Path:
    path = tmp_path / "replicator.yml"
    path.write_text(yaml.safe_dump({
        "state": {"path": str(tmp_path / "state.db")},
        "regions": {"primary": {"storage": reg.filesystem_storage(tmp_path / "primary")},
                    "replica": {"storage": destination}},
        "policies": [{"name": "p", "source": "primary", "destinations": ["replica"],
                      "delete": True, **policy}]}))
    return path


def sync_cli(config: Path, *args: str) -> tuple[int, dict, str]:
    result = subprocess.run([sys.executable, "-m", "replicator", "sync", "--config", str(config),
                             "--json", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=180)
    return result.returncode, json.loads(result.stdout) if result.stdout else {}, result.stderr


def remove_at_source(root: Path, name: str, tag: str) -> None:
    shutil.rmtree(root / "docker/registry/v2/repositories" / name / "_manifests/tags" / tag)


def test_a_tag_that_exists_only_at_the_destination_survives(tmp_path):
    publish(FilesystemDriver(str(tmp_path / "primary")), "apps/web", "1", IMAGES[0])
    replica = FilesystemDriver(str(tmp_path / "replica"))
    publish(replica, "apps/web", "hotfix", IMAGES[1])     # pushed at the replica by someone else
    publish(replica, "ops/local", "1", IMAGES[2])
    config = write_config(tmp_path, reg.filesystem_storage(tmp_path / "replica"))
    code, document, stderr = sync_cli(config)
    assert code == 0, stderr
    [entry] = document["passes"]
    assert (entry["tags_replicated"], entry["tags_deleted"]) == (1, 0)
    code, document, _ = sync_cli(config)
    assert (code, document["passes"][0]["tags_deleted"]) == (0, 0)
    with reg.start_registry(reg.filesystem_storage(tmp_path / "replica"), tmp_path / "logs",
                            readonly=True) as served:
        assert reg.manifest_digest(served.url, "apps/web", "hotfix") == IMAGES[1].digest
        assert reg.manifest_digest(served.url, "ops/local", "1") == IMAGES[2].digest
        assert reg.manifest_digest(served.url, "apps/web", "1") == IMAGES[0].digest
    # a tag the replicator made, then moved at the destination by someone else, is not its own
    remove_at_source(tmp_path / "primary", "apps/web", "1")
    publish(replica, "apps/web", "1", IMAGES[3])
    code, document, _ = sync_cli(config)
    assert (code, document["passes"][0]["tags_deleted"]) == (0, 0)
    assert layout.parse_link(replica.read(layout.tag_current_key("apps/web", "1"))) == IMAGES[3].digest


def test_a_tag_deleted_and_recreated_within_the_delay_is_never_deleted(tmp_path):
    source = FilesystemDriver(str(tmp_path / "primary"))
    publish(source, "apps/web", "1", IMAGES[0])
    publish(source, "apps/web", "2", IMAGES[1])
    path = write_config(tmp_path, reg.filesystem_storage(tmp_path / "replica"), delete_delay="1h")
    config = config_module.load(path)

    def sync_at(now: float):
        state = StateStore(config.state_path)
        try:
            [report] = run_policy(config, config.policies[0], state,
                                  RunOptions.from_config(config, clock=lambda: now))
        finally:
            state.close()
        return report

    def held(tag: str) -> bool:
        return (tmp_path / "replica" / layout.tag_current_key("apps/web", tag)).exists()

    t0 = time.time()
    assert sync_at(t0).tags_replicated == 2
    remove_at_source(tmp_path / "primary", "apps/web", "1")
    remove_at_source(tmp_path / "primary", "apps/web", "2")
    assert sync_at(t0 + 100).tags_deleted == 0              # both seen gone: the delay starts
    publish(source, "apps/web", "1", IMAGES[0])             # "1" comes back within the hour
    assert (sync_at(t0 + 200).tags_deleted, held("1"), held("2")) == (0, True, True)
    remove_at_source(tmp_path / "primary", "apps/web", "1")  # and goes again
    report = sync_at(t0 + 3800)       # an hour after "2" went: "2" goes, "1" restarted its delay
    assert (report.tags_deleted, held("1"), held("2")) == (1, True, False)
    assert (sync_at(t0 + 3800 + 3599).tags_deleted, held("1")) == (0, True)
    assert (sync_at(t0 + 3800 + 3600).tags_deleted, held("1")) == (1, False)


def test_a_mass_delete_above_max_delete_deletes_nothing_unless_forced(tmp_path, moto):
    source = FilesystemDriver(str(tmp_path / "primary"))
    for n in range(5):
        publish(source, "apps/web", str(n), IMAGES[n])
    publish(source, "apps/web", "keep", IMAGES[5])
    storage = reg.s3_storage(moto.url, reg.create_bucket(moto.url))
    config = write_config(tmp_path, storage, max_delete=3)
    code, document, stderr = sync_cli(config)
    assert (code, document["passes"][0]["tags_replicated"]) == (0, 6), stderr
    for n in range(5):
        remove_at_source(tmp_path / "primary", "apps/web", str(n))

    code, document, stderr = sync_cli(config)
    assert code == 1, stderr
    [entry] = document["passes"]
    assert entry["tags_deleted"] == 0
    assert "would delete 5 tags, more than max_delete (3): deleted none" in entry["error"]
    assert "--force-delete" in entry["error"]
    with reg.start_registry(storage, tmp_path / "logs", readonly=True) as served:
        client = RegistryClient.from_config({"url": served.url})
        assert sorted(tag for page in client.tag_list("apps/web") for tag in page) == \
            ["0", "1", "2", "3", "4", "keep"]
        assert reg.manifest_digest(served.url, "apps/web", "4") == IMAGES[4].digest

    status = subprocess.run([sys.executable, "-m", "replicator", "status", "--config", str(config),
                             "--json"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert json.loads(status.stdout)["destinations"][0]["in_sync"] is False

    code, document, stderr = sync_cli(config, "--force-delete")
    assert code == 0, stderr
    assert (document["passes"][0]["tags_deleted"], document["passes"][0]["error"]) == (5, None)
    with reg.start_registry(storage, tmp_path / "logs", readonly=True) as served:
        client = RegistryClient.from_config({"url": served.url})
        assert [tag for page in client.tag_list("apps/web") for tag in page] == ["keep"]
        assert reg.manifest_digest(served.url, "apps/web", "keep") == IMAGES[5].digest


def test_the_deletion_plan_keeps_foreign_and_recent_absences():
    gone = {("a", "ours"): "sha256:1", ("a", "moved"): "sha256:2", ("a", "foreign"): "sha256:3",
            ("a", "new"): "sha256:4", ("a", "unreadable"): None}
    made = {("a", "ours"): "sha256:1", ("a", "moved"): "sha256:9", ("a", "new"): "sha256:4",
            ("a", "unreadable"): "sha256:5"}
    plan = plan_deletions(gone, made, {("a", "ours"): 0.0, ("a", "gone-back"): 0.0}, 100.0, 60.0)
    assert plan.due == (("a", "ours"),)
    assert plan.absent_since == {("a", "ours"): 0.0, ("a", "new"): 100.0}
    assert plan.foreign == (("a", "foreign"), ("a", "moved"), ("a", "unreadable"))
