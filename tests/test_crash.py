"""Crash safety by ``kill -9`` (DESIGN invariants 1, 2 and 6).

Each seed runs ``replicator sync --config F --json`` as a child process and kills it with
SIGKILL at a moment the seed chooses, then checks what a reader of each destination sees
while nothing runs, then runs ``python -m replicator sync`` again and checks that it converged.

The world: a source bucket in moto with 21 tags in 4 repositories (a multi-arch index among
them, three 6-11 MiB layers written in 5 MiB multipart parts, one of them shared by two
repositories, and an upload in flight that is never replicated), replicated by one policy into
two destinations, a moto bucket and a filesystem folder. A seed starts either from empty
destinations or from destinations holding a previous generation of the registry (13 tags,
with its state store), which the source has since moved on from, as a registry push would:
new tags, moved tags, a moved index.

Kill points are deterministic: the child is a launcher (``LAUNCHER``, written into the test's
folder) that arms one hook and then calls ``replicator.cli.main``. The hook counts the events
of one kind and sends the process SIGKILL at the N-th:

``s3-part``       after the N-th UploadPart of a streamed blob: a multipart upload in flight
``s3-part-body``  part-way (a seeded fraction) through sending the N-th UploadPart's body
``s3-copy-part``  after the N-th UploadPartCopy of a server-side copy (that route's config)
``s3-blob-done``  just after the N-th blob committed at the S3 destination: blob, no links yet
``fs-chunk``      after the N-th chunk written to a blob's temporary file (filesystem)
``fs-publish``    the N-th filesystem write complete and synced, before its rename into place
``link``          before the N-th layer, revision or tag index link write (either destination)
``current``       before (or after) the N-th tag ``current/link`` write: links done, tag not
``state``         before the N-th writing SQL statement of the state store (BEGIN, INSERT,
                  DELETE, UPDATE, COMMIT, CREATE, ...): mid-transaction, before a commit,
                  in the migrations of a new store, or while the pass is being recorded

N is drawn from the events a calibration run (one uninterrupted run per start, counting every
kind) saw. After each kill, a reader check per destination: every visible tag resolves
completely (``verify`` with the destination as its own source, no dangling kind) to the new
digest or, from a previous generation, the old one; every blob key listed under
``docker/registry/v2/blobs/`` hashes to its digest (all of them, not only those referenced);
every link file holds a whole digest. Tags with a tag index link and no ``current/link`` yet
(Distribution's ``tags/list`` shows them, yet cannot serve them) are counted and printed, not
failed: the reader here resolves the tags ``_visible_tags`` sees. Then the next normal run
must exit 0 and leave both destinations identical to the source (deep verify, and key by key,
byte for byte, ``_uploads`` aside), no multipart upload in the S3 bucket, no file in the
filesystem's ``.replicator-tmp``, and a state store that opens and that ``status --json``
reads as in sync.

Seeds: ``REPLICATOR_CRASH_SEEDS=N`` runs seeds 1..N (default 20: every kill kind from both
starts, in both destination orders).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivers.filesystem import TEMP_DIR, FilesystemDriver
from replicator import config as config_module
from replicator import layout, sample_images
from replicator.demo import publish
from replicator.engine import RunOptions, run_policy
from state.store import StateStore
from tests.services import PROJECT
from tests.test_engine import DANGLING_KINDS, _visible_tags, verify_storage
from tests.test_faults import (assert_identical, big_layer, direct, driver_params, keys,
                               leftover_uploads, new_bucket, raw_client)
from tests.test_request_counts import fill

MIB = 1024 * 1024
PART = 5 * MIB
BIG_SIZES = (6 * MIB, 8 * MIB, 11 * MIB)
REPOSITORIES = ("base/os", "team/web", "team/api", "tools/cli")
SEEDS = range(1, int(os.environ.get("REPLICATOR_CRASH_SEEDS", "20")) + 1)
KINDS = ("s3-part", "s3-part-body", "s3-copy-part", "s3-blob-done", "fs-chunk", "fs-publish",
         "link", "current", "state")
STARTS = ("empty", "previous")
RUN_TIMEOUT = 120

LAUNCHER = r'''
"""``replicator`` with one kill point armed (see tests/test_crash.py): at the N-th event of
the planned kind the process records the event and sends itself SIGKILL. With the kind
``count`` nothing is killed and the counts of every kind are recorded at the end."""
import http.client
import json
import os
import re
import signal
import sqlite3
import sys
import threading

from drivers import filesystem, s3
from replicator import cli, layout

PLAN = json.loads(os.environ["CRASH_PLAN"])
RECORD = os.environ["CRASH_RECORD"]
counts = {}
lock = threading.Lock()
local = threading.local()


def die(kind, detail):
    with open(RECORD, "w") as file:
        json.dump({"kind": kind, "n": PLAN["n"], "phase": PLAN.get("phase"), "detail": detail}, file)
    os.kill(os.getpid(), signal.SIGKILL)


def reached(kind):
    """Count one event of ``kind``; whether it is the planned one."""
    with lock:
        counts[kind] = counts.get(kind, 0) + 1
        return kind == PLAN["kind"] and counts[kind] == PLAN["n"]


def event(kind, detail):
    if reached(kind):
        die(kind, detail)


upload_part = s3._MultipartWriter._upload_part


def hooked_upload_part(self, size):
    number = len(self._parts) + 1
    if reached("s3-part-body"):
        local.cut = [f"{self._key} part {number}", int(size * PLAN["fraction"]), 0, size]
    try:
        upload_part(self, size)
    finally:
        local.cut = None
    event("s3-part", f"{self._key} part {number} uploaded")


send = http.client.HTTPConnection.send


def hooked_send(self, data):
    """Within the planned UploadPart: send bytes up to the planned point of its body, then die."""
    cut = getattr(local, "cut", None)
    if cut and isinstance(data, (bytes, bytearray, memoryview)) and len(data) > 4096:
        detail, target, sent, size = cut
        if sent + len(data) >= target:
            send(self, data[:target - sent])
            die("s3-part-body", f"{detail}: {target} of its {size} body bytes sent")
        cut[2] += len(data)
    return send(self, data)


commit = s3._MultipartWriter.commit


def hooked_commit(self):
    etag = commit(self)
    event("s3-blob-done", f"{self._key} committed ({self.size} bytes)")
    return etag


call = s3.S3Driver._call


def hooked_call(self, operation, key, **args):
    response = call(self, operation, key, **args)
    if operation == "upload_part_copy":
        event("s3-copy-part", f"{key} part {args['PartNumber']} copied")
    return response


file_write = filesystem._FileWriter.write


def hooked_file_write(self, data):
    file_write(self, data)
    if self._key.startswith(layout.BLOBS_PREFIX):
        event("fs-chunk", f"{self._key}: {self.size} bytes in its temporary file")


publish = filesystem._publish


def hooked_publish(temp, path):
    event("fs-publish", f"{path} synced in {os.path.basename(temp)}, not renamed")
    publish(temp, path)


def hooked_write(original, region):
    def write(self, key, data):
        if not key.startswith(layout.REPOSITORIES_PREFIX):
            return original(self, key, data)
        if not key.endswith("/current/link"):
            event("link", f"{region} {key}")
            return original(self, key, data)
        after = PLAN.get("phase") == "after"
        if not after:
            event("current", f"{region} {key}, before its write")
        etag = original(self, key, data)
        if after:
            event("current", f"{region} {key}, after its write")
        return etag
    return write


WRITING = re.compile(r"\s*(BEGIN|COMMIT|INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER"
                     r"|PRAGMA\s+journal_mode)", re.IGNORECASE)
connect = sqlite3.connect


def traced_statement(sql):
    if WRITING.match(sql):
        event("state", " ".join(sql.split())[:100])


def hooked_connect(*args, **kwargs):
    connection = connect(*args, **kwargs)
    connection.set_trace_callback(traced_statement)
    return connection


s3._MultipartWriter._upload_part = hooked_upload_part
http.client.HTTPConnection.send = hooked_send
s3._MultipartWriter.commit = hooked_commit
s3.S3Driver._call = hooked_call
filesystem._FileWriter.write = hooked_file_write
filesystem._publish = hooked_publish
s3.S3Driver.write = hooked_write(s3.S3Driver.write, "s3")
filesystem.FilesystemDriver.write = hooked_write(filesystem.FilesystemDriver.write, "fs")
sqlite3.connect = hooked_connect

code = cli.main(sys.argv[1:])
if PLAN["kind"] == "count":
    with open(RECORD, "w") as file:
        json.dump(counts, file)
sys.exit(code)
'''


# -- the world ------------------------------------------------------------------------------


def generations() -> tuple[dict, dict]:
    """(previous, current) generations of the registry, (repository, tag) -> image. The tags
    of a repository share its layers and differ by their configs (labels), as rebuilds do."""
    base = sample_images.layer({"etc/os-release": b"NAME=crash\n" * 50})
    bigs = [big_layer(60 + i, size) for i, size in enumerate(BIG_SIZES)]
    big_in = {("base/os", "v1"): bigs[0], ("team/web", "v2"): bigs[1],
              ("team/api", "v3"): bigs[2], ("tools/cli", "v4"): bigs[0]}

    def image(name: str, tag: str, generation: str, extra=(), architecture="amd64"):
        app = sample_images.layer({f"srv/{name}": f"{name} {generation}\n".encode()})
        return sample_images.image([base, *extra, app], architecture=architecture,
                                   labels={"tag": f"{name}:{tag} {generation}"})

    previous, current = {}, {}
    for name in REPOSITORIES:
        for t in range(3):
            previous[(name, f"v{t}")] = image(name, f"v{t}", "previous")
        current[(name, "v0")] = previous[(name, "v0")]  # unchanged between the generations
        for t in range(1, 5):
            key = (name, f"v{t}")
            current[key] = image(name, f"v{t}", "current", [big_in[key]] if key in big_in else [])
    for generation, images, extra in (("previous", previous, []), ("current", current, [bigs[1]])):
        arm = image("team/web", "multi", generation, extra, architecture="arm64")
        images[("team/web", "multi")] = sample_images.index([images[("team/web", "v1")], arm])
    return previous, current


class Recorder:
    """Writes to ``storage`` and keeps the SHA-256 of every key written (the last write)."""

    def __init__(self, storage):
        self.storage = storage
        self.hashes: dict[str, bytes] = {}

    def write(self, key: str, data: bytes) -> str:
        self.hashes[key] = hashlib.sha256(data).digest()
        return self.storage.write(key, data)


def push(storage, *generations: dict) -> dict[str, bytes]:
    """Write each generation in turn as registry pushes would (a later one moves tags), and an
    upload in flight; the SHA-256 of every key the replicator must copy."""
    recorder = Recorder(storage)
    for images in generations:
        fill(recorder, {key: image for key, image in images.items() if not image.children})
        for (name, tag), image in images.items():
            if image.children:
                publish(recorder, name, tag, image)
    storage.write(layout.repository_prefix("team/web") + "_uploads/0a1b/data", b"in flight")
    return recorder.hashes


@dataclass(frozen=True)
class Source:
    """A source bucket: its name, tags, the SHA-256 of every key the replicator must copy
    (as ``tests.test_faults.assert_identical`` takes them), and the digests a reader may see
    at each tag of a destination that started from ``start``."""

    bucket: str
    tags: list[tuple[str, str]]
    expected: dict[str, bytes]
    allowed: dict[tuple[str, str], set[str]]

    def as_faults_source(self) -> tuple:
        return self.bucket, self.tags, self.expected


@dataclass(frozen=True)
class World:
    sources: dict[str, Source]  # by start
    template_bucket: str  # the previous generation, replicated: copied for "previous" starts
    template_fs: Path
    template_state: Path
    big_sizes: tuple[int, ...]


def source_bucket(moto, purpose: str, generations: tuple[dict, ...],
                  allowed: dict[tuple[str, str], set[str]]) -> Source:
    bucket = new_bucket(moto, purpose)
    written = push(direct(moto, bucket), *generations)
    expected = {"registry/" + key: written[key] for key in sorted(written)}
    assert list(expected) == [key for key in keys(raw_client(moto.url), bucket)
                              if "/_uploads/" not in key]
    return Source(bucket, sorted(generations[-1]), expected, allowed)


def write_config(path: Path, moto, source: str, bucket: str, fs_root: Path, state: Path,
                 order: tuple[str, str] = ("s3", "fs"), server_side: bool = False) -> Path:
    copies = {"multipartcopythresholdsize": PART, "multipartcopychunksize": PART}
    document = {
        "state": {"path": str(state)},
        "concurrency": 8,
        "server_side_copy": "trusted" if server_side else False,   # trusted: multipart part copies
        # A full pass first discards incomplete uploads older than this. 0s here: moto dates
        # every multipart upload 2010-11-10, so the default (1h) would sweep them on S3
        # anyway, but the filesystem's temporary files carry real times and would stay for
        # an hour. Production keeps the 1 h default so that shards (and a pass of another
        # process) never discard each other's uploads in flight.
        "abandoned_uploads_after": "0s",
        "regions": {
            "src": {"storage": {"s3": driver_params(moto, source)}},
            "s3": {"storage": {"s3": {**driver_params(moto, bucket), **copies}}},
            "fs": {"storage": {"filesystem": {"rootdirectory": str(fs_root)}}},
        },
        "policies": [{"name": "crash", "source": "src", "destinations": list(order)}],
    }
    path.write_text(json.dumps(document, indent=2))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def world(moto, tmp_path_factory) -> World:
    previous, current = generations()
    old_source = source_bucket(moto, "crash-old", (previous,), {})
    fresh_allowed = {key: {image.digest} for key, image in current.items()}
    moved_allowed = {key: {image.digest} | ({previous[key].digest} if key in previous else set())
                     for key, image in current.items()}
    sources = {"empty": source_bucket(moto, "crash-new", (current,), fresh_allowed),
               "previous": source_bucket(moto, "crash-moved", (previous, current), moved_allowed)}
    folder = tmp_path_factory.mktemp("crash-template")
    template_bucket = new_bucket(moto, "crash-tpl")
    config = config_module.load(write_config(
        folder / "config.yml", moto, old_source.bucket, template_bucket, folder / "fs",
        folder / "state.db"))
    state = StateStore(config.state_path)
    try:
        reports = run_policy(config, config.policies[0], state, RunOptions.from_config(config))
    finally:
        state.close()
    assert [(r.tags_replicated, r.tags_failed) for r in reports] == [(len(previous), 0)] * 2
    big_sizes = tuple(sorted({len(blob.data) for image in current.values() for blob in image.all_blobs()
                              if len(blob.data) > PART}))
    return World(sources, template_bucket, folder / "fs", folder / "state.db", big_sizes)


# -- one trial ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    seed: int
    kind: str
    start: str
    order: tuple[str, str]
    phase: str | None = None

    @property
    def server_side(self) -> bool:
        return self.kind == "s3-copy-part"


@dataclass
class Setup:
    folder: Path
    config: Path
    state: Path
    bucket: str
    fs_root: Path
    source: Source


def trial_for(seed: int) -> Trial:
    """The seed's kill kind, start and destination order (N comes from the calibration)."""
    kind = KINDS[(seed - 1) % len(KINDS)]
    start = STARTS[(seed - 1) // len(KINDS) % len(STARTS)]
    order = ("s3", "fs") if seed % 2 else ("fs", "s3")
    phase = random.Random(seed).choice(["before", "after"]) if kind == "current" else None
    return Trial(seed, kind, start, order, phase)


def prepare(moto, world: World, folder: Path, start: str, order=("s3", "fs"),
            server_side: bool = False) -> Setup:
    """Fresh destinations (and state store) for one run: empty, or the previous generation."""
    bucket = new_bucket(moto, "crash-dst")
    fs_root, state = folder / "fs", folder / "state.db"
    if start == "previous":
        client = raw_client(moto.url)
        template = keys(client, world.template_bucket)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda key: client.copy_object(
                Bucket=bucket, Key=key, CopySource={"Bucket": world.template_bucket, "Key": key}),
                template))
        shutil.copytree(world.template_fs, fs_root)  # copy2 keeps mtimes: the state's etags hold
        shutil.copy2(world.template_state, state)
    source = world.sources[start]
    config = write_config(folder / "config.yml", moto, source.bucket, bucket, fs_root, state,
                          order, server_side)
    return Setup(folder, config, state, bucket, fs_root, source)


