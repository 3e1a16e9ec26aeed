"""The real Distribution registry and skopeo, for tests: storage blocks, registries, push, pull.

Everything here talks to real parts: ``docker-registry serve`` (Debian's 2.8.2) on a free
loopback port, skopeo as the client, moto, Swift (or a directory) as the registry's storage. Images come
from ``replicator.sample_images`` and reach skopeo as layouts written on disk: OCI image layouts,
or skopeo's ``dir:`` layout for Docker-format images (skopeo's OCI layout cannot carry those).

``Store`` reads a region's storage the way the registry lays it out (``docker/registry/v2/...``
below the root directory), independently of the replicator's own code, so tests can check keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import boto3
import yaml

from replicator.sample_images import OCI_INDEX, Image
from tests.services import LOOPBACK, S3_CREDENTIALS, Service, executable, free_port

REF_NAME = "org.opencontainers.image.ref.name"
V2 = "docker/registry/v2"
MANIFEST_TYPES = frozenset({
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
})
SKOPEO_TIMEOUT = 120


class SkopeoError(RuntimeError):
    """skopeo exited non-zero; the message carries its command line and stderr."""


# --- images on disk -------------------------------------------------------------------------

def write_oci_layout(directory: Path, images: dict[str, Image]) -> Path:
    """Write ``images`` (tag -> image) as an OCI image layout in ``directory``; return it."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for image in images.values():
        for blob in image.all_blobs():
            path = blobs / blob.digest.removeprefix("sha256:")
            if not path.exists():
                path.write_bytes(blob.data)
    manifests = [image.manifest.descriptor(annotations={REF_NAME: tag})
                 for tag, image in images.items()]
    (directory / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}))
    return directory


DIR_VERSION = "Directory Transport Version: 1.1\n"


def write_dir_layout(directory: Path, image: Image) -> Path:
    """Write ``image`` in skopeo's ``dir:`` layout (any manifest type); return ``directory``."""
    directory.mkdir(parents=True)
    (directory / "version").write_text(DIR_VERSION)
    for blob in image.all_blobs():
        if not is_manifest(blob):
            (directory / blob.digest.removeprefix("sha256:")).write_bytes(blob.data)
    for child in image.children:
        name = child.digest.removeprefix("sha256:") + ".manifest.json"
        (directory / name).write_bytes(child.manifest.data)
    (directory / "manifest.json").write_bytes(image.manifest.data)
    return directory


def read_dir_layout(directory: Path) -> dict[str, int]:
    """digest -> size of every blob and manifest in a ``dir:`` layout, each re-hashed."""
    found = {}
    for path in sorted(directory.iterdir()):
        if path.name == "version":
            continue
        data = path.read_bytes()
        digest = digest_of(data)
        named = path.name.removesuffix(".manifest.json")
        if path.name != "manifest.json" and digest != f"sha256:{named}":
            raise AssertionError(f"{path} holds bytes of digest {digest}")
        found[digest] = len(data)
    return found


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def unique_blobs(images) -> dict:
    """digest -> Blob over every blob of ``images`` (manifests included), each digest once."""
    return {blob.digest: blob for image in images for blob in image.all_blobs()}


def is_manifest(blob) -> bool:
    return blob.media_type in MANIFEST_TYPES


# --- storage blocks and what is in them ----------------------------------------------------

def s3_storage(moto_url: str, bucket: str, rootdirectory: str = "/registry") -> dict:
    """A Distribution ``storage:`` block for an S3 bucket served by moto at ``moto_url``."""
    return {"s3": {**S3_CREDENTIALS, "regionendpoint": moto_url, "bucket": bucket,
                   "secure": False, "v4auth": True, "rootdirectory": rootdirectory}}


def filesystem_storage(rootdirectory: Path) -> dict:
    """A Distribution ``storage:`` block for a directory."""
    return {"filesystem": {"rootdirectory": str(rootdirectory)}}


