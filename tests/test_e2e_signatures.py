"""``require_signature``: only images with a cosign signature verifying against a configured key
leave the primary, against real registries.

Registry A (on a filesystem root, the source) gets six images pushed with skopeo in
``gated``: three signed as cosign signs, with an ECDSA P-256 key (given as a PEM file), an RSA
key and an Ed25519 key (given inline), one unsigned, one signed with a key not configured, and
one whose signature's payload names another image. A pass into a filesystem region (served by
registry B) and registry C replicates the three signed ones; the others fail with kind
``unsigned`` in ``sync --json``, ``status`` and the metrics, and nothing of them arrives.
Signing one at the source makes the next pass replicate it. Under back-off (as ``serve`` runs),
a tag held back for want of a signature is retried as soon as one appears.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from drivers.backoff import Backoff
from replicator import config as config_module
from replicator import sample_images as si
from replicator.engine import RunOptions, run_policy
from replicator.metrics import Metrics
from state.store import StateStore
from tests import registry as reg
from tests import supply_chain as sc
from tests.test_e2e_artifacts import fallback, passes, sync
from tests.test_e2e_sync import REPO_ROOT, write_config

REPO = "gated"
IMAGES = {tag: si.image([si.layer({"srv/gated": f"gated {tag}\n".encode()})])
          for tag in ("s1", "r1", "e1", "u1", "w1", "m1")}
SIGNED = {"s1", "r1", "e1"}
HELD = {"u1", "w1", "m1"}


def status(config) -> dict:
    result = subprocess.run([sys.executable, "-m", "replicator", "status", "--config", str(config),
                             "--json"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
                            check=False)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signatures")
    with sc.primary_registry(tmp) as (primary, local, services, api):
        a = services[0].url
        keys = {kind: sc.new_key(kind) for kind in ("ecdsa", "rsa", "ed25519")}
        stranger = sc.new_key()
        for tag, image in IMAGES.items():
            reg.push(a, REPO, tag, image, tmp / "work")
        sc.sign(api, REPO, IMAGES["s1"].digest, keys["ecdsa"])
        sc.sign(api, REPO, IMAGES["r1"].digest, keys["rsa"])
        sc.sign(api, REPO, IMAGES["e1"].digest, keys["ed25519"])
        sc.sign(api, REPO, IMAGES["w1"].digest, stranger)
        sc.sign(api, REPO, IMAGES["m1"].digest, keys["ecdsa"], payload_digest=IMAGES["s1"].digest)
        (tmp / "cosign.pub").write_text(sc.public_pem(keys["ecdsa"]))
        services.append(reg.start_registry(reg.filesystem_storage(tmp / "c"), tmp / "logs"))
        document = {
            "state": {"path": str(tmp / "state.db")},
            "regions": {"primary": {"storage": primary}, "local": {"storage": local},
                        "c": {"registry": {"url": services[1].url}}},
            "policies": [{"name": "signed", "source": "primary", "destinations": ["local", "c"],
                          "require_signature": {"keys": [
                              str(tmp / "cosign.pub"), sc.public_pem(keys["rsa"]),
                              sc.public_pem(keys["ed25519"])]}}]}
        config = write_config(tmp / "replicator.yml", document)
        first = sync(config)
        held = status(config)
        sc.sign(api, REPO, IMAGES["u1"].digest, keys["ecdsa"])
        second = sync(config)

        document["state"]["path"] = str(tmp / "serve.db")
        loaded = config_module.load(write_config(tmp / "serve.yml", document))
        policy = loaded.policies[0]
        state = StateStore(loaded.state_path)
        options = RunOptions.from_config(loaded, backoff=Backoff(initial=3600.0, maximum=3600.0))
        backoff = [run_policy(loaded, policy, state, options)]
        backoff.append(run_policy(loaded, policy, state, options))
        sc.sign(api, REPO, IMAGES["w1"].digest, keys["ecdsa"])
        backoff.append(run_policy(loaded, policy, state, options))
        metrics = Metrics(loaded, state)
        for report in backoff[0]:
            metrics.observe(report, None)
        services.append(reg.start_registry(local, tmp / "logs"))
        yield {"first": first, "held": held, "second": second, "backoff": backoff,
               "metrics": metrics, "b": sc.Api(services[2].url), "c": sc.Api(services[1].url)}


def failures(document: dict) -> dict[str, dict[str, tuple[str, str]]]:
    return {report["destination"]: {f["tag"]: (f["kind"], f["error"]) for f in report["failures"]}
            for report in document["passes"]}


def test_signed_images_replicate_and_others_are_held_back_as_unsigned(gated):
    code, document = gated["first"]
    assert code == 1
    for destination, failed in failures(document).items():
        assert {tag: kind for tag, (kind, _) in failed.items()} == dict.fromkeys(HELD, "unsigned")
        assert "no signature" in failed["u1"][1]
        assert "verifies against no configured key" in failed["w1"][1]
        assert "verifies against no configured key" in failed["m1"][1]
        assert passes(document)[destination]["tags_replicated"] == 3


@pytest.mark.parametrize("destination", ["b", "c"], ids=["storage-served-by-b", "registry-c"])
def test_destinations_serve_signed_images_with_their_signatures_only(gated, destination):
    api = gated[destination]
    served = set(api.tags(REPO))
    signed = {"s1", "r1", "e1", "u1"}       # u1 once signed at the source
    assert served == signed | {f"{fallback(IMAGES[tag].digest)}.sig" for tag in signed} | {
        "w1", f"{fallback(IMAGES['w1'].digest)}.sig"}   # w1 signed later under back-off
    for tag in signed:
        assert sc.descriptor(api, REPO, tag)["digest"] == IMAGES[tag].digest
    assert api.get(REPO, IMAGES["m1"].digest).status_code == 404


def test_status_shows_the_kind(gated):
    for destination in gated["held"]["destinations"]:
        assert {f["tag"]: f["kind"] for f in destination["failures"]} == dict.fromkeys(HELD, "unsigned")


def test_signing_at_the_source_makes_the_next_pass_replicate(gated):
    code, document = gated["second"]
    assert code == 1
    for destination, failed in failures(document).items():
        assert set(failed) == {"w1", "m1"}
        assert passes(document)[destination]["tags_replicated"] == 1


def test_metrics_count_unsigned_failures(gated):
    sample = gated["metrics"].registry.get_sample_value
    for destination in ("local", "c"):
        assert sample("replicator_errors_total", {"destination": destination,
                                                  "kind": "unsigned"}) == 2  # w1, m1


def test_under_backoff_a_new_signature_is_retried_at_once(gated):
    held, deferred, signed = gated["backoff"]
    for report in held:
        assert {f.tag: f.kind for f in report.failures} == {"w1": "unsigned", "m1": "unsigned"}
    for report in deferred:
        assert {f.tag: f.kind for f in report.failures} == {"w1": "deferred", "m1": "deferred"}
    for report in signed:
        assert {f.tag: f.kind for f in report.failures} == {"m1": "deferred"}
        assert report.tags_replicated == 1
