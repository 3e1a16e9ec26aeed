"""The cheapest copies of a directory tree that Python can make: the floor under the replicator.

    python -I -S bench/floor_copy.py MODE SOURCE DESTINATION THREADS BATCH

Copies every regular file below ``SOURCE`` to the same path below ``DESTINATION``: reads it
whole, hashes it with sha256, writes it to a temporary name beside its destination and renames
it into place, as a registry's writes need (bytes on disk before a name refers to them).
``MODE`` says how the bytes are made durable before the rename:

- ``fsync``: an ``fsync`` of each file, by ``THREADS`` threads (1: in the main thread);
- ``syncfs``: in the main thread, ``BATCH`` files written, one ``syncfs(2)`` of the
  destination's filesystem, then their renames;
- ``none``: no sync at all (what rclone's local backend does), in the main thread.

It prints the number of files copied and of durability calls made. Run by ``fs_floor.py``.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import sys
from concurrent.futures import ThreadPoolExecutor


def files(source: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(directory, name), source)
                  for directory, _, names in os.walk(source) for name in names)


class Copier:
    def __init__(self, source: str, destination: str):
        self.source, self.destination = source, destination
        self.numbers = itertools.count()

    def write(self, relative: str) -> tuple[int, str, str]:
        """The file's bytes, hashed, in a new temporary file beside its destination: its
        descriptor, temporary path and final path."""
        with open(os.path.join(self.source, relative), "rb") as file:
            data = file.read()
        hashlib.sha256(data).digest()
        final = os.path.join(self.destination, relative)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        temp = f"{final}.{next(self.numbers)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return fd, temp, final

    def fsynced(self, relative: str) -> None:
        fd, temp, final = self.write(relative)
        os.fsync(fd)
        os.close(fd)
        os.replace(temp, final)

    def unsynced(self, relative: str) -> None:
        fd, temp, final = self.write(relative)
        os.close(fd)
        os.replace(temp, final)

    def batched(self, batch: list[str]) -> None:
        written = [self.write(relative) for relative in batch]
        if ctypes.CDLL(None, use_errno=True).syncfs(written[0][0]) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
        for fd, temp, final in written:
            os.close(fd)
            os.replace(temp, final)


def main(argv: list[str]) -> int:
    mode, source, destination, threads, batch = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    copier = Copier(source, destination)
    todo = files(source)
    if mode == "fsync" and threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(copier.fsynced, todo))
    elif mode == "fsync":
        for relative in todo:
            copier.fsynced(relative)
    elif mode == "syncfs":
        for start in range(0, len(todo), batch):
            copier.batched(todo[start:start + batch])
    elif mode == "none":
        for relative in todo:
            copier.unsynced(relative)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    syncs = {"fsync": len(todo), "syncfs": -(-len(todo) // batch), "none": 0}[mode]
    print(f"{len(todo)} files, {syncs} durability calls")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
