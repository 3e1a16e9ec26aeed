"""One-line progress displays on a terminal: ``sync``'s tags, blobs, bytes, rate and ETA; the
line ``wait`` redraws after each check."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import TextIO

from replicator.report import PassReport, human_size

REFRESH = 0.5


class Progress:
    """Redraws the current policy's line every ``REFRESH`` seconds until :meth:`close`: its
    passes into every destination (which run at once) added up."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._lock = threading.Lock()
        self._reports: list[PassReport] = []
        self._total = 0
        self._repositories = 0
        self._started = time.monotonic()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()

    def start_pass(self, report: PassReport, tags: list[tuple[str, str]]) -> None:
        with self._lock:
            if self._reports and self._reports[0].policy != report.policy:
                self._draw(final=True)
            if not self._reports:
                self._total, self._started = 0, time.monotonic()
            self._reports.append(report)
            self._total += len(tags)
            self._repositories = len({name for name, _ in tags})

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        with self._lock:
            if self._reports:
                self._draw(final=True)

    def _run(self) -> None:
        while not self._closed.wait(REFRESH):
            with self._lock:
                if self._reports:
                    self._draw(final=False)

    def _draw(self, final: bool) -> None:
        first = self._reports[0]
        counts: Counter[str] = Counter()
        for report in self._reports:
            counts.update(report.counts())
        done = counts["tags_replicated"] + counts["tags_unchanged"] + counts["tags_failed"]
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = counts["bytes_copied"] / elapsed
        eta = (self._total - done) * elapsed / done if done else None
        destinations = ", ".join(report.destination for report in self._reports)
        line = (f"{first.policy} -> {destinations}: {done}/{self._total} tags of "
                f"{self._repositories} repositories, {counts['blobs_copied']} blobs, "
                f"{human_size(counts['bytes_copied'])} ({human_size(int(rate))}/s)"
                + ("" if final or eta is None else f", ETA {eta:.0f}s"))
        redraw(self.stream, line, final)
        if final:
            self._reports = []


def redraw(stream: TextIO, line: str, final: bool = False) -> None:
    """Replace the terminal's current line with ``line``; ``final`` ends it."""
    stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
    stream.flush()
