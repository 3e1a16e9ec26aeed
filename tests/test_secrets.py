"""Invariant 8: recognisable secrets in every credential field never come out anywhere.

Checked: logs at debug level (text and JSON), ``sync --dry-run`` (text and JSON), a real
``sync`` whose cloud regions fail, ``status --json``, ``verify``, ``/metrics`` and webhook
answers of ``serve``, configuration error messages, the bytes of the state store, and the
audit trail with ``history`` (and a failed ship of it).
"""

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from drivers.filesystem import FilesystemDriver
from replicator import sample_images
from replicator.demo import publish
from tests.services import Service, free_port

S3_ACCESS = "AKIASECRETACCESS0001"
S3_SECRET = "s3-SECRET-key-9f8e7d6c5b4a"
AZURE_KEY = base64.b64encode(b"AZURE-SECRET-ACCOUNT-KEY-0123456789").decode()
GCS_KEY_ID = "gcs-SECRET-key-id-31337"
CF_TOKEN = "cf-SECRET-token-abcdef"
FASTLY_TOKEN = "fastly-SECRET-token-123456"
WEBHOOK_TOKEN = "webhook-SECRET-token-42"


@pytest.fixture(scope="module")
def gcs_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "secret-test", "private_key_id": GCS_KEY_ID,
            "private_key": pem, "client_email": "replicator@secret-test.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": f"http://127.0.0.1:{free_port()}/token"}


def secrets(gcs_key) -> list[str]:
    pem_body = "".join(gcs_key["private_key"].splitlines()[1:-1])
    return [S3_ACCESS, S3_SECRET, AZURE_KEY, GCS_KEY_ID, pem_body[:40], pem_body[-40:], CF_TOKEN,
            FASTLY_TOKEN, WEBHOOK_TOKEN]


def assert_clean(text: str, gcs_key) -> None:
    leaked = [secret for secret in secrets(gcs_key) if secret in text]
    assert not leaked, f"secrets leaked: {leaked}"


@pytest.fixture(scope="module")
def world(tmp_path_factory, gcs_key):
    root = tmp_path_factory.mktemp("secrets")
    publish(FilesystemDriver(str(root / "src")), "app", "1.0",
            sample_images.image([sample_images.layer({"a": b"a"})]))
    dead = f"http://127.0.0.1:{free_port()}"
    server_port = free_port()
    config = {
        "state": {"path": str(root / "state.db")},
        "server": {"listen": f"127.0.0.1:{server_port}", "webhook_token": WEBHOOK_TOKEN},
        "regions": {
            "src": {"storage": {"filesystem": {"rootdirectory": str(root / "src")}}},
            "fs": {"storage": {"filesystem": {"rootdirectory": str(root / "fs")}},
                   "cdn": {"baseurls": ["http://127.0.0.1:1"], "timeout": "1s",
                           "cloudflare": {"zoneid": "zone", "apitoken": CF_TOKEN, "endpoint": dead}}},
            "s3": {"storage": {"s3": {"region": "us-east-1", "bucket": "secret-bucket",
                                      "regionendpoint": dead, "accesskey": S3_ACCESS,
                                      "secretkey": S3_SECRET}},
                   "cdn": {"baseurls": ["http://127.0.0.1:1"], "timeout": "1s",
                           "fastly": {"serviceid": "svc", "apitoken": FASTLY_TOKEN, "endpoint": dead}}},
            "azure": {"storage": {"azure": {"accountname": "secretacct", "accountkey": AZURE_KEY,
                                            "container": "registry", "endpoint": f"{dead}/secretacct"}}},
            "gcs": {"storage": {"gcs": {"bucket": "secret-bucket", "credentials": gcs_key,
                                        "endpoint": dead}}},
        },
        "policies": [{"name": "p", "source": "src", "destinations": ["fs", "s3", "azure", "gcs"]}],
        "audit": {"path": str(root / "audit.jsonl"), "region": "s3"},   # shipping fails: dead
    }
    path = root / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return root, path, server_port


def run(*args, config=None, **kwargs) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "replicator", "--log-level", "debug", *args]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)


