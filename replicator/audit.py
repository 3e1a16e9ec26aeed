"""The audit trail: one JSON line per change a pass applied to a destination.

A line is appended (flushed and fsynced) as soon as its change is visible at the destination::

    {"seq": 7, "time": "2026-12-01T23:30:12.123Z", "policy": "primary-to-eu", "source":
     "primary", "destination": "eu", "repository": "org/app", "tag": "1.2", "action": "move",
     "old_digest": "sha256:...", "new_digest": "sha256:...", "bytes_copied": 31337,
     "pass_id": "5f0c...", "artifacts": []}

``action`` is ``create`` (the destination had no such tag), ``move`` or ``delete``;
``old_digest`` is ``null`` for a create and ``new_digest`` for a delete. ``seq`` numbers the
lines of one trail from 1, across rotations: shipping (:mod:`replicator.audit_shipping`) and
readers order and deduplicate by it. Lines carry names only (policies, regions, repositories,
tags, digests), never a URL or a configuration value, so no secret can appear in them.

The file at ``path`` is rotated when a line would start beyond ``max_size`` bytes: it becomes
``<path>.<seq of its first line, 12 digits>``. Rotated files older than ``keep`` are deleted,
except the newest (it carries the numbering on) and, when the trail is shipped, any holding
lines not shipped yet. Writers in several processes take an exclusive lock on
``<path>.lock``. Readers skip a line cut short by a crash mid-write.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from replicator.config import AuditLog

ACTIONS = ("create", "move", "delete")


@dataclass(frozen=True)
class Change:
    """One change applied to a destination, as the engine saw it."""

    policy: str
    source: str
    destination: str
    repository: str
    tag: str
    action: str
    old_digest: str | None
    new_digest: str | None
    bytes_copied: int
    pass_id: str
    artifacts: tuple[str, ...] = ()
    """Digests of the artifacts (signatures, attestations, SBOMs) that came with the change."""


def entry(change: Change, seq: int, now: float) -> dict:
    """The line's document for ``change`` (keys in the documented order)."""
    return {"seq": seq, "time": timestamp(now), "policy": change.policy, "source": change.source,
            "destination": change.destination, "repository": change.repository,
            "tag": change.tag, "action": change.action, "old_digest": change.old_digest,
            "new_digest": change.new_digest, "bytes_copied": change.bytes_copied,
            "pass_id": change.pass_id, "artifacts": list(change.artifacts)}


