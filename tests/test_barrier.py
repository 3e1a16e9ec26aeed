"""The deploy barrier on filesystem regions: image references, ``server.api_token``, the
``replications`` table, and ``replicator wait`` run as a process: in sync after a sync,
naming missing content, never writing (not even a state store that does not exist).

The real registry, Varnish and ``serve`` are in tests/test_e2e_barrier.py.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.filesystem import FilesystemDriver
from replicator import layout
from replicator.barrier import BadReference, ImageReference, parse_reference
from replicator.demo import publish, sample_registry
from state.store import StateStore
from tests.test_config import credentials, document, error_of, load  # noqa: F401 (autouse)
from tests.test_e2e_sync import REPO_ROOT, write_config

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, reference", [
    ("app:1.0", ImageReference("app", "1.0", None)),
    ("team/app:v1_2-rc.3", ImageReference("team/app", "v1_2-rc.3", None)),
    (f"app@{DIGEST}", ImageReference("app", None, DIGEST)),
    (f"team/app:latest@{DIGEST}", ImageReference("team/app", "latest", DIGEST)),
])
def test_image_references_parse(text, reference):
    assert parse_reference(text) == reference
    assert str(reference) == text


@pytest.mark.parametrize("text", [
    "app", "App:1", "app:", ":1", "app:-1", "app:1@sha256:abc", f"app@{DIGEST.upper()}",
    "registry.example.com:5000/app", "app:1:2", f"app:{'x' * 129}", "",
])
def test_bad_image_references_are_refused(text):
    with pytest.raises(BadReference):
        parse_reference(text)


def test_api_token_is_optional_and_must_be_a_non_empty_string(tmp_path):
    assert load(tmp_path, document()).server.api_token is None
    loaded = load(tmp_path, document(server={"api_token": "t0ken", "webhook_token": "other"}))
    assert (loaded.server.api_token, loaded.server.webhook_token) == ("t0ken", "other")
    assert "t0ken" not in repr(loaded.server)
    for value in ("", 42, ["t0ken"]):
        assert error_of(tmp_path, document(server={"api_token": value})).field == "server.api_token"


def test_a_move_is_visible_at_once_without_a_cdn_and_once_purged_with_one():
    state = StateStore(":memory:")
    state.record_move("prod", "eu", "app", "1", DIGEST, 100.0, 130.0, purge=False)
    state.record_move("prod", "us", "app", "1", DIGEST, 100.0, 131.0, purge=True)
    assert state.awaiting_purge("eu") == [] and state.awaiting_purge("us") == [("app", "1")]
    assert state.made_tags("eu") == state.made_tags("us") == {("app", "1"): DIGEST}
    [taken] = state.take_visible_replications()
    assert (taken.destination, taken.visible - taken.changed) == ("eu", 30.0)
    assert state.take_visible_replications() == []

    state.record_purged("us", [("app", "1")], 140.0)
    [taken] = state.take_visible_replications()
    assert (taken.destination, taken.replicated, taken.purged, taken.visible) == ("us", 131.0, 140.0, 140.0)
    state.record_move("prod", "us", "app", "1", DIGEST, 200.0, 210.0, purge=True)
    record = state.replication("prod", "us", "app", "1")
    assert (record.changed, record.purged, record.visible) == (200.0, None, None)


@pytest.fixture
def regions(tmp_path):
    """A source filled with the demo's images, replicated by ``sync`` to ``replica``."""
    roots = {name: tmp_path / name for name in ("primary", "replica")}
    source = FilesystemDriver(str(roots["primary"]))
    for (name, tag), image in sample_registry().items():
        publish(source, name, tag, image)
    config = write_config(tmp_path / "replicator.yml", {
        "state": {"path": str(tmp_path / "state" / "replicator.db")},
        "regions": {name: {"storage": {"filesystem": {"rootdirectory": str(root)}}}
                    for name, root in roots.items()},
        "policies": [{"name": "prod", "source": "primary", "destinations": ["replica"],
                      "tags": {"include": ["*"], "exclude": ["latest"]}}],
    })
    return config, roots


def wait(config: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "REPLICATOR_CONFIG"}
    return subprocess.run([sys.executable, "-m", "replicator", "wait", "--config", str(config),
                           *arguments], capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                          timeout=120)


def on_a_terminal(config: Path, image: str) -> str:
    """What ``wait`` writes to stderr when stderr is a terminal (a pseudo-terminal here)."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen([sys.executable, "-m", "replicator", "wait", "--config",
                                    str(config), image, "--timeout", "0"],
                                   stdout=subprocess.DEVNULL, stderr=terminal, cwd=REPO_ROOT)
        assert process.wait(timeout=120) == 0
        os.close(terminal)
        terminal = None
        written = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:   # the terminal side is closed and everything was read
                break
            if not chunk:
                break
            written += chunk
        return written.decode().replace("\r\n", "\n")
    finally:
        os.close(controller)
        if terminal is not None:
            os.close(terminal)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in root.rglob("*") if path.is_file()}


def test_wait_names_missing_content_and_writes_nothing(regions):
    config, roots = regions
    images = sample_registry()
    multi = images[("demo/web", "multi")]
    before = {name: tree(root) for name, root in roots.items()}

    result = wait(config, "demo/web:multi", "--timeout", "0", "--json")
    assert result.returncode == 1, result.stderr
    [entry] = json.loads(result.stdout)["destinations"]
    assert (entry["digest"], entry["in_sync"], entry["wanted"]) == (None, False, multi.digest)
    assert entry["reasons"] == [f"old digest: the tag is not there yet (wanted {multi.digest})"]
    assert {name: tree(root) for name, root in roots.items()} == before
    assert not (config.parent / "state").exists()

    sync = subprocess.run([sys.executable, "-m", "replicator", "sync", "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert sync.returncode == 0, sync.stderr
    result = wait(config, "demo/web:multi", "--timeout", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["demo/web:multi: every destination serves it",
                                          f"  replica (policy prod): serves {multi.digest}"]
    assert wait(config, f"demo/web@{multi.children[1].digest}", "--timeout", "0").returncode == 0
    assert on_a_terminal(config, "demo/web:1.0") == (
        "\r\x1b[2Kdemo/web:1.0: 1/1 destinations in sync\r\x1b[2Kdemo/web:1.0: 1/1 "
        "destinations in sync\n")

    child = multi.children[1]
    layer_digest = child.blobs[-1].digest
    (roots["replica"] / layout.blob_key(layer_digest)).unlink()
    replicated = tree(roots["replica"])
    result = wait(config, f"demo/web:multi@{multi.digest}", "--timeout", "0.5s", "--interval", "0.1s")
    assert result.returncode == 1
    assert result.stdout.splitlines()[1] == (f"  replica (policy prod): missing content: "
                                             f"missing-blob {layer_digest}")
    assert tree(roots["replica"]) == replicated

    assert wait(config, "demo/worker:latest").returncode == 2      # no policy selects it
    assert "no policy selects demo/worker:latest" in wait(config, "demo/worker:latest").stderr
    missing = wait(config, "demo/web:2.0")
    assert missing.returncode == 2 and "not at the source region primary" in missing.stderr
    moved = wait(config, f"demo/web:1.0@{multi.digest}")
    assert moved.returncode == 2, moved.stdout + moved.stderr
    assert (f"its tag points at {images[('demo/web', '1.0')].digest} there" in moved.stderr)
