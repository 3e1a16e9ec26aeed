"""Per-destination pacing on real storage: bandwidth limits, egress budgets, sync windows.

Bandwidth: one pass of a policy into two destinations, an S3 bucket on moto limited to
8 MiB/s and a filesystem without a limit, copying a 64 MiB blob; the passes run at once, and
the unlimited destination's tag moves first. Budgets: a fake clock rolls the period over, and
the state store is reopened between passes (as after a restart). Windows: the service's
scheduled and push-triggered passes, with windows open and closed now.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from drivers.filesystem import FilesystemDriver
from replicator import config as config_module
from replicator import layout
from replicator import sample_images as si
from replicator.budget import deferred, remaining
from replicator.config import DAYS
from replicator.demo import publish
from replicator.engine import RunOptions, run_policy
from replicator.metrics import Metrics
from replicator.service import Service
from replicator.throttle import TokenBucket
from state.store import StateStore
from tests import registry as reg
from tests.test_e2e_sync import REPO_ROOT

MiB = 1 << 20


def raw_image(size: int, seed: int) -> si.Image:
    """An image whose one layer is about ``size`` random bytes, stored in gzip uncompressed (cheap
    to build)."""
    data = os.urandom(size - 8) + seed.to_bytes(8, "big")
    return si.image([si.Blob(si.OCI_LAYER, gzip.compress(data, compresslevel=0, mtime=0))])


def document(tmp_path: Path, destinations: list, regions: dict, **policy) -> dict:
    return {"state": {"path": str(tmp_path / "state.db")}, "server_side_copy": False,
            "regions": {"primary": {"storage": reg.filesystem_storage(tmp_path / "primary")},
                        **{name: {"storage": block} for name, block in regions.items()}},
            "policies": [{"name": "p", "source": "primary", "destinations": destinations, **policy}]}


def load(tmp_path: Path, doc: dict) -> config_module.Config:
    path = tmp_path / "replicator.yml"
    path.write_text(yaml.safe_dump(doc))
    return config_module.load(path)


def sync(config, clock=time.time, **options):
    state = StateStore(config.state_path)   # a fresh process's view: nothing kept in memory
    try:
        return run_policy(config, config.policies[0], state,
                          RunOptions.from_config(config, clock=clock, **options))
    finally:
        state.close()


# --- bandwidth ---------------------------------------------------------------------------------

def test_a_limited_destination_is_paced_and_an_unlimited_one_in_the_same_pass_is_not(tmp_path, moto):
    big = raw_image(64 * MiB, 1)
    publish(FilesystemDriver(str(tmp_path / "primary")), "apps/big", "1", big)
    bucket = reg.create_bucket(moto.url)
    config = load(tmp_path, document(
        tmp_path, [{"region": "slow", "bandwidth": "8MiB/s"}, "fast"],
        {"slow": reg.s3_storage(moto.url, bucket), "fast": reg.filesystem_storage(tmp_path / "fast")}))
    moves = []
    slow, fast = sync(config, on_change=lambda change: moves.append(change.destination))
    assert (slow.destination, fast.destination) == ("slow", "fast")
    for report in (slow, fast):
        assert (report.tags_replicated, report.blobs_copied, report.tags_failed) == (1, 2, 0)
        assert report.bytes_copied > 64 * MiB
    assert moves == ["fast", "slow"]    # the paced destination holds no other back
    assert slow.bandwidth_waits > 0 and fast.bandwidth_waits == 0
    assert slow.blobs_reread == 1       # it fell behind the shared read and read the rest itself
    with reg.start_registry(reg.s3_storage(moto.url, bucket), tmp_path / "logs", readonly=True) as replica:
        assert reg.manifest_digest(replica.url, "apps/big", "1") == big.digest


def test_the_token_bucket_shares_one_rate_between_callers():
    now = [0.0]
    bucket = TokenBucket(100.0, clock=lambda: now[0], sleep=lambda seconds: now.__setitem__(0, now[0] + seconds))
    assert all(bucket.take(50) for _ in range(10))
    assert now[0] == pytest.approx(5.0)      # 500 bytes at 100 B/s from an empty bucket
    now[0] += 100.0                           # a long pause fills one second's worth, no more
    assert not bucket.take(100)
    assert bucket.take(100)
    assert now[0] == pytest.approx(106.0)


# --- egress budget -----------------------------------------------------------------------------

def budgeted(tmp_path: Path, seed: int) -> tuple[dict, int, dict]:
    """Ten tags of about 1 MiB each at the source, and a document replicating them at
    concurrency 1 into ``replica`` under a budget of 3.5 MiB a day: its images, budget, document."""
    images = {("apps/app", f"t{n}"): raw_image(MiB, seed + n) for n in range(10)}
    for (name, tag), image in images.items():
        publish(FilesystemDriver(str(tmp_path / "primary")), name, tag, image)
    budget = int(3.5 * MiB)
    doc = document(tmp_path, [{"region": "replica", "egress_budget": {"bytes": budget, "per": "1d"}}],
                   {"replica": reg.filesystem_storage(tmp_path / "replica")})
    doc["concurrency"] = 1
    return images, budget, doc


def test_the_budget_stops_new_copies_at_the_limit_and_resumes_in_the_next_period(tmp_path):
    images, budget, doc = budgeted(tmp_path, 0)
    config = load(tmp_path, doc)
    policy = config.policies[0]
    tag_bytes = max(sum(len(blob.data) for blob in image.all_blobs()) for image in images.values())
    now = [time.time()]

    def left() -> int:
        state = StateStore(config.state_path)
        try:
            return remaining(state, policy, "replica", now[0])
        finally:
            state.close()

    [first] = sync(config, clock=lambda: now[0])
    copied = first.bytes_copied
    assert first.tags_replicated == 4 and budget <= copied < budget + tag_bytes
    waiting = [f for f in first.failures if f.kind == "budget"]
    assert len(waiting) == 6 and first.tags_failed == 6
    assert "egress budget into replica is spent until" in waiting[0].error
    assert left() == 0

    # what plan-time arithmetic predicts for the same start order matches what the pass did
    new_bytes = {("apps/app", f"t{n}"): sum(len(b.data) for b in images[("apps/app", f"t{n}")].all_blobs()
                                            if b is not images[("apps/app", f"t{n}")].manifest)
                 for n in range(10)}
    assert deferred(budget, new_bytes) == sorted((f.repository, f.tag) for f in waiting)
    assert deferred(None, new_bytes) == []

    [again] = sync(config, clock=lambda: now[0])     # same period, after a "restart"
    assert (again.blobs_copied, again.bytes_copied, again.tags_replicated) == (0, 0, 0)
    assert sorted(f.tag for f in again.failures) == sorted(f.tag for f in waiting)

    # the CLI in the same period: the tags are pending with reason budget, in sync --json and status
    result = subprocess.run([sys.executable, "-m", "replicator", "sync", "--config",
                             str(tmp_path / "replicator.yml"), "--json"], capture_output=True,
                            text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    [entry] = json.loads(result.stdout)["passes"]
    assert {f["kind"] for f in entry["failures"]} == {"budget"} and entry["blobs_copied"] == 0
    status = subprocess.run([sys.executable, "-m", "replicator", "status", "--config",
                             str(tmp_path / "replicator.yml"), "--json"], capture_output=True,
                            text=True, cwd=REPO_ROOT, timeout=120)
    [destination] = json.loads(status.stdout)["destinations"]
    assert destination["pending_tags"] == 6 and destination["failing_tags"] == 0
    assert destination["egress_budget"]["waiting_tags"] == 6
    assert destination["egress_budget"]["used"] >= budget
    text = subprocess.run([sys.executable, "-m", "replicator", "status", "--config",
                           str(tmp_path / "replicator.yml")], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120).stdout
    assert "6 pending" in text and "6 tags waiting for it (pending, reason budget)" in text
    state = StateStore(config.state_path)
    try:
        scraped = generate_latest(Metrics(config, state).registry).decode()
    finally:
        state.close()
    labels = '{destination="replica",policy="p",source="primary"}'
    assert f"replicator_budget_waiting_tags{labels} 6.0" in scraped
    [used_line] = [line for line in scraped.splitlines()
                   if line.startswith(f"replicator_egress_budget_used_bytes{labels} ")]
    assert float(used_line.split()[-1]) == copied == destination["egress_budget"]["used"]

    now[0] += 86400                                  # the next period
    [resumed] = sync(config, clock=lambda: now[0])
    assert resumed.tags_replicated == 4 and budget <= resumed.bytes_copied < budget + tag_bytes
    now[0] += 86400
    [last] = sync(config, clock=lambda: now[0])
    assert (last.tags_replicated, last.tags_failed, last.tags_unchanged) == (2, 0, 8)
    assert left() == budget - last.bytes_copied > 0
    replica = FilesystemDriver(str(tmp_path / "replica"))
    for (name, tag), image in images.items():
        assert layout.parse_link(replica.read(layout.tag_current_key(name, tag))) == image.digest


# --- windows -----------------------------------------------------------------------------------

def _windows(open_now: bool) -> list[dict]:
    """Open all of today and tomorrow (UTC), or closed from yesterday to tomorrow: a test that
    runs across midnight sees the same."""
    today = datetime.now(timezone.utc).weekday()
    near = [DAYS[(today + offset) % 7] for offset in (-1, 0, 1)]
    days = near[1:] if open_now else [day for day in DAYS if day not in near]
    return [{"days": days, "hours": "00:00-24:00", "timezone": "UTC"}]


@pytest.mark.parametrize("strict", [False, True])
def test_scheduled_passes_wait_for_the_window_push_passes_only_if_strict(tmp_path, strict):
    image = raw_image(4096, 7)
    publish(FilesystemDriver(str(tmp_path / "primary")), "apps/app", "1", image)
    config = load(tmp_path, document(
        tmp_path, [{"region": "closed", "windows": _windows(open_now=False)},
                   {"region": "open", "windows": _windows(open_now=True)}],
        {"closed": reg.filesystem_storage(tmp_path / "closed"),
         "open": reg.filesystem_storage(tmp_path / "open")}, strict_windows=strict))
    state = StateStore(config.state_path)
    service = Service(config, state)
    try:
        scheduled = service.run_pass("p")
        assert [report.destination for report in scheduled] == ["open"]
        pushed = service.run_pass("p", "apps/app")
        assert [report.destination for report in pushed] == (["open"] if strict else ["closed", "open"])
    finally:
        state.close()
    closed = FilesystemDriver(str(tmp_path / "closed"))
    assert (tmp_path / "closed" / layout.tag_current_key("apps/app", "1")).exists() is (not strict)
    # sync from the command line runs into every destination unless asked to respect windows
    result = subprocess.run([sys.executable, "-m", "replicator", "sync", "--respect-windows",
                             "--config", str(tmp_path / "replicator.yml"), "--json"],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert [entry["destination"] for entry in json.loads(result.stdout)["passes"]] == ["open"]
    result = subprocess.run([sys.executable, "-m", "replicator", "sync",
                             "--config", str(tmp_path / "replicator.yml"), "--json"],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [entry["destination"] for entry in json.loads(result.stdout)["passes"]] == ["closed", "open"]
    assert layout.parse_link(closed.read(layout.tag_current_key("apps/app", "1"))) == image.digest


def test_plan_shows_what_the_budget_defers_and_sync_then_defers_exactly_that(tmp_path):
    _, budget, doc = budgeted(tmp_path, 20)
    path = tmp_path / "replicator.yml"
    path.write_text(yaml.safe_dump(doc))

    def run(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "replicator", *arguments, "--config", str(path)],
                              capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)

    planned = run("plan", "--json")
    assert planned.returncode == 0, planned.stderr[-2000:]
    [entry] = json.loads(planned.stdout)["passes"]
    assert entry["budget"]["left"] == budget
    deferred_tags = [(tag["repository"], tag["tag"]) for tag in entry["budget"]["deferred"]]
    assert len(deferred_tags) == 6
    text = run("plan").stdout
    assert "budget     3.5 MiB left this period: 6 tags would wait for the next" in text
    assert all(f"    waits  {name}:{tag}" in text for name, tag in deferred_tags)

    synced = run("sync", "--json")
    assert synced.returncode == 1
    [report] = json.loads(synced.stdout)["passes"]
    assert sorted((f["repository"], f["tag"]) for f in report["failures"]
                  if f["kind"] == "budget") == sorted(deferred_tags)
    [after] = json.loads(run("plan", "--json").stdout)["passes"]
    assert after["budget"]["left"] == 0
    assert sorted((t["repository"], t["tag"]) for t in after["budget"]["deferred"]) == sorted(deferred_tags)