def child_environment(**extra: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key != "REPLICATOR_CONFIG"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT),
                                                              environment.get("PYTHONPATH")]))
    return {**environment, **extra}


def launch(setup: Setup, plan: dict) -> tuple[subprocess.CompletedProcess, dict | None]:
    """``replicator sync --config F --json`` through the launcher with ``plan`` armed."""
    launcher = setup.folder / "launcher.py"
    launcher.write_text(LAUNCHER)
    record = setup.folder / f"record-{plan['kind']}.json"
    record.unlink(missing_ok=True)
    process = subprocess.run(
        [sys.executable, str(launcher), "sync", "--config", str(setup.config), "--json"],
        check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=PROJECT,
        env=child_environment(CRASH_PLAN=json.dumps(plan), CRASH_RECORD=str(record)))
    return process, json.loads(record.read_text()) if record.exists() else None


def replicator(setup: Setup, *args: str) -> subprocess.CompletedProcess:
    """``python -m replicator COMMAND --config F --json``, as an operator would run it."""
    return subprocess.run([sys.executable, "-m", "replicator", *args, "--config", str(setup.config),
                           "--json"], check=False, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, cwd=PROJECT, env=child_environment())


def drop_bucket(moto, bucket: str) -> None:
    client = raw_client(moto.url)
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        if page.get("Contents"):
            client.delete_objects(Bucket=bucket, Delete={
                "Objects": [{"Key": item["Key"]} for item in page["Contents"]]})
    client.delete_bucket(Bucket=bucket)


