"""Registries over their HTTP API as destinations: storage -> registry and registry ->
registry, in one policy with a storage destination beside them; throttling; deletions.

Images are pushed with skopeo to Debian's docker-registry A on a filesystem root (the
primary): a single-platform OCI image, a multi-arch index and a Docker-format image in a second
repository, sharing a base layer. One policy replicates A's storage into registry B (an empty
docker-registry, written through its API) and a filesystem region; another replicates A
through its API into registry C. skopeo pulls every image from B and C with A's digests. A blob
shared by two repositories is uploaded once and mounted into the second. A second pass writes
nothing: a tag list per repository at each registry destination, no HEAD (the state store
knows the digests it wrote there).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from drivers.filesystem import FilesystemDriver
from drivers.registry import RegistryClient
from replicator import sample_images as si
from replicator.demo import publish
from tests import registry as reg
from tests.faults import REGISTRY, FaultProxy
from tests.registry_auth import TokenServer, make_tls, tls_section
from tests.test_e2e_sync import REPO_ROOT, WEB_1_0, WEB_MULTI, expected_pull, write_config

TOOLS = si.image([WEB_1_0.blobs[1], si.layer({"usr/bin/tool": b"registry destination tool\n"})])
TAGS = {("apps/web", "1.0"): WEB_1_0, ("apps/web", "multi"): WEB_MULTI, ("base/tools", "1"): TOOLS}
UNIQUE = reg.unique_blobs(TAGS.values())
MANIFESTS = {digest for digest, blob in UNIQUE.items() if reg.is_manifest(blob)}
BLOBS = {digest for digest in UNIQUE if digest not in MANIFESTS}
SHARED = {blob.digest for blob in TOOLS.blobs} & {b.digest for image in (WEB_1_0, WEB_MULTI)
                                                  for b in image.all_blobs()}


def run(config: Path, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "replicator", *args, "--config", str(config),
                             "--json"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=180,
                            check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(result.stdout)


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {kind: n for kind, n in counts.items() if n}


def into_registry(tmp_path: Path, source: Path, url: str) -> Path:
    """A configuration replicating the filesystem registry ``source`` into the registry at
    ``url`` (region ``d``), with its state store in ``tmp_path``."""
    return write_config(tmp_path / "replicator.yml", {
        "state": {"path": str(tmp_path / "state.db")},
        "regions": {"primary": {"storage": reg.filesystem_storage(source)},
                    "d": {"registry": {"url": url}}},
        "policies": [{"name": "p", "source": "primary", "destinations": ["d"]}]})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry-destination")
    primary = reg.filesystem_storage(tmp / "primary")
    services = [reg.start_registry(primary, tmp / "logs")]
    try:
        for (repository, tag), image in TAGS.items():
            reg.push(services[0].url, repository, tag, image, tmp / "work")
        services += [reg.start_registry(reg.filesystem_storage(tmp / name), tmp / "logs")
                     for name in ("b", "c")]
        a, b, c = (service.url for service in services)
        config = write_config(tmp / "replicator.yml", {
            "state": {"path": str(tmp / "state.db")}, "concurrency": 1,
            "regions": {"primary": {"storage": primary}, "api-a": {"registry": {"url": a}},
                        "b": {"registry": {"url": b}}, "c": {"registry": {"url": c}},
                        "local": {"storage": reg.filesystem_storage(tmp / "local")}},
            "policies": [{"name": "out", "source": "primary", "destinations": ["b", "local"]},
                         {"name": "api", "source": "api-a", "destinations": ["c"]}]})
        first, second = run(config, "sync"), run(config, "sync")
        verified = run(config, "verify", "--deep")
        yield tmp, services, first, second, verified
    finally:
        for service in services:
            service.stop()


@pytest.mark.parametrize("registry", [1, 2], ids=["storage-to-registry", "registry-to-registry"])
def test_every_image_is_pulled_from_the_registry_destination_with_its_digest(world, registry):
    tmp, services, first, _, _ = world
    url = services[registry].url
    for (repository, tag), image in TAGS.items():
        pulled = reg.pull(url, repository, tag, tmp / "pulls" / str(registry) / repository / tag)
        assert (reg.manifest_digest(url, repository, tag), pulled) == expected_pull(image)


def test_first_passes_upload_each_blob_once_and_mount_the_shared_one(world):
    _, _, first, _, _ = world
    passes = {entry["destination"]: entry for entry in first["passes"]}
    for name in ("b", "local", "c"):
        entry = passes[name]
        assert (entry["tags_replicated"], entry["tags_failed"], entry["blobs_copied"]) == \
            (len(TAGS), 0, len(BLOBS)), entry
    for name in ("b", "c"):
        requests = first["requests"][name]
        assert requests["copy"] == len(SHARED)   # mounted into base/tools from apps/web
        assert requests["get"] == 0 and requests["delete"] == 0
    print(f"\nregistry destinations, first pass: b {first['requests']['b']}, c {first['requests']['c']}")


def test_a_second_pass_writes_nothing_and_lists_each_repository_once(world):
    _, _, _, second, _ = world
    for entry in second["passes"]:
        assert (entry["tags_unchanged"], entry["blobs_copied"], entry["manifests_copied"]) == \
            (len(TAGS), 0, 0), entry
    repositories = len({repository for repository, _ in TAGS})
    for name in ("b", "c"):
        assert nonzero(second["requests"][name]) == {"list": repositories}, second["requests"][name]
    assert nonzero(second["requests"]["local"]) == {"list": 1}
    print(f"\nregistry destinations, no-change pass: {second['requests']}")


def test_verify_deep_reads_the_registry_destinations_through_their_api(world):
    _, _, _, _, verified = world
    assert verified["ok"] is True
    for result in verified["destinations"]:
        assert (result["drift"], result["tags_checked"]) == ([], len(TAGS)), result
        assert result["bytes_hashed"] > 0


def complete(client: RegistryClient, repository: str, image: si.Image) -> bool:
    """Whether everything a pull of ``image`` needs is in ``repository``."""
    for item in (image, *image.children):
        if client.manifest_head(repository, item.digest) is None:
            return False
        if any(client.blob_head(repository, blob.digest) is None for blob in item.blobs):
            return False
    return True


CONCURRENCY = 2
"""The throttling test's blob workers, and as many tag workers."""


