import json
import subprocess
import sys

import pytest
import yaml

from drivers import open_storage
from drivers.errors import ConfigError
from replicator import config
from tests.test_e2e_sync import REPO_ROOT, write_config

SECRET = "s3cr3t-Value-That-Must-Not-Leak"


def document(**overrides) -> dict:
    doc = {
        "state": {"path": "state.db"},
        "regions": {
            "us-east": {"storage": {"s3": {"region": "us-east-1", "bucket": "registry-us",
                                           "rootdirectory": "/registry",
                                           "regionendpoint": "http://127.0.0.1:9",
                                           "accesskey": "${TEST_ACCESS_KEY}",
                                           "secretkey": "${TEST_SECRET_KEY}"}}},
            "eu-west": {"storage": {"filesystem": {"rootdirectory": "/tmp/eu"},
                                    "delete": {"enabled": True}, "redirect": {"disable": True}}},
        },
        "policies": [{"name": "prod", "source": "us-east", "destinations": ["eu-west"],
                      "repositories": {"include": ["*"], "exclude": []},
                      "tags": {"include": ["*"], "exclude": ["dev-*"]}, "delete": False}],
    }
    doc.update(overrides)
    return doc


@pytest.fixture(autouse=True)
def credentials(monkeypatch):
    monkeypatch.setenv("TEST_ACCESS_KEY", "AKIDEXAMPLE")
    monkeypatch.setenv("TEST_SECRET_KEY", SECRET)


def load(tmp_path, doc) -> config.Config:
    path = tmp_path / "replicator.yml"
    path.write_text(yaml.safe_dump(doc) if isinstance(doc, dict) else doc)
    return config.load(path)


def error_of(tmp_path, doc) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, doc)
    assert SECRET not in str(caught.value)
    return caught.value


def test_example_shape_loads(tmp_path):
    loaded = load(tmp_path, document())
    assert loaded.state_path == tmp_path / "state.db"
    assert loaded.regions["us-east"].storage.describe() == "s3://registry-us/registry"
    policy = loaded.policy("prod")
    assert (policy.source, policy.destinations, policy.delete) == ("us-east", ("eu-west",), False)
    assert policy.tags.exclude == ("dev-*",)
    assert SECRET not in repr(loaded)


def test_shipped_examples_load(monkeypatch):
    from pathlib import Path
    examples = sorted(Path(__file__).parent.parent.joinpath("config").glob("*.yml"))
    assert examples
    for example in examples:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
        assert config.load(example).policies


def test_variables_expand_with_defaults(tmp_path, monkeypatch):
    doc = document()
    doc["state"]["path"] = "${STATE_DIR:-/var/lib/replicator}/state.db"
    assert load(tmp_path, doc).state_path.as_posix() == "/var/lib/replicator/state.db"
    monkeypatch.setenv("STATE_DIR", "/data")
    assert load(tmp_path, doc).state_path.as_posix() == "/data/state.db"


def test_missing_variable_names_the_field(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_SECRET_KEY")
    error = error_of(tmp_path, document())
    assert error.field == "regions.us-east.storage.s3.secretkey"
    assert "TEST_SECRET_KEY" in error.message


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["policies"][0].update(destinations=["mars"]), "policies[0].destinations[0]"),
    (lambda d: d["policies"][0].update(source="mars"), "policies[0].source"),
    (lambda d: d["policies"][0].update(destinations=["us-east"]), "policies[0].destinations"),
    (lambda d: d["policies"][0].update(destinations=[]), "policies[0].destinations"),
    (lambda d: d["policies"][0].update(delete="yes"), "policies[0].delete"),
    (lambda d: d["policies"][0].update(tags={"include": "*"}), "policies[0].tags.include"),
    (lambda d: d["policies"][0].update(colour="blue"), "policies[0].colour"),
    (lambda d: d["policies"].append(dict(d["policies"][0])), "policies[1].name"),
    (lambda d: d["regions"]["us-east"]["storage"]["s3"].pop("bucket"), "regions.us-east.storage.s3.bucket"),
    (lambda d: d["regions"]["us-east"]["storage"]["s3"].update(buckett="x"), "regions.us-east.storage.s3.buckett"),
    (lambda d: d["regions"]["eu-west"].update(storage={"floppy": {}}), "regions.eu-west.storage.floppy"),
    (lambda d: d["regions"]["eu-west"].update(storage={"delete": {"enabled": True}}), "regions.eu-west.storage"),
    (lambda d: d["regions"]["eu-west"].pop("storage"), "regions.eu-west.storage"),
    (lambda d: d.update(concurrency=0), "concurrency"),
    (lambda d: d.update(regions={}), "regions"),
    (lambda d: d.update(policies=[]), "policies"),
    (lambda d: d.update(extra=1), "extra"),
])
def test_each_mistake_names_its_field(tmp_path, mutate, field):
    doc = document()
    mutate(doc)
    assert error_of(tmp_path, doc).field == field


