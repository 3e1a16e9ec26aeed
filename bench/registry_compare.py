"""The replicator against ``skopeo sync``, registry to registry over HTTP: one table.

Generates a registry with ``bench/registry_gen.py`` into a filesystem root served by Debian's
``docker-registry`` (A, on a free 127.0.0.1 port), then, run by run with the tools' order
alternating, copies it into fresh empty registries:

- B, by the replicator: A as a ``registry:`` source, B as a ``registry:`` destination,
  ``sync --json`` at ``--concurrency``;
- C, by skopeo 1.9.3: one ``skopeo sync --src docker --dest docker --all --preserve-digests``
  per repository of A (``127.0.0.1:A/team0/service-0`` into ``127.0.0.1:C/team0``, so that C
  has A's names), ``--concurrency`` of them at once. skopeo's ``sync`` has no parallelism flag
  (it copies one image at a time, up to 6 layers of it at once), so parallel processes are
  the equal parallelism it allows. Each run gets an empty blob-info cache of its own (a private
  mount over ``/var/lib/containers/cache``), so no run mounts what an earlier one pushed.

Every copy is verified: a manifest HEAD per tag at B and C answers A's digest. Then a pass with
nothing changed: the replicator (after one warm-up pass that fills its state store) and skopeo's
same ``sync`` again, alternating. Every registry logs its requests (``accesslog``), so both
tools' requests are counted at A and at their copy by the same measure, in the replicator's
kinds (list/get/head/put/copy/delete; ``GET /v2/`` as ``get``, an upload's POST, PATCH and
PUT as ``put``, a mount's POST as ``copy``); the replicator's own ``--json`` counts are shown
beside them, and so is the CPU the registries spent serving each tool (A's and its copy's,
from ``/proc``).

The replicator runs from this source tree. Where the environment sets
``PYTHONDONTWRITEBYTECODE`` (this project's machine does), every run compiles the project's
modules again; a package installed by pip has them compiled once. So each no-change run also
times the replicator with a bytecode cache of its own (``PYTHONPYCACHEPREFIX`` in the bench's
temporary directory, filled by a warm-up pass), as a row of its own.

    python bench/registry_compare.py [--size 200MiB] [--tags 300] [--repositories 20]
                                     [--runs 3] [--concurrency 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import registry_gen  # noqa: E402
from compare import (CACHED, Result, format_table, kinds, machine, median,  # noqa: E402
                     process_cpu, ratio, registry_arguments, replicator_environment, run)
from drivers.filesystem import FilesystemDriver  # noqa: E402
from drivers.registry.manifest import ACCEPT  # noqa: E402
from tests.registry import filesystem_storage, start_registry  # noqa: E402
from tests.services import Service  # noqa: E402

SKOPEO = shutil.which("skopeo") or "skopeo"
REGISTRY = shutil.which("docker-registry") or "docker-registry"
SKOPEO_CACHE = "/var/lib/containers/cache"
TOOLS = ("ours", "skopeo")
_ACCESS = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3}) (\d+)')


def request_kind(method: str, uri: str) -> str:
    """The replicator's request kind for one line of a registry's access log."""
    path = uri.partition("?")[0]
    if path.endswith("/tags/list") or path == "/v2/_catalog":
        return "list"
    if method == "DELETE":
        return "delete"
    if method == "POST" and "mount=" in uri:
        return "copy"
    if method in ("POST", "PATCH", "PUT"):
        return "put"
    if method == "HEAD" or "/blobs/uploads/" in path:
        return "head"
    return "get"


class Counted:
    """A registry on a filesystem root, logging every request; ``since()`` counts them."""

    def __init__(self, root: Path, logs: Path):
        self.root = root
        self.service: Service = start_registry(filesystem_storage(root), logs, accesslog=True)
        self.url = self.service.url
        self.host = self.url.removeprefix("http://")
        self._mark = 0
        self.mark()

    def mark(self) -> None:
        self._mark = self.service.log_path.stat().st_size

    def since(self) -> tuple[dict[str, int], int]:
        """Requests by kind logged since the last ``mark()``, and the body bytes of the blob
        GETs among them; marks again."""
        with open(self.service.log_path, "rb") as log:
            log.seek(self._mark)
            text = log.read().decode(errors="replace")
        self.mark()
        lines = list(_ACCESS.finditer(text))
        blob_bytes = sum(int(line[4]) for line in lines
                         if line[1] == "GET" and "/blobs/sha256:" in line[2])
        return dict(Counter(request_kind(line[1], line[2]) for line in lines)), blob_bytes

    def cpu(self) -> float:
        """User + system seconds the registry has used so far."""
        return process_cpu(self.service.process.pid)

    def stop(self) -> None:
        self.service.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def served(url: str, tags: dict[tuple[str, str], str], workers: int) -> list[str]:
    """Tags whose manifest HEAD at ``url`` does not answer the expected digest."""
    with httpx.Client(timeout=30, trust_env=False) as client:
        def wrong(item: tuple[tuple[str, str], str]) -> str | None:
            (repository, tag), digest = item
            answer = client.head(f"{url}/v2/{repository}/manifests/{tag}", headers={"Accept": ACCEPT})
            found = answer.headers.get("Docker-Content-Digest") if answer.status_code == 200 else None
            return None if found == digest else f"{repository}:{tag} {found or answer.status_code}"

        with ThreadPoolExecutor(workers) as pool:
            return [line for line in pool.map(wrong, tags.items()) if line]


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.work = work
        self.rows: list[list[str]] = []
        self.notes: list[str] = []
        self.registry: registry_gen.Registry | None = None
        self.source: Counted | None = None
        self.repositories: list[str] = []
        self.number = 0

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def fresh(self, label: str) -> Counted:
        self.number += 1
        return Counted(self.work / f"{label}-{self.number}", self.work / "logs")

    # -- the tools ---------------------------------------------------------------------------

    def ours(self, destination: Counted, state: Path, cached: bool = False) -> Result:
        """``sync --json``; ``cached``: with a bytecode cache of its own (see the docstring)."""
        config = self.work / f"ours-{destination.service.port}.yml"
        config.write_text(yaml.safe_dump({
            "state": {"path": str(state)},
            "concurrency": self.args.concurrency,
            "regions": {"a": {"registry": {"url": self.source.url}},
                        "b": {"registry": {"url": destination.url}}},
            "policies": [{"name": "bench", "source": "a", "destinations": ["b"]}]}))
        env = replicator_environment(self.work / "pycache" if cached else None)
        return run([sys.executable, "-m", "replicator", "sync", "--json", "--quiet",
                    "--config", str(config)], env)

    def skopeo(self, destination: Counted, cache: Path) -> Result:
        """One ``skopeo sync`` per repository, ``--concurrency`` at once (``xargs -P``), over a
        private blob-info cache; wall and CPU cover every skopeo process."""
        jobs = self.work / f"skopeo-{destination.service.port}.txt"
        jobs.write_text("".join(f"{self.source.host}/{name} {destination.host}/{name.rpartition('/')[0]}\n"
                                for name in self.repositories))
        cache.mkdir(exist_ok=True)
        argv = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" "$1" && shift && exec "$@"',
                str(cache), SKOPEO_CACHE,
                "xargs", "-a", str(jobs), "-L", "1", "-P", str(self.args.concurrency),
                SKOPEO, "--insecure-policy", "sync", "--src", "docker", "--dest", "docker", "--all",
                "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false"]
        return run(argv)

    # -- scenarios ---------------------------------------------------------------------------

    def generate(self) -> None:
        args = self.args
        root = self.work / "a"
        self.log(f"generating {registry_gen.human(args.size)}, {args.tags} tags, "
                 f"{args.repositories} repositories")
        self.registry = registry_gen.generate(FilesystemDriver(str(root)), size=args.size,
                                              tags=args.tags, repositories=args.repositories,
                                              seed=args.seed)
        self.repositories = sorted({name for name, _ in self.registry.tags})
        summary = self.registry.summary()
        self.notes.append(f"registry: {summary['repositories']} repositories, {summary['tags']} tags "
                          f"({summary['indexes']} multi-arch), {summary['blobs']} blobs "
                          f"({summary['layers']} layers, largest "
                          f"{registry_gen.human(summary['largest_layer'])}), "
                          f"{registry_gen.human(summary['bytes'])}")
        self.source = Counted(root, self.work / "logs")

    def measure(self, tool: str, destination: Counted, action) -> tuple[Result, dict, dict]:
        """``action()``'s result (its ``server_cpu`` the CPU seconds A and ``destination``
        spent meanwhile) and the requests A and ``destination`` logged during it."""
        self.source.mark()
        destination.mark()
        before = self.source.cpu() + destination.cpu()
        result = action()
        result.server_cpu = self.source.cpu() + destination.cpu() - before
        return result, self.source.since(), destination.since()

    def verify(self, tool: str, destination: Counted) -> None:
        wrong = served(destination.url, self.registry.tags, self.args.concurrency)
        if wrong:
            raise RuntimeError(f"{tool}: {len(wrong)} tags not served with A's digest, e.g. {wrong[:5]}")

    def initial(self) -> dict[str, tuple[Counted, Path]]:
        """Fresh copies, the tools' order alternating run by run; the last copy of each is
        kept (with ours' state store or skopeo's cache) for the no-change pass."""
        args, registry = self.args, self.registry
        walls: dict[str, list[float]] = {tool: [] for tool in TOOLS}
        cpus: dict[str, list[float]] = {tool: [] for tool in TOOLS}
        served_cpus: dict[str, list[float]] = {tool: [] for tool in TOOLS}
        counts: dict[str, tuple] = {}
        kept: dict[str, tuple[Counted, Path]] = {}
        try:
            for number in range(args.runs):
                for tool in TOOLS if number % 2 == 0 else TOOLS[::-1]:
                    self.log(f"initial copy, {tool}, run {number + 1}/{args.runs}")
                    destination = self.fresh(tool)
                    extra = self.work / f"{tool}-{self.number}.{'db' if tool == 'ours' else 'cache'}"
                    previous = kept.pop(tool, None)
                    kept[tool] = (destination, extra)
                    if previous is not None:
                        previous[0].stop()
                    if tool == "ours":
                        result, at_a, at_dst = self.measure(tool, destination,
                                                            lambda: self.ours(destination, extra))
                        report = result.report()
                        replicated = report["passes"][0]["tags_replicated"]
                        if not report["ok"] or replicated != len(registry.tags):
                            raise RuntimeError(f"ours replicated {replicated} of "
                                               f"{len(registry.tags)} tags: {result.stdout[-2000:]}")
                        counts["json"] = report["requests"]
                    else:
                        result, at_a, at_dst = self.measure(tool, destination,
                                                            lambda: self.skopeo(destination, extra))
                    self.verify(tool, destination)
                    walls[tool].append(result.wall)
                    cpus[tool].append(result.cpu)
                    served_cpus[tool].append(result.server_cpu)
                    counts[tool] = (at_a, at_dst)
        except BaseException:
            for destination, _ in kept.values():
                destination.stop()
            raise
        self.timing("initial", f"wall s (median of {args.runs})", walls, target=1.0)
        self.timing("initial", "CPU s user+sys (median)", cpus)
        self.timing("initial", "registries' CPU s serving it, A + copy (median)", served_cpus)
        self.requests("initial", counts)
        return kept

    def no_change(self, kept: dict[str, tuple[Counted, Path]]) -> None:
        args, tags = self.args, len(self.registry.tags)
        variants = (*TOOLS, CACHED)
        walls: dict[str, list[float]] = {tool: [] for tool in variants}
        cpus: dict[str, list[float]] = {tool: [] for tool in variants}
        served_cpus: dict[str, list[float]] = {tool: [] for tool in variants}
        counts: dict[str, tuple] = {}
        actions = {"ours": lambda: self.ours(*kept["ours"]),
                   CACHED: lambda: self.ours(*kept["ours"], cached=True),
                   "skopeo": lambda: self.skopeo(*kept["skopeo"])}
        self.log("no-change pass, ours, warm-up (fills its state store and its bytecode cache)")
        actions["ours"]()
        actions[CACHED]()
        for number in range(args.runs):
            for tool in (*TOOLS, CACHED) if number % 2 == 0 else (CACHED, *TOOLS[::-1]):
                self.log(f"no-change pass, {tool}, run {number + 1}/{args.runs}")
                copy = kept["skopeo" if tool == "skopeo" else "ours"][0]
                result, at_a, at_dst = self.measure(tool, copy, actions[tool])
                if tool != "skopeo":
                    report = result.report()
                    if report["passes"][0]["tags_unchanged"] != tags:
                        raise RuntimeError(f"ours: not a no-change pass: {result.stdout[-2000:]}")
                    counts["json"] = report["requests"]
                walls[tool].append(result.wall)
                cpus[tool].append(result.cpu)
                served_cpus[tool].append(result.server_cpu)
                if tool in TOOLS:
                    counts[tool] = (at_a, at_dst)
        for tool in TOOLS:
            self.verify(tool, kept[tool][0])
        self.timing("no change", f"wall s (median of {args.runs})", walls, target=0.5)
        self.timing("no change", "CPU s user+sys (median)", cpus)
        self.timing("no change", "registries' CPU s serving it, A + copy (median)", served_cpus)
        self.timing("no change", f"wall s, ours with its bytecode cached (median of {args.runs})",
                    walls, target=0.5, ours=CACHED)
        self.timing("no change", "CPU s, ours with its bytecode cached (median)", cpus, ours=CACHED)
        self.requests("no change", counts)

    # -- the table ---------------------------------------------------------------------------

    def timing(self, scenario: str, measure: str, samples: dict[str, list[float]],
               target: float | None = None, ours: str = "ours") -> None:
        values = {tool: median(found) for tool, found in samples.items()}
        values["ours"] = values[ours]
        met = "" if target is None else ("yes" if values["ours"] <= target * values["skopeo"] else "NO")
        self.rows.append([scenario, measure, f"{values['ours']:.2f}", f"{values['skopeo']:.2f}",
                          ratio(values["ours"], values["skopeo"]),
                          "" if target is None else f"<= {target:.1f}x skopeo", met])

    def requests(self, scenario: str, counts: dict[str, tuple]) -> None:
        """Rows of requests by kind at A and at the copy (access logs), blob bytes read from A,
        and ours' ``--json`` counts."""
        tags = len(self.registry.tags)
        for end, label in ((0, "at A"), (1, "at the copy")):
            (ours, _), (theirs, _) = counts["ours"][end], counts["skopeo"][end]
            total = (sum(ours.values()), sum(theirs.values()))
            self.rows.append([scenario, f"requests {label} l/g/h/p/c/d (access log)", kinds(ours),
                              kinds(theirs), ratio(*total), "", ""])
            self.rows.append([scenario, f"requests {label} per tag", f"{total[0] / tags:.2f}",
                              f"{total[1] / tags:.2f}", "", "", ""])
        read = (counts["ours"][0][1], counts["skopeo"][0][1])
        unique = self.registry.total_bytes - sum(len(m.data) for m in self.registry.manifests.values())
        self.rows.append([scenario, "blob bytes read from A / unique blob bytes",
                          f"{read[0] / unique:.4f}", f"{read[1] / unique:.4f}", "", "", ""])
        json_counts = counts["json"]
        self.rows.append([scenario, "ours' --json l/g/h/p/c/d, A / B",
                          f"{kinds(json_counts.get('a', {}))} / {kinds(json_counts.get('b', {}))}",
                          "", "", "", ""])

    def table(self) -> str:
        return format_table(["scenario", "measure", "ours", "skopeo", "ours/skopeo", "target", "met"],
                            self.rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    registry_arguments(parser, tags=300, repositories=20, peer="skopeo processes at once")
    args = parser.parse_args(argv)
    for tool, hint in ((SKOPEO, "apt-get install -y skopeo"),
                       (REGISTRY, "apt-get install -y docker-registry")):
        if not shutil.which(tool):
            parser.error(f"{Path(tool).name} is not installed ({hint})")

    print(machine(((SKOPEO, "--version"), (REGISTRY, "--version"))), flush=True)
    print(f"PYTHONDONTWRITEBYTECODE is {'set' if os.environ.get('PYTHONDONTWRITEBYTECODE') else 'not set'}; "
          f"load average {' '.join(f'{load:.1f}' for load in os.getloadavg())}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as folder:
        bench = Bench(args, Path(folder))
        bench.generate()
        try:
            kept = bench.initial()
            try:
                bench.no_change(kept)
            finally:
                for destination, _ in kept.values():
                    destination.stop()
        finally:
            bench.source.stop()
    print(f"flags: --size {registry_gen.human(args.size)} --tags {args.tags} --repositories "
          f"{args.repositories} --runs {args.runs} --concurrency {args.concurrency} --seed "
          f"{args.seed}; total {time.monotonic() - started:.0f} s; load average at the end "
          f"{' '.join(f'{load:.1f}' for load in os.getloadavg())}")
    for note in bench.notes:
        print(note)
    print(f"requests l/g/h/p/c/d = list/get/head/put/copy/delete, as each registry's access log "
          f"counts them; skopeo: {args.concurrency} `skopeo sync` processes at once, one per "
          f"repository")
    print(bench.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