def test_a_throttling_registry_destination_converges_and_never_shows_a_tag_early(tmp_path):
    """Registry D behind a proxy answering 30% of requests with 429 (``Retry-After: 1``) or
    503: the passes converge; after a 429 the replicator's requests to D wait (within the second
    only the requests already under way arrive, at most one from each other blob or tag
    worker), then one request goes alone and the next only after its answer; a reader of D,
    straight, never sees a tag before everything a pull of it needs."""
    primary = reg.filesystem_storage(tmp_path / "primary")
    with reg.start_registry(primary, tmp_path / "logs") as a:
        for (repository, tag), image in TAGS.items():
            reg.push(a.url, repository, tag, image, tmp_path / "work")
    with reg.start_registry(reg.filesystem_storage(tmp_path / "d"), tmp_path / "logs") as d, \
            FaultProxy(d.url, seed=11, rate=0.3, faults=["throttle", "error503"],
                       protocol=REGISTRY) as proxy:
        config = write_config(tmp_path / "replicator.yml", {
            "state": {"path": str(tmp_path / "state.db")}, "concurrency": CONCURRENCY,
            "regions": {"primary": {"storage": primary}, "d": {"registry": {"url": proxy.url}}},
            "policies": [{"name": "p", "source": "primary", "destinations": ["d"]}]})
        reader = RegistryClient.from_config({"url": d.url})
        early: list[tuple[str, str]] = []
        checks = [0]
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                for (repository, tag), image in TAGS.items():
                    info = reader.manifest_head(repository, tag)
                    if info is not None and (info.digest != image.digest
                                             or not complete(reader, repository, image)):
                        early.append((repository, tag))
                checks[0] += 1

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        codes, runs = [], []
        try:
            for _ in range(6):
                first = len(proxy.events)
                result = subprocess.run([sys.executable, "-m", "replicator", "sync", "--config",
                                         str(config), "--json"], capture_output=True, text=True,
                                        cwd=REPO_ROOT, timeout=300, check=False)
                assert result.returncode in (0, 1), result.stderr[-3000:]
                assert "Traceback" not in result.stderr
                codes.append(result.returncode)
                runs.append(proxy.events[first:])
                if result.returncode == 0:
                    break
        finally:
            stop.set()
            thread.join(timeout=60)
        assert codes[-1] == 0, codes
        assert early == [] and checks[0] > 0
        assert proxy.faults["throttle"] > 0 and proxy.faults["error503"] > 0
        answered = dict(zip(proxy.events, proxy.answered))
        for events in runs:   # each sync is a process of its own, with its own back-off
            for throttled in (event for event in events if event.fault == "throttle"):
                soon = [e for e in events if throttled.at < e.at < throttled.at + 0.9]
                assert len(soon) < 2 * CONCURRENCY, (throttled, soon)  # one under way per worker
                later = [e for e in events if e.at >= throttled.at + 0.9][:2]
                if len(later) == 2:   # the probe alone, then the next once its answer came back
                    assert later[1].at >= answered[later[0]], (throttled, later)
        for (repository, tag), image in TAGS.items():
            assert reg.manifest_digest(d.url, repository, tag) == image.digest
    print(f"\nthrottling registry destination: sync exit codes {codes}; faults {dict(proxy.faults)};"
          f" reader checks {checks[0]}, none early")