def swift_storage(params: dict, chunksize: int) -> dict:
    """A Distribution ``storage:`` block for a Swift container; ``params`` are the driver's
    (``SwiftBed.driver_params``), ``chunksize`` the registry's segment size in bytes."""
    return {"swift": {**params, "chunksize": chunksize}}


def s3_client(moto_url: str):
    return boto3.client("s3", endpoint_url=moto_url, region_name=S3_CREDENTIALS["region"],
                        aws_access_key_id=S3_CREDENTIALS["accesskey"],
                        aws_secret_access_key=S3_CREDENTIALS["secretkey"])


def create_bucket(moto_url: str, name: str | None = None) -> str:
    """Create a bucket (a fresh unique name unless ``name`` is given) and return its name."""
    name = name or f"bucket-{uuid.uuid4().hex[:12]}"
    s3_client(moto_url).create_bucket(Bucket=name)
    return name


class Store:
    """Raw keys of a registry's storage, relative to its root (``docker/registry/v2/...``)."""

    def __init__(self, storage: dict):
        self.swift = None
        if "swift" in storage:
            self._open_swift(storage["swift"])
        elif "s3" in storage:
            params = storage["s3"]
            self.client = s3_client(params["regionendpoint"])
            self.bucket = params["bucket"]
            root = params.get("rootdirectory", "").strip("/")
            self.prefix = f"{root}/" if root else ""
            self.root = None
        elif "filesystem" in storage:
            self.root = Path(storage["filesystem"]["rootdirectory"])
        else:
            raise ValueError(f"no Store for storage kinds {sorted(storage)}")

    def _open_swift(self, params: dict) -> None:
        from swiftclient.client import Connection
        self.swift = Connection(authurl=params["authurl"], user=params["username"],
                                key=params["password"], auth_version=str(params["authversion"]),
                                retries=0)
        self.container = params["container"]
        self.prefix = (params.get("prefix", "") + "/files/").lstrip("/")
        self.root = None

    def keys(self, prefix: str = V2) -> set[str]:
        if self.swift is not None:
            _, entries = self.swift.get_container(self.container, prefix=self.prefix + prefix,
                                                  full_listing=True)
            return {entry["name"][len(self.prefix):] for entry in entries}
        if self.root is not None:
            base = self.root / prefix
            if not base.exists():
                return set()
            return {str(path.relative_to(self.root)) for path in base.rglob("*") if path.is_file()}
        found = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix):
            found.update(item["Key"][len(self.prefix):] for item in page.get("Contents", ()))
        return found

    def exists(self, key: str) -> bool:
        if self.swift is not None:
            return key in self.keys(key)
        if self.root is not None:
            return (self.root / key).is_file()
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            return True
        except self.client.exceptions.ClientError as error:
            if error.response["Error"]["Code"] in ("404", "NoSuchKey"):
                return False
            raise

    def get(self, key: str) -> bytes:
        if self.swift is not None:
            return self.swift.get_object(self.container, self.prefix + key)[1]
        if self.root is not None:
            return (self.root / key).read_bytes()
        return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        """Write bytes behind the registry's back (to corrupt a blob, say)."""
        if self.swift is not None:
            self.swift.put_object(self.container, self.prefix + key, data)
        elif self.root is not None:
            (self.root / key).write_bytes(data)
        else:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)


def blob_key(digest: str) -> str:
    hex_ = digest.removeprefix("sha256:")
    return f"{V2}/blobs/sha256/{hex_[:2]}/{hex_}/data"


def layer_link_key(repository: str, digest: str) -> str:
    return f"{V2}/repositories/{repository}/_layers/sha256/{digest.removeprefix('sha256:')}/link"


def revision_link_key(repository: str, digest: str) -> str:
    hex_ = digest.removeprefix("sha256:")
    return f"{V2}/repositories/{repository}/_manifests/revisions/sha256/{hex_}/link"


def tag_current_key(repository: str, tag: str) -> str:
    return f"{V2}/repositories/{repository}/_manifests/tags/{tag}/current/link"


def tag_index_key(repository: str, tag: str, digest: str) -> str:
    hex_ = digest.removeprefix("sha256:")
    return f"{V2}/repositories/{repository}/_manifests/tags/{tag}/index/sha256/{hex_}/link"


