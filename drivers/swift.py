"""Objects in an OpenStack Swift container, laid out exactly as Distribution 2.8's swift driver
lays them out, via python-swiftclient.

References are the functions of ``registry/storage/driver/swift/swift.go`` at Distribution
v2.8.3, named where they are mirrored.

- A key ``K`` is the object ``swiftPath("/" + K)``: ``<prefix>/files/K`` with the leading ``/``
  trimmed (no prefix: ``files/K``). Listings cover ``<prefix>/files/`` only, never the segments.
- :meth:`SwiftDriver.writer` writes an object larger than one chunk as a Dynamic Large Object,
  as the registry's ``Writer``/``Commit`` do: segments ``<segment dir>/%016d`` numbered from 1,
  each ``chunksize`` bytes but the last, under a directory named as ``swiftSegmentPath`` names
  it, then at commit the 0-byte manifest object with ``X-Object-Manifest:
  <container>/<segment dir>`` (``createManifest``). Nothing is visible at the key before then.
  An object that ends within its first chunk is one plain PUT, as :meth:`SwiftDriver.write`
  (the registry's ``PutContent``) is; see :class:`_SegmentWriter` for why a 2.8 registry serves
  both forms alike.
- Swift lists a DLO manifest as 0 bytes with the MD5 of nothing; only a HEAD knows its length.
  So a listing reports :data:`~drivers.base.UNKNOWN_SIZE` for every object listed as 0 bytes
  with that hash (an empty plain object looks the same), and ``listed_sizes_exact`` is false.
  Such an object's etag is that hash joined to the object's timestamp (which listings and HEAD
  both give to the microsecond), so a rewritten DLO gets a new etag; any other object's etag is
  its MD5.

Every request to the storage URL is counted by a transport adapter on the client's HTTP
session. Authentication requests (tempauth or Keystone, once per token and thread) are not
storage requests and are not counted. python-swiftclient's retries are off (``retries=0``):
each SDK call is retried by :func:`drivers.retry.retrying`; the client itself only logs in
again, once, when a token is refused with 401 (tokens expire). The credentials are handed to
python-swiftclient and kept nowhere else.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import TypeVar

import requests
import requests.adapters
import urllib3.exceptions
from swiftclient.client import Connection
from swiftclient.exceptions import ClientException

from drivers.base import (CHUNK_SIZE, ChunkedWriter, ObjectInfo, PartWriter, RequestCounter,
                          StorageDriver, UNKNOWN_SIZE, check_delimiter, check_key, check_prefix,
                          error_for_status, token_pages, without_url_queries)
from drivers.errors import ConfigError, InvalidKey, NotFound, TransientError
from drivers.parameters import parse_parameters
from drivers.retry import retrying

T = TypeVar("T")

MIB = 1024 * 1024
MIN_CHUNK_SIZE = 1 * MIB
DEFAULT_CHUNK_SIZE = 20 * MIB
PAGE_SIZE = 1000
TIMEOUT = 60.0
CONTENT_TYPE = "application/octet-stream"
EMPTY_MD5 = hashlib.md5(b"").hexdigest()
EMPTY_SHA1 = hashlib.sha1(b"").hexdigest()
RANDOM_BYTES = 32
"""``swiftSegmentPath`` names a segment directory after the upload path, 32 random bytes and
the SHA-1 of nothing (Go's ``Sum(b)`` appends the hash to ``b``), all in hex."""

PARAMETERS: dict[str, type] = {
    "username": str, "password": str, "authurl": str, "container": str, "prefix": str,
    "rootdirectory": str, "tenant": object, "tenantid": object, "domain": str, "domainid": str,
    "tenantdomain": str, "tenantdomainid": str, "trustid": str, "region": str,
    "endpointtype": str, "authversion": int, "insecureskipverify": bool, "chunksize": int,
    "secretkey": str, "accesskey": str, "tempurlcontainerkey": bool, "tempurlmethods": list,
}
"""Distribution 2.8's swift parameters, plus ``rootdirectory``, an alias of ``prefix`` (a
registry ignores ``rootdirectory`` in a swift block: give ``prefix`` to share a block with one).
``secretkey``, ``accesskey``, ``tempurlcontainerkey`` and ``tempurlmethods`` configure the
registry's temporary URLs, which the replicator never makes: accepted and unused. ``trustid``
is refused: python-swiftclient has no trust-scoped Keystone login."""

LIMITS = {"chunksize": (MIN_CHUNK_SIZE, None), "authversion": (0, 3)}

_OS_OPTIONS = {"domain": "user_domain_name", "domainid": "user_domain_id",
               "tenantdomain": "project_domain_name", "tenantdomainid": "project_domain_id",
               "region": "region_name", "endpointtype": "endpoint_type"}
_BROKEN_CONNECTION = (requests.ConnectionError, requests.Timeout,
                      requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError,
                      http.client.HTTPException, OSError)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def _parse(params: dict) -> dict:
    config = parse_parameters(params, PARAMETERS, limits=LIMITS,
                              required=("username", "password", "authurl", "container"))
    if "prefix" in config and "rootdirectory" in config:
        raise ConfigError("rootdirectory", "is an alias of prefix: give one of them, not both")
    if not config["authurl"].startswith(("http://", "https://")):
        raise ConfigError("authurl", "must be an http:// or https:// URL")
    if "trustid" in config:
        raise ConfigError("trustid", "is not supported: python-swiftclient has no trust-scoped login")
    for name in ("tenant", "tenantid"):
        if name in config:
            value = config[name]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ConfigError(name, "must be a string")
            config[name] = str(value)
    prefix = config.pop("rootdirectory", config.get("prefix", ""))
    plain = prefix.strip("/")
    if plain:
        try:
            check_key(plain)
        except InvalidKey:
            raise ConfigError("prefix", "must be a plain /-separated path") from None
    config["prefix"] = prefix
    return config


def _auth_version(config: dict) -> str:
    """``authversion`` as python-swiftclient spells it; 0 or none guesses from the URL, as
    ncw/swift does."""
    version = config.get("authversion", 0)
    if not version:
        url = config["authurl"]
        version = 3 if "v3" in url else 2 if "v2" in url else 1
    return {1: "1", 2: "2.0", 3: "3"}[version]


def _os_options(config: dict, auth_version: str) -> dict:
    options = {option: config[name] for name, option in _OS_OPTIONS.items() if name in config}
    if "tenant" in config:
        options["tenant_name" if auth_version == "2.0" else "project_name"] = config["tenant"]
    if "tenantid" in config:
        options["tenant_id" if auth_version == "2.0" else "project_id"] = config["tenantid"]
    return options


def _request_kind(method: str, url: str) -> str:
    if method == "GET":
        query = url.partition("?")[2]
        return "list" if "format=json" in query.split("&") else "get"
    return {"HEAD": "head", "COPY": "copy", "DELETE": "delete"}.get(method, "put")


class _CountingAdapter(requests.adapters.HTTPAdapter):
    """Counts every request a client's session sends; urllib3's own retries are off."""

    def __init__(self, counter: RequestCounter) -> None:
        super().__init__(max_retries=0)
        self._counter = counter

    def send(self, request, **kwargs):
        self._counter.add(_request_kind(request.method, request.url))
        return super().send(request, **kwargs)


class _CountingConnection(Connection):
    """A python-swiftclient connection whose storage requests (not its logins) are counted."""

    def __init__(self, counter: RequestCounter, **options) -> None:
        super().__init__(**options)
        self._counter = counter

    def http_connection(self, url=None):
        parsed, connection = super().http_connection(url)
        adapter = _CountingAdapter(self._counter)
        for scheme in ("http://", "https://"):
            connection.request_session.mount(scheme, adapter)
        return parsed, connection


def _microseconds(timestamp: str) -> int:
    """A Swift ``X-Timestamp`` (``1796158465.15004``, maybe with an ``_offset``) in µs."""
    return int(Decimal(timestamp.partition("_")[0]) * 1_000_000)


def _listed_microseconds(last_modified: str) -> int:
    """A listing's ``last_modified`` (UTC, ``2026-12-01T20:54:25.150040``) in µs."""
    moment = datetime.fromisoformat(last_modified).replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // _MICROSECOND


def _etag(md5: str, microseconds: int, large: bool) -> str:
    return f"{EMPTY_MD5}-{microseconds}" if large or md5 == EMPTY_MD5 else md5


def _required(answer: dict, name: str, where: str) -> str:
    value = answer.get(name)
    if value in (None, ""):
        raise TransientError(f"{where}: the answer has no {name}")
    return value


def _number(answer: dict, name: str, where: str) -> int:
    value = _required(answer, name, where)
    if isinstance(value, bool) or not str(value).isdecimal():
        raise TransientError(f"{where}: the answer's {name} is not a number")
    return int(value)


def _listed_time(entry: dict, where: str) -> int:
    """A listing entry's ``last_modified`` in µs."""
    try:
        return _listed_microseconds(_required(entry, "last_modified", where))
    except (TypeError, ValueError):
        raise TransientError(f"{where}: a malformed last_modified") from None


def _segment_name(directory: str, number: int) -> str:
    """``getSegmentPath``."""
    return f"{directory}/{number:016d}"


class SwiftDriver(StorageDriver):
    """Objects under ``prefix`` in ``container``, through connections ``connect()`` makes.

    ``prefix`` is Distribution's ``prefix`` as configured (``""``, ``"/w1"`` and ``"w1"`` give
    the same objects); ``chunk_size`` is the segment size of :meth:`writer`. Errors as
    :class:`StorageDriver` states: a 404 is ``NotFound`` (so is writing into a missing
    container: the driver never creates one), 401/403 ``AccessDenied`` (after one fresh login
    on 401), 408/422/429/5xx and broken connections ``TransientError``; an answer lacking a
    header or field the driver needs, or a body shorter than announced, is a
    ``TransientError`` too. No request is sent before the first operation.
    """

    kind = "swift"
    listed_sizes_exact = False
    delete_heads_first = True

    def __init__(self, connect: Callable[[RequestCounter], Connection], container: str, *,
                 prefix: str = "", chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        super().__init__()
        self._connect = connect
        self._local = threading.local()
        self._token_lock = threading.Lock()
        self._token: tuple[str, str] | None = None
        self.container = container
        self.prefix = prefix
        self.chunk_size = chunk_size
        self.files_root = (prefix + "/files/").lstrip("/")
        self.segments_root = (prefix + "/segments/").lstrip("/")

    @classmethod
    def from_config(cls, params: dict) -> SwiftDriver:
        config = _parse(params)
        auth_version = _auth_version(config)
        options = {"authurl": config["authurl"], "user": config["username"],
                   "key": config["password"], "auth_version": auth_version,
                   "os_options": _os_options(config, auth_version),
                   "insecure": config.get("insecureskipverify", False), "retries": 0,
                   "retry_on_ratelimit": False, "timeout": TIMEOUT}
        return cls(lambda counter: _CountingConnection(counter, **options), config["container"],
                   prefix=config["prefix"], chunk_size=config.get("chunksize", DEFAULT_CHUNK_SIZE))

    def describe(self) -> str:
        return f"swift://{self.container}/{self.files_root}".rstrip("/")

    def _connection(self) -> Connection:
        """This thread's connection, starting from the token another thread got, if any."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect(self.requests)
        if not connection.token and self._token:
            connection.url, connection.token = self._token
        return connection

    def _keep_token(self, connection: Connection) -> None:
        if connection.token:
            with self._token_lock:
                self._token = (connection.url, connection.token)

    @contextmanager
    def _errors(self, operation: str, name: str) -> Iterator[None]:
        where = f"swift {operation} swift://{self.container}/{name}"
        try:
            yield
        except ClientException as error:
            status = error.http_status
            detail = without_url_queries(f"{status or ''} {error.http_reason or error.msg}".strip())
            if status == 422:
                raise TransientError(f"{where}: {detail} (body damaged on the way)") from None
            raise error_for_status(status, f"{where}: {detail}") from None
        except _BROKEN_CONNECTION as error:
            raise TransientError(f"{where}: {type(error).__name__}: "
                                 f"{without_url_queries(str(error))}") from None

    def _once(self, operation: str, name: str, call: Callable[[Connection], T]) -> T:
        """One SDK call about object (or prefix) ``name`` on this thread's connection, with
        errors translated; not retried."""
        with self._errors(operation, name):
            connection = self._connection()
            try:
                return call(connection)
            finally:
                self._keep_token(connection)

    def _call(self, operation: str, name: str, call: Callable[[Connection], T]) -> T:
        """:meth:`_once`, retried."""
        return retrying(lambda: self._once(operation, name, call))

    def _put(self, name: str, data: bytes, headers: dict | None = None) -> str:
        """PUT one object whose MD5 Swift checks; its etag."""
        md5 = hashlib.md5(data).hexdigest()

        def put(connection: Connection) -> str:
            etag = connection.put_object(self.container, name, data, content_length=len(data),
                                         etag=md5, content_type=CONTENT_TYPE, headers=headers)
            if etag != md5:
                raise TransientError(f"swift put swift://{self.container}/{name}: the answer's "
                                     f"ETag is not the MD5 of the bytes sent")
            return etag

        return self._call("put", name, put)

    def _head(self, name: str) -> dict:
        return retrying(lambda: self._head_once(name))

    def _head_once(self, name: str) -> dict:
        return self._once("head", name, lambda c: c.head_object(self.container, name))

    def _delete_object(self, name: str) -> None:
        with suppress(NotFound):
            self._call("delete", name, lambda c: c.delete_object(self.container, name))

    def _entry_pages(self, name_prefix: str, **args) -> Iterator[list[dict]]:
        """Listing entries whose names start with ``name_prefix``, one page per request (with
        a ``delimiter``, its ``subdir`` entries too)."""
        def page(marker: str | None) -> tuple[list[dict], str | None]:
            _, entries = self._call("list", name_prefix, lambda c: c.get_container(
                self.container, prefix=name_prefix, marker=marker, limit=PAGE_SIZE, **args))
            where = f"swift list {name_prefix}"
            last = entries[-1] if entries else None
            marker = last and (last["subdir"] if "subdir" in last else _required(last, "name", where))
            return entries, (marker if len(entries) == PAGE_SIZE else None)

        return token_pages(page)

    def _list_names(self, name_prefix: str) -> Iterator[dict]:
        return itertools.chain.from_iterable(self._entry_pages(name_prefix))

    def _info(self, key: str, headers: dict) -> ObjectInfo:
        where = f"swift head swift://{self.container}/{self.files_root}{key}"
        size = _number(headers, "content-length", where)
        try:
            microseconds = _microseconds(_required(headers, "x-timestamp", where))
        except (ValueError, InvalidOperation):
            raise TransientError(f"{where}: a malformed X-Timestamp") from None
        md5 = _required(headers, "etag", where).strip('"')
        return ObjectInfo(key, size, _etag(md5, microseconds, "x-object-manifest" in headers),
                          microseconds / 1e6)

    def _listed(self, entry: dict) -> ObjectInfo:
        where = f"swift list swift://{self.container}/{self.files_root}"
        name, md5 = _required(entry, "name", where), _required(entry, "hash", where)
        size, microseconds = _number(entry, "bytes", where), _listed_time(entry, where)
        unknown = size == 0 and md5 == EMPTY_MD5
        return ObjectInfo(name[len(self.files_root):], UNKNOWN_SIZE if unknown else size,
                          _etag(md5, microseconds, False), microseconds / 1e6)

    def list(self, prefix: str = "") -> Iterator[list[ObjectInfo]]:
        """Pages of ``PAGE_SIZE`` from container listings of ``<prefix>/files/``."""
        check_prefix(prefix)
        for entries in self._entry_pages(self.files_root + prefix):
            yield [self._listed(entry) for entry in entries]

    def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> Iterator[list[str]]:
        """Pages of the ``subdir`` entries of container listings with ``delimiter``."""
        check_prefix(prefix)
        root = len(self.files_root)
        for entries in self._entry_pages(self.files_root + prefix, delimiter=check_delimiter(delimiter)):
            if subdirs := [entry["subdir"][root:] for entry in entries if "subdir" in entry]:
                yield subdirs

    def stat(self, key: str) -> ObjectInfo:
        """One HEAD (``Stat``): a DLO's real length, from its segments."""
        check_key(key)
        return self._info(key, self._head(self.files_root + key))

    def _read_range(self, key: str, offset: int) -> Iterator[bytes]:
        """One GET (``Reader``), ranged from ``offset``; past the end (416) yields nothing."""
        name = self.files_root + key
        headers = {"Range": f"bytes={offset}-"} if offset else {}

        def get(connection: Connection) -> tuple[dict, Iterator[bytes]] | None:
            try:
                return connection.get_object(self.container, name, resp_chunk_size=CHUNK_SIZE,
                                             headers=headers)
            except ClientException as error:
                if error.http_status == 416:
                    return None
                raise

        answer = self._once("get", name, get)
        if answer is None:
            return
        headers, body = answer
        where = f"swift get swift://{self.container}/{name}"
        with self._errors("get", name):
            try:
                length, received = _number(headers, "content-length", where), 0
                for chunk in body:
                    received += len(chunk)
                    yield chunk
            finally:
                body.close()
        if received != length:
            raise TransientError(f"{where}: the body ended after {received} of {length} bytes")

    def write(self, key: str, data: bytes) -> str:
        """One plain PUT (``PutContent``); an empty object needs a HEAD for its etag."""
        check_key(key)
        md5 = self._put(self.files_root + key, data)
        return self.stat(key).etag if md5 == EMPTY_MD5 else md5

    def writer(self, key: str) -> ChunkedWriter:
        return _SegmentWriter(self, check_key(key))

    def write_requests(self, size: int) -> dict[str, int]:
        return {"put": 1, "head": 1} if size == 0 else {"put": 1}

    def writer_requests(self, size: int) -> dict[str, int]:
        """One plain PUT within a segment; else a PUT per segment, the manifest's PUT and the
        HEAD that checks it."""
        return PartWriter.requests(self, size, self.chunk_size, {"put": 1, "head": 1})

    def segment_directory(self, key: str) -> str:
        """A fresh segment directory for an upload to ``key`` (``swiftSegmentPath``)."""
        name = (("/" + key).encode() + secrets.token_bytes(RANDOM_BYTES)).hex() + EMPTY_SHA1
        return self.segments_root + name[:3] + "/" + name[3:]

    def _segment_prefix(self, manifest: str | None) -> str | None:
        """The segment prefix of an ``X-Object-Manifest`` naming this container (``parseManifest``)."""
        container, _, prefix = (manifest or "").partition("/")
        return prefix if container == self.container and prefix else None

    def _delete_segments(self, prefix: str) -> None:
        for entry in list(self._list_names(prefix)):
            self._delete_object(entry["name"])

    def delete(self, key: str) -> None:
        """A HEAD, the DELETE, then, for a DLO, the DELETE of each of its segments (as the
        registry's ``Delete`` does after ``getAllSegments``). The manifest goes first, so a
        delete cut short leaves unreferenced segments for :meth:`sweep_abandoned_uploads`,
        never a visible object missing its tail."""
        check_key(key)
        name = self.files_root + key
        try:
            headers = self._head(name)
        except NotFound:
            return
        self._delete_object(name)
        prefix = self._segment_prefix(headers.get("x-object-manifest"))
        if prefix:
            self._delete_segments(prefix)

    def sweep_abandoned_uploads(self, prefix: str, older_than: float) -> int:
        """Delete the segment directories of uploads to keys under ``prefix`` that no manifest
        references and whose newest segment is over ``older_than`` seconds old (a writer killed
        before its commit, a DLO overwritten or deleted half-way); how many.

        Cheaply, because ``swiftSegmentPath`` names each directory after the hex of its upload
        path: one listing of ``<prefix>/segments/`` narrowed to the hex of ``/<prefix>`` finds
        the candidates, and one HEAD of the upload path per old candidate tells whether its
        manifest references it (this driver writes manifests where it uploads; it never
        moves them). Directories of a registry's own uploads (``.../_uploads/<id>/data``) are
        left alone: the registry moves their manifests to the blob's path, and its upload
        purging (``Delete`` of ``_uploads/<id>``, following ``X-Object-Manifest``) owns them.
        The registry never removes segments that no manifest references.
        """
        check_prefix(prefix)
        cutoff = time.time() - older_than
        swept = 0
        for directory, names, newest in self._segment_directories(prefix):
            key = self._upload_key(directory)
            if (key is None or not key.startswith(prefix) or "/_uploads/" in "/" + key
                    or newest > cutoff or self._references(key, directory)):
                continue
            for name in names:
                self._delete_object(name)
            swept += 1
        return swept

    def _segment_directories(self, prefix: str) -> Iterator[tuple[str, list[str], float]]:
        """Each segment directory named for an upload to a key under ``prefix``: its segments'
        names and the newest one's mtime."""
        wanted = ("/" + prefix).encode().hex()
        listing = self.segments_root + (wanted[:3] + "/" + wanted[3:] if len(wanted) > 3 else wanted)
        where = f"swift list swift://{self.container}/{listing}"
        entries = ((_required(entry, "name", where), _listed_time(entry, where))
                   for entry in self._list_names(listing))
        for directory, group in itertools.groupby(entries, lambda entry: entry[0].rpartition("/")[0]):
            names, times = zip(*group)
            yield directory, list(names), max(times) / 1e6

    def _references(self, key: str, directory: str) -> bool:
        """Whether the object at ``key`` is a DLO over the segments in ``directory``."""
        try:
            manifest = self._head(self.files_root + key).get("x-object-manifest")
        except NotFound:
            return False
        return self._segment_prefix(manifest) == directory

    def _upload_key(self, directory: str) -> str | None:
        """The key a segment directory was made for, if ``swiftSegmentPath`` named it."""
        name = directory[len(self.segments_root):].replace("/", "", 1)
        tail = 2 * RANDOM_BYTES + len(EMPTY_SHA1)
        if not name.endswith(EMPTY_SHA1) or len(name) <= tail:
            return None
        try:
            path = bytes.fromhex(name[:-tail]).decode()
        except ValueError:
            return None
        return path[1:] if path.startswith("/") and len(path) > 1 else None


class _SegmentWriter(PartWriter):
    """Chunks are DLO segments; the commit PUTs the manifest, then HEADs it.

    An object that ends within its first chunk is one plain PUT (``PartWriter``), not a
    one-segment DLO: a 2.8 registry reads plain objects as it reads the manifests and links it
    writes itself (``Stat`` = HEAD, ``Reader`` = ranged GET), ``Move`` copies them
    (``ObjectMove``) and ``Delete`` and ``garbage-collect`` delete them, finding no
    ``X-Object-Manifest`` to follow. An empty DLO would even stall the registry: its ``Stat``
    and ``Reader`` wait 15 s for a DLO of 0 bytes to grow ("segments not visible yet"), then
    fail. The HEAD after the manifest PUT checks the DLO's length, as the registry's
    ``waitForSegmentsToShowUp`` does, and gives the etag listings show. A commit that fails
    after the manifest PUT deletes the manifest again on abort, then the segments.
    """

    def __init__(self, driver: SwiftDriver, key: str) -> None:
        super().__init__(driver, key, driver.chunk_size)
        self._swift = driver
        self._name = driver.files_root + key
        self.directory: str | None = None
        self._sent = 0
        self._manifest_put = False

    def _send_part(self, part: bytes) -> None:
        if self.directory is None:
            self.directory = self._swift.segment_directory(self._key)
        self._swift._put(_segment_name(self.directory, self._sent + 1), part)
        self._sent += 1

    def _finish(self, last: bytes) -> str:
        self._send_part(last)
        self._manifest_put = True
        self._swift._put(self._name, b"", {"X-Object-Manifest": f"{self._swift.container}/{self.directory}"})

        def check() -> ObjectInfo:
            info = self._swift._info(self._key, self._swift._head_once(self._name))
            if info.size != self.size:
                raise TransientError(f"swift head swift://{self._swift.container}/{self._name}: "
                                     f"{info.size} of {self.size} bytes visible")
            return info

        return retrying(check).etag

    def _cancel(self) -> None:
        if self._manifest_put:
            self._swift._delete_object(self._name)
        for number in range(1, self._sent + 1):
            self._swift._delete_object(_segment_name(self.directory, number))
