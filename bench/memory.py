"""Peak RSS of `replicator sync` copying one large blob into S3: flat in the blob's size?

Builds a filesystem source region holding one image whose layer is a blob of each size asked
for (random bytes, streamed to disk), starts moto's S3 server on a free loopback port, and runs
`replicator sync` into a fresh bucket once per size, measuring the child's peak RSS with
wait4(). Prints one table. Usage: python bench/memory.py [--sizes 256,1024] (MiB).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.filesystem import FilesystemDriver  # noqa: E402
from replicator import layout, sample_images  # noqa: E402
from replicator.demo import publish  # noqa: E402
from tests.services import S3_CREDENTIALS, start_moto  # noqa: E402

MIB = 1024 * 1024


def big_layer(root: Path, size: int) -> str:
    """Write ``size`` random bytes as a blob under ``root``; return its digest."""
    hasher = hashlib.sha256()
    staging = root / "staging"
    staging.parent.mkdir(parents=True, exist_ok=True)
    with open(staging, "wb") as file:
        for _ in range(size // MIB):
            chunk = os.urandom(MIB)
            hasher.update(chunk)
            file.write(chunk)
    digest = "sha256:" + hasher.hexdigest()
    final = root / layout.blob_key(digest)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, final)
    return digest


def image_with(digest: str, size: int) -> sample_images.Image:
    config = sample_images.Blob(sample_images.OCI_CONFIG, json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode())
    manifest = sample_images.Blob(sample_images.OCI_MANIFEST, json.dumps({
        "schemaVersion": 2, "mediaType": sample_images.OCI_MANIFEST, "config": config.descriptor(),
        "layers": [{"mediaType": sample_images.OCI_LAYER, "digest": digest, "size": size}]}).encode())
    return sample_images.Image(manifest, (config,))


def measure(work: Path, moto_url: str, size_mib: int) -> dict:
    source = FilesystemDriver(str(work / f"src-{size_mib}"))
    digest = big_layer(Path(source.root), size_mib * MIB)
    publish(source, "bench/big", f"{size_mib}m", image_with(digest, size_mib * MIB))
    bucket = f"memory-{size_mib}-{int(time.time())}"
    boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                 aws_access_key_id=S3_CREDENTIALS["accesskey"],
                 aws_secret_access_key=S3_CREDENTIALS["secretkey"]).create_bucket(Bucket=bucket)
    config = work / f"config-{size_mib}.yml"
    config.write_text(yaml.safe_dump({
        "state": {"path": str(work / f"state-{size_mib}.db")},
        "regions": {"src": {"storage": {"filesystem": {"rootdirectory": source.root}}},
                    "dst": {"storage": {"s3": {**S3_CREDENTIALS, "bucket": bucket,
                                               "regionendpoint": moto_url, "secure": False}}}},
        "policies": [{"name": "bench", "source": "src", "destinations": ["dst"]}]}))
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "replicator", "sync", "--json", "--quiet",
                              "--config", str(config)], stdout=subprocess.PIPE)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    report = json.loads(output)
    return {"size_mib": size_mib, "exit": os.waitstatus_to_exitcode(status),
            "peak_rss_mib": usage.ru_maxrss / 1024, "seconds": time.monotonic() - started,
            "bytes_copied": report["passes"][0]["bytes_copied"],
            "puts": report["requests"]["dst"]["put"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1024", help="blob sizes in MiB, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="replicator-bench-") as folder:
        work = Path(folder)
        with start_moto(work) as moto:
            rows = [measure(work, moto.url, int(size)) for size in args.sizes.split(",")]
    print(f"{'blob MiB':>8}  {'exit':>4}  {'peak RSS MiB':>12}  {'bytes copied':>13}  {'PUTs':>5}  {'seconds':>7}")
    for row in rows:
        print(f"{row['size_mib']:>8}  {row['exit']:>4}  {row['peak_rss_mib']:>12.1f}  "
              f"{row['bytes_copied']:>13}  {row['puts']:>5}  {row['seconds']:>7.1f}")
    if len(rows) > 1:
        print(f"peak RSS difference, largest - smallest blob: "
              f"{rows[-1]['peak_rss_mib'] - rows[0]['peak_rss_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
