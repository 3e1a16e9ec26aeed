"""Fan-out: a first pass into one and into three empty destinations, one policy each.

Generates a registry with ``bench/registry_gen.py`` on a filesystem source and, with ``--s3``,
a smaller one in a bucket of moto's S3 server (started on a free 127.0.0.1 port, stopped at the
end), then, run by run and alternating, replicates it with ``replicator sync --json``
(``server_side_copy: false``, every blob streamed and hashed) into one fresh empty destination
and into three (one policy, three destinations). The source's blob reads are counted: on a
filesystem by ``compare.py``'s wrapper of the driver's reads in the child, on S3 by a counting
proxy (``tests/faults.py``'s ``FaultProxy`` without faults) in front of the source. On S3,
``--latency MS`` puts a proxy adding that much delay to every destination request in front of
the destinations (regions far from the replicator). It prints, per backend:

- source blob bytes read / bytes of the unique blobs (layers, configs and manifests), for one
  destination and for three (target 1.0x for both: each blob read once for all destinations);
- wall seconds, median of ``--runs``, of the three-destination pass / the one-destination pass
  (target <= 1.3x), and the re-reads the three-destination passes counted (``blobs_reread``);
- CPU seconds (user + system, ``wait4``) of the replicator's process, and on S3 of moto's server
  process, medians of the same runs, with their 3 / 1 ratios, and the load average when each
  run ended: on a shared machine the CPU ratios are the figure to trust, not the walls;

and the machine (nproc, CPU, Python, the replicator's commit).

    python bench/fanout.py [--size 200MiB] [--tags 1000] [--repositories 50] [--runs 3]
                           [--concurrency 8] [--seed 0]
                           [--s3] [--s3-size 50MiB] [--s3-tags 150] [--latency 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import registry_gen  # noqa: E402
from compare import (PROJECT, READ_COUNTER, Result, S3Backend, machine,  # noqa: E402
                     median, registry_arguments, run)
from drivers.filesystem import FilesystemDriver  # noqa: E402
from tests.faults import FaultProxy  # noqa: E402

MIB = 1024 * 1024
DESTINATIONS = ("eu", "ap", "sa")
BLOBS = "docker/registry/v2/blobs/"


class Filesystem:
    """A filesystem source and fresh filesystem destinations under ``work``."""

    name = "fs"

    def __init__(self, work: Path):
        self.work = work
        self.source = work / "source"
        self.driver = FilesystemDriver(str(self.source))

    def source_block(self) -> dict:
        return {"filesystem": {"rootdirectory": str(self.source)}}

    def destination(self, folder: Path, name: str) -> dict:
        return {"filesystem": {"rootdirectory": str(folder / name)}}

    def remove(self, block: dict) -> None:
        shutil.rmtree(block["filesystem"]["rootdirectory"], ignore_errors=True)

    def sync(self, argv: list[str], env: dict, folder: Path) -> tuple[object, int]:
        """Run the sync with the driver's reads counted; its result and the blob bytes read."""
        reads = folder / "reads.json"
        result = run([sys.executable, "-c", READ_COUNTER, *argv], dict(env, BENCH_READS=str(reads)))
        described = self.driver.describe()
        return result, sum(n for where, part, n in json.loads(reads.read_text())
                           if where == described and part == "blobs")

    def close(self) -> None:
        pass


class S3:
    """A moto bucket as the source, behind a counting proxy; fresh buckets as destinations,
    behind a proxy adding ``latency`` seconds to every request when it is not 0."""

    name = "s3"

    def __init__(self, work: Path, latency: float):
        self.backend = S3Backend(work)
        self.driver = self.backend.driver()
        self.latency = None
        if latency:
            self.latency = FaultProxy(self.backend.moto.url, rate=1.0, faults=("latency",),
                                      latency=(latency, latency)).start()

    def source_block(self) -> dict:
        return self.backend.source_storage(counted=True)

    def destination(self, folder: Path, name: str) -> dict:
        block = self.backend.new_destination(name).storage
        if self.latency is not None:
            block = {"s3": {**block["s3"], "regionendpoint": self.latency.url}}
        return block

    def remove(self, block: dict) -> None:
        bucket = block["s3"]["bucket"]
        client = self.backend.client
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=bucket)

    def sync(self, argv: list[str], env: dict, folder: Path) -> tuple[object, int]:
        counted = self.backend.proxy.body_bytes
        before = sum(n for path, n in counted.items() if BLOBS in path)
        result = run([sys.executable, "-m", "replicator", *argv], env, self.backend.server_pid)
        return result, sum(n for path, n in counted.items() if BLOBS in path) - before

    def close(self) -> None:
        if self.latency is not None:
            self.latency.stop()
        self.backend.close()