def expected_keys(repository: str, tag: str, image: Image) -> dict[str, bytes | None]:
    """The keys a push of ``image`` as ``repository:tag`` leaves, with link contents.

    Blob data maps to None (checked by existence); every link maps to its exact 71 bytes.
    """
    keys: dict[str, bytes | None] = {}
    for blob in image.all_blobs():
        keys[blob_key(blob.digest)] = None
        link = blob.digest.encode()
        if is_manifest(blob):
            keys[revision_link_key(repository, blob.digest)] = link
        else:
            keys[layer_link_key(repository, blob.digest)] = link
    keys[tag_current_key(repository, tag)] = image.digest.encode()
    keys[tag_index_key(repository, tag, image.digest)] = image.digest.encode()
    return keys


def missing_keys(store: Store, repository: str, tag: str, image: Image) -> list[str]:
    """What of ``expected_keys`` ``store`` lacks or holds with other bytes (empty when all is there)."""
    present = store.keys()
    problems = []
    for key, content in expected_keys(repository, tag, image).items():
        if key not in present:
            problems.append(f"missing {key}")
        elif content is not None and store.get(key) != content:
            problems.append(f"{key} holds {store.get(key)!r}, not {content!r}")
    return problems


# --- the registry ---------------------------------------------------------------------------

def start_registry(storage: dict, log_dir: Path, *, readonly: bool = False,
                   auth: dict | None = None, tls: dict | None = None,
                   redirect: bool = False, delete: bool = True,
                   accesslog: bool = False) -> Service:
    """Start ``docker-registry serve`` on a free loopback port over ``storage``.

    No ``cache:`` is configured, so the registry keeps no blob descriptor cache: what it serves
    is what its storage holds at that moment. Readiness is GET /v2/ and then GET /v2/_catalog,
    because /v2/ answers 200 without ever touching storage. ``auth`` is the registry's ``auth``
    block and ``tls`` its ``http.tls`` block (``tests.registry_auth`` makes both); with ``auth``
    a 401 from the catalog counts as ready, and with ``tls`` the service's ``url`` is https.
    Blob GETs stay on the registry unless ``redirect`` (then a 307 to the storage's URL);
    manifest deletes are enabled unless ``delete`` is false. With ``accesslog`` the service's
    log (``service.log_path``) holds a line per request (method, URI, status, bytes).
    """
    port = free_port()
    config_path = _write_registry_config(storage, log_dir, port, readonly, auth=auth, tls=tls,
                                         redirect=redirect, delete=delete, accesslog=accesslog)
    service = Service("registry", [executable("docker-registry"), "serve", str(config_path)],
                      port, ready_path="/v2/", env=_registry_env(), log_dir=log_dir)
    if tls:
        service.url = service.url.replace("http://", "https://")
    context = ssl._create_unverified_context() if tls else None
    try:
        with urllib.request.urlopen(service.url + "/v2/_catalog?n=1", timeout=30,
                                    context=context) as response:
            response.read()
    except (urllib.error.URLError, OSError) as error:
        if not (auth and isinstance(error, urllib.error.HTTPError) and error.code == 401):
            service.stop()
            raise RuntimeError(f"registry on {service.url} cannot read its storage ({error}): "
                               f"{service.log()}") from error
    return service


def _write_registry_config(storage: dict, log_dir: Path, port: int, readonly: bool = False, *,
                           auth: dict | None = None, tls: dict | None = None,
                           redirect: bool = False, delete: bool = True,
                           accesslog: bool = False) -> Path:
    storage = {**storage, "redirect": {"disable": not redirect}, "delete": {"enabled": delete}}
    if readonly:
        storage["maintenance"] = {"readonly": {"enabled": True}}
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": not accesslog}},
        "storage": storage,
        "http": {"addr": f"{LOOPBACK}:{port}", "secret": uuid.uuid4().hex},
    }
    if auth:
        config["auth"] = auth
    if tls:
        config["http"]["tls"] = tls
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path = log_dir / f"registry-{port}.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_path


