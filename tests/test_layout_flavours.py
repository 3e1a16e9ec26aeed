"""Layout flavours: Azure containers laid out as Distribution 2.8 and 3.x write them.

The image content comes from skopeo pushes to Debian's docker-registry on a filesystem root
(every object the push leaves, uploads excluded). The tests lay it out into Azurite with the
raw azure SDK, following each version's naming (``registry/storage/driver/azure/azure.go``):
2.8.3 passes the registry path, leading slash included, to ``GetBlobReference``; 3.x's
``blobName`` is ``TrimLeft(TrimRight(rootdirectory, "/") + path, "/")``. Blob types as each
writes them: 2.8 makes layers and configs append blobs (``Writer``, kept by ``Move``'s Copy
Blob) and manifests and links block blobs (``PutContent``); 3.x makes every object an append
blob (``PutContent`` and ``Writer`` both). The replicator's own writer never produces a source.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from azure.storage.blob import BlobServiceClient

from drivers import open_storage
from replicator import config as config_module
from replicator import flavours
from replicator import sample_images as si
from replicator.engine import RunOptions, run_policy
from replicator.verify import verify_policy
from state.store import StateStore
from tests import registry as reg
from tests.conformance import requests_sent
from tests.services import AZURITE_DEV_ACCOUNT, AZURITE_SECOND_ACCOUNT, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
APPEND_BLOCK = 4 * MIB
"""Distribution's ``maxChunkSize``: the largest append block either version sends."""

BASE = si.layer({"usr/lib/libbase.so": random.Random(1).randbytes(5 * MIB)})
TAGS = {
    ("apps/web", "1.0"): si.image([BASE, si.layer({"srv/web": b"web 1.0\n"})]),
    ("apps/web", "multi"): si.index([
        si.image([BASE, si.layer({"srv/web": b"web amd64\n"})], architecture="amd64"),
        si.image([BASE, si.layer({"srv/web": b"web arm64\n"})], architecture="arm64"),
    ]),
    ("base/tools", "latest"): si.image([si.layer({"usr/bin/tool": b"tool\n"}, oci=False)], oci=False),
}
UNIQUE = reg.unique_blobs(TAGS.values())
MANIFESTS = {reg.blob_key(digest) for digest, blob in UNIQUE.items() if reg.is_manifest(blob)}
UPLOADED = {reg.blob_key(digest) for digest, blob in UNIQUE.items() if not reg.is_manifest(blob)}
"""Data of the blobs a push uploads (layers, configs): the registry writes them with ``Writer``."""

FORMS = {"2.8": ("2.8", ""), "3": ("3", ""), "3 under a root": ("3", "/registry")}
"""form -> (flavour, rootdirectory)."""


def blob_name(flavour: str, root: str, key: str) -> str:
    path = "/" + key
    return path if flavour == "2.8" else (root.rstrip("/") + path).lstrip("/")


def registry_blob_type(flavour: str, key: str) -> str:
    return "AppendBlob" if flavour == "3" or key in UPLOADED else "BlockBlob"


def lay_out(container, flavour: str, root: str, objects: dict[str, bytes]) -> None:
    """Write ``objects`` (key -> bytes) as Distribution ``flavour`` would, with the raw SDK."""
    for key, data in objects.items():
        blob = container.get_blob_client(blob_name(flavour, root, key))
        if registry_blob_type(flavour, key) == "BlockBlob":
            blob.upload_blob(data)
            continue
        blob.create_append_blob()
        for start in range(0, len(data), APPEND_BLOCK):
            blob.append_block(data[start:start + APPEND_BLOCK])


def blob_types(container) -> dict[str, str]:
    """Blob name -> blob type of everything in the container."""
    return {blob.name: blob.blob_type.value for blob in container.list_blobs()}


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> dict[str, bytes]:
    """key -> bytes of every registry object skopeo's pushes leave on a filesystem root."""
    tmp = tmp_path_factory.mktemp("pushed")
    storage = reg.filesystem_storage(tmp / "root")
    registry = reg.start_registry(storage, tmp / "logs")
    try:
        for (repository, tag), image in TAGS.items():
            reg.push(registry.url, repository, tag, image, tmp / "work")
    finally:
        registry.stop()
    store = reg.Store(storage)
    objects = {key: store.get(key) for key in store.keys() if "/_uploads/" not in key}
    expected = {key for (name, tag), image in TAGS.items() for key in reg.expected_keys(name, tag, image)}
    assert set(objects) == expected
    return objects


