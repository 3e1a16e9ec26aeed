"""End to end: the audit trail of `replicator sync`, `replicator history`, and shipping.

A registry over a directory is the source (images pushed with skopeo); the policy replicates
to an S3 bucket on moto (``replica``) and a directory (``local``) with ``delete: true``, and
ships its audit trail to another bucket (``archive``). One tag at a time (``concurrency: 1``)
so that a layer two tags share is copied, and counted, by the first of them in name order.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replicator import audit
from replicator import sample_images as si
from tests import registry as reg
from tests.faults import FaultProxy
from tests.services import S3_CREDENTIALS
from tests.test_e2e_sync import REPO_ROOT, write_config
from tests.test_service import wait_for

BASE = si.layer({"etc/os-release": b"ID=audit\n"})
WEB_1 = si.image([BASE, si.layer({"srv/web": b"web 1\n"})])
WEB_2 = si.image([BASE, si.layer({"srv/web": b"web 2\n"})])
TOOLS = si.image([BASE, si.layer({"usr/bin/tool": b"tool\n"})])
DESTINATIONS = ("replica", "local")
PASS_ID = re.compile(r"[0-9a-f]{32}")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
PREFIX = "trail/"


def size(image: si.Image, *without: si.Blob) -> int:
    return sum(len(blob.data) for blob in image.all_blobs() if blob not in without)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "REPLICATOR_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "replicator", *args], capture_output=True,
                            text=True, cwd=REPO_ROOT, env=env, timeout=120)
    assert S3_CREDENTIALS["secretkey"] not in result.stdout + result.stderr, "secret leaked"
    assert S3_CREDENTIALS["accesskey"] not in result.stdout + result.stderr, "secret leaked"
    return result


def trail_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected_line(seq, destination, repository, tag, action, old, new, copied) -> dict:
    return {"seq": seq, "policy": "mirror", "source": "primary", "destination": destination,
            "repository": repository, "tag": tag, "action": action, "old_digest": old,
            "new_digest": new, "bytes_copied": copied, "artifacts": []}


def without_volatile(lines: list[dict]) -> list[dict]:
    """The lines without ``time`` and ``pass_id``, after checking their shape."""
    for line in lines:
        assert TIME.fullmatch(line["time"]), line
        assert PASS_ID.fullmatch(line["pass_id"]), line
    return [{key: value for key, value in line.items() if key not in ("time", "pass_id")}
            for line in lines]


def shipped(moto_url: str, bucket: str) -> list[tuple[str, bytes]]:
    s3 = reg.s3_client(moto_url)
    keys = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])]
    return [(key, s3.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in sorted(keys)]


def write_world_config(path: Path, primary: dict, replica: dict, local: dict,
                       archive: dict) -> Path:
    return write_config(path, {
        "state": {"path": str(path.parent / "state.db")},
        "concurrency": 1,
        "regions": {"primary": {"storage": primary}, "replica": {"storage": replica},
                    "local": {"storage": local}, "archive": {"storage": archive}},
        "policies": [{"name": "mirror", "source": "primary", "destinations": list(DESTINATIONS),
                      "delete": True}],
        "audit": {"path": "audit/trail.jsonl", "region": "archive", "prefix": PREFIX,
                  "max_size": "1MiB", "keep": "30d"}})


@pytest.fixture
def world(moto, tmp_path):
    primary = reg.filesystem_storage(tmp_path / "primary")
    source = reg.start_registry(primary, tmp_path / "logs")
    archive = reg.create_bucket(moto.url)
    blocks = (primary, reg.s3_storage(moto.url, reg.create_bucket(moto.url)),
              reg.filesystem_storage(tmp_path / "local"))
    config = write_world_config(tmp_path / "replicator.yml", *blocks,
                                reg.s3_storage(moto.url, archive, "/audit-root"))
    with FaultProxy(moto.url, rate=1.0, faults=("error503",)) as proxy:
        faulty = write_world_config(tmp_path / "archive-failing.yml", *blocks,
                                    reg.s3_storage(proxy.url, archive, "/audit-root"))
        yield source, config, archive, faulty
    source.stop()


def sync(config: Path) -> dict:
    result = cli("sync", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_create_move_delete_are_recorded_shipped_and_answered_by_history(world, moto, tmp_path):
    source, config, archive, _ = world
    trail = tmp_path / "audit" / "trail.jsonl"
    reg.push(source.url, "apps/web", "1.0", WEB_1, tmp_path / "work")
    reg.push(source.url, "base/tools", "latest", TOOLS, tmp_path / "work")
    assert cli("sync", "--config", str(config), "--dry-run").returncode == 0
    assert not trail.exists(), "a dry run wrote audit lines"
    sync(config)
    reg.push(source.url, "apps/web", "1.0", WEB_2, tmp_path / "work")
    sync(config)
    reg.delete_manifest(source.url, "base/tools", TOOLS.digest)
    sync(config)

    lines = trail_lines(trail)
    expected = []
    for destination in DESTINATIONS:   # the first pass: every blob of web, tools without BASE
        expected += [("apps/web", "1.0", "create", None, WEB_1.digest, size(WEB_1)),
                     ("base/tools", "latest", "create", None, TOOLS.digest, size(TOOLS, BASE))]
    expected = [(DESTINATIONS[i // 2], *change) for i, change in enumerate(expected)]
    expected += [(destination, "apps/web", "1.0", "move", WEB_1.digest, WEB_2.digest,
                  size(WEB_2, BASE)) for destination in DESTINATIONS]
    expected += [(destination, "base/tools", "latest", "delete", TOOLS.digest, None, 0)
                 for destination in DESTINATIONS]
    assert [line["seq"] for line in lines] == list(range(1, len(expected) + 1))
    # a sync's destinations run at once: its lines interleave; each sync's lines follow the last's

    def in_order(found: list[dict]) -> list[dict]:
        return sorted(({k: v for k, v in line.items() if k != "seq"} for line in found),
                      key=lambda line: (DESTINATIONS.index(line["destination"]), line["repository"]))

    batches = [(0, 4), (4, 6), (6, 8)]
    for start, end in batches:
        assert in_order(without_volatile(lines[start:end])) == in_order(
            [expected_line(seq, *change) for seq, change in enumerate(expected[start:end], start + 1)])
    passes = {(line["destination"], start): line["pass_id"] for start, end in batches
              for line in lines[start:end]}
    assert len(set(passes.values())) == len(passes) == 6   # three syncs, two destinations each
    assert all(line["pass_id"] == passes[(line["destination"], 0)] for line in lines[:4])

    answer = cli("history", "--config", str(config), "apps/web", "--json")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout) == {"changes": [line for line in lines
                                                     if line["repository"] == "apps/web"]}
    answer = cli("history", "--config", str(config), "apps/web:1.0", "--destination", "local")
    assert answer.returncode == 0, answer.stderr
    create, move = [line for line in lines if line["repository"] == "apps/web"
                    and line["destination"] == "local"]
    assert answer.stdout.splitlines() == [
        (f"{create['time']}  create  apps/web:1.0  primary -> local (mirror)  - -> {WEB_1.digest}  "
         f"{size(WEB_1)} bytes  pass {create['pass_id']}"),
        (f"{move['time']}  move    apps/web:1.0  primary -> local (mirror)  {WEB_1.digest} -> "
         f"{WEB_2.digest}  {size(WEB_2, BASE)} bytes  pass {move['pass_id']}")]
    answer = cli("history", "--config", str(config), "base/tools:latest", "--destination", "replica",
                 "--json")
    assert [line["action"] for line in json.loads(answer.stdout)["changes"]] == ["create", "delete"]
    assert cli("history", "--config", str(config), "no/such:tag").stdout == "no changes recorded\n"
    assert cli("history", "--config", str(config), "Bad Name").returncode == 2

    objects = shipped(moto.url, archive)
    assert len(objects) == 3   # one batch per sync
    for (key, _), first in zip(objects, (lines[0], lines[4], lines[6])):
        day, clock = first["time"].split("T")
        assert key == (f"audit-root/{PREFIX}{day.replace('-', '/')}/{day.replace('-', '')}T"
                       f"{clock.replace(':', '')}-{first['seq']:012d}.jsonl")
    assert b"".join(data for _, data in objects) == trail.read_bytes()
    text = trail.read_text() + "".join(data.decode() for _, data in objects)
    for secret in S3_CREDENTIALS.values():
        if secret != "us-east-1":
            assert secret not in text
    assert "http" not in text and str(tmp_path) not in text


def test_lines_appended_while_shipping_fails_are_shipped_once_by_the_next_sync(world, moto, tmp_path):
    """The archive unreachable between append and ship (a fault), then a ship that wrote its
    object but died before moving its marker (the state a kill leaves): nothing lost, nothing
    twice."""
    source, config, archive, faulty = world
    trail = tmp_path / "audit" / "trail.jsonl"
    reg.push(source.url, "apps/web", "1.0", WEB_1, tmp_path / "work")
    result = cli("sync", "--config", str(faulty), "--json")
    assert result.returncode == 0, result.stderr
    assert "audit trail not shipped to archive" in result.stderr
    assert len(trail_lines(trail)) == 2 and shipped(moto.url, archive) == []

    reg.push(source.url, "apps/web", "2.0", WEB_2, tmp_path / "work")
    sync(config)
    objects = shipped(moto.url, archive)
    assert len(objects) == 1 and objects[0][1] == trail.read_bytes()
    assert [line["seq"] for line in trail_lines(trail)] == [1, 2, 3, 4]

    marker = Path(f"{trail}.shipped")
    assert json.loads(marker.read_text()) == {"next_seq": 5}
    reg.push(source.url, "apps/web", "3.0", TOOLS, tmp_path / "work")
    sync(config)
    marker.write_text(json.dumps({"next_seq": 5}))   # the marker's move lost
    reg.push(source.url, "apps/web", "4.0", WEB_1, tmp_path / "work")
    sync(config)
    objects = shipped(moto.url, archive)
    assert len(objects) == 3
    assert b"".join(data for _, data in objects) == trail.read_bytes()
    assert [line["seq"] for line in trail_lines(trail)] == list(range(1, 9))


KILLED_WRITER = """
import sys, time
from pathlib import Path
from replicator import config as config_module
from replicator.audit import AuditWriter, Change
from replicator.audit_shipping import ship
config = config_module.load(sys.argv[1])
writer = AuditWriter(config.audit_log)
storage = config.regions["archive"].storage
n = 0
while True:
    n += 1
    writer.append(Change("mirror", "primary", "local", "apps/web", f"t{n}", "create", None,
                         "sha256:" + "0" * 64, n, "p" * 32))
    if n % 3 == 0:
        ship(config.audit_log, storage)
"""


def test_a_kill_anywhere_between_append_and_ship_neither_loses_nor_duplicates_a_line(
        world, moto, tmp_path):
    _, config, archive, _ = world
    trail = tmp_path / "audit" / "trail.jsonl"
    for round_ in range(6):
        before = len(list(audit.entries(trail)))
        process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(config)],
                                   cwd=REPO_ROOT, stderr=subprocess.PIPE)
        wait_for(lambda before=before, process=process: len(list(audit.entries(trail))) >= before + 4
                 or process.poll() is not None, "the writer appending")
        time.sleep(0.05 + 0.07 * round_)
        assert process.poll() is None, process.stderr.read().decode()
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    result = cli("sync", "--config", str(config))   # nothing to replicate; ships what is left
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in trail.read_bytes().splitlines() if line.endswith(b"}")]
    seqs = [line["seq"] for line in lines]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 6 * 4
    objects = shipped(moto.url, archive)
    assert len(objects) >= 6   # at least one ship per round
    shipped_lines = b"".join(data for _, data in objects).splitlines()
    assert [json.loads(line)["seq"] for line in shipped_lines] == seqs
