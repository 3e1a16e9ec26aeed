"""The audit trail on its own: the ``audit:`` block, rotation by size, keeping by age, the
readers (``history``, ``recent``) and shipping into a directory region through its driver."""

from __future__ import annotations

import json
import os
import time

import pytest

from drivers import open_storage
from replicator import audit, audit_shipping, config
from tests.test_config import SECRET, credentials, document, error_of, load  # noqa: F401 (autouse)


def change(n: int, destination: str = "eu-west", tag: str | None = None) -> audit.Change:
    return audit.Change("prod", "us-east", destination, "apps/web", tag or f"t{n}", "create",
                        None, f"sha256:{n:064x}", n * 10, "a" * 32)


def test_audit_block_loads_with_defaults(tmp_path):
    loaded = load(tmp_path, document(audit={"path": "logs/audit.jsonl"}))
    assert loaded.audit_log == config.AuditLog(tmp_path / "logs/audit.jsonl", 64 * 1024 ** 2,
                                               90 * 86400.0, None, "replicator-audit/", 60.0)
    assert load(tmp_path, document()).audit_log is None


def test_audit_block_takes_every_key(tmp_path):
    loaded = load(tmp_path, document(audit={
        "path": "/var/log/audit.jsonl", "max_size": "512KiB", "keep": "30d", "region": "eu-west",
        "prefix": "/compliance/audit/", "ship_interval": "5m"}))
    assert loaded.audit_log == config.AuditLog(tmp_path / "/var/log/audit.jsonl", 512 * 1024,
                                               30 * 86400.0, "eu-west", "compliance/audit/", 300.0)


@pytest.mark.parametrize("block, field", [
    ("not a mapping", "audit"),
    ({}, "audit.path"),
    ({"path": ""}, "audit.path"),
    ({"path": "a", "max_size": "lots"}, "audit.max_size"),
    ({"path": "a", "max_size": 0}, "audit.max_size"),
    ({"path": "a", "max_size": "10XB"}, "audit.max_size"),
    ({"path": "a", "keep": "forever"}, "audit.keep"),
    ({"path": "a", "region": "mars"}, "audit.region"),
    ({"path": "a", "prefix": "../escape"}, "audit.prefix"),
    ({"path": "a", "prefix": ""}, "audit.prefix"),
    ({"path": "a", "ship_interval": "0s"}, "audit.ship_interval"),
    ({"path": "a", "secret": SECRET}, "audit.secret"),
])
def test_each_audit_mistake_names_its_field(tmp_path, block, field):
    assert error_of(tmp_path, document(audit=block)).field == field


def test_audit_region_must_hold_storage(tmp_path):
    doc = document(audit={"path": "a", "region": "hub"})
    doc["regions"]["hub"] = {"registry": {"url": "http://127.0.0.1:9"}}
    error = error_of(tmp_path, doc)
    assert error.field == "audit.region" and "storage region" in str(error)


def settings(tmp_path, **overrides) -> config.AuditLog:
    return config.AuditLog(tmp_path / "trail" / "audit.jsonl", **overrides)


def test_lines_are_numbered_across_rotations_and_read_in_order(tmp_path):
    trail = settings(tmp_path, max_size=1000)
    writer = audit.AuditWriter(trail)
    for n in range(1, 21):
        writer.append(change(n))
    rotated = audit.rotated_files(trail.path)
    assert len(rotated) >= 2
    assert all(path.stat().st_size < 1000 + 400 for path in rotated)
    assert rotated[0].name == "audit.jsonl.000000000001"
    assert [line["seq"] for line in audit.entries(trail.path)] == list(range(1, 21))
    assert [line["tag"] for line in audit.entries(trail.path)] == [f"t{n}" for n in range(1, 21)]
    assert [line["seq"] for line in audit.recent(trail.path, 5)] == [20, 19, 18, 17, 16]
    assert [line["seq"] for line in audit.recent(trail.path, 50)] == list(range(20, 0, -1))
    assert audit.history(trail.path, "apps/web", "t7") == [
        line for line in audit.entries(trail.path) if line["seq"] == 7]


def test_old_rotated_files_are_deleted_but_never_unshipped_ones_nor_the_newest(tmp_path):
    trail = settings(tmp_path, max_size=600, keep=3600.0, region="archive")
    writer = audit.AuditWriter(trail)
    for n in range(1, 16):
        writer.append(change(n))
    rotated = audit.rotated_files(trail.path)
    assert len(rotated) >= 4
    old = time.time() - 7200
    for path in rotated:
        os.utime(path, (old, old))
    audit.mark_shipped(trail.path, int(rotated[2].suffix[1:]))   # the first two files shipped
    n = 15
    while len(audit.rotated_files(trail.path)) <= len(rotated):   # up to the next rotation
        n += 1
        writer.append(change(n))
    kept = audit.rotated_files(trail.path)
    assert rotated[0] not in kept and rotated[1] not in kept
    assert set(rotated[2:]) <= set(kept)
    assert next(audit.entries(trail.path))["seq"] == int(rotated[2].suffix[1:])


def test_a_line_cut_short_by_a_crash_is_skipped_and_its_number_reused(tmp_path):
    trail = settings(tmp_path)
    writer = audit.AuditWriter(trail)
    writer.append(change(1))
    with trail.path.open("ab") as handle:
        handle.write(b'{"seq":2,"time":"2026-')
    assert [line["seq"] for line in audit.entries(trail.path)] == [1]
    writer.append(change(2))
    assert [(line["seq"], line["tag"]) for line in audit.entries(trail.path)] == [(1, "t1"), (2, "t2")]


def test_shipping_into_a_directory_region_once_per_line(tmp_path):
    trail = settings(tmp_path, region="archive", prefix="audit/")
    storage = open_storage({"filesystem": {"rootdirectory": str(tmp_path / "archive")}})
    writer = audit.AuditWriter(trail)
    assert audit_shipping.ship(trail, storage) == audit_shipping.ShipOutcome(0, 0)
    for n in range(1, 4):
        writer.append(change(n))
    assert audit_shipping.ship(trail, storage) == audit_shipping.ShipOutcome(1, 3)
    assert audit_shipping.ship(trail, storage) == audit_shipping.ShipOutcome(0, 0)
    writer.append(change(4))
    audit.mark_shipped(trail.path, 1)    # as if every marker move had been lost
    assert audit_shipping.ship(trail, storage) == audit_shipping.ShipOutcome(1, 4)
    keys = [info.key for page in storage.list("audit/") for info in page]
    assert len(keys) == 2
    shipped = b"".join(storage.read(key) for key in keys)
    assert shipped == trail.path.read_bytes()
    first = json.loads(trail.path.read_bytes().splitlines()[0])
    assert keys[0] == audit_shipping.object_key("audit/", first["time"], 1)


def test_object_keys_are_named_by_the_first_lines_time_and_number():
    assert audit_shipping.object_key("a/b/", "2026-12-01T23:30:12.123Z", 42) == (
        "a/b/2026/12/01/20261201T233012.123Z-000000000042.jsonl")
