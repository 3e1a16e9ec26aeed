"""Priority and recency decide the order tags become visible in a backfill; ``keep_latest``
decides which are replicated at all.

The source is a filesystem written in Distribution's layout (200 tags over four repositories,
sharing a handful of blobs); each tag's ``current/link`` gets its own modification time with
``os.utime``, unrelated to its name. ``replicator sync`` runs as a user runs it (the CLI, in
another process) with ``concurrency: 1``, while a reader thread here polls the destination
for each tag's ``current/link`` and notes the poll that first saw it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from drivers.filesystem import FilesystemDriver
from drivers.registry import RegistryClient
from replicator import layout
from replicator import sample_images as si
from replicator.demo import publish
from tests import registry as reg
from tests.test_e2e_registry_destination import run
from tests.test_e2e_sync import REPO_ROOT

REPOSITORIES = ("apps/web", "apps/api", "base/tools", "ops/agent")
BASE = si.layer({"etc/os-release": b"ID=priority\n"})
IMAGES = [si.image([BASE, si.layer({"app": f"variant {n}\n".encode()})]) for n in range(5)]
T0 = 1_700_000_000


def tag_names() -> list[str]:
    """50 tags per repository: latest, 20 release tags, 29 builds."""
    return ["latest", *(f"v1.{n}" for n in range(20)), *(f"build-{n}" for n in range(29))]


def backfill_source(root: Path) -> dict[tuple[str, str], float]:
    """Publish the 200 tags under ``root`` with shuffled link times; (repository, tag) -> time."""
    storage = FilesystemDriver(str(root))
    keys = [(name, tag) for name in REPOSITORIES for tag in tag_names()]
    times = list(range(len(keys)))
    random.Random(16).shuffle(times)
    when = {}
    for index, (key, offset) in enumerate(zip(keys, times)):
        publish(storage, *key, IMAGES[index % len(IMAGES)])
        when[key] = T0 + offset * 60
        os.utime(root / layout.tag_current_key(*key), (when[key], when[key]))
    return when


def write_config(tmp_path: Path, destination: dict, **policy) -> Path:
    path = tmp_path / "replicator.yml"
    path.write_text(yaml.safe_dump({
        "state": {"path": str(tmp_path / "state.db")}, "concurrency": 1,
        "regions": {"primary": {"storage": reg.filesystem_storage(tmp_path / "primary")},
                    "replica": {"storage": destination}},
        "policies": [{"name": "p", "source": "primary", "destinations": ["replica"], **policy}]}))
    return path


class LinkWatcher(threading.Thread):
    """Polls ``root`` for each key's ``current/link``; ``seen[key]`` is the first poll that saw it.

    Each poll looks at the keys from the last expected to the first, so that commits made in
    the expected order can never look reversed (a key looked at later in a poll was committed
    earlier, if the order holds); commits out of order show as a later poll for an earlier key.
    """

    def __init__(self, root: Path, keys: list[tuple[str, str]]):
        super().__init__(daemon=True)
        self.paths = {key: root / layout.tag_current_key(*key) for key in reversed(keys)}
        self.seen: dict[tuple[str, str], int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        poll = 0
        while not self.done.is_set() and len(self.seen) < len(self.paths):
            poll += 1
            for key, path in self.paths.items():
                if key not in self.seen and path.exists():
                    self.seen[key] = poll


def test_a_backfill_commits_tags_in_priority_then_recency_order(tmp_path):
    when = backfill_source(tmp_path / "primary")
    config = write_config(tmp_path, reg.filesystem_storage(tmp_path / "replica"),
                          priority=["latest", "v*"], order="newest-first")
    expected = sorted(when, key=lambda key: (0 if key[1] == "latest" else 1 if key[1][0] == "v"
                                             else 2, -when[key]))
    assert [key[1] for key in expected[:4]] == ["latest"] * 4
    assert all(key[1].startswith("v") for key in expected[4:84])
    watcher = LinkWatcher(tmp_path / "replica", expected)
    watcher.start()
    try:
        document = run(config, "sync")
    finally:
        watcher.done.set()
        watcher.join()
    assert document["passes"][0]["tags_replicated"] == 200
    assert len(watcher.seen) == 200
    polls = [watcher.seen[key] for key in expected]
    out_of_order = [(expected[i], expected[i + 1]) for i in range(199) if polls[i] > polls[i + 1]]
    assert out_of_order == []
    assert len(set(polls)) >= 10   # the reader told commits apart, not one snapshot at the end
    # the destination's own write times of the links (its driver stamps each commit) agree
    written = {key: (tmp_path / "replica" / layout.tag_current_key(*key)).stat().st_mtime_ns
               for key in expected}
    assert sorted(expected, key=written.get) == expected


def test_keep_latest_replicates_the_three_newest_per_repository_and_never_deletes_the_rest(
        tmp_path, moto):
    when = backfill_source(tmp_path / "primary")
    bucket = reg.create_bucket(moto.url)
    storage = reg.s3_storage(moto.url, bucket)
    config = write_config(tmp_path, storage, keep_latest=3)
    newest = {name: sorted((tag for (repo, tag) in when if repo == name),
                           key=lambda tag: when[(name, tag)])[-3:] for name in REPOSITORIES}
    document = run(config, "sync")
    assert document["passes"][0]["tags_replicated"] == 12
    with reg.start_registry(storage, tmp_path / "logs", readonly=True) as replica:
        client = RegistryClient.from_config({"url": replica.url})
        served = {name: sorted(tag for page in client.tag_list(name) for tag in page)
                  for name in REPOSITORIES}
        assert served == {name: sorted(tags) for name, tags in newest.items()}
        [tag] = newest["apps/web"][-1:]
        index = tag_names().index(tag) + REPOSITORIES.index("apps/web") * 50
        assert reg.manifest_digest(replica.url, "apps/web", tag) == IMAGES[index % 5].digest

    # every tag replicated, then keep_latest with delete: the older ones stay
    write_config(tmp_path, storage)
    assert run(config, "sync")["passes"][0]["tags_replicated"] == 200 - 12
    write_config(tmp_path, storage, keep_latest=3, delete=True)
    document = run(config, "sync")
    assert (document["passes"][0]["tags_deleted"], document["passes"][0]["tags_unchanged"]) == (0, 12)
    result = subprocess.run([sys.executable, "-m", "replicator", "verify", "--config", str(config),
                             "--json"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert [entry["tags_checked"] for entry in json.loads(result.stdout)["destinations"]] == [12]
    keys = {key for key in reg.Store(storage).keys() if key.endswith("/current/link")}
    assert len(keys) == 200