def test_invalid_yaml_names_file_and_line(tmp_path):
    error = error_of(tmp_path, "regions:\n  a: [unclosed\n")
    assert "invalid YAML" in str(error) and "line" in str(error) and "replicator.yml" in str(error)


def test_cli_exits_2_naming_the_field(tmp_path):
    doc = document()
    doc["policies"][0]["destinations"] = ["nowhere"]
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run([sys.executable, "-m", "replicator", "sync", "--config", str(path)],
                            capture_output=True, text=True,
                            env={"TEST_ACCESS_KEY": "a", "TEST_SECRET_KEY": SECRET, "PATH": "/usr/bin"})
    assert result.returncode == 2
    assert "policies[0].destinations[0]" in result.stderr and "nowhere" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_cli_without_config_exits_2():
    result = subprocess.run([sys.executable, "-m", "replicator", "sync"], capture_output=True,
                            text=True, env={"PATH": "/usr/bin"})
    assert result.returncode == 2 and "--config" in result.stderr


REGISTRY_3_BLOCKS = {
    "s3": {"region": "us-east-1", "bucket": "b", "regionendpoint": "http://127.0.0.1:9",
           "forcepathstyle": True, "usedualstack": False, "accelerate": False,
           "usefipsendpoint": True, "loglevel": "debugwithsigning", "storageclass": "STANDARD_IA",
           "v4auth": True, "rootdirectory": "/registry"},
    "gcs": {"bucket": "b", "endpoint": "http://127.0.0.1:9", "useragent": "registry/3",
            "chunksize": 5 * 1024 * 1024, "maxconcurrency": 50, "rootdirectory": "/registry"},
    "filesystem": {"rootdirectory": "/tmp/registry-3", "maxthreads": 100},
    "azure": {"accountname": "devstoreaccount1", "accountkey": "eA==", "container": "c",
              "serviceurl": "http://127.0.0.1:9/devstoreaccount1", "rootdirectory": "/registry",
              "credentials": {"type": "shared_key"}, "max_retries": 5, "retry_delay": "100ms",
              "skipverify": False},
}


@pytest.mark.parametrize("kind", REGISTRY_3_BLOCKS)
def test_a_registry_3_storage_block_of_every_backend_loads(kind):
    storage = open_storage({kind: REGISTRY_3_BLOCKS[kind], "redirect": {"disable": True}})
    assert not any(storage.requests.snapshot().values())
    with pytest.raises(ConfigError) as caught:
        open_storage({kind: {**REGISTRY_3_BLOCKS[kind], "copy_status_poll_interval": "1s"}})
    assert caught.value.field == f"{kind}.copy_status_poll_interval"


def test_s3_usefipsendpoint_reaches_botocore():
    fips = open_storage({"s3": {**REGISTRY_3_BLOCKS["s3"], "regionendpoint": None}})
    assert fips._client.meta.config.use_fips_endpoint is True


