"""The floor of a durable filesystem copy: the replicator and rclone against the cheapest copies
of the same tree Python can make, with and without durability.

Generates a registry with ``bench/registry_gen.py`` on a filesystem, then, run by run and in an
order that rotates, copies it into a fresh empty directory with each of:

- ``replicator``: ``replicator sync`` at ``--concurrency`` (every blob sha256-verified, an
  ``fsync`` of each file before its rename);
- ``rclone``: ``rclone copy --transfers N --checkers 2N`` (its local backend syncs nothing);
- ``floor_copy.py`` (every file read, sha256-hashed, written beside its destination under a
  temporary name and renamed into place) as ``fsync each`` in one thread and in ``N``
  threads, as ``syncfs per B`` (one ``syncfs(2)`` per ``--batch`` files, before their renames,
  one thread) and as ``no sync`` (one thread).

Before each run it runs ``sync`` and waits ``--settle`` seconds, so that the writeback of one run
does not land in the next (on this project's machine a run's time doubled without it), and
it removes the copies only at the end (this machine's filesystem, mounted with ``discard``,
charges a mass deletion to the writes after it). It
prints, for each, the medians of ``--runs`` of wall seconds, CPU seconds (user + system,
``wait4``) and context switches (voluntary and not), with the wall and CPU ratios to rclone's,
and the machine.

    python bench/fs_floor.py [--size 128MiB] [--tags 750] [--repositories 50] [--runs 3]
                             [--concurrency 8] [--seed 0] [--batch 128] [--settle 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import registry_gen  # noqa: E402
from compare import (RCLONE, Result, format_table, machine, median,  # noqa: E402
                     rclone_environment, registry_arguments, replicator_environment, run)
from drivers.filesystem import FilesystemDriver  # noqa: E402

MIB = 1024 * 1024
FLOOR_COPY = Path(__file__).resolve().parent / "floor_copy.py"


def tools(concurrency: int, batch: int) -> dict[str, tuple[str, int, int] | None]:
    """Each copy by its label: ``floor_copy.py``'s mode, threads and batch, or ``None`` for the
    replicator and rclone."""
    return {"replicator": None, "rclone": None,
            "fsync each, 1 thread": ("fsync", 1, 1),
            f"fsync each, {concurrency} threads": ("fsync", concurrency, 1),
            f"syncfs per {batch}, 1 thread": ("syncfs", 1, batch),
            "no sync, 1 thread": ("none", 1, 1)}


def copy(label: str, floor: tuple[str, int, int] | None, source: Path, target: Path,
         concurrency: int) -> Result:
    """One copy of ``source`` into the new directory ``target``."""
    target.mkdir(parents=True)
    if label == "replicator":
        config = target.parent / f"{target.name}.yml"
        config.write_text(yaml.safe_dump({
            "state": {"path": str(target.parent / f"{target.name}.db")},
            "concurrency": concurrency, "server_side_copy": False,
            "regions": {"src": {"storage": {"filesystem": {"rootdirectory": str(source)}}},
                        "dst": {"storage": {"filesystem": {"rootdirectory": str(target)}}}},
            "policies": [{"name": "floor", "source": "src", "destinations": ["dst"]}]}))
        return run([sys.executable, "-m", "replicator", "sync", "--quiet", "--config", str(config)],
                   replicator_environment())
    if label == "rclone":
        return run([RCLONE, "copy", str(source), str(target), "--config", "/dev/null",
                    "--transfers", str(concurrency), "--checkers", str(2 * concurrency)],
                   rclone_environment())
    mode, threads, batch = floor
    return run([sys.executable, "-I", "-S", str(FLOOR_COPY), mode, str(source), str(target),
                str(threads), str(batch)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    registry_arguments(parser, tags=750, repositories=50, peer="rclone's --transfers")
    parser.set_defaults(size=128 * MIB)
    parser.add_argument("--batch", type=int, default=128, help="files per syncfs (default 128)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds to wait after sync before each run (default 3)")
    args = parser.parse_args(argv)
    copies = tools(args.concurrency, args.batch)
    with tempfile.TemporaryDirectory(prefix="fs-floor-") as work:
        source = Path(work) / "source"
        registry = registry_gen.generate(FilesystemDriver(str(source)), size=args.size,
                                         tags=args.tags, repositories=args.repositories,
                                         seed=args.seed)
        summary = registry.summary()
        files = sum(1 for path in source.rglob("*") if path.is_file())
        print(f"registry: {summary['repositories']} repositories, {summary['tags']} tags, "
              f"{summary['blobs']} blobs, {summary['bytes'] / MIB:.1f} MiB, {files} files",
              flush=True)
        results: dict[str, list[Result]] = {label: [] for label in copies}
        for number in range(args.runs):
            labels = list(copies)
            shift = number % len(labels)
            for label in labels[shift:] + labels[:shift]:
                target = Path(work) / f"run-{number}" / label.replace(" ", "-").replace(",", "")
                subprocess.run(["sync"], check=True)
                time.sleep(args.settle)
                result = copy(label, copies[label], source, target, args.concurrency)
                results[label].append(result)
                print(f"run {number + 1}: {label}: {result.wall:.2f} s, CPU {result.cpu:.2f} s, "
                      f"{result.switches} context switches", flush=True)
        walls = {label: median([r.wall for r in runs]) for label, runs in results.items()}
        cpus = {label: median([r.cpu for r in runs]) for label, runs in results.items()}
        rows = [[label, f"{walls[label]:.2f} s", f"{walls[label] / walls['rclone']:.2f}x",
                 f"{cpus[label]:.2f} s", f"{cpus[label] / cpus['rclone']:.2f}x",
                 f"{median([r.switches for r in results[label]]):,.0f}"] for label in copies]
        print(format_table(["copy", "wall", "/ rclone", "CPU", "/ rclone", "context switches"], rows))
        print(f"medians of {args.runs} runs; " + machine())
        print("removing the copies", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
