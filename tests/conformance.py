"""The conformance suite every storage driver passes.

A backend's test module declares ``class TestX(DriverConformance)`` and provides the fixture
``driver``: a fresh, empty :class:`~drivers.base.StorageDriver`. If the driver uploads in parts,
its part size should be at most 5 MiB so that the large-object tests cross part boundaries.

Declared properties of the driver class state where a backend differs and the suite holds it
to what it declares: ``listed_sizes_exact`` (false: a listing may report ``UNKNOWN_SIZE``) and
``delete_heads_first`` (true: a delete costs a HEAD more). Optional abilities are tested only
where the driver has them. For
:class:`~drivers.base.ServerSideCopy` the class also provides ``second_driver``: another fresh,
empty driver of the same backend and server (another bucket, container or account, with
another root directory) that ``driver`` can copy from; without it those cases skip.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from drivers import open_storage
from drivers.base import (CHUNK_SIZE, UNKNOWN_SIZE, HashedServerSideCopy, ObjectTooLarge, ServerSideCopy,
                          StorageDriver)
from drivers.errors import ConfigError, InvalidKey, NotFound
from drivers.filesystem import FilesystemDriver

MIB = 1024 * 1024

HOSTILE_KEYS = ["", "/abs", "../up", "a/../b", "a/./b", "a\\b", "a\x00b", "a\nb", "a\x7fb",
                "a/", "a//b"]
HOSTILE_PREFIXES = ["/abs/", "../", "a/../", "a\\b/", "a\x00/", "a\n/", "a", "a//", "/"]
UNUSUAL_KEYS = ["space/a b", "unicode/ünïcödé/日本語", "plus/a+b", "percent/a%20b%", "colon/sha256:0f",
                "at/user@host", "tilde/~x", "query/a=b&c?d", "hash/#x"]
LINK = "sha256:" + "a" * 64
"""A Distribution link file: always 71 bytes, whatever it points at."""


def requests_sent(driver: StorageDriver, action: Callable[[], object]) -> dict[str, int]:
    """The requests ``action()`` sent, by kind, leaving out kinds it did not send."""
    before = driver.requests.snapshot()
    action()
    after = driver.requests.snapshot()
    return {kind: after[kind] - before[kind] for kind in after if after[kind] != before[kind]}


def sent_nothing(*drivers: StorageDriver) -> bool:
    """Whether none of ``drivers`` has sent a request yet."""
    return not any(count for driver in drivers for count in driver.requests.snapshot().values())


def assert_config_error(driver_class: type[StorageDriver], params: dict, field: str) -> None:
    """``params`` fail with a ConfigError naming ``field``, directly and in a ``storage:`` block."""
    with pytest.raises(ConfigError) as caught:
        driver_class.from_config(params)
    assert caught.value.field == field
    with pytest.raises(ConfigError) as caught:
        open_storage({driver_class.kind: params})
    assert caught.value.field == f"{driver_class.kind}.{field}"


def listed(driver: StorageDriver, prefix: str = "") -> list[str]:
    return [info.key for page in driver.list(prefix) for info in page]


def byte_order(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda key: key.encode())


def write_all(driver: StorageDriver, keys: list[str], data: bytes = b"x") -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: driver.write(key, data), keys))


def too_deep(root) -> None:
    """Directories below ``root`` (a filesystem's) whose path grows longer than the system
    allows a path: a walk meets ``ENAMETOOLONG`` there."""
    fd = os.open(root, os.O_RDONLY)
    for _ in range(20):
        os.mkdir("d" * 250, dir_fd=fd)
        below = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = below
    os.close(fd)


def stream(driver: StorageDriver, key: str, offset: int = 0) -> bytes:
    return b"".join(driver.open(key, offset))


class DriverConformance:
    """Mixin of the tests every driver passes; subclasses provide the ``driver`` fixture."""

    @pytest.fixture
    def driver(self) -> StorageDriver:
        raise NotImplementedError("a backend's test class provides a fresh, empty driver")

    server_pages_prefixes = True
    """False where the test server answers every prefix of a delimited listing in one page
    (the provider itself pages them)."""

    def test_list_empty(self, driver):
        assert list(driver.list()) == []

    def test_list_prefix_matching_nothing_yields_nothing(self, driver):
        driver.write("a/b", b"x")
        assert list(driver.list("x/")) == []
        assert list(driver.list("a/b/")) == []

    def test_list_pages_of_1000_in_byte_order(self, driver):
        keys = [f"d{i % 7}/k{i}" for i in range(2001)]
        write_all(driver, keys)
        pages = []
        assert requests_sent(driver, lambda: pages.extend(driver.list())) == {"list": 3}
        assert [len(page) for page in pages] == [1000, 1000, 1]
        assert [info.key for page in pages for info in page] == byte_order(keys)

    def test_list_byte_order_across_directories(self, driver):
        keys = ["a/x0/y", "a/x-", "a/x", "a-b", "a0", "aa", "A", "b/c/d", "b.c", "z", "~", "é"]
        write_all(driver, keys)
        assert listed(driver) == byte_order(keys)

    def test_list_prefix_excludes_siblings_sharing_a_string_prefix(self, driver):
        write_all(driver, ["a/b/1", "a/b/c/2", "a/bc/3", "a/b-4"])
        assert listed(driver, "a/b/") == ["a/b/1", "a/b/c/2"]
        assert listed(driver, "a/") == ["a/b-4", "a/b/1", "a/b/c/2", "a/bc/3"]

    def test_list_ahead_lists_what_list_does_with_the_same_requests(self, driver):
        keys = [f"d{i % 7}/k{i}" for i in range(1001)] + UNUSUAL_KEYS
        write_all(driver, keys)
        for prefix in ("", "d3/", "unicode/", "missing/"):
            pages, ahead = [], []
            asked = requests_sent(driver, lambda: pages.extend(driver.list(prefix)))
            assert requests_sent(driver, lambda: ahead.extend(driver.list_ahead(prefix))) == asked
            assert ([[(i.key, i.size, i.etag, i.mtime) for i in page] for page in ahead]
                    == [[(i.key, i.size, i.etag, i.mtime) for i in page] for page in pages])

    def test_list_metadata_matches_stat(self, driver):
        driver.write("dir/obj", b"12345")
        [[info]] = list(driver.list("dir/"))
        stat = driver.stat("dir/obj")
        assert (info.key, info.size, info.etag) == ("dir/obj", 5, stat.etag)
        assert abs(info.mtime - stat.mtime) < 1

    def test_list_prefixes_gives_immediate_subdirectories_in_byte_order(self, driver):
        write_all(driver, ["a/b/1", "a/c", "a/d/e/f", "a/d/g", "a-x/y", "b", "c/ü/1"])
        assert requests_sent(driver, lambda: self.assert_prefixes(
            driver, "", "/", ["a-x/", "a/", "c/"])) == {"list": 1}
        self.assert_prefixes(driver, "a/", "/", ["a/b/", "a/d/"])
        self.assert_prefixes(driver, "c/", "/", ["c/ü/"])
        self.assert_prefixes(driver, "a/d/e/", "/", [])
        self.assert_prefixes(driver, "x/", "/", [])

    def test_list_prefixes_with_a_string_delimiter_finds_repositories_at_any_depth(self, driver):
        root = "docker/registry/v2/repositories/"
        write_all(driver, [root + key for key in (
            "apps/_layers/sha256/aa/link", "apps/_manifests/tags/v1/current/link",
            "apps/web/_layers/sha256/bb/link", "apps/web/_uploads/u1/data", "base/_manifests/x",
            "ns/deep/one/_layers/sha256/cc/link", "ns/deep/one/_manifests/y", "my_app/_layers/z")])
        self.assert_prefixes(driver, root, "/_", [root + name + "/_" for name in
                                                 ("apps", "apps/web", "base", "my_app", "ns/deep/one")])

    def test_list_prefixes_pages_of_1000(self, driver):
        write_all(driver, [f"p/{i:04}/k" for i in range(1001)] + ["p/top"])
        pages = []
        sent = requests_sent(driver, lambda: pages.extend(driver.list_prefixes("p/")))
        if self.server_pages_prefixes:
            assert sent == {"list": 2}
            assert [len(page) for page in pages] == [1000, 1]
        else:
            assert sent == {"list": 1}
        assert [name for page in pages for name in page] == [f"p/{i:04}/" for i in range(1001)]

    @pytest.mark.parametrize("prefix, delimiter", [("a", "/"), ("../", "/"), ("", ""), ("", "a\x00")])
    def test_list_prefixes_rejects_bad_arguments_before_any_request(self, driver, prefix, delimiter):
        with pytest.raises(InvalidKey):
            next(driver.list_prefixes(prefix, delimiter))
        assert not any(driver.requests.snapshot().values())

    @staticmethod
    def assert_prefixes(driver: StorageDriver, prefix: str, delimiter: str, expected: list[str]):
        assert [name for page in driver.list_prefixes(prefix, delimiter) for name in page] == expected

    def test_listed_sizes_are_exact_or_declared_unknown(self, driver):
        driver.write("small", b"12345")
        driver.write("empty", b"")
        with driver.writer("streamed") as writer:
            writer.write(b"x" * (6 * MIB))
            writer.commit()
        sizes = {"small": 5, "empty": 0, "streamed": 6 * MIB}
        allowed = {key: {size} if driver.listed_sizes_exact else {size, UNKNOWN_SIZE}
                   for key, size in sizes.items()}
        assert all(info.size in allowed[info.key] for page in driver.list() for info in page)
        assert {key: driver.stat(key).size for key in sizes} == sizes

    def test_stat_size_etag_mtime(self, driver):
        driver.write("obj", b"hello world")
        info = driver.stat("obj")
        assert info.key == "obj" and info.size == 11
        assert isinstance(info.etag, str) and info.etag and '"' not in info.etag
        assert abs(info.mtime - time.time()) < 60

    def test_stat_missing_raises_not_found(self, driver):
        with pytest.raises(NotFound):
            driver.stat("missing/obj")

    def test_etag_changes_when_rewritten_with_same_size(self, driver):
        key = "repo/_manifests/tags/latest/current/link"
        driver.write(key, LINK.encode())
        before = driver.stat(key)
        driver.write(key, LINK.replace("a", "b").encode())
        after = driver.stat(key)
        assert before.size == after.size == 71
        assert before.etag != after.etag
        assert [info.etag for page in driver.list() for info in page] == [after.etag]

    def test_write_and_commit_return_the_etag_listings_show(self, driver):
        written = driver.write("small", LINK.encode())
        with driver.writer("streamed") as writer:
            writer.write(os.urandom(6 * MIB))
            committed = writer.commit()
        assert {info.key: info.etag for page in driver.list() for info in page} == \
            {"small": written, "streamed": committed}
        assert driver.stat("small").etag == written

    def test_write_read_round_trip(self, driver):
        data = bytes(range(256)) * 40
        driver.write("blobs/data", data)
        assert driver.read("blobs/data") == data

    def test_empty_object(self, driver):
        driver.write("empty", b"")
        with driver.writer("empty-streamed") as writer:
            writer.commit()
        for key in ("empty", "empty-streamed"):
            assert driver.read(key) == b""
            assert driver.stat(key).size == 0

    def test_read_missing_raises_not_found(self, driver):
        with pytest.raises(NotFound):
            driver.read("missing")
        with pytest.raises(NotFound):
            next(driver.open("missing"))

    def test_read_past_limit_raises_object_too_large(self, driver):
        driver.write("obj", b"x" * 100)
        assert driver.read("obj", limit=100) == b"x" * 100
        with pytest.raises(ObjectTooLarge):
            driver.read("obj", limit=99)

    def test_open_from_offset(self, driver):
        data = bytes(range(256)) * 4
        driver.write("obj", data)
        assert stream(driver, "obj", 100) == data[100:]
        assert stream(driver, "obj", len(data) - 1) == data[-1:]
        assert stream(driver, "obj", len(data)) == b""

    def test_writer_streams_large_object(self, driver):
        data = os.urandom(12 * MIB + 12345)
        with driver.writer("big") as writer:
            for start in range(0, len(data), 777_777):
                writer.write(data[start:start + 777_777])
            writer.commit()
        assert writer.size == len(data)
        chunks = list(driver.open("big"))
        assert all(len(chunk) <= CHUNK_SIZE for chunk in chunks)
        assert b"".join(chunks) == data
        assert driver.stat("big").size == len(data)
        assert stream(driver, "big", 6 * MIB) == data[6 * MIB:]

    def test_writer_invisible_before_commit(self, driver):
        with driver.writer("dir/obj") as writer:
            writer.write(b"x" * (6 * MIB))
            with pytest.raises(NotFound):
                driver.stat("dir/obj")
            assert list(driver.list()) == []
            writer.commit()
        assert listed(driver) == ["dir/obj"]

    def test_writer_keeps_old_content_until_commit(self, driver):
        driver.write("obj", b"old")
        with driver.writer("obj") as writer:
            writer.write(b"new")
            assert driver.read("obj") == b"old"
            writer.commit()
        assert driver.read("obj") == b"new"

    def test_writer_abort_leaves_nothing(self, driver):
        writer = driver.writer("dir/obj")
        writer.write(b"x" * (6 * MIB))
        writer.abort()
        writer.abort()
        assert list(driver.list()) == []
        with pytest.raises(NotFound):
            driver.stat("dir/obj")

    def test_writer_left_without_commit_aborts(self, driver):
        with driver.writer("obj") as writer:
            writer.write(b"partial")
        assert writer.closed
        assert list(driver.list()) == []

    def test_writer_exception_aborts(self, driver):
        with pytest.raises(RuntimeError), driver.writer("obj") as writer:
            writer.write(b"partial")
            raise RuntimeError("source broke")
        assert list(driver.list()) == []

    def test_writer_abort_after_commit_is_a_no_op(self, driver):
        writer = driver.writer("obj")
        writer.write(b"kept")
        writer.commit()
        writer.abort()
        assert driver.read("obj") == b"kept"

    def test_write_overwrites_whole_object(self, driver):
        driver.write("obj", b"a much longer first version")
        driver.write("obj", b"short")
        assert driver.read("obj") == b"short"
        assert listed(driver) == ["obj"]

    def test_delete_removes_object(self, driver):
        driver.write("a/b/c", b"x")
        driver.write("a/d", b"y")
        driver.delete("a/b/c")
        with pytest.raises(NotFound):
            driver.stat("a/b/c")
        assert listed(driver) == ["a/d"]
        assert list(driver.list("a/b/")) == []

    def test_delete_is_idempotent(self, driver):
        driver.write("obj", b"x")
        driver.delete("obj")
        driver.delete("obj")
        driver.delete("never/existed")
        assert list(driver.list()) == []

    @pytest.mark.parametrize("key", HOSTILE_KEYS)
    def test_hostile_key_rejected_before_any_request(self, driver, key):
        operations = [lambda: driver.read(key), lambda: driver.write(key, b"x"),
                      lambda: driver.stat(key), lambda: driver.delete(key),
                      lambda: driver.writer(key), lambda: next(driver.open(key))]
        for operation in operations:
            with pytest.raises(InvalidKey):
                operation()
        assert not any(driver.requests.snapshot().values())

    @pytest.mark.parametrize("prefix", HOSTILE_PREFIXES)
    def test_hostile_prefix_rejected_before_any_request(self, driver, prefix):
        with pytest.raises(InvalidKey):
            next(driver.list(prefix))
        assert not any(driver.requests.snapshot().values())

    @pytest.mark.parametrize("key", UNUSUAL_KEYS)
    def test_unusual_key_round_trips(self, driver, key):
        driver.write(key, key.encode())
        assert driver.read(key) == key.encode()
        assert driver.stat(key).key == key
        assert listed(driver) == [key]
        assert listed(driver, key.split("/")[0] + "/") == [key]
        driver.delete(key)
        assert list(driver.list()) == []

    def test_request_counts(self, driver):
        assert requests_sent(driver, lambda: driver.write("obj", b"x")) == {"put": 1}
        assert requests_sent(driver, lambda: driver.stat("obj")) == {"head": 1}
        assert requests_sent(driver, lambda: driver.read("obj")) == {"get": 1}
        delete = {"delete": 1, **({"head": 1} if driver.delete_heads_first else {})}
        assert requests_sent(driver, lambda: driver.delete("obj")) == delete
        assert requests_sent(driver, lambda: list(driver.list())) == {"list": 1}

    @pytest.mark.parametrize("parts", [0, 0.5, 1, 1.25, 2.5], ids=["empty", "half-part", "one-part",
                                                                "past-one-part", "parts"])
    def test_writer_requests_are_what_the_driver_says(self, driver, parts):
        size = int(parts * getattr(driver, "chunk_size", MIB)) + (17 if parts % 1 else 0)
        data = os.urandom(size)

        def upload():
            with driver.writer("obj") as writer:
                for start in range(0, size, CHUNK_SIZE):
                    writer.write(data[start:start + CHUNK_SIZE])
                writer.commit()

        assert requests_sent(driver, upload) == {k: n for k, n in driver.writer_requests(size).items() if n}
        assert driver.read("obj", limit=size) == data

    @pytest.mark.parametrize("size", [0, len(LINK), 100_000])
    def test_write_and_delete_requests_are_what_the_driver_says(self, driver, size):
        assert requests_sent(driver, lambda: driver.write("obj", os.urandom(size))) == \
            driver.write_requests(size)
        assert requests_sent(driver, lambda: driver.delete("obj")) == driver.delete_requests()

    # --- optional: server-side copy -------------------------------------------------------

    @pytest.fixture
    def second_driver(self) -> StorageDriver:
        pytest.skip("this backend's tests provide no second_driver (another bucket, container "
                    "or account of the same server) to copy from")

    @pytest.fixture
    def copy_source(self, driver, request) -> StorageDriver:
        """``second_driver``, where ``driver`` has server-side copy at all."""
        if not isinstance(driver, ServerSideCopy):
            pytest.skip(f"the {driver.kind} driver has no server-side copy")
        return request.getfixturevalue("second_driver")

    def test_copy_possible_from_the_same_backend_only_and_decided_without_requests(
            self, driver, copy_source, tmp_path):
        answers = {}

        def ask():
            answers["same backend"] = driver.can_copy_from(copy_source)
            answers["filesystem"] = driver.can_copy_from(FilesystemDriver(str(tmp_path / "fs")))

        assert requests_sent(driver, ask) == {}
        assert answers == {"same backend": True, "filesystem": False}
        assert sent_nothing(copy_source)

    @pytest.mark.parametrize("key, size", [
        ("docker/registry/v2/blobs/sha256/0f/0f00/data", 300_000),
        ("unicode/ünïcödé/a b+c%20", 100),
        ("empty", 0),
    ], ids=["blob", "unusual-key", "empty"])
    def test_copy_is_one_copy_request_and_returns_the_listed_etag(self, driver, copy_source, key, size):
        data = os.urandom(size)
        copy_source.write(key, data)
        copied = {}

        def copy():
            copied["etag"] = driver.copy_from(copy_source, key, size)

        source_before = copy_source.requests.snapshot()
        assert requests_sent(driver, copy) == {"copy": 1}
        assert copy_source.requests.snapshot() == source_before  # not even a stat
        assert driver.read(key) == data
        assert [(info.key, info.size, info.etag) for page in driver.list() for info in page] == \
            [(key, size, copied["etag"])]
        assert driver.stat(key).etag == copied["etag"]
        assert copy_source.read(key) == data

    @pytest.mark.parametrize("hashed", [False, True], ids=["plain", "hashed"])
    def test_copy_requests_are_what_the_driver_says(self, driver, copy_source, hashed):
        if hashed and not isinstance(driver, HashedServerSideCopy):
            pytest.skip(f"the {driver.kind} driver has no hashed server-side copy")
        size = 6 * MIB + 1
        copy_source.write("obj", os.urandom(size))
        copy = driver.copy_from_hashed if hashed else driver.copy_from
        assert requests_sent(driver, lambda: copy(copy_source, "obj", size)) == \
            driver.copy_requests(size, hashed)

    def test_copy_without_the_size_reads_no_bytes(self, driver, copy_source):
        data = os.urandom(100_000)
        copy_source.write("obj", data)
        source_requests = requests_sent(copy_source, lambda: driver.copy_from(copy_source, "obj"))
        assert set(source_requests) <= {"head"}
        assert driver.read("obj", limit=len(data)) == data

    def test_copy_replaces_an_existing_object(self, driver, copy_source):
        driver.write("obj", b"old")
        copy_source.write("obj", b"new and longer")
        driver.copy_from(copy_source, "obj")
        assert driver.read("obj") == b"new and longer"

    def test_copy_of_a_missing_object_raises_not_found(self, driver, copy_source):
        copy_source.write("present", b"x")
        for size in (10, None):
            with pytest.raises(NotFound):
                driver.copy_from(copy_source, "missing/obj", size)
        assert list(driver.list()) == []

    def test_copy_rejects_hostile_keys_before_any_request(self, driver, copy_source):
        for key in HOSTILE_KEYS:
            with pytest.raises(InvalidKey):
                driver.copy_from(copy_source, key)
        assert sent_nothing(driver, copy_source)