def test_status_needs_no_credentials_and_sync_names_the_missing_one(tmp_path):
    """``status`` reads the state store alone: a configuration whose secrets are in unset
    variables, or whose registry is unreachable, still gives it; ``sync`` stops with exit 2
    naming the field."""
    config = write_config(tmp_path / "replicator.yml", {
        "state": {"path": str(tmp_path / "state.db")},
        "regions": {"a": {"registry": {"url": "https://127.0.0.1:1", "username": "u",
                                       "password": "${REPLICATOR_TEST_UNSET_PASSWORD}"}},
                    "b": {"storage": {"s3": {"bucket": "b", "region": "us-east-1",
                                             "accesskey": "${REPLICATOR_TEST_UNSET_KEY}",
                                             "secretkey": "${REPLICATOR_TEST_UNSET_KEY}"}}}},
        "policies": [{"name": "p", "source": "a", "destinations": ["b"]}]})

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "replicator", *args, "--config", str(config)],
                              capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False)

    status = run("status", "--json")
    assert status.returncode == 0, status.stderr
    [destination] = json.loads(status.stdout)["destinations"]
    assert (destination["policy"], destination["source"], destination["destination"]) == ("p", "a", "b")
    sync = run("sync")
    assert sync.returncode == 2
    assert "regions.a.registry.password" in sync.stderr and "REPLICATOR_TEST_UNSET_PASSWORD" in sync.stderr


PRICE_TABLES = REPO_ROOT / "config" / "pricing"
INLINE_PRICES = {"egress_per_gib": {"default": 0.02, "internet": 0.09, "eu-west": 0.01},
                 "requests_per_1000": {"list": 0.005, "get": 0.0004, "put": 0.005},
                 "cdn_invalidation_path": 0.005}


def test_pricing_takes_tables_relative_to_the_config_and_inline_entries(tmp_path):
    (tmp_path / "prices").mkdir()
    (tmp_path / "prices" / "aws.yml").write_text((PRICE_TABLES / "aws.yml").read_text())
    loaded = load(tmp_path, document(pricing={"file": "prices/aws.yml",
                                              "regions": {"us-east": "us-east-1", "eu-west": INLINE_PRICES}}))
    pricing = loaded.pricing
    assert [(table.name, table.taken) for table in pricing.tables] == [("aws", "2024-06"), ("config", None)]
    assert pricing.regions["us-east"].entry == "us-east-1"
    assert pricing.regions["us-east"].prices.requests_per_1000["put"] == 0.005
    assert pricing.regions["eu-west"].prices.egress_per_gib["eu-west"] == 0.01
    assert pricing.egress_per_gib("us-east", "eu-west") == 0.09   # to another table: internet
    assert pricing.egress_per_gib("eu-west", "us-east") == 0.09
    assert load(tmp_path, document()).pricing is None


def test_shipped_price_tables_load_and_name_their_date_and_pages(tmp_path):
    for path in sorted(PRICE_TABLES.glob("*.yml")):
        loaded = load(tmp_path, document(pricing={"file": str(path)}))
        [table] = loaded.pricing.tables
        assert table.taken and table.sources and table.regions, path
        assert "EXAMPLES" in path.read_text()


@pytest.mark.parametrize("pricing, field", [
    ({"file": "missing.yml"}, "pricing.file"),
    ({"files": "aws.yml"}, "pricing.files"),
    ({"file": "a.yml", "files": []}, "pricing.files"),
    ({"tables": []}, "pricing.tables"),
    ({"regions": {"mars": INLINE_PRICES}}, "pricing.regions.mars"),
    ({"regions": {"us-east": "no-such-entry"}}, "pricing.regions.us-east"),
    ({"regions": {"us-east": {"egress_per_gib": {"default": -1}}}}, "pricing.regions.us-east.egress_per_gib.default"),
    ({"regions": {"us-east": {"requests_per_1000": {"gett": 1}}}}, "pricing.regions.us-east.requests_per_1000.gett"),
    ({"regions": {"us-east": {"requests_per_1000": {"put": "cheap"}}}}, "pricing.regions.us-east.requests_per_1000.put"),
    ({"regions": {"us-east": {"cdn_invalidation_path": True}}}, "pricing.regions.us-east.cdn_invalidation_path"),
    ({"regions": {"us-east": {"storage_per_gib": 1}}}, "pricing.regions.us-east.storage_per_gib"),
    ({"regions": []}, "pricing.regions"),
])
def test_each_pricing_mistake_names_its_field(tmp_path, pricing, field):
    assert error_of(tmp_path, document(pricing=pricing)).field == field


def test_a_bad_price_table_file_names_its_field(tmp_path):
    (tmp_path / "prices.yml").write_text("regions: {us-east-1: {requests_per_1000: {put: -5}}}")
    error = error_of(tmp_path, document(pricing={"files": ["prices.yml"]}))
    assert error.field == "pricing.files[0].regions.us-east-1.requests_per_1000.put"