def test_deleting_tags_in_a_registry_destination(tmp_path):
    """With ``delete: true``: a tag removed at the source is deleted at the registry destination
    with its manifest; one whose manifest another tag there carries is kept, failing with the
    reason; a registry that has deletes disabled fails the tag with its 405."""
    source = tmp_path / "source"
    primary = FilesystemDriver(str(source))
    images = {("apps/web", "1.0"): WEB_1_0, ("apps/web", "multi"): WEB_MULTI,
              ("apps/web", "same"): WEB_1_0, ("base/tools", "1"): TOOLS}
    for (repository, tag), image in images.items():
        publish(primary, repository, tag, image)
    with reg.start_registry(reg.filesystem_storage(tmp_path / "d"), tmp_path / "logs") as d, \
            reg.start_registry(reg.filesystem_storage(tmp_path / "e"), tmp_path / "logs",
                               delete=False) as e:
        config = write_config(tmp_path / "replicator.yml", {
            "state": {"path": str(tmp_path / "state.db")},
            "regions": {"primary": {"storage": reg.filesystem_storage(source)},
                        "d": {"registry": {"url": d.url}}, "e": {"registry": {"url": e.url}}},
            "policies": [{"name": "p", "source": "primary", "destinations": ["d", "e"],
                          "delete": True}]})
        assert all(entry["tags_replicated"] == len(images) for entry in run(config, "sync")["passes"])
        for tag in ("multi", "1.0"):   # "1.0" shares its manifest with "same"
            shutil.rmtree(source / reg.V2 / "repositories" / "apps/web" / "_manifests" / "tags" / tag)
        result = subprocess.run([sys.executable, "-m", "replicator", "sync", "--config",
                                 str(config), "--json"], capture_output=True, text=True,
                                cwd=REPO_ROOT, timeout=180, check=False)
        assert result.returncode == 1, result.stderr[-3000:]
        passes = {entry["destination"]: entry for entry in json.loads(result.stdout)["passes"]}
        assert passes["d"]["tags_deleted"] == 1
        [shared] = passes["d"]["failures"]
        assert (shared["repository"], shared["tag"]) == ("apps/web", "1.0")
        assert "also carries same" in shared["error"]
        client = RegistryClient.from_config({"url": d.url})
        assert client.manifest_head("apps/web", "multi") is None
        assert client.manifest_head("apps/web", "same").digest == WEB_1_0.digest
        assert client.manifest_head("base/tools", "1").digest == TOOLS.digest
        refused = {f["tag"]: f["error"] for f in passes["e"]["failures"]}
        assert "UNSUPPORTED" in refused["multi"] and "also carries same" in refused["1.0"]
        assert RegistryClient.from_config({"url": e.url}).manifest_head("apps/web", "multi") is not None