def first_pass(backend, work: Path, count: int, concurrency: int,
               label: str) -> tuple[Result, int, list[dict]]:
    """One first pass from the source into ``count`` fresh empty destinations: the measured
    process, the source's blob bytes read, and the passes of its report."""
    folder = work / label
    folder.mkdir()
    blocks = {name: backend.destination(folder, name) for name in DESTINATIONS[:count]}
    config = folder / "replicator.yml"
    config.write_text(yaml.safe_dump({
        "state": {"path": str(folder / "state.db")}, "concurrency": concurrency,
        "server_side_copy": False,
        "regions": {"src": {"storage": backend.source_block()},
                    **{name: {"storage": block} for name, block in blocks.items()}},
        "policies": [{"name": "fan", "source": "src", "destinations": list(blocks)}]}))
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    try:
        result, read = backend.sync(["sync", "--json", "--quiet", "--config", str(config)],
                                    env, folder)
        report = result.report()
    finally:
        for block in blocks.values():
            backend.remove(block)
        shutil.rmtree(folder, ignore_errors=True)
    if not report["ok"]:
        raise RuntimeError(f"sync into {list(blocks)} failed: {result.stdout[-2000:]}")
    return result, read, report["passes"]


def measure(backend, work: Path, args: argparse.Namespace, size: int, tags: int,
            say: Callable[[str], None]) -> list[str]:
    """Generate the registry, run the passes, and return the result lines."""
    registry = registry_gen.generate(backend.driver, size=size, tags=tags,
                                     repositories=args.repositories, seed=args.seed)
    unique, summary = registry.total_bytes, registry.summary()
    say(f"{backend.name}: {summary['repositories']} repositories, {summary['tags']} tags, "
        f"{summary['blobs']} blobs, {unique / MIB:.1f} MiB, {summary['keys']} keys")
    walls: dict[int, list[float]] = {1: [], 3: []}
    cpus: dict[int, list[float]] = {1: [], 3: []}
    servers: dict[int, list[float]] = {1: [], 3: []}
    reads: dict[int, list[int]] = {1: [], 3: []}
    rereads = []
    for number in range(args.runs):
        for count in (1, 3):
            result, read, passes = first_pass(backend, work, count, args.concurrency,
                                              f"{backend.name}-run{number}-{count}")
            wall, load = result.wall, os.getloadavg()[0]
            copied = {entry["destination"]: entry["bytes_copied"] for entry in passes}
            if set(copied.values()) != {unique}:
                raise RuntimeError(f"copied {copied}, expected {unique} bytes each")
            walls[count].append(wall)
            cpus[count].append(result.cpu)
            if result.server_cpu is not None:
                servers[count].append(result.server_cpu)
            reads[count].append(read)
            if count == 3:
                rereads.append(sum(entry["blobs_reread"] for entry in passes))
            say(f"{backend.name} run {number + 1}/{args.runs}, {count} destination(s): "
                f"{wall:.2f} s, CPU {result.cpu:.2f} s"
                + ("" if result.server_cpu is None else f", server CPU {result.server_cpu:.2f} s")
                + f", load average {load:.1f}, source blob bytes read {read / unique:.5f}x unique")
    one, three = median(walls[1]), median(walls[3])
    name = backend.name
    each = {count: ", ".join(f"{wall:.2f}" for wall in walls[count]) for count in walls}
    dedup = (f"{name}: source blob bytes read / unique, 1 destination: "
             f"{median(reads[1]) / unique:.5f}x; 3 destinations: {median(reads[3]) / unique:.5f}x "
             f"(at most {max(reads[3]) / unique:.5f}x; target 1.0x)")
    wall = (f"{name}: wall, 3 destinations / 1: {three:.2f} s / {one:.2f} s = {three / one:.2f}x "
            f"(target <= 1.3x; medians of {args.runs}; runs into 1: {each[1]}; into 3: {each[3]})")
    lines = [dedup, wall, ratio(f"{name}: CPU s of the replicator", cpus)]
    if servers[1] and servers[3]:
        lines.append(ratio(f"{name}: CPU s of the server (moto)", servers))
    return lines + [f"{name}: blobs re-read by the 3-destination passes, per run: {rereads}"]


def ratio(label: str, values: dict[int, list[float]]) -> str:
    """``label``: median for 3 destinations / median for 1, with their ratio."""
    one, three = median(values[1]), median(values[3])
    return f"{label}, 3 destinations / 1: {three:.2f} / {one:.2f} = {three / one:.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    registry_arguments(parser, tags=1000, repositories=50, size_note="; moto holds it in memory",
                       peer="workers per destination")
    parser.add_argument("--s3", action="store_true", help="also on moto's S3")
    parser.add_argument("--s3-size", type=registry_gen.parse_size, default=50 * MIB,
                        help="the S3 registry's size (default 50MiB; moto holds it in memory)")
    parser.add_argument("--s3-tags", type=int, default=150, help="the S3 registry's tags (default 150)")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="milliseconds added to every S3 destination request (default 0)")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as folder:
        work = Path(folder)
        lines += measure(Filesystem(work / "fs"), work, args, args.size, args.tags, say)
        if args.s3:
            backend = S3(work / "s3", args.latency / 1000)
            try:
                lines += measure(backend, work, args, args.s3_size, args.s3_tags, say)
            finally:
                backend.close()
    print("\n".join(lines))
    if args.s3 and args.latency:
        print(f"s3 destinations behind a proxy adding {args.latency:g} ms to every request")
    print(machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
