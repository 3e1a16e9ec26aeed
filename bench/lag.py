"""Push-to-pullable lag of `replicator serve`, with the registry's webhook and with the schedule
only; and the storage requests of a no-change pass and of a one-tag-moved pass.

The real parts, each started here on a free 127.0.0.1 port and stopped at the end: moto
(buckets A and B), docker-registry A on bucket A (notifying the service, or not), read-only
docker-registry B on bucket B, `replicator serve` between the buckets, skopeo pushing to A.

A push's lag runs from the moment registry A serves the new tag to the moment registry B serves
it with the same digest (both polled with HEAD every 20 ms). Each push is a new tag. In the
schedule-only run each push waits a random part of the interval first, so pushes do not fall
in step with the schedule.

    python bench/lag.py [--pushes 20] [--interval 10s] [--debounce 1s]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replicator import sample_images as si  # noqa: E402
from replicator.config import duration  # noqa: E402
from tests import registry as reg  # noqa: E402
from tests.services import start_moto  # noqa: E402
from tests.test_e2e_serve import Deployment  # noqa: E402
from tests.test_e2e_sync import run_cli  # noqa: E402

REPOSITORY = "bench/app"
POLL = 0.02
REQUEST_KINDS = ("list", "get", "head", "put", "copy", "delete")
BASE = si.layer({"etc/os-release": b"ID=bench\n"})


def served_digest(registry_url: str, repository: str, tag: str) -> str | None:
    request = urllib.request.Request(f"{registry_url}/v2/{repository}/manifests/{tag}",
                                     method="HEAD", headers={"Accept": ", ".join(reg.MANIFEST_TYPES)})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError:
        return None


def first_served(registry_url: str, tag: str, digest: str, deadline: float) -> float:
    """The monotonic time at which the registry first serves ``tag`` at ``digest``."""
    while served_digest(registry_url, REPOSITORY, tag) != digest:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{registry_url} did not serve {REPOSITORY}:{tag} in time")
        time.sleep(POLL)
    return time.monotonic()


def push_lags(deployment: Deployment, label: str, pushes: int, bound: float,
              jitter: float = 0.0) -> list[float]:
    lags = []
    randomness = random.Random(0)
    for number in range(pushes):
        time.sleep(randomness.uniform(0, jitter))
        tag = f"{label}-{number}"
        image = si.image([BASE, si.layer({"srv/app": f"{label} push {number}\n".encode()})])
        deployment.push(REPOSITORY, tag, image)
        deadline = time.monotonic() + bound
        pushed = first_served(deployment.source.url, tag, image.digest, deadline)
        lags.append(first_served(deployment.replica.url, tag, image.digest, deadline) - pushed)
    return lags


def sync_requests(deployment: Deployment) -> dict[str, dict[str, int]]:
    """Run `replicator sync --json` on the deployment's config; its request counts."""
    result = run_cli(deployment.replicator.config_path)
    if result.returncode != 0:
        raise RuntimeError(f"sync exited {result.returncode}: {result.stderr[-2000:]}")
    return json.loads(result.stdout)["requests"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def lag_row(name: str, lags: list[float]) -> list[str]:
    return [name, str(len(lags)), f"{statistics.median(lags):.2f}", f"{percentile(lags, 0.95):.2f}",
            f"{max(lags):.2f}", "", ""]


def request_row(name: str, requests: dict[str, dict[str, int]]) -> list[str]:
    counts = ["/".join(str(requests[region][kind]) for kind in REQUEST_KINDS)
              for region in ("primary", "replica")]
    return [name, "1", "", "", "", *counts]


def table(rows: list[list[str]]) -> str:
    header = ["scenario", "runs", "p50 s", "p95 s", "max s",
              "primary " + "/".join(REQUEST_KINDS), "replica " + "/".join(REQUEST_KINDS)]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=20, help="pushes per mode (default 20)")
    parser.add_argument("--interval", default="10s",
                        help="the schedule of the schedule-only run (default 10s)")
    parser.add_argument("--debounce", default="1s", help="server.debounce (default 1s)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-lag-") as workdir:
        work = Path(workdir)
        moto = start_moto(work)
        try:
            rows = []
            deployment = Deployment(moto.url, work / "webhook", webhook=True, interval="1h",
                                    debounce=args.debounce)
            try:
                lags = push_lags(deployment, "webhook", args.pushes, bound=60)
            finally:
                deployment.stop()
            rows.append(lag_row(f"push to pullable, webhook (debounce {args.debounce})", lags))

            deployment = Deployment(moto.url, work / "schedule", webhook=False,
                                    interval=args.interval, debounce=args.debounce)
            try:
                interval = duration(args.interval, "--interval")
                lags = push_lags(deployment, "schedule", args.pushes, bound=interval + 60,
                                 jitter=interval)
                deployment.replicator.stop()  # no pass of its own from here on
                unchanged = sync_requests(deployment)
                deployment.push(REPOSITORY, "schedule-0", si.image([BASE, si.layer({"moved": b"1"})]))
                moved = sync_requests(deployment)
            finally:
                deployment.stop()
            rows.append(lag_row(f"push to pullable, schedule only ({args.interval})", lags))
            rows.append(request_row(f"sync, no change ({args.pushes} tags)", unchanged))
            rows.append(request_row("sync, one tag moved", moved))
        finally:
            moto.stop()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