def test_a_token_protected_registry_destination_over_tls(tmp_path):
    """Into registry T behind token auth over TLS (a CA the test makes): every image is pulled
    from T with its digest, the shared layer mounted across repositories with a token that
    grants pull on the source repository too; the password never shows."""
    password = "destination-Passw0rd-for-tests"
    source = tmp_path / "source"
    primary = FilesystemDriver(str(source))
    for (repository, tag), image in TAGS.items():
        publish(primary, repository, tag, image)
    tls = make_tls(tmp_path / "tls")
    grants = {"writer": {repository: ["pull", "push"] for repository, _ in TAGS}}
    with TokenServer(tmp_path / "token", {"writer": password}, grants) as tokens, \
            reg.start_registry(reg.filesystem_storage(tmp_path / "t"), tmp_path / "logs",
                               auth=tokens.auth_section(), tls=tls_section(tls)) as t:
        config = write_config(tmp_path / "replicator.yml", {
            "state": {"path": str(tmp_path / "state.db")}, "concurrency": 1,
            "regions": {"primary": {"storage": reg.filesystem_storage(source)},
                        "t": {"registry": {"url": t.url, "username": "writer",
                                           "password": password, "cacert": str(tls.ca)}}},
            "policies": [{"name": "p", "source": "primary", "destinations": ["t"]}]})
        result = subprocess.run([sys.executable, "-m", "replicator", "sync", "--config",
                                 str(config), "--json"], capture_output=True, text=True,
                                cwd=REPO_ROOT, timeout=180, check=False)
        assert password not in result.stdout + result.stderr
        assert result.returncode == 0, result.stderr[-3000:]
        [entry] = json.loads(result.stdout)["passes"]
        assert (entry["tags_replicated"], entry["blobs_copied"]) == (len(TAGS), len(BLOBS))
        assert json.loads(result.stdout)["requests"]["t"]["copy"] == len(SHARED)
        for (repository, tag), image in TAGS.items():
            pulled = reg.pull(t.url, repository, tag, tmp_path / "pulls" / repository / tag,
                              creds=f"writer:{password}")
            assert (reg.manifest_digest(t.url, repository, tag, creds=f"writer:{password}"),
                    pulled) == expected_pull(image)
        assert tokens.issued >= 1


def test_a_later_run_mounts_a_blob_an_earlier_run_uploaded(tmp_path):
    """The state store remembers which repository of a registry destination holds each blob:
    a tag pushed later into another repository gets the shared layer by a mount, in a new
    process, not by a second upload."""
    source = tmp_path / "source"
    primary = FilesystemDriver(str(source))
    publish(primary, "apps/web", "1.0", WEB_1_0)
    with reg.start_registry(reg.filesystem_storage(tmp_path / "d"), tmp_path / "logs") as d:
        config = into_registry(tmp_path, source, d.url)
        assert run(config, "sync")["requests"]["d"]["copy"] == 0
        publish(primary, "base/tools", "1", TOOLS)
        later = run(config, "sync")
        [entry] = later["passes"]
        new = {blob.digest for blob in TOOLS.blobs} - SHARED
        assert (entry["tags_replicated"], entry["blobs_copied"]) == (1, len(new))
        assert later["requests"]["d"]["copy"] == len(SHARED)
        client = RegistryClient.from_config({"url": d.url})
        assert all(client.blob_head("base/tools", digest) is not None for digest in SHARED)
        assert reg.manifest_digest(d.url, "base/tools", "1") == TOOLS.digest


def test_a_tag_deleted_behind_its_back_is_made_again_and_a_moved_one_by_an_audit(tmp_path):
    """A registry destination's tags are trusted from its tag lists and the state store: a tag
    deleted there is seen missing from its list by the next pass and made again; a tag moved
    there to another image is left to the audit (every tag HEADed), which moves it back."""
    source = tmp_path / "source"
    primary = FilesystemDriver(str(source))
    for (repository, tag), image in TAGS.items():
        publish(primary, repository, tag, image)
    with reg.start_registry(reg.filesystem_storage(tmp_path / "d"), tmp_path / "logs") as d:
        config = into_registry(tmp_path, source, d.url)
        assert run(config, "sync")["passes"][0]["tags_replicated"] == len(TAGS)
        reg.delete_manifest(d.url, "base/tools", TOOLS.digest)
        client = RegistryClient.from_config({"url": d.url})
        client.manifest_put("apps/web", "1.0", WEB_MULTI.manifest.data, WEB_MULTI.manifest.media_type)
        [again] = run(config, "sync")["passes"]
        assert (again["tags_replicated"], again["tags_unchanged"]) == (1, len(TAGS) - 1), again
        assert reg.manifest_digest(d.url, "base/tools", "1") == TOOLS.digest
        assert reg.manifest_digest(d.url, "apps/web", "1.0") == WEB_MULTI.digest
        audit = run(config, "sync", "--audit")
        assert audit["requests"]["d"]["head"] >= len(TAGS)
        assert reg.manifest_digest(d.url, "apps/web", "1.0") == WEB_1_0.digest