# -- calibration ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibration(moto, world, tmp_path_factory) -> dict[str, dict[str, int]]:
    """Events of every kind in one uninterrupted run from each start, by start and kind."""

    def count(start: str) -> dict[str, int]:
        folder = tmp_path_factory.mktemp(f"crash-calibration-{start}")
        setup = prepare(moto, world, folder, start)
        try:
            process, counted = launch(setup, {"kind": "count", "n": 0})
        finally:
            drop_bucket(moto, setup.bucket)
            shutil.rmtree(folder)
        assert process.returncode == 0 and counted, process.stderr
        # Each big blob streams into the S3 destination once, in 5 MiB parts; the route of
        # s3-copy-part copies the same blobs server-side in parts of the same size.
        assert counted.get("s3-part") == sum(-(-size // PART) for size in world.big_sizes)
        return {**counted, "s3-copy-part": counted["s3-part"]}

    with ThreadPoolExecutor(len(STARTS)) as pool:
        counts = dict(zip(STARTS, pool.map(count, STARTS)))
    print(f"\ncalibration, events per uninterrupted run: {counts}")
    return counts


def kill_number(seed: int, events: int) -> int:
    """The seed's N in 1..events. Runs differ by a few link writes (two tags of a repository
    may both write a layer link they share), so the last tenth is left out."""
    return 1 + random.Random(seed * 7919).randrange(max(1, events - events // 10))


# -- checks ---------------------------------------------------------------------------------


@dataclass
class ReaderView:
    tags_visible: int = 0
    tags_listed_only: int = 0
    """Tags with an index link and no current link: in a registry's tags/list, not servable."""
    blobs_hashed: int = 0
    links_checked: int = 0
    problems: list[str] = field(default_factory=list)


def reader_check(storage, allowed: dict[tuple[str, str], set[str]]) -> ReaderView:
    """What a reader of ``storage`` sees while nothing runs: every visible tag resolves
    completely, to an allowed digest; every blob key listed holds its digest's bytes; every
    link file a whole digest (the one its key names, but for tags' current links)."""
    view = ReaderView()
    visible = _visible_tags(storage)
    view.tags_visible = len(visible)
    view.problems += [f"dangling {d.kind} {d.repository}:{d.tag}: {d.detail}"
                      for d in verify_storage(storage, storage, visible).drift if d.kind in DANGLING_KINDS]
    listed = [info for prefix in (layout.BLOBS_PREFIX, layout.REPOSITORIES_PREFIX)
              for page in storage.list(prefix) for info in page]
    blobs, links, indexed = [], [], set()
    for info in listed:
        entry = layout.parse_key(info.key)
        if isinstance(entry, layout.TagIndex):
            indexed.add((entry.name, entry.tag))
        if isinstance(entry, layout.BlobData):
            blobs.append((info.key, entry.digest))
        elif isinstance(entry, layout.TagCurrent):
            links.append((info, allowed.get((entry.name, entry.tag), set())))
        elif entry is not None:
            links.append((info, {entry.digest}))
        elif "/_uploads/" not in info.key:
            view.problems.append(f"unexpected key {info.key}")

    def blob_problem(key: str, digest: str) -> str | None:
        hasher = hashlib.sha256()
        for chunk in storage.open(key):
            hasher.update(chunk)
        actual = "sha256:" + hasher.hexdigest()
        return None if actual == digest else f"partial or corrupt blob at {key}: hashes to {actual}"

    def link_problem(info, digests: set[str]) -> str | None:
        # An S3 object written in one PutObject has the MD5 of its bytes as its ETag: a link
        # whose ETag is the MD5 of an allowed digest holds exactly that digest. Any other one
        # (and every file of a filesystem) is read.
        if info.etag in {hashlib.md5(digest.encode(), usedforsecurity=False).hexdigest()
                         for digest in digests}:
            return None
        try:
            digest = layout.parse_link(storage.read(info.key))
        except layout.LayoutError as error:
            return f"partial link at {info.key}: {error}"
        return None if digest in digests else f"link {info.key} holds {digest}, not {digests}"

    with ThreadPoolExecutor(8) as pool:
        found = [pool.submit(blob_problem, *blob) for blob in blobs]
        found += [pool.submit(link_problem, *link) for link in links]
        view.problems += [problem for future in found if (problem := future.result())]
    view.blobs_hashed, view.links_checked = len(blobs), len(links)
    view.tags_listed_only = len(indexed - set(visible))
    return view


def fs_keys(root: Path) -> list[str]:
    prefix = root / layout.ROOT
    return sorted(str(path.relative_to(root)) for path in prefix.rglob("*") if path.is_file())


def assert_fs_identical(moto, source: Source, root: Path) -> None:
    """As ``tests.test_faults.assert_identical``, for a filesystem destination."""
    storage = FilesystemDriver(str(root))
    result = verify_storage(direct(moto, source.bucket), storage, source.tags, deep=True)
    assert result.drift == [] and result.tags_checked == len(source.tags) and result.bytes_hashed > 0
    expected = {key.removeprefix("registry/"): digest for key, digest in source.expected.items()}
    present = [key for key in fs_keys(root) if "/_uploads/" not in key]
    assert present == sorted(expected)
    differing = [key for key in present
                 if hashlib.sha256((root / key).read_bytes()).digest() != expected[key]]
    assert differing == []


def temp_files(root: Path) -> list[str]:
    temp = root / TEMP_DIR
    return sorted(os.listdir(temp)) if temp.exists() else []


def assert_converged(moto, setup: Setup) -> None:
    """Both destinations identical to the source, nothing left behind, the state store sound
    (it opens, and ``status --json`` reads both destinations as in sync)."""
    with ThreadPoolExecutor(2) as pool:
        status = pool.submit(replicator, setup, "status")
        identical = pool.submit(assert_identical, moto, setup.source.as_faults_source(), setup.bucket)
        assert_fs_identical(moto, setup.source, setup.fs_root)
        identical.result()
        status = status.result()
    assert leftover_uploads(moto, setup.bucket) == []
    assert temp_files(setup.fs_root) == []
    state = StateStore(setup.state)
    try:
        assert all(state.last_pass("crash", name, ok_only=True) for name in ("s3", "fs"))
    finally:
        state.close()
    assert status.returncode == 0, status.stderr
    destinations = json.loads(status.stdout)["destinations"]
    assert sorted((d["destination"], d["in_sync"], d["pending_tags"], d["failing_tags"])
                  for d in destinations) == [("fs", True, 0, 0), ("s3", True, 0, 0)]


# -- the trials -----------------------------------------------------------------------------


TOTALS: Counter = Counter()
KILLS: Counter = Counter()


@pytest.fixture(scope="module", autouse=True)
def totals():
    yield
    if KILLS:
        print(f"\ncrash totals: {KILLS.total()} kills, by kind {dict(sorted(KILLS.items()))}; "
              f"{TOTALS['reader_checks']} reader checks ({TOTALS['tags_seen']} visible tags "
              f"resolved, {TOTALS['blobs_hashed']} blob keys hashed, {TOTALS['links_checked']} "
              f"link files checked): corrupted or partial objects seen {TOTALS['problems']}; "
              f"tags with an index link but no current link {TOTALS['tags_listed_only']}; "
              f"left by the kills {TOTALS['uploads_after_kill']} multipart uploads and "
              f"{TOTALS['temp_after_kill']} temporary files, left after recovery "
              f"{TOTALS['leftovers']}; recovered identical {TOTALS['recovered']}")


def test_the_seeds_try_every_kill_point_from_every_start():
    trials = [trial_for(seed) for seed in range(1, 21)]
    assert {(trial.kind, trial.start) for trial in trials} >= {(k, s) for k in KINDS for s in STARTS}
    assert {trial.order for trial in trials} == {("s3", "fs"), ("fs", "s3")}
    assert {trial.phase for trial in trials if trial.kind == "current"} == {"before", "after"}


@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed{seed}")
def test_a_sync_killed_at_any_point_shows_no_partial_state_and_converges(
        moto, world, calibration, tmp_path, seed):
    trial = trial_for(seed)
    events = calibration[trial.start][trial.kind]
    assert events > 0, f"the calibration run saw no {trial.kind} event"
    n = kill_number(seed, events)
    plan = {"kind": trial.kind, "n": n, "phase": trial.phase,
            "fraction": random.Random(seed).uniform(0.05, 0.95)}
    setup = prepare(moto, world, tmp_path, trial.start, trial.order, trial.server_side)
    try:
        process, hit = launch(setup, plan)
        assert process.returncode == -signal.SIGKILL and hit, (
            f"{trial.kind} #{n} of {events} not reached: exit {process.returncode}: "
            f"{process.stderr[-2000:]}")
        KILLS[trial.kind] += 1
        print(f"\nseed {seed}: {trial.start} start, {'->'.join(trial.order)}, killed at "
              f"{trial.kind} #{n} of {events}{f' ({trial.phase})' if trial.phase else ''}: "
              f"{hit['detail']}")

        # While nothing runs: what a reader of each destination sees.
        destinations = {"s3": direct(moto, setup.bucket), "fs": FilesystemDriver(str(setup.fs_root))}
        with ThreadPoolExecutor(2) as pool:
            views = dict(zip(destinations, pool.map(reader_check, destinations.values(),
                                                    [setup.source.allowed] * 2)))
        uploads, temps = leftover_uploads(moto, setup.bucket), temp_files(setup.fs_root)
        for view in views.values():
            TOTALS.update(reader_checks=1, tags_seen=view.tags_visible,
                          tags_listed_only=view.tags_listed_only,
                          blobs_hashed=view.blobs_hashed, links_checked=view.links_checked,
                          problems=len(view.problems))
        TOTALS.update(uploads_after_kill=len(uploads), temp_after_kill=len(temps))
        assert {name: view.problems for name, view in views.items()} == {"s3": [], "fs": []}

        # The next run, a normal one, converges and leaves nothing behind.
        recovery = replicator(setup, "sync")
        assert recovery.returncode == 0, recovery.stdout[-3000:] + recovery.stderr[-3000:]
        document = json.loads(recovery.stdout)
        assert document["ok"] and [p["tags_failed"] for p in document["passes"]] == [0, 0]
        TOTALS.update(leftovers=len(leftover_uploads(moto, setup.bucket)) + len(temp_files(setup.fs_root)))
        assert_converged(moto, setup)
        TOTALS.update(recovered=1)
    finally:
        drop_bucket(moto, setup.bucket)
    shutil.rmtree(setup.fs_root, ignore_errors=True)
    copied = {p["destination"]: p["blobs_copied"] + p["manifests_copied"] for p in document["passes"]}
    seen = ", ".join(f"{name} {v.tags_visible} tags, {v.blobs_hashed} blobs, {v.links_checked} "
                     f"links whole" + (f", {v.tags_listed_only} tags listed only"
                                       if v.tags_listed_only else "")
                     for name, v in views.items())
    print(f"  the reader saw {seen}; the kill left {len(uploads)} uploads and {len(temps)} "
          f"temporary files; the next run copied {copied} and converged, nothing left behind")
