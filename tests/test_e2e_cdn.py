"""End to end, with real parts: a tag moved at the primary is purged from the replica's edge.

Registry A (``docker-registry`` over a directory, region ``primary``) takes pushes from skopeo;
registry B (read-only, over the directory of region ``replica``) is the replica users pull
from, through Varnish (``registry-cdn.vcl``: every GET cached for a year). ``replicator sync``
copies A's storage into B's. With the replica's ``cdn:`` block (Varnish as both the base URL and
the ``http`` purge node) a moved tag is served new through the edge right after the sync;
without it the edge keeps serving the old digest, though B itself serves the new one.

The purger sends ``Host: 127.0.0.1:<varnish port>`` (the base URL's host); the GETs below send the
same Host, so they hit the very cache object the purge removes.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from replicator import sample_images as si
from tests import registry as reg
from tests.cdn_servers import start_varnish
from tests.services import LOOPBACK, Service
from tests.test_e2e_sync import run_cli, write_config

ACCEPT = ", ".join(sorted(reg.MANIFEST_TYPES))
BASE = si.layer({"etc/os-release": b"ID=e2e-cdn\n"})
X = si.image([BASE, si.layer({"srv/app": b"image X\n"})])
Y = si.image([BASE, si.layer({"srv/app": b"image Y\n"})])


@dataclass
class Edge:
    tmp: Path
    storage: dict[str, dict]
    primary: Service
    replica: Service
    varnish: Service

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.varnish.port}"

    def config(self, cdn: bool) -> Path:
        regions = {name: {"storage": block} for name, block in self.storage.items()}
        if cdn:
            regions["replica"]["cdn"] = {"baseurls": [f"http://{self.host}"],
                                         "http": {"nodes": [f"http://{self.host}"]}}
        return write_config(self.tmp / f"replicator-{'cdn' if cdn else 'plain'}.yml", {
            "state": {"path": str(self.tmp / "state.db")},
            "regions": regions,
            "policies": [{"name": "prod", "source": "primary", "destinations": ["replica"]}],
        })

    def push(self, repository: str, tag: str, image: si.Image) -> None:
        reg.push(self.primary.url, repository, tag, image, self.tmp / "work")

    def sync(self, cdn: bool) -> dict:
        """``replicator sync --json`` (exit 0 required); the replica's pass entry."""
        result = run_cli(self.config(cdn))
        assert result.returncode == 0, result.stderr
        [entry] = json.loads(result.stdout)["passes"]
        return entry

    def get(self, path: str) -> tuple[bytes, dict[str, str]]:
        """GET through Varnish with the users' Host: (body, headers)."""
        request = urllib.request.Request(self.varnish.url + path,
                                         headers={"Host": self.host, "Accept": ACCEPT})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read(), dict(response.headers)

    def manifest(self, repository: str, tag: str) -> tuple[str, str]:
        """(digest, X-Cache) of the tag's manifest as the edge serves it."""
        body, headers = self.get(f"/v2/{repository}/manifests/{tag}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        assert headers["Docker-Content-Digest"] == digest
        return digest, headers["X-Cache"]

    def tags(self, repository: str) -> list[str]:
        body, _ = self.get(f"/v2/{repository}/tags/list")
        return sorted(json.loads(body)["tags"])


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e-cdn")
    storage = {name: reg.filesystem_storage(tmp / name) for name in ("primary", "replica")}
    started: list[Service] = []
    try:
        started.append(reg.start_registry(storage["primary"], tmp / "logs"))
        started.append(reg.start_registry(storage["replica"], tmp / "logs", readonly=True))
        started.append(start_varnish(started[1].port, tmp))
        yield Edge(tmp, storage, *started)
    finally:
        for service in reversed(started):
            service.stop()


def test_a_moved_tag_is_served_new_through_the_edge_right_after_the_sync(edge):
    edge.push("app", "1", X)
    assert edge.sync(cdn=True)["tags_replicated"] == 1
    assert edge.manifest("app", "1") == (X.digest, "MISS")
    assert edge.manifest("app", "1") == (X.digest, "HIT")
    assert edge.tags("app") == ["1"]

    edge.push("app", "1", Y)
    edge.push("app", "2", X)
    entry = edge.sync(cdn=True)
    assert (entry["tags_replicated"], entry["purges_sent"], entry["purges_retrying"],
            entry["purges_failed"]) == (2, 3, 0, 0)   # manifests/1, manifests/2, tags/list
    assert reg.manifest_digest(edge.replica.url, "app", "1") == Y.digest
    assert edge.manifest("app", "1") == (Y.digest, "MISS")
    assert edge.manifest("app", "1") == (Y.digest, "HIT")
    assert edge.tags("app") == ["1", "2"]


def test_without_the_cdn_block_the_edge_keeps_serving_the_old_digest(edge):
    edge.push("stale", "1", X)
    edge.sync(cdn=False)
    assert edge.manifest("stale", "1") == (X.digest, "MISS")
    assert edge.manifest("stale", "1") == (X.digest, "HIT")

    edge.push("stale", "1", Y)
    entry = edge.sync(cdn=False)
    assert (entry["tags_replicated"], entry["purges_sent"]) == (1, 0)
    assert reg.manifest_digest(edge.replica.url, "stale", "1") == Y.digest
    assert edge.manifest("stale", "1") == (X.digest, "HIT")
