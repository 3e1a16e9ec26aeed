"""Objects as files under a root directory, laid out as Distribution's filesystem driver does.

A key is a path relative to the root. New content is written to a private temporary area,
``<root>/.replicator-tmp/``, synced, and renamed into place, so readers see the old file or
the new one. Symbolic links are never listed, and a key that resolves outside the root is an
``InvalidKey``; a write or delete of a key that is itself a symbolic link replaces or removes
the link, never its target.

Distribution 2.8 and 3.x lay files out alike (``fullPath``: the path joined to
``rootdirectory``). 2.8's ``PutContent`` rewrites a file in place; 3.x's writes
``<path>.<uuid>.tmp`` beside it and renames it over, so a listing may show such siblings for a
moment: they are no registry key and are never replicated. Neither version looks outside
``docker/``, so this driver's temporary area is invisible to both.

A listing walks the tree depth first (:mod:`drivers.filesystem_walk`). One taken ahead
(:meth:`FilesystemDriver.list_ahead`, as a pass does for each region's full listing) walks in
a child process: in a registry's tree nearly every file lies in directories of its own, so a
walk is mostly system calls, and walks in processes of their own run on as many cores as
there are, beside the caller.

Durability is at least Distribution's own. Its filesystem driver
(``registry/storage/driver/filesystem/driver.go`` at v2.8.3) fsyncs a file's bytes when a
writer commits or closes (``fileWriter.Commit``: flush, then ``File.Sync``), ``PutContent``
included, and moves an upload into place with ``MkdirAll`` and a rename, syncing no directory.
This driver fsyncs every file's bytes before its rename, so a blob is on disk before any link
that refers to it is written and links before the tag's ``current/link`` (callers write in
that order). Like Distribution, it syncs no directory: on a journaling filesystem (ext4's
jbd2, XFS's log) a rename is committed in order with the metadata changes around it, and a
file's fsync forces every change logged before it, so the sync of a link also makes durable
the names of the blobs and links written before it.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat as stat_mode
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TypeVar

from drivers import filesystem_walk
from drivers.base import (CHUNK_SIZE, ChunkedWriter, ObjectInfo, StorageDriver, check_delimiter,
                          check_key, check_prefix, common_prefix)
from drivers.errors import AccessDenied, ConfigError, InvalidKey, NotFound, StorageError

DEFAULT_ROOT = "/var/lib/registry"
TEMP_DIR = ".replicator-tmp"
PAGE_SIZE = 1000
REMEMBERED_DIRECTORIES = 4096

T = TypeVar("T")

_NOT_FOUND = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR})
_DENIED = frozenset({errno.EACCES, errno.EPERM})


def _storage_error(action: str, key: str, error: OSError) -> StorageError:
    kind = (NotFound if error.errno in _NOT_FOUND else
            AccessDenied if error.errno in _DENIED else StorageError)
    return kind(f"filesystem {action} {key!r}: {error.strerror or error}")


@contextmanager
def _os_errors(action: str, key: str) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        raise _storage_error(action, key, error) from None


def _info(key: str, size: int, mtime_ns: int) -> ObjectInfo:
    return ObjectInfo(key, size, f"{size}-{mtime_ns}", mtime_ns / 1e9)


def _child_objects(child: subprocess.Popen, prefix: str) -> Iterator[ObjectInfo]:
    """The objects a walk's child process writes (:mod:`drivers.filesystem_walk`). Raises
    ``StorageError`` as the walk failed, or if the child ended without finishing."""
    fd = child.stdout.fileno()
    fields: list[bytes] = []
    tail = b""
    while chunk := os.read(fd, CHUNK_SIZE):
        parts = chunk.split(b"\0")
        parts[0] = tail + parts[0]
        tail = parts.pop()
        fields += parts
        whole = len(fields) - len(fields) % 3
        for i in range(0, whole, 3):
            yield _info(fields[i].decode("utf-8", "surrogateescape"), int(fields[i + 1]),
                        int(fields[i + 2]))
        del fields[:whole]
    status = child.wait()
    if status == filesystem_walk.WALK_FAILED:
        number, key = child.stderr.read().split(b"\0")[:2]
        error = OSError(int(number), os.strerror(int(number)))
        raise _storage_error("list", key.decode("utf-8", "surrogateescape"), error)
    if status != 0 or tail or fields:
        raise StorageError(f"filesystem list {prefix!r}: the walk's process ended with status "
                           f"{status} before the end")


class _ChildPages(Iterator[list[ObjectInfo]]):
    """Listing pages read from a walk's child process, which is stopped once they are
    exhausted, fail or are closed (or dropped)."""

    def __init__(self, pages: Iterator[list[ObjectInfo]], child: subprocess.Popen):
        self._pages = pages
        self._child = child

    def __next__(self) -> list[ObjectInfo]:
        try:
            return next(self._pages)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._pages.close()
        if self._child.returncode is None:
            self._child.kill()
            self._child.wait()
        self._child.stdout.close()
        self._child.stderr.close()

    __del__ = close


def _publish(temp: str, path: str) -> None:
    """Rename ``temp`` to ``path``, recreating parents a concurrent delete may have removed."""
    parent = os.path.dirname(path)
    while True:
        try:
            _make_directory(parent)
            os.replace(temp, path)
            break
        except FileNotFoundError:
            if not os.path.exists(temp):
                raise


def _make_directory(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)`` in one ``mkdir`` when only ``path`` itself may be
    missing, as for nearly every key (makedirs first probes each parent)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)


class FilesystemDriver(StorageDriver):
    """Files under ``root``; see the module docstring. Errors as :class:`StorageDriver` states."""

    kind = "filesystem"

    def __init__(self, root: str) -> None:
        super().__init__()
        self.root = os.path.realpath(root)
        self._temp = os.path.join(self.root, TEMP_DIR)
        self._temp_prefix = uuid.uuid4().hex
        self._temp_numbers = itertools.count()
        self._real_directories: set[str] = set()

    @classmethod
    def from_config(cls, params: dict) -> FilesystemDriver:
        for name in params:
            if name not in ("rootdirectory", "maxthreads"):
                raise ConfigError(str(name), "unknown parameter")
        root = params.get("rootdirectory") or DEFAULT_ROOT
        if not isinstance(root, str):
            raise ConfigError("rootdirectory", "must be a path")
        threads = params.get("maxthreads")
        if threads is not None and (isinstance(threads, bool) or not str(threads).isdigit()):
            raise ConfigError("maxthreads", "must be a positive integer")
        return cls(root)

    def describe(self) -> str:
        return f"filesystem:{self.root}"

    def _temp_path(self) -> str:
        """A new name in the temporary area: unique across processes by the driver's random
        prefix, across its writers by a counter (no random draw per file)."""
        return os.path.join(self._temp, f"{self._temp_prefix}-{next(self._temp_numbers)}")

    def _path(self, key: str, follows: bool = True) -> str:
        """The key's path, checked to stay below the root. ``follows``: whether the caller's
        operation follows a symbolic link at the key itself, as a read does; a rename or an
        unlink acts on the link, so for those only the key's directories are checked."""
        check_key(key)
        if key.split("/", 1)[0] == TEMP_DIR:
            raise InvalidKey(f"invalid key {key!r}: {TEMP_DIR} is the driver's temporary area")
        path = os.path.join(self.root, key)
        checked = path if follows else os.path.dirname(path)
        if (not self._free_of_symlinks(checked)
                and os.path.commonpath([self.root, os.path.realpath(checked)]) != self.root):
            raise InvalidKey(f"invalid key {key!r}: resolves outside {self.root}")
        return path

    def _free_of_symlinks(self, path: str) -> bool:
        """Whether neither ``path`` nor any of its directories below the root is a symbolic link
        (missing ones are not). Directories found real are remembered, a bounded number, so a
        key usually costs one ``lstat`` of its own new directory instead of a ``realpath`` of
        every component; only a key that passes through a symbolic link is resolved in full."""
        unchecked = []
        candidate = path
        while candidate != self.root and candidate not in self._real_directories:
            try:
                mode = os.lstat(candidate).st_mode
                if stat_mode.S_ISLNK(mode):
                    return False
                if stat_mode.S_ISDIR(mode):
                    unchecked.append(candidate)
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError:
                return False
            candidate = os.path.dirname(candidate)
        if len(self._real_directories) + len(unchecked) > REMEMBERED_DIRECTORIES:
            self._real_directories.clear()
        self._real_directories.update(unchecked)
        return True

    def list(self, prefix: str = "") -> Iterator[list[ObjectInfo]]:
        check_prefix(prefix)
        return self._pages(self._top(prefix), lambda top: self._walk(top, prefix))

    def list_ahead(self, prefix: str = "") -> Iterator[list[ObjectInfo]]:
        """As :meth:`list`, from a walk in a child process (:mod:`drivers.filesystem_walk`)
        that starts now, on a core of its own, and runs ahead of the caller by a bounded
        amount; the child is stopped when the pages are exhausted or closed. Where no child
        can start, as :meth:`list`."""
        check_prefix(prefix)
        top = self._top(prefix)
        if top is not None and sys.executable:
            argv = [sys.executable, "-I", "-S", filesystem_walk.__file__, top, prefix, TEMP_DIR]
            try:
                child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)
            except OSError:
                pass
            else:
                return _ChildPages(self._pages(top, lambda _: _child_objects(child, prefix)),
                                   child)
        return self.list(prefix)

    def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> Iterator[list[str]]:
        """As :meth:`StorageDriver.list_prefixes`, from a walk of the directories below
        ``prefix`` that stops at each entry whose path holds ``delimiter``; counted, as
        :meth:`list` is, one ``list`` per page."""
        check_prefix(prefix)
        check_delimiter(delimiter)
        return self._pages(self._top(prefix),
                           lambda top: self._prefixes(top, prefix, prefix, delimiter))

    def _top(self, prefix: str) -> str | None:
        """The directory of a checked prefix's keys; ``None`` for the temporary area's or one
        that passes through a symbolic link, which hold no key."""
        top = os.path.normpath(os.path.join(self.root, prefix))
        if prefix.startswith(TEMP_DIR + "/") or os.path.realpath(top) != top:
            return None
        return top

    def _pages(self, top: str | None, walk: Callable[[str], Iterator[T]]) -> Iterator[list[T]]:
        """Pages of ``PAGE_SIZE`` of what ``walk`` yields from ``top`` (a prefix's directory,
        :meth:`_top`; ``None``: nothing), one ``list`` request counted per page (and one for a
        listing that finds nothing)."""
        self.requests.add("list")
        if top is None:
            return
        page: list[T] = []
        for item in walk(top):
            if len(page) == PAGE_SIZE:
                yield page
                page = []
                self.requests.add("list")
            page.append(item)
        if page:
            yield page

    def _entries(self, directory: str, prefix: str) -> list[os.DirEntry]:
        try:
            return filesystem_walk.entries(directory, prefix)
        except filesystem_walk.WalkError as error:
            raise _storage_error("list", error.key, error) from None

    def _walk(self, directory: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            for key, st in filesystem_walk.walk(directory, prefix, TEMP_DIR):
                yield _info(key, st.st_size, st.st_mtime_ns)
        except filesystem_walk.WalkError as error:
            raise _storage_error("list", error.key, error) from None

    def _prefixes(self, directory: str, path: str, prefix: str, delimiter: str) -> Iterator[str]:
        last = None
        for entry in self._entries(directory, prefix):
            is_directory = entry.is_dir(follow_symlinks=False)
            name = path + entry.name + ("/" if is_directory else "")
            if name == TEMP_DIR + "/" or not (is_directory or entry.is_file(follow_symlinks=False)):
                continue
            found = common_prefix(name, prefix, delimiter)
            if found is None:
                if is_directory:
                    yield from self._prefixes(entry.path, name, prefix, delimiter)
            elif found != last and (not is_directory or self._holds_file(entry.path)):
                last = found
                yield found

    def _holds_file(self, directory: str) -> bool:
        """Whether some regular file lies below ``directory`` (an empty one is no prefix)."""
        return any(entry.is_file(follow_symlinks=False)
                   or (entry.is_dir(follow_symlinks=False) and self._holds_file(entry.path))
                   for entry in self._entries(directory, directory))

    def sweep_abandoned_uploads(self, prefix: str, older_than: float) -> int:
        """As :meth:`StorageDriver.sweep_abandoned_uploads`; temporary files carry no key, so
        every stale one in the temporary area goes, whatever ``prefix``."""
        check_prefix(prefix)
        cutoff = time.time() - older_than
        swept = 0
        with _os_errors("sweep", TEMP_DIR):
            try:
                entries = list(os.scandir(self._temp))
            except FileNotFoundError:
                return 0
            for entry in entries:
                with suppress(FileNotFoundError):
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime <= cutoff:
                        os.unlink(entry.path)
                        swept += 1
        return swept

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        self.requests.add("head")
        with _os_errors("stat", key):
            st = os.stat(path)
        if not stat_mode.S_ISREG(st.st_mode):
            raise NotFound(f"filesystem stat {key!r}: not a file")
        return _info(key, st.st_size, st.st_mtime_ns)

    def _read_range(self, key: str, offset: int) -> Iterator[bytes]:
        """Through a bare descriptor and ``pread``: a buffered file object adds an ``fstat``, an
        ``ioctl`` and an ``lseek`` to every read of a small file."""
        path = self._path(key)
        self.requests.add("get")
        with _os_errors("read", key):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                while chunk := os.pread(fd, CHUNK_SIZE, offset):
                    offset += len(chunk)
                    yield chunk
            finally:
                os.close(fd)

    def write(self, key: str, data: bytes) -> str:
        with self.writer(key) as writer:
            writer.write(data)
            return writer.commit()

    def writer(self, key: str) -> ChunkedWriter:
        return _FileWriter(self, key, self._path(key, follows=False))

    def delete(self, key: str) -> None:
        path = self._path(key, follows=False)
        self.requests.add("delete")
        with _os_errors("delete", key):
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return
            parent = os.path.dirname(path)
            while parent != self.root:
                try:
                    os.rmdir(parent)
                except OSError:
                    break
                parent = os.path.dirname(parent)


class _FileWriter(ChunkedWriter):
    """Bytes into a new file of the temporary area through bare descriptors (a buffered file
    object adds an ``fstat``, an ``ioctl`` and an ``lseek`` to every small file), synced and
    renamed into place at commit."""

    def __init__(self, driver: FilesystemDriver, key: str, path: str) -> None:
        super().__init__()
        self._driver, self._key, self._path = driver, key, path
        self._temp = driver._temp_path()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        with _os_errors("write", key):
            try:
                self._fd = os.open(self._temp, flags, 0o666)
            except FileNotFoundError:
                _make_directory(driver._temp)
                self._fd = os.open(self._temp, flags, 0o666)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        with _os_errors("write", self._key):
            while view:
                view = view[os.write(self._fd, view):]
        self.size += len(data)

    def commit(self) -> str:
        self._driver.requests.add("put")
        with _os_errors("write", self._key):
            # The kernel's own mtime ticks coarsely; a precise one makes every rewrite a new etag.
            now = time.time_ns()
            os.utime(self._fd, ns=(now, now))
            os.fsync(self._fd)
            self._close()
            _publish(self._temp, self._path)
        self.closed = True
        return f"{self.size}-{now}"

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        with suppress(OSError):
            self._close()
        with suppress(OSError):
            os.unlink(self._temp)
