"""Never an image before its artifacts, against real registries.

Ordering: registry A's API is the source, behind a latency proxy that slows every request.
After a first pass, ``v1`` moves at the source to a new image with a signature, an SBOM and a
signed OCI referrer, and a new ``v3`` arrives with a signature and a referrer. While the second
pass runs, readers poll a filesystem destination (served by registry B) and registry C: never
does either serve ``v1`` or ``v3`` at the new digest before all its artifacts.

Failure: with A's storage as the source, ``v1`` moves to an image whose signature's payload
blob is corrupt in A's storage: the pass fails ``v1`` naming the signature, and both
destinations keep serving the old ``v1``. A signature added late to ``v9`` (already
replicated) shows in ``verify`` as ``missing-artifact`` and arrives with the next pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from replicator import sample_images as si
from tests import registry as reg
from tests import supply_chain as sc
from tests.faults import REGISTRY, FaultProxy
from tests.test_e2e_artifacts import fallback, passes, sync
from tests.test_e2e_sync import REPO_ROOT, write_config

REPO = "apps/app"
OLD = si.image([si.layer({"srv/app": b"order old\n"})])
NEW = si.image([si.layer({"srv/app": b"order new\n"})])
THIRD = si.image([si.layer({"srv/app": b"order v3\n"})])
FRAGILE_OLD = si.image([si.layer({"srv/app": b"fragile old\n"})])
FRAGILE_NEW = si.image([si.layer({"srv/app": b"fragile new\n"})])
LATE = si.image([si.layer({"srv/app": b"signed late\n"})])


class Reader:
    """Polls a registry for ``tags`` until stopped; records what it saw and any tag served at
    a digest whose expected artifacts (``expected``: digest -> {tag: digest}, and referrer
    digests) are not all served."""

    def __init__(self, api: sc.Api, expected: dict[str, tuple[dict[str, str], set[str]]]):
        self.api, self.expected = api, expected
        self.seen: list[tuple[str, str | None]] = []
        self.violations: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _digest(self, reference: str) -> str | None:
        response = self.api.get(REPO, reference)
        return sc.digest_of(response.content) if response.status_code == 200 else None

    def poll(self) -> None:
        for tag in ("v1", "v3"):
            digest = self._digest(tag)
            self.seen.append((tag, digest))
            if digest not in self.expected:
                continue
            tags, referrers = self.expected[digest]
            for artifact, wanted in tags.items():
                if self._digest(artifact) != wanted:
                    self.violations.append(f"{tag} at {digest} served before {artifact}")
            for referrer in referrers:
                if self._digest(referrer) is None:
                    self.violations.append(f"{tag} at {digest} served before referrer {referrer}")

    def _run(self) -> None:
        while not self.stop.is_set():
            self.poll()


@pytest.fixture(scope="module")
def ordering(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("artifact-order")
    with sc.primary_registry(tmp) as (primary, local, services, api):
        a = services[0].url
        key = sc.new_key()
        reg.push(a, REPO, "v1", OLD, tmp / "work")
        sc.sign(api, REPO, OLD.digest, key)
        services += [reg.start_registry(reg.filesystem_storage(tmp / "c"), tmp / "logs"),
                     reg.start_registry(local, tmp / "logs")]
        with FaultProxy(a, rate=1.0, faults=["latency"], latency=(0.03, 0.08),
                        protocol=REGISTRY) as slow:
            config = write_config(tmp / "replicator.yml", {
                "state": {"path": str(tmp / "state.db")}, "concurrency": 2,
                "regions": {"api-a": {"registry": {"url": slow.url, "repositories": [REPO]}},
                            "local": {"storage": local},
                            "c": {"registry": {"url": services[1].url}}},
                "policies": [{"name": "order", "source": "api-a", "destinations": ["local", "c"],
                              "tags": {"include": ["v*"]}}]})
            first = sync(config)
            reg.push(a, REPO, "v1", NEW, tmp / "work")
            reg.push(a, REPO, "v3", THIRD, tmp / "work")
            sc.sign(api, REPO, NEW.digest, key)
            sc.attach(api, REPO, NEW.digest, "sbom")
            sbom, _ = sc.refer(api, REPO, NEW.manifest.descriptor(), sc.SPDX, b'{"order": 1}')
            sc.sign(api, REPO, sbom, key)
            sc.sign(api, REPO, THIRD.digest, key)
            third_referrer, _ = sc.refer(api, REPO, THIRD.manifest.descriptor(), sc.SPDX,
                                         b'{"order": 3}')
            expected = {}
            for image, referrers in ((NEW, {sbom}), (THIRD, {third_referrer})):
                subjects = {image.digest, *referrers}
                tags = {tag: sc.descriptor(api, REPO, tag)["digest"] for tag in api.tags(REPO)
                        if any(tag.startswith(fallback(subject)) for subject in subjects)}
                expected[image.digest] = (tags, referrers)
            readers = [Reader(sc.Api(services[2].url), expected), Reader(sc.Api(services[1].url), expected)]
            for reader in readers:
                reader.poll()
                reader.thread.start()
            second = sync(config)
            for reader in readers:
                reader.stop.set()
                reader.thread.join(timeout=60)
                reader.poll()
            unchanged = sync(config)
            listed = api.tags(REPO)
        yield {"first": first, "second": second, "readers": readers, "expected": expected,
               "unchanged": unchanged, "listed": listed}


def test_slowed_pass_replicates_images_and_artifacts(ordering):
    assert ordering["first"][0] == 0
    code, document = ordering["second"]
    assert code == 0, document
    for report in passes(document).values():
        assert report["tags_replicated"] == 2
        assert report["artifacts_replicated"] == sum(len(tags) for tags, _ in ordering["expected"].values())


@pytest.mark.parametrize("reader", [0, 1], ids=["storage-served-by-b", "registry-c"])
def test_reader_never_sees_an_image_before_its_artifacts(ordering, reader):
    watcher = ordering["readers"][reader]
    assert watcher.violations == []
    seen = watcher.seen
    assert ("v1", OLD.digest) in seen and ("v3", None) in seen       # before the moves
    assert seen[-2:] == [("v1", NEW.digest), ("v3", THIRD.digest)]   # after them
    assert len(seen) > 20


def test_no_change_pass_from_a_registry_source_heads_each_tag_once(ordering):
    """A registry source costs its tag list and one manifest HEAD per tag it lists, artifact
    tags included; the registry destination its tag list (it holds only tags moved there by
    the replicator, whose digests the state store knows)."""
    code, document = ordering["unchanged"]
    assert code == 0
    listed = ordering["listed"]
    assert len(listed) == 9 and sum(tag.startswith("sha256-") for tag in listed) == 7
    sent = {region: {kind: n for kind, n in counts.items() if n}
            for region, counts in document["requests"].items()}
    assert sent["api-a"] == {"list": 1, "head": len(listed)}
    assert sent["c"] == {"list": 1}
    assert sent["local"] == {"list": 1}


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("artifact-failure")
    with sc.primary_registry(tmp) as (primary, local, services, api):
        a = services[0].url
        key = sc.new_key()
        reg.push(a, REPO, "v1", FRAGILE_OLD, tmp / "work")
        reg.push(a, REPO, "v9", LATE, tmp / "work")
        sc.sign(api, REPO, FRAGILE_OLD.digest, key)
        services.append(reg.start_registry(reg.filesystem_storage(tmp / "c"), tmp / "logs"))
        config = write_config(tmp / "replicator.yml", {
            "state": {"path": str(tmp / "state.db")},
            "regions": {"primary": {"storage": primary}, "local": {"storage": local},
                        "c": {"registry": {"url": services[1].url}}},
            "policies": [{"name": "fragile", "source": "primary", "destinations": ["local", "c"],
                          "tags": {"include": ["v*"]}}]})
        first = sync(config)
        late = sc.sign(api, REPO, LATE.digest, key)
        window = verify(config)
        reg.push(a, REPO, "v1", FRAGILE_NEW, tmp / "work")
        signature = sc.sign(api, REPO, FRAGILE_NEW.digest, key)
        payload = json.loads(api.get(REPO, signature).content)["layers"][0]["digest"]
        blob = Path(primary["filesystem"]["rootdirectory"]) / reg.blob_key(payload)
        blob.write_bytes(b"x" * len(blob.read_bytes()))
        second = sync(config)
        after = verify(config)
        services.append(reg.start_registry(local, tmp / "logs"))
        yield {"first": first, "second": second, "window": window, "after": after,
               "late": late, "signature": signature, "b": sc.Api(services[2].url),
               "c": sc.Api(services[1].url)}


def verify(config: Path) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "replicator", "verify", "--config", str(config),
                             "--json"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                            check=False)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    return result.returncode, json.loads(result.stdout)


def drift(document: dict) -> set[tuple[str, str, str]]:
    """(tag, kind, first word of the detail) of every drift ``verify --json`` reported."""
    return {(d["tag"], d["kind"], d["detail"].split(" ")[0])
            for result in document["destinations"] for d in result["drift"]}


def test_a_failing_signature_holds_its_image_back(fragile):
    code, document = fragile["second"]
    assert code == 1
    for report in passes(document).values():
        (failure,) = report["failures"]
        assert (failure["tag"], failure["kind"]) == ("v1", "source_content")
        assert f"{REPO}:{fallback(FRAGILE_NEW.digest)}.sig" in failure["error"]
        assert report["tags_failed"] == 1


@pytest.mark.parametrize("destination", ["b", "c"], ids=["storage-served-by-b", "registry-c"])
def test_the_old_image_stays_served(fragile, destination):
    api = fragile[destination]
    assert sc.descriptor(api, REPO, "v1")["digest"] == FRAGILE_OLD.digest
    assert f"{fallback(FRAGILE_NEW.digest)}.sig" not in api.tags(REPO)
    assert sc.descriptor(api, REPO, f"{fallback(FRAGILE_OLD.digest)}.sig")["digest"]


@pytest.mark.parametrize("destination", ["b", "c"], ids=["storage-served-by-b", "registry-c"])
def test_a_late_signature_comes_with_the_next_pass(fragile, destination):
    assert fragile["first"][0] == 0
    api = fragile[destination]
    assert sc.descriptor(api, REPO, f"{fallback(LATE.digest)}.sig")["digest"] == fragile["late"]
    for report in passes(fragile["second"][1]).values():
        assert report["artifacts_replicated"] == 1


def test_verify_reports_missing_artifacts(fragile):
    code, window = fragile["window"]
    assert code == 1
    late = f"{REPO}:{fallback(LATE.digest)}.sig"
    assert drift(window) == {("v9", "missing-artifact", late)}
    code, after = fragile["after"]
    assert code == 1
    assert {kind for tag, kind, _ in drift(after)} == {"tag-mismatch", "missing-artifact"}
    assert ("v1", "missing-artifact", f"{REPO}:{fallback(FRAGILE_NEW.digest)}.sig") in drift(after)
    assert not any(tag == "v9" for tag, _, _ in drift(after))
