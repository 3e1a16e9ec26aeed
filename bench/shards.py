"""Listing requests of each shard in a no-change pass, with 1, 2 and 4 shards, on moto's S3.

    python bench/shards.py [--tags 12100] [--repositories 20] [--size 20MiB] [--shards 1,2,4]
                           [--fill http|backend]

Starts moto's S3 server on a free 127.0.0.1 port with a counting proxy per region in front
(``tests/faults.py``'s ``FaultProxy``, no faults), generates the same registry
(``registry_gen.py``, same seed) into a source bucket and a destination bucket, so that the
destination is already in sync (``--fill http``: through the S3 driver, a PUT per key to a
``moto_server`` process; ``--fill backend``: moto's server runs in this process and the keys go
straight into its backend, the same keys, bytes and storage class, with no request), runs one
warm-up pass (one shard: it reads every tag link once and records each region's key counts in
the state store; it must find nothing to copy), then a no-change pass of every shard of each
shard count, one after the other, in-process, sharing that state store; the replicator always
goes through the proxies' HTTP. It prints the machine, the registry, and one table: per shard,
the listing requests the proxy saw at each region, their ratio to the one-shard pass's, the
ideal 1/N, and the share of the registry's repository keys the shard owns (a repository is
never split, so a busy one weighs on its owner). Any request of another kind in a no-change
pass fails the run. Stops what it started.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from contextlib import contextmanager
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import registry_gen  # noqa: E402
from compare import machine  # noqa: E402
from drivers import open_storage  # noqa: E402
from drivers.base import check_key  # noqa: E402
from drivers.s3 import S3Driver  # noqa: E402
from replicator import config as config_module  # noqa: E402
from replicator import layout  # noqa: E402
from replicator.engine import RunOptions, run_policy  # noqa: E402
from replicator.listing import repository_of  # noqa: E402
from replicator.sharding import Shard  # noqa: E402
from state.store import StateStore  # noqa: E402
from tests.faults import FaultProxy  # noqa: E402
from tests.services import LOOPBACK, S3_CREDENTIALS, free_port, start_moto  # noqa: E402

MIB = 1024 * 1024
REGIONS = ("src", "dst")

MOTO_VERSION = "from importlib.metadata import version; print('moto', version('moto'))"


@contextmanager
def moto_in_process() -> Iterator[SimpleNamespace]:
    """moto's S3 server on a free loopback port in a thread of this process (its backend is
    then this process's ``moto.s3.models.s3_backends``); stopped on exit."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    try:
        yield SimpleNamespace(url=f"http://{LOOPBACK}:{port}")
    finally:
        server.stop()


class BackendWrites:
    """Writes into the bucket of ``driver`` (an :class:`S3Driver` of the in-process moto server)
    through moto's backend, with no HTTP request: what ``driver.write(key, data)`` leaves (the
    key under the driver's root, the bytes, the storage class of its ``put_args``), at memory
    speed. Raises ``ValueError`` for a key ``driver.write`` refuses, ``SystemExit`` if the bucket
    is not in this process's moto or the driver adds object options other than a storage class."""

    def __init__(self, driver: S3Driver) -> None:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        self._backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        if driver.bucket not in self._backend.buckets:
            raise SystemExit(f"--fill backend: bucket {driver.bucket} is not in this "
                             "process's moto")
        if set(driver.put_args) - {"StorageClass"}:
            raise SystemExit(f"--fill backend: object options {sorted(driver.put_args)} "
                             "not written")
        self._driver = driver

    def write(self, key: str, data: bytes) -> str:
        created = self._backend.put_object(self._driver.bucket, self._driver.root + check_key(key),
                                           data, storage=self._driver.put_args.get("StorageClass"))
        return created.etag.strip('"')


def unchanged_pass(config, state, shard: Shard = Shard()) -> None:
    """One pass of ``shard``; raises ``SystemExit`` unless it found the destination in sync
    (nothing replicated, nothing failed, no error)."""
    [report] = run_policy(config, config.policies[0], state,
                          RunOptions.from_config(config, shard=shard))
    if report.error or report.tags_replicated or report.tags_failed:
        raise SystemExit(f"shard {shard}: not a no-change pass: "
                         f"{report.error or 'tags were replicated or failed'}")