def _registry_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "AWS_CA_BUNDLE"}


def garbage_collect(storage: dict, log_dir: Path, *, dry_run: bool) -> str:
    """What ``docker-registry garbage-collect`` (``--dry-run``: only marking) prints over
    ``storage``; raises ``RuntimeError`` if it fails."""
    config_path = _write_registry_config(storage, log_dir, free_port())
    argv = [executable("docker-registry"), "garbage-collect", *(["--dry-run"] if dry_run else []),
            str(config_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=_registry_env())
    if result.returncode != 0:
        raise RuntimeError(f"garbage-collect exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout + result.stderr


def _host(registry_url: str) -> str:
    return registry_url.split("://", 1)[-1].rstrip("/")


def _skopeo(*args: str) -> bytes:
    argv = [executable("skopeo"), "--insecure-policy", *args]
    result = subprocess.run(argv, capture_output=True, timeout=SKOPEO_TIMEOUT)
    if result.returncode != 0:
        raise SkopeoError(f"{' '.join(argv)} exited {result.returncode}: "
                          f"{result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def push(registry_url: str, repository: str, tag: str, image: Image, workdir: Path, *,
         creds: str | None = None) -> str:
    """Push ``image`` as ``repository:tag`` with skopeo, digests preserved; return its digest.

    OCI images go through an OCI layout; Docker-format ones through skopeo's ``dir:`` layout,
    because skopeo's OCI layout source only finds OCI descriptors in index.json. ``creds``
    (``user:password``) logs in to the registry.
    """
    workdir = workdir / f"push-{uuid.uuid4().hex[:8]}"
    if image.manifest.media_type.startswith("application/vnd.oci."):
        source = f"oci:{write_oci_layout(workdir, {tag: image})}:{tag}"
    else:
        source = f"dir:{write_dir_layout(workdir, image)}"
    _skopeo("copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
            *_creds("--dest-creds", creds), source, f"docker://{_host(registry_url)}/{repository}:{tag}")
    served = manifest_digest(registry_url, repository, tag, creds=creds)
    if served != image.digest:
        raise AssertionError(f"pushed {image.digest} as {repository}:{tag}, registry serves {served}")
    return served


def delete_manifest(registry_url: str, repository: str, digest: str) -> None:
    """``DELETE /v2/<repository>/manifests/<digest>``: the revision and every tag on it."""
    request = urllib.request.Request(f"{registry_url}/v2/{repository}/manifests/{digest}",
                                     method="DELETE")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202, response.status


def _creds(option: str, creds: str | None) -> tuple[str, ...]:
    return (option, creds) if creds else ()


def raw_manifest(registry_url: str, repository: str, tag: str, *, creds: str | None = None) -> bytes:
    """The exact manifest (or index) bytes the registry serves for ``repository:tag``."""
    return _skopeo("inspect", "--raw", "--tls-verify=false", *_creds("--creds", creds),
                   f"docker://{_host(registry_url)}/{repository}:{tag}")


def manifest_digest(registry_url: str, repository: str, tag: str, *, creds: str | None = None) -> str:
    """The digest of the top-level manifest (the index, for multi-arch) served for the tag."""
    return digest_of(raw_manifest(registry_url, repository, tag, creds=creds))


def pull(registry_url: str, repository: str, tag: str, directory: Path, *,
         creds: str | None = None) -> dict[str, int]:
    """Pull every platform of ``repository:tag`` into ``directory``; return what arrived.

    The result maps digest -> size for every blob pulled, manifests and index children
    included, each re-hashed. skopeo writes skopeo's ``dir:`` layout (an OCI layout destination
    refuses a Docker manifest list when digests must be preserved); ``directory`` must be new.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    _skopeo("copy", "--all", "--preserve-digests", "--src-tls-verify=false",
            *_creds("--src-creds", creds), f"docker://{_host(registry_url)}/{repository}:{tag}",
            f"dir:{directory}")
    return read_dir_layout(directory)