@pytest.fixture(scope="module")
def service(azurite) -> BlobServiceClient:
    name, key = AZURITE_DEV_ACCOUNT
    return BlobServiceClient(f"{azurite.url}/{name}", credential={"account_name": name,
                                                                  "account_key": key})



def new_in(client: BlobServiceClient):
    return client.create_container(f"flavour-{uuid.uuid4().hex[:16]}")


@pytest.fixture
def new_container(service):
    return lambda: new_in(service)


def azure_storage(azurite, container, **extra) -> dict:
    name, key = AZURITE_DEV_ACCOUNT
    return {"azure": {"accountname": name, "accountkey": key, "container": container.container_name,
                      "endpoint": f"{azurite.url}/{name}", **extra}}


def root_key(root: str) -> dict:
    return {"rootdirectory": root} if root else {}


def document(tmp_path: Path, regions: dict[str, dict], policies: list[tuple[str, str, str]],
             **top) -> dict:
    """A configuration: ``regions`` name -> region block, ``policies`` (name, source, destination)."""
    return {"state": {"path": str(tmp_path / "state.db")}, "concurrency": 1, **top,
            "regions": regions,
            "policies": [{"name": name, "source": source, "destinations": [destination]}
                         for name, source, destination in policies]}


def run(loaded: config_module.Config, policy: str):
    state = StateStore(loaded.state_path)
    try:
        reports = run_policy(loaded, loaded.policy(policy), state, RunOptions.from_config(loaded))
    finally:
        state.close()
    assert [(report.ok, report.error) for report in reports] == [(True, None)], reports
    return reports[0]


