"""The status page ``serve`` answers at ``/``, as a person reads it in a browser.

The deployment is tests/test_e2e_barrier.py's (primary, replica behind Varnish, and ``locked``,
a read-only registry that refuses every write), without an API token and with a 20 s debounce,
so that a pushed tag stays pending long enough to be seen. Headless Chromium (Debian's
``chromium``) loads the page and prints the DOM it rendered; the test reads its sections.
Escaping is checked on the renderer itself with a hostile error message.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

from drivers.backoff import Backoff
from drivers.filesystem import FilesystemDriver
from replicator import config as config_module
from replicator.demo import publish, sample_registry
from replicator.page import render_page
from state.store import StateStore
from tests.test_e2e_barrier import Barricade, image
from tests.test_e2e_sync import REPO_ROOT, write_config
from tests.test_service import wait_for


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed (apt-get install chromium)")
    return path


def rendered_text(url: str, profile: Path) -> dict[str, str]:
    """The page at ``url`` as headless Chromium renders it: each section's text by its id."""
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--no-proxy-server", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
         "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    sections = re.findall(r'<section id="([a-z-]+)">(.*?)</section>', result.stdout, re.S)
    assert sections, result.stdout
    return {name: " ".join(unescape(re.sub(r"<[^>]+>", " ", body)).split())
            for name, body in sections}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    deployment = Barricade(tmp_path_factory.mktemp("status-page"), api_token=None, debounce="20s")
    yield deployment
    deployment.stop()


def test_the_page_shows_a_failing_tag_with_its_reason_and_a_pending_tag(deployment, tmp_path):
    refused = image("refused by locked")
    deployment.push("shared/app", "bad", refused)
    sync = subprocess.run([sys.executable, "-m", "replicator", "sync", "--config",
                           str(deployment.config_path), "--policy", "shared"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert sync.returncode == 1, sync.stdout + sync.stderr
    pending = image("waiting for its pass")
    deployment.push("app", "pending", pending)
    wait_for(lambda: deployment.service.status()["destinations"][0]["pending_tags"] >= 1,
             lambda: f"app:pending noted as pending ({deployment.service.status()}; service log: "
                     f"{deployment.service.log()})")

    page = rendered_text(deployment.service.url + "/", tmp_path / "profile")

    assert "prod primary \u2192 replica NOT in sync" in page["destinations"]
    assert "shared primary \u2192 locked NOT in sync" in page["destinations"]
    assert re.search(r"prod replica app:pending \S+ \d+m\d\ds", page["pending-tags"]), page["pending-tags"]
    failing = page["failing-tags"]
    assert f"shared locked shared/app:bad {refused.digest} 1 " in failing, failing
    assert "POST /v2/shared/app/blobs/uploads/: HTTP 405 Method Not Allowed" in failing
    assert "No CDN purge is outstanding." in page["outstanding-cdn-purges"]


def test_every_value_on_the_page_is_escaped(tmp_path):
    path = write_config(tmp_path / "replicator.yml", {
        "state": {"path": str(tmp_path / "state.db")},
        "regions": {name: {"storage": {"filesystem": {"rootdirectory": str(tmp_path / name)}}}
                    for name in ("primary", "replica")},
        "policies": [{"name": "prod", "source": "primary", "destinations": ["replica"]}],
    })
    config = config_module.load(path, clients=False)
    state = StateStore(":memory:")
    state.record_failure("prod", "replica", "app", "1", "sha256:" + "0" * 64,
                         '<script>alert("x")</script> & more', Backoff(initial=60.0, maximum=60.0))
    page = render_page(config, state)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page


def test_the_page_lists_the_latest_changes_from_the_audit_trail(tmp_path):
    source = FilesystemDriver(str(tmp_path / "primary"))
    images = sample_registry()
    for (name, tag), item in images.items():
        publish(source, name, tag, item)
    path = write_config(tmp_path / "replicator.yml", {
        "state": {"path": str(tmp_path / "state.db")},
        "regions": {name: {"storage": {"filesystem": {"rootdirectory": str(tmp_path / name)}}}
                    for name in ("primary", "replica")},
        "policies": [{"name": "prod", "source": "primary", "destinations": ["replica"]}],
        "audit": {"path": str(tmp_path / "audit.jsonl")},
    })
    config = config_module.load(path, clients=False)
    assert "No change recorded yet." in render_page(config, StateStore(":memory:"))
    sync = subprocess.run([sys.executable, "-m", "replicator", "sync", "--config", str(path)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert sync.returncode == 0, sync.stdout + sync.stderr

    page = render_page(config, StateStore(tmp_path / "state.db"))

    changes = re.search(r'<section id="latest-changes">(.*?)</section>', page, re.S)[1]
    rows = re.findall(r"<tr>(.*?)</tr>", changes)[1:]
    assert len(rows) == len(images)
    for (name, tag), item in images.items():
        assert any(f"<td>create</td><td>{name}:{tag}</td><td>primary \u2192 replica</td>"
                   f"<td>prod</td><td></td><td>{item.digest}</td>" in row for row in rows), rows
