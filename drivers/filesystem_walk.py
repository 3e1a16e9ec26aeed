"""The files below a directory in byte order of their keys: the filesystem driver's listing,
walked in the caller's process (:func:`walk`) or in a child process of its own.

Run as a script, ``python -I -S filesystem_walk.py DIRECTORY PREFIX LEFT_OUT``, it writes to
standard output, for each file, three fields each ended by a NUL byte: the key (``PREFIX``
and the path below ``DIRECTORY``; UTF-8, names that are no UTF-8 as surrogate escapes
encode them), the size and the modification time in nanoseconds. It walks ahead of its
reader by up to ``LEAD`` bytes of output held in its own memory, then waits for the reader.
It exits 0 when every file is written or its reader is gone; on an ``OSError`` it writes ``errno`` and the key of
the directory that failed, NUL-ended, to standard error and exits 3. It imports nothing
outside the standard library, so the interpreter's ``-I -S`` start-up is all it costs.
"""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Iterator

LEAD = 8 << 20
"""Bytes of output a child walks ahead of its reader."""

WALK_FAILED = 3
"""A child's exit status when the walk met an ``OSError``."""

_BATCH = 1000


class WalkError(OSError):
    """An ``OSError`` of the walk, with ``key``: the key of the directory it met it in."""

    def __init__(self, error: OSError, key: str):
        super().__init__(error.errno, error.strerror)
        self.key = key


def _byte_order(entry: os.DirEntry) -> str:
    """Where the entry's key sorts among its directory's: UTF-8 keeps code point order, so the
    name (a directory's with the ``/`` its keys go on with) sorts as its bytes do."""
    return entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name


def entries(directory: str, key: str) -> list[os.DirEntry]:
    """The directory's entries in byte order of their keys; none if it is gone. Raises
    :class:`WalkError`."""
    try:
        with os.scandir(directory) as scan:
            return sorted(scan, key=_byte_order)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as error:
        raise WalkError(error, key) from None


def walk(directory: str, prefix: str, left_out: str) -> Iterator[tuple[str, os.stat_result]]:
    """Each regular file below ``directory`` as its key (``prefix`` and its path below
    ``directory``) and its ``lstat``, in byte order of the keys. Symbolic links and the
    directory whose key is ``left_out`` are skipped, and a file gone before its ``lstat``.
    Depth first, from an explicit stack: a registry's keys lie ten directories deep, and a
    recursive generator would pass each entry up through every level. Raises
    :class:`WalkError`."""
    stack = [(iter(entries(directory, prefix)), prefix)]
    while stack:
        found, base = stack[-1]
        for entry in found:
            key = base + entry.name
            if entry.is_dir(follow_symlinks=False):
                if key != left_out:
                    stack.append((iter(entries(entry.path, key + "/")), key + "/"))
                    break
            elif entry.is_file(follow_symlinks=False):
                try:
                    yield key, entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                except OSError as error:
                    raise WalkError(error, base) from None
        else:
            stack.pop()


def _send(fd: int, pending: bytearray, wait: bool) -> None:
    """Write what the pipe at ``fd`` (non-blocking) takes of ``pending``; with ``wait``,
    all of it."""
    while pending:
        try:
            del pending[:os.write(fd, pending)]
        except BlockingIOError:
            if not wait:
                return
            select.select([], [fd], [])


def main(argv: list[str]) -> int:
    directory, prefix, left_out = argv
    fd = sys.stdout.fileno()
    os.set_blocking(fd, False)
    pending = bytearray()
    batch: list[str] = []
    try:
        for key, st in walk(directory, prefix, left_out):
            batch.append(f"{key}\0{st.st_size}\0{st.st_mtime_ns}\0")
            if len(batch) == _BATCH:
                pending += "".join(batch).encode("utf-8", "surrogateescape")
                batch.clear()
                _send(fd, pending, len(pending) > LEAD)
        pending += "".join(batch).encode("utf-8", "surrogateescape")
        _send(fd, pending, True)
    except WalkError as error:
        os.write(sys.stderr.fileno(),
                 f"{error.errno}\0{error.key}\0".encode("utf-8", "surrogateescape"))
        return WALK_FAILED
    except BrokenPipeError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