def timestamp(seconds: float) -> str:
    """UTC ISO 8601 with milliseconds, ``2026-12-01T23:30:12.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


class AuditWriter:
    """Appends changes to the trail of ``settings``; thread-safe, and safe across processes.
    ``append`` raises ``OSError`` when the line cannot be made durable."""

    def __init__(self, settings: AuditLog):
        self.settings = settings
        self.path = settings.path
        self._lock = threading.Lock()

    def append(self, change: Change) -> dict:
        """Append ``change`` durably; the line's document."""
        with self._lock, file_lock(self.path):
            self._rotate_if_full()
            line = entry(change, next_seq(self.path), time.time())
            data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                if _ends_cut(self.path):
                    data = b"\n" + data
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            return line

    def _rotate_if_full(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size < self.settings.max_size:
            return
        first = next(iter(_lines(self.path)), None)
        if first is not None:
            os.replace(self.path, _rotated_name(self.path, first["seq"]))
            _fsync_dir(self.path.parent)
        self._prune()

    def _prune(self) -> None:
        rotated = rotated_files(self.path)
        shipped = shipped_seq(self.path) if self.settings.region else None
        limit = time.time() - self.settings.keep
        for position, path in enumerate(rotated[:-1]):
            last_seq = int(rotated[position + 1].suffix[1:]) - 1
            if path.stat().st_mtime < limit and (shipped is None or last_seq < shipped):
                path.unlink()


@contextmanager
def file_lock(path: Path, suffix: str = ".lock") -> Iterator[None]:
    """An exclusive lock on ``<path><suffix>`` held for the block (across processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}{suffix}", os.O_WRONLY | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def trail_files(path: Path) -> list[Path]:
    """The trail's files, oldest first: rotated ones, then ``path`` if it exists."""
    return rotated_files(path) + ([path] if path.exists() else [])


def rotated_files(path: Path) -> list[Path]:
    return sorted(candidate for candidate in path.parent.glob(path.name + ".*")
                  if len(candidate.suffix) == 13 and candidate.suffix[1:].isdigit())


def entries(path: Path) -> Iterator[dict]:
    """Every line of the trail at ``path``, oldest first."""
    for file in trail_files(path):
        yield from _lines(file)


def raw_lines(path: Path, first_seq: int) -> Iterator[tuple[int, bytes]]:
    """``(seq, bytes of the line with its newline)`` for every complete line from
    ``first_seq`` on, oldest first; rotated files wholly before ``first_seq`` are not read."""
    files = trail_files(path)
    for position, file in enumerate(files):
        following = files[position + 1] if position + 1 < len(files) else path
        if following != path and int(following.suffix[1:]) <= first_seq:
            continue
        for document, line in _records(file):
            if document["seq"] >= first_seq:
                yield document["seq"], line


def next_seq(path: Path) -> int:
    """The number of the next line: one past the newest line of the trail (and never below
    what was shipped, should every file be gone)."""
    for file in reversed(trail_files(path)):
        last = _last_entry(file)
        if last is not None:
            return max(last["seq"] + 1, shipped_seq(path))
    return max(1, shipped_seq(path))


def shipped_seq(path: Path) -> int:
    """The first line not shipped yet, from the marker ``<path>.shipped`` (1 without one)."""
    try:
        return int(json.loads(Path(f"{path}.shipped").read_text())["next_seq"])
    except FileNotFoundError:
        return 1


def mark_shipped(path: Path, next_seq_to_ship: int) -> None:
    """Durably record that every line before ``next_seq_to_ship`` is shipped."""
    marker = Path(f"{path}.shipped")
    temporary = Path(f"{marker}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, json.dumps({"next_seq": next_seq_to_ship}).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, marker)
    _fsync_dir(marker.parent)


def history(path: Path, repository: str, tag: str | None = None,
            destination: str | None = None) -> list[dict]:
    """The changes recorded for ``repository`` (its ``tag`` only, if given; at ``destination``
    only, if given), oldest first."""
    return [line for line in entries(path) if line["repository"] == repository
            and (tag is None or line["tag"] == tag)
            and (destination is None or line["destination"] == destination)]


def recent(path: Path, limit: int) -> list[dict]:
    """The latest ``limit`` changes, newest first; reads files from the newest back only as
    far as needed."""
    found: list[dict] = []
    for file in reversed(trail_files(path)):
        if len(found) >= limit:
            break
        found = list(_lines(file)) + found
    return list(reversed(found))[:limit]


def history_text(lines: list[dict]) -> str:
    """One line per change for a terminal."""
    if not lines:
        return "no changes recorded"
    return "\n".join(
        f"{line['time']}  {line['action']:<6}  {line['repository']}:{line['tag']}  "
        f"{line['source']} -> {line['destination']} ({line['policy']})  "
        f"{line['old_digest'] or '-'} -> {line['new_digest'] or '-'}  "
        f"{line['bytes_copied']} bytes  pass {line['pass_id']}" for line in lines)


def _lines(file: Path) -> Iterator[dict]:
    for document, _ in _records(file):
        yield document


def _records(file: Path) -> Iterator[tuple[dict, bytes]]:
    """The file's complete, well-formed lines, parsed and as bytes (a line cut short by a
    crash is skipped)."""
    try:
        handle = file.open("rb")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            document = _parse(line) if line.endswith(b"\n") else None
            if document is not None:
                yield document, line


def _parse(line: bytes) -> dict | None:
    try:
        document = json.loads(line)
    except ValueError:
        return None
    return document if isinstance(document, dict) and isinstance(document.get("seq"), int) else None


def _last_entry(file: Path) -> dict | None:
    """The file's last complete line, read from its end."""
    with file.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        size = 4096
        while True:
            start = max(0, end - size)
            handle.seek(start)
            pieces = handle.read(end - start).split(b"\n")[:-1]
            for piece in reversed(pieces if start == 0 else pieces[1:]):
                parsed = _parse(piece)
                if parsed is not None:
                    return parsed
            if start == 0:
                return None
            size *= 4


def _ends_cut(path: Path) -> bool:
    """Whether the file's last byte is not a newline (a write cut short by a crash)."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def _rotated_name(path: Path, first_seq: int) -> Path:
    return path.with_name(f"{path.name}.{first_seq:012d}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
