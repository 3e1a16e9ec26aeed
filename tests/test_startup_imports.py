"""A filesystem-only ``sync`` loads no client library of a backend or face it does not use,
nor the packages libraries import only because they are installed (numpy, pandas, trio), nor
the installed packages' metadata (``--version`` reads it; sqlite-utils' plugins would)."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from drivers.filesystem import FilesystemDriver
from replicator import sample_images
from replicator.demo import publish

ROOT = Path(__file__).resolve().parents[1]
UNUSED = ("boto3", "botocore", "google", "azure", "swiftclient", "httpx", "prometheus_client",
          "apscheduler", "cryptography", "numpy", "pandas", "trio")
LAUNCHER = """
import json, sys
from replicator.__main__ import main
code = main()
print(json.dumps({"code": code, "modules": sorted(name for name, module in sys.modules.items()
                                                  if module is not None)}))
"""


def test_a_filesystem_only_sync_imports_no_unused_client_library(tmp_path):
    image = sample_images.image([sample_images.layer({"app": b"app"})])
    publish(FilesystemDriver(str(tmp_path / "src")), "app", "1", image)
    config = tmp_path / "replicator.yml"
    config.write_text(yaml.safe_dump({
        "state": {"path": str(tmp_path / "state.db")},
        "regions": {"src": {"storage": {"filesystem": {"rootdirectory": str(tmp_path / "src")}}},
                    "dst": {"storage": {"filesystem": {"rootdirectory": str(tmp_path / "dst")}}}},
        "policies": [{"name": "all", "source": "src", "destinations": ["dst"]}]}))
    run = subprocess.run([sys.executable, "-c", LAUNCHER, "sync", "--config", str(config)],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["code"] == 0
    assert (tmp_path / "dst" / "docker/registry/v2/repositories/app/_manifests/tags/1/current/link"
            ).read_text() == image.manifest.digest
    loaded = {name.split(".")[0] for name in result["modules"]}
    assert loaded.isdisjoint(UNUSED), sorted(loaded & set(UNUSED))
    assert "replicator.engine" in result["modules"]
    assert "importlib.metadata" not in result["modules"]


def test_version_reads_the_installed_package():
    run = subprocess.run([sys.executable, "-m", "replicator", "--version"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert run.stdout.startswith("replicator ") and run.stdout.strip() != "replicator"