def cli(*args: str, config: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "REPLICATOR_CONFIG"}
    return subprocess.run([sys.executable, "-m", "replicator", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=timeout)


# --- each flavour as a source, and as a destination in its own flavour -------------------------

@pytest.mark.parametrize("form", FORMS)
def test_each_flavour_is_read_and_written_in_its_own_names(form, pushed, azurite, new_container,
                                                          tmp_path):
    flavour, root = FORMS[form]
    source, destination = new_container(), new_container()
    lay_out(source, flavour, root, pushed)
    loaded = config_module.parse(document(tmp_path, {
        "source": {"storage": azure_storage(azurite, source, **root_key(root))},
        "destination": {"storage": azure_storage(azurite, destination, **root_key(root))},
    }, [("copy", "source", "destination")], server_side_copy=False))
    report = run(loaded, "copy")
    assert (report.tags_replicated, report.tags_failed) == (len(TAGS), 0)
    assert [loaded.regions[name].storage.flavour for name in ("source", "destination")] == [flavour] * 2
    assert blob_types(destination) == {blob_name(flavour, root, key): "BlockBlob" for key in pushed}
    [result] = verify_policy(loaded, loaded.policy("copy"), deep=True)
    assert (result.tags_checked, result.drift) == (len(TAGS), [])


# --- 2.8 into 3.x and back, then onward to a filesystem served by the registry -----------------

CHAINS = {
    "2.8 to 3": (("2.8", ""), {"layout": "3", "rootdirectory": "/mirror"}, ("3", "/mirror")),
    "3 to 2.8": (("3", "/registry"), {"layout": "2.8"}, ("2.8", "")),
}
"""chain -> (source form, middle region's keys, the middle's form)."""


@pytest.mark.parametrize("chain", CHAINS)
def test_a_flavour_replicated_into_the_other_is_served_onward(chain, pushed, azurite, new_container,
                                                             tmp_path):
    (flavour, root), middle_keys, (middle_flavour, middle_root) = CHAINS[chain]
    source, middle = new_container(), new_container()
    lay_out(source, flavour, root, pushed)
    layout_key = {"layout": middle_keys.pop("layout")}
    edge = reg.filesystem_storage(tmp_path / "edge")
    loaded = config_module.parse(document(tmp_path, {
        "source": {"storage": azure_storage(azurite, source, **root_key(root))},
        "middle": {**layout_key, "storage": azure_storage(azurite, middle, **middle_keys)},
        "edge": {"storage": edge},
    }, [("across", "source", "middle"), ("onward", "middle", "edge")], server_side_copy=False))
    assert run(loaded, "across").tags_replicated == len(TAGS)
    assert blob_types(middle) == {blob_name(middle_flavour, middle_root, key): "BlockBlob"
                                  for key in pushed}
    assert run(loaded, "onward").tags_replicated == len(TAGS)
    registry = reg.start_registry(edge, tmp_path / "logs", readonly=True)
    try:
        for (repository, tag), image in TAGS.items():
            served = (reg.manifest_digest(registry.url, repository, tag),
                      reg.pull(registry.url, repository, tag, tmp_path / "pulls" / uuid.uuid4().hex))
            assert served == (image.digest, {digest: len(blob.data) for digest, blob in
                                             reg.unique_blobs([image]).items()}), (repository, tag)
    finally:
        registry.stop()


# --- detection ---------------------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
def test_the_form_a_container_holds_is_detected_with_one_listing_per_form_once(
        form, pushed, azurite, new_container, tmp_path):
    flavour, root = FORMS[form]
    held = new_container()
    lay_out(held, flavour, root, pushed)
    loaded = config_module.parse(document(tmp_path, {
        "held": {"storage": azure_storage(azurite, held, **root_key(root))},
        "local": {"storage": reg.filesystem_storage(tmp_path / "local")},
    }, [("out", "held", "local")]))
    storage, local = (loaded.regions[name].storage for name in ("held", "local"))
    policy = loaded.policy("out")
    assert requests_sent(storage, lambda: flavours.resolve_flavours(loaded, policy)) == {"list": 2}
    assert (storage.flavour, storage.flavour_known) == (flavour, True)
    assert requests_sent(storage, lambda: flavours.resolve_flavours(loaded, policy)) == {}
    assert local.requests.snapshot() == dict.fromkeys(local.requests.snapshot(), 0)


DEFAULTS = {
    "same kind: the source's 2.8": (("2.8", ""), {}, "2.8"),
    "same kind: the source's 3": (("3", ""), {}, "3"),
    "a rootdirectory exists only in 3": (("2.8", ""), {"rootdirectory": "/registry"}, "3"),
    "another kind: 2.8": (None, {}, "2.8"),
}
"""case -> (source form, or None for a filesystem source; empty destination's keys; flavour)."""


@pytest.mark.parametrize("case", DEFAULTS)
def test_an_empty_destination_takes_the_default_flavour(case, pushed, azurite, new_container, tmp_path):
    form, destination_keys, expected = DEFAULTS[case]
    if form is None:
        source = reg.filesystem_storage(tmp_path / "source")
        for key, data in pushed.items():
            (tmp_path / "source" / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "source" / key).write_bytes(data)
    else:
        container = new_container()
        lay_out(container, *form, pushed)
        source = azure_storage(azurite, container, **root_key(form[1]))
    loaded = config_module.parse(document(tmp_path, {
        "source": {"storage": source},
        "empty": {"storage": azure_storage(azurite, new_container(), **destination_keys)},
    }, [("fill", "source", "empty")]))
    flavours.resolve_flavours(loaded, loaded.policy("fill"))
    assert loaded.regions["empty"].storage.flavour == expected


def test_a_configured_layout_is_used_without_a_listing(azurite, new_container, tmp_path):
    loaded = config_module.parse(document(tmp_path, {
        "set": {"layout": 2.8, "storage": azure_storage(azurite, new_container())},
        "local": {"layout": 3, "storage": reg.filesystem_storage(tmp_path / "local")},
    }, [("out", "set", "local")]))
    storage = loaded.regions["set"].storage
    assert requests_sent(storage, lambda: flavours.resolve_flavours(loaded, loaded.policy("out"))) == {}
    assert (storage.flavour, storage.flavour_known) == ("2.8", True)


@pytest.mark.parametrize("layout, keys, message", [
    ("2.9", {}, "must be"),
    (True, {}, "must be"),
    ("2.8", {"rootdirectory": "/registry"}, "without a root directory"),
])
def test_a_bad_layout_names_the_field(layout, keys, message, azurite, new_container, tmp_path):
    with pytest.raises(config_module.ConfigError) as caught:
        config_module.parse(document(tmp_path, {
            "bad": {"layout": layout, "storage": azure_storage(azurite, new_container(), **keys)},
            "local": {"storage": reg.filesystem_storage(tmp_path / "local")},
        }, [("out", "bad", "local")]))
    assert caught.value.field == "regions.bad.layout" and message in caught.value.message


def test_a_2_8_registry_under_a_configured_rootdirectory_is_a_config_error(pushed, azurite, new_container,
                                                                           tmp_path):
    held = new_container()
    lay_out(held, "2.8", "", pushed)
    loaded = config_module.parse(document(tmp_path, {
        "held": {"storage": azure_storage(azurite, held, rootdirectory="/registry")},
        "local": {"storage": reg.filesystem_storage(tmp_path / "local")},
    }, [("out", "held", "local")]))
    with pytest.raises(config_module.ConfigError) as caught:
        flavours.resolve_flavours(loaded, loaded.policy("out"))
    assert caught.value.field == "regions.held" and "2.8" in caught.value.message


@pytest.fixture
def both_forms(pushed, azurite, new_container, tmp_path) -> Path:
    """A configuration whose region ``mixed`` holds the registry in both forms."""
    mixed = new_container()
    lay_out(mixed, "2.8", "", pushed)
    lay_out(mixed, "3", "", pushed)
    path = tmp_path / "replicator.yml"
    path.write_text(yaml.safe_dump(document(tmp_path, {
        "mixed": {"storage": azure_storage(azurite, mixed)},
        "local": {"storage": reg.filesystem_storage(tmp_path / "local")},
    }, [("out", "mixed", "local")], server={"listen": f"127.0.0.1:{free_port()}"})))
    return path


@pytest.mark.parametrize("command", ["sync", "verify", "serve"])
def test_both_forms_in_one_region_exit_2_naming_it(command, both_forms, tmp_path):
    result = cli(command, config=both_forms, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "configuration error: regions.mixed: " in result.stderr
    assert "both the Distribution 2.8 and the 3.x layout" in result.stderr
    assert not (tmp_path / "local" / "docker").exists()


def test_a_copy_from_a_2_8_container_into_a_3_one_in_another_account(pushed, azurite, service):
    """Copy Blob from a 2.8 container in one account into a 3.x one in another (configured by a
    registry 3 block): the read SAS is signed for the leading-slash name, and the copies keep
    the registry's append blobs."""
    source = new_in(service)
    lay_out(source, "2.8", "", pushed)
    name, key = AZURITE_SECOND_ACCOUNT
    other = BlobServiceClient(f"{azurite.url}/{name}", credential={"account_name": name,
                                                                    "account_key": key})
    destination = new_in(other)
    reader = open_storage(azure_storage(azurite, source))
    reader.use_flavour("2.8")
    writer = open_storage({"azure": {"accountname": name, "accountkey": key,
                                     "container": destination.container_name,
                                     "serviceurl": f"{azurite.url}/{name}",
                                     "credentials": {"type": "shared_key"}}})
    writer.use_flavour("3")
    assert writer.can_copy_from(reader)
    for blob in sorted(UPLOADED):
        assert requests_sent(writer, lambda: writer.copy_from(reader, blob, len(pushed[blob]))) == \
            {"copy": 1}
        assert writer.read(blob, limit=len(pushed[blob])) == pushed[blob]
    assert blob_types(destination) == {blob_name("3", "", blob): "AppendBlob" for blob in UPLOADED}


def test_both_forms_found_by_a_later_serve_pass_exit_2(pushed, azurite, service, tmp_path):
    """The region cannot be listed when serve starts (its container is missing), so the first
    pass fails on it; once it holds both forms, the pass a push event triggers ends the service."""
    mixed = service.get_container_client(f"flavour-{uuid.uuid4().hex[:16]}")
    port = free_port()
    doc = document(tmp_path, {
        "mixed": {"storage": azure_storage(azurite, mixed)},
        "local": {"storage": reg.filesystem_storage(tmp_path / "local")},
    }, [("out", "mixed", "local")], server={"listen": f"127.0.0.1:{port}", "debounce": "0.1s"})
    doc["policies"][0]["schedule"] = {"interval": "1h"}
    path = tmp_path / "replicator.yml"
    path.write_text(yaml.safe_dump(doc))
    env = {key: value for key, value in os.environ.items() if key != "REPLICATOR_CONFIG"}
    process = subprocess.Popen([sys.executable, "-m", "replicator", "serve", "--config", str(path)],
                               stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env)
    lines: list[str] = []
    first_pass_failed = threading.Event()

    def collect() -> None:
        for line in process.stderr:
            lines.append(line)
            if "pass of policy out into local failed" in line:
                first_pass_failed.set()

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        assert first_pass_failed.wait(60), "".join(lines)
        mixed.create_container()
        lay_out(mixed, "2.8", "", pushed)
        lay_out(mixed, "3", "", pushed)
        envelope = {"events": [{"action": "push", "target": {"repository": "apps/web", "tag": "1.0"}}]}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/events/mixed", data=json.dumps(envelope).encode(),
            headers={"Content-Type": "application/vnd.docker.distribution.events.v1+json"})
        urllib.request.urlopen(request, timeout=10).close()
        assert process.wait(timeout=60) == 2, "".join(lines)
        reader.join(10)
        assert "configuration error: regions.mixed: " in "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