def counted_pass(config, state, proxies: dict[str, FaultProxy], shard: Shard) -> dict[str, int]:
    """Listing requests per region of one pass of ``shard``; raises unless nothing changed and
    nothing but listings was sent."""
    for proxy in proxies.values():
        proxy.requests.clear()
    unchanged_pass(config, state, shard)
    others = {region: {kind: n for kind, n in proxy.requests.items() if kind != "list" and n}
              for region, proxy in proxies.items()}
    if any(others.values()):
        raise SystemExit(f"shard {shard}: requests other than listings: {others}")
    return {region: proxy.requests["list"] for region, proxy in proxies.items()}


def table(results: dict[int, list[dict[str, int]]], keys: Counter[str]) -> list[str]:
    """``keys``: the registry's keys under the repositories prefix, by repository."""
    one = results[1][0]
    lines = ["| shards | shard | src list | src ratio | dst list | dst ratio | ideal 1/N "
             "| its keys' share |", "|---|---|---|---|---|---|---|---|"]
    for count, shards in results.items():
        for index, lists in enumerate(shards):
            share = sum(n for name, n in keys.items() if Shard(index, count).owns(name))
            lines.append(f"| {count} | {index}/{count} | {lists['src']} | "
                         f"{lists['src'] / one['src']:.3f} | {lists['dst']} | "
                         f"{lists['dst'] / one['dst']:.3f} | {1 / count:.3f} | "
                         f"{share / sum(keys.values()):.3f} |")
        if count > 1:
            total = {region: sum(lists[region] for lists in shards) for region in REGIONS}
            lines.append(f"| {count} | all | {total['src']} | {total['src'] / one['src']:.3f} | "
                         f"{total['dst']} | {total['dst'] / one['dst']:.3f} | 1.000 | 1.000 |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=12100,
                        help="tags (default 12100: with the other defaults 100,639 keys per "
                             "region, 62,455 of them links)")
    parser.add_argument("--repositories", type=int, default=20, help="repositories (default 20)")
    parser.add_argument("--size", type=registry_gen.parse_size, default=20 * MIB,
                        help="total blob bytes (default 20MiB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", default="1,2,4", help="shard counts, starting with 1 (default 1,2,4)")
    parser.add_argument("--fill", choices=("http", "backend"), default="http",
                        help="write the registry through the S3 driver to a moto_server process "
                             "(http, the default) or straight into the backend of moto run in "
                             "this process (backend: minutes instead of hours for 100,000 keys)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.shards.split(",")]
    if counts[0] != 1 or any(n < 1 for n in counts):
        parser.error("--shards: a comma-separated list of counts starting with 1, e.g. 1,2,4")
    print(machine(((sys.executable, "-c", MOTO_VERSION),)))
    server = moto_in_process() if args.fill == "backend" else start_moto()
    with server as moto, tempfile.TemporaryDirectory(prefix="bench-shards-") as work:
        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                          aws_access_key_id=S3_CREDENTIALS["accesskey"],
                          aws_secret_access_key=S3_CREDENTIALS["secretkey"])
        proxies = {region: FaultProxy(moto.url).start() for region in REGIONS}
        try:
            buckets = {region: f"shards-{region}-{uuid.uuid4().hex[:8]}" for region in REGIONS}
            for bucket in buckets.values():
                s3.create_bucket(Bucket=bucket)
            blocks = {region: {"s3": {**S3_CREDENTIALS, "bucket": buckets[region],
                                      "regionendpoint": proxies[region].url, "secure": False}}
                      for region in REGIONS}
            for region in REGIONS:
                storage = open_storage(blocks[region])
                if args.fill == "backend":
                    storage = BackendWrites(storage)
                registry = registry_gen.generate(storage, size=args.size, tags=args.tags,
                                                 repositories=args.repositories, seed=args.seed)
            keys = Counter(repository_of(link) for link in registry.links
                           if link.startswith(layout.REPOSITORIES_PREFIX))
            links = sum(keys.values())
            print(f"registry: {registry.keys} keys per region ({links} under "
                  f"{layout.REPOSITORIES_PREFIX}), {len(registry.tags)} tags, "
                  f"{len({name for name, _ in registry.tags})} repositories; seed {args.seed}")
            config = config_module.parse({
                "state": {"path": str(Path(work) / "state.db")},
                "regions": {region: {"storage": block} for region, block in blocks.items()},
                "policies": [{"name": "bench", "source": "src", "destinations": ["dst"]}],
            })
            state = StateStore(config.state_path)
            unchanged_pass(config, state)
            results = {count: [counted_pass(config, state, proxies, Shard(index, count))
                               for index in range(count)] for count in counts}
            state.close()
        finally:
            for proxy in proxies.values():
                proxy.stop()
    print("\n".join(table(results, keys)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