def test_dry_run_and_failing_sync_print_no_secret(world, gcs_key):
    _, path, _ = world
    results = [run(*args, config=path) for args in (
        ["sync", "--dry-run"], ["sync", "--dry-run", "--json"], ["sync", "--json"],
        ["--log-format", "json", "sync"])]
    for result in results:
        assert result.returncode == 1, result.stderr[-2000:]
        assert_clean(result.stdout + result.stderr, gcs_key)
    passes = {item["destination"]: item for item in json.loads(results[2].stdout)["passes"]}
    assert passes["fs"]["error"] is None and passes["fs"]["tags_replicated"] == 1
    assert all(passes[name]["error"] for name in ("s3", "azure", "gcs"))


def test_status_verify_and_state_store_hold_no_secret(world, gcs_key):
    root, path, _ = world
    run("sync", config=path)
    status = run("status", "--json", config=path)
    verify = run("verify", config=path)
    assert status.returncode == 0 and json.loads(status.stdout)["destinations"]
    assert_clean(status.stdout + status.stderr + verify.stdout + verify.stderr, gcs_key)
    for file in root.glob("state.db*"):
        assert_clean(file.read_bytes().decode("latin-1"), gcs_key)


def test_audit_trail_and_history_hold_no_secret(world, gcs_key):
    root, path, _ = world
    result = run("sync", config=path)
    assert "audit trail not shipped to s3" in result.stderr
    history = run("history", "app", "--json", config=path)
    assert history.returncode == 0
    assert [(line["destination"], line["action"]) for line in json.loads(history.stdout)["changes"]] == [
        ("fs", "create")]
    assert_clean(result.stdout + result.stderr + history.stdout + history.stderr, gcs_key)
    assert_clean((root / "audit.jsonl").read_text(), gcs_key)
    assert "http" not in (root / "audit.jsonl").read_text()


def test_serve_metrics_and_webhook_answers_hold_no_secret(world, gcs_key):
    root, path, port = world
    argv = [sys.executable, "-m", "replicator", "--log-level", "debug", "serve", "--config", str(path)]
    with Service("serve-secrets", argv, port, ready_path="/healthz", log_dir=root) as service:
        metrics = urllib.request.urlopen(service.url + "/metrics", timeout=10).read().decode()
        answers = []
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            request = urllib.request.Request(service.url + "/events/src", data=b"{}", method="POST",
                                             headers={"Content-Type": "application/json", **headers})
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=10)
            assert caught.value.code == 401
            answers.append(caught.value.read().decode())
        ready = urllib.request.Request(service.url + "/readyz")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(ready, timeout=60)
        answers.append(caught.value.read().decode())
    assert "replicator_lag_seconds" in metrics
    assert_clean(metrics + "".join(answers) + service.log(), gcs_key)


def test_configuration_errors_never_echo_values(world, gcs_key, tmp_path):
    _, path, _ = world
    config = yaml.safe_load(path.read_text())
    mistakes = [
        lambda c: c["regions"]["s3"]["storage"]["s3"].update(secretkey=[S3_SECRET]),
        lambda c: c["regions"]["s3"]["storage"]["s3"].pop("accesskey"),
        lambda c: c["regions"]["azure"]["storage"]["azure"].update(accountkey={"k": AZURE_KEY}),
        lambda c: c["regions"]["gcs"]["storage"]["gcs"]["credentials"].pop("private_key"),
        lambda c: c["regions"]["fs"]["cdn"]["cloudflare"].update(apitoken=[CF_TOKEN]),
        lambda c: c["server"].update(webhook_token=[WEBHOOK_TOKEN]),
    ]
    for index, mistake in enumerate(mistakes):
        broken = json.loads(json.dumps(config))
        mistake(broken)
        bad = tmp_path / f"bad{index}.yml"
        bad.write_text(yaml.safe_dump(broken))
        result = run("sync", "--dry-run", config=bad)
        assert result.returncode == 2, (index, result.stderr[-1000:])
        assert "configuration error" in result.stderr
        assert_clean(result.stdout + result.stderr, gcs_key)
