"""Objects in an Azure Blob Storage container (or Azurite), via azure-storage-blob.

Keys become blob names in one of two layout flavours (:class:`~drivers.base.LayoutFlavours`),
as the two Distribution versions name them (``registry/storage/driver/azure/azure.go``):

- ``"2.8"`` (v2.8.3): every method passes the registry path straight to
  ``GetBlobReference(path)``, so names keep the path's leading slash
  (``/docker/registry/v2/...``) and there is no root directory (2.8 reads only ``accountname``,
  ``accountkey``, ``container`` and ``realm``; a ``rootdirectory`` is ignored).
- ``"3"`` (v3.0.0 to v3.1.1): ``blobName(path)`` is
  ``TrimLeft(TrimRight(rootdirectory, "/") + path, "/")``: ``docker/registry/v2/...`` or
  ``<root>/docker/registry/v2/...``, never a leading slash. The driver's default.

Azure keeps ``/docker/x`` and ``docker/x`` as two blobs, and a prefix listing sees only its
own form. Either version reads blobs of any type (``Reader``/``GetContent`` are ranged GETs),
never overwrites blob data (its ``moveBlob`` and ``blobStore.Put`` skip existing blobs) and
deletes any type, so every object written here is a block blob, atomically visible (a
server-side copy keeps its source's type, as Copy Blob does). The registries themselves write:
2.8 block blobs in ``PutContent`` (manifests, links) and append blobs in ``Writer`` (uploads,
kept as append blobs by ``Move``'s Copy Blob: layers, configs); 3.x append blobs in both.

A blob of another type at a key being written (an append blob left by a registry) is deleted
first where Azure refuses to change the type in place (409 ``InvalidBlobType``), as both
versions' ``PutContent`` do for their "legacy" type. (3.0.0 to 3.1.1 invert that test: their
``PutContent`` keeps a block blob and then fails to create an append blob over it, 409.) 2.8
creates its container at start, 3.x does not; neither does this driver.

The SDK's retries are off (``retry_total=0``): each call is retried by
:func:`drivers.retry.retrying`, and every HTTP request the SDK's pipeline sends is counted by
one request hook. The account key, client secret or connection string is handed to the SDK
and kept nowhere else.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import requests
import requests.adapters
from azure.core.exceptions import (AzureError, ClientAuthenticationError, HttpResponseError,
                                   IncompleteReadError, ResourceExistsError, ServiceRequestError,
                                   ServiceResponseError)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import (BlobClient, BlobPrefix, BlobProperties, BlobSasPermissions,
                                ContainerClient, generate_blob_sas)

from drivers.base import (CHUNK_SIZE, ChunkedWriter, LayoutFlavours, ObjectInfo, PartWriter,
                          ServerSideCopy, StorageDriver, check_key, check_prefix, delimited_pages,
                          error_for_status, token_pages, whole_prefix, without_url_queries)
from drivers.errors import AccessDenied, ConfigError, NotFound, StorageError, TransientError
from drivers.parameters import parse_parameters, root_prefix
from drivers.retry import retrying

T = TypeVar("T")

MIB = 1024 * 1024
DEFAULT_CHUNK_SIZE = 8 * MIB
DEFAULT_MAX_CONCURRENCY = 32
DEFAULT_REALM = "core.windows.net"
PAGE_SIZE = 1000
MAX_BLOCKS = 50_000
"""Azure's limit of committed blocks per blob: a streamed object holds at most this many chunks."""
COPY_WAIT = 1800.0
"""How long :meth:`AzureDriver.copy_from` waits for a pending copy before aborting it (seconds)."""
COPY_POLL = (0.2, 5.0)
"""First and longest pause between two looks at a pending copy (seconds)."""
SAS_CLOCK_SKEW = timedelta(minutes=5)
UNFINISHED_COPIES = frozenset({"pending", "aborted", "failed"})
"""Copy states of a blob whose content is not (or never will be) the source's: hidden."""

FLAVOURS = ("2.8", "3")
DEFAULT_FLAVOUR = "3"
CREDENTIAL_TYPES = ("shared_key", "client_secret", "default_credentials")

PARAMETERS: dict[str, type | dict] = {
    "accountname": str, "accountkey": str, "container": str, "realm": str, "rootdirectory": str,
    "connectionstring": str, "endpoint": str, "chunksize": int, "maxconcurrency": int,
    "serviceurl": str, "skipverify": bool, "max_retries": int, "retry_delay": str,
    "credentials": {"type": str, "clientid": str, "tenantid": str, "secret": str},
}
"""Distribution's Azure parameters of 2.8 (``accountname``, ``accountkey``, ``container``,
``realm``) and 3.x (``parser.go`` ``DriverParameters``: also ``connectionstring``,
``rootdirectory``, ``serviceurl``, ``credentials``, ``max_retries``, ``retry_delay``,
``skipverify``), plus ``endpoint`` (the account URL, e.g. Azurite's
``http://127.0.0.1:PORT/ACCOUNT``; 3.x calls it ``serviceurl``), ``chunksize`` (the block size
of streamed uploads and ranged reads) and ``maxconcurrency`` (the size of the HTTP connection
pool).

``credentials.type`` chooses the credential as 3.x's ``newClient`` does: ``shared_key``
(``accountkey``), ``client_secret`` (``tenantid``, ``clientid``, ``secret``; azure-identity's
``ClientSecretCredential``) or ``default_credentials`` (``DefaultAzureCredential``). Without a
``credentials`` block, an ``accountkey`` is a shared key and no key means
``DefaultAzureCredential``. ``skipverify`` turns TLS certificate checks off. In 3.x,
``max_retries`` and ``retry_delay`` bound the registry's own polling of a pending copy in
``Move`` (``-1``: abort it at once) and its re-tries of an append block after a timeout; the
replicator neither moves nor appends, retries every request by its one policy
(:mod:`drivers.retry`) with the SDK's retries off, and bounds a server-side copy by
``copy_wait``: they are checked and otherwise have no effect."""

LIMITS = {"chunksize": (MIB, None), "maxconcurrency": (1, None), "max_retries": (-1, None)}
_GO_DURATION = re.compile(r"0|(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")

_BROKEN_CONNECTION = (ServiceRequestError, ServiceResponseError, IncompleteReadError,
                      requests.ConnectionError, ConnectionError, TimeoutError)


def _request_kind(method: str, url: str, headers) -> str:
    comp = parse_qs(urlsplit(url).query).get("comp", [""])[0]
    if method == "GET":
        return "list" if comp in ("list", "blocklist") else "get"
    if method == "PUT" and "x-ms-copy-source" in {name.lower() for name in headers}:
        return "copy"
    if method == "PUT" and comp == "copy":  # Abort Copy Blob
        return "delete"
    return {"HEAD": "head", "DELETE": "delete"}.get(method, "put")


def _info(key: str, blob: BlobProperties) -> ObjectInfo:
    """The blob's metadata; ``TransientError`` if the answer lacked any of it (cut short)."""
    if blob.size is None or not blob.etag or blob.last_modified is None:
        raise TransientError(f"azure {blob.name}: the answer has no size, ETag or time")
    return ObjectInfo(key, blob.size, blob.etag.strip('"'), blob.last_modified.timestamp())


def _etag(result: dict, where: str) -> str:
    """The ETag of a write's answer; ``TransientError`` without one (an answer cut short)."""
    etag = result.get("etag") if isinstance(result, dict) else None
    if not etag:
        raise TransientError(f"azure {where}: the answer has no ETag")
    return etag.strip('"')


def _detail(error: AzureError) -> str:
    """The service's error code, or the first line of the message without URL queries."""
    code = getattr(error, "error_code", None)
    return getattr(code, "value", code) or without_url_queries((str(error).splitlines() or [""])[0])


def _finished(blob: BlobProperties) -> bool:
    """False for the destination of a copy that is pending, aborted or failed: Azure shows it
    at its final size before (or without) its bytes, so it is neither listed nor stat'ed."""
    return blob.copy.status not in UNFINISHED_COPIES


def _identity_credential(kind: str, config: dict) -> object:
    """An azure-identity credential: ``ClientSecretCredential`` or ``DefaultAzureCredential``."""
    try:
        import azure.identity
    except ImportError:
        raise ConfigError("credentials.type", f"{kind} needs azure-identity; install it") from None
    if kind == "default_credentials":
        return azure.identity.DefaultAzureCredential()
    secret = config.get("credentials", {})
    for name in ("tenantid", "clientid", "secret"):
        if not secret.get(name):
            raise ConfigError(f"credentials.{name}",
                              "is required with credentials.type client_secret")
    return azure.identity.ClientSecretCredential(secret["tenantid"], secret["clientid"],
                                                 secret["secret"])


def _shared_key(config: dict) -> dict:
    try:
        base64.b64decode(config["accountkey"], validate=True)
    except binascii.Error:
        raise ConfigError("accountkey", "must be the base64 account key") from None
    return {"account_name": config["accountname"], "account_key": config["accountkey"]}


def _credential(config: dict) -> object:
    """The credential a block names: ``credentials.type`` as 3.x reads it, else 2.8's key."""
    if "credentials" not in config:
        return (_shared_key(config) if config.get("accountkey")
                else _identity_credential("default_credentials", config))
    kind = config["credentials"].get("type")
    if kind not in CREDENTIAL_TYPES:
        raise ConfigError("credentials.type", f"must be one of {', '.join(CREDENTIAL_TYPES)}")
    if kind != "shared_key":
        return _identity_credential(kind, config)
    if not config.get("accountkey"):
        raise ConfigError("accountkey", "is required with credentials.type shared_key")
    return _shared_key(config)


def _account_url(config: dict) -> str:
    if "endpoint" in config and "serviceurl" in config:
        raise ConfigError("serviceurl", "conflicts with endpoint, which is the same URL")
    realm = config.get("realm", DEFAULT_REALM)
    return (config.get("endpoint") or config.get("serviceurl")
            or f"https://{config['accountname']}.blob.{realm}")


class AzureDriver(StorageDriver, ServerSideCopy, LayoutFlavours):
    """Objects under ``root`` (``""`` or ``"some/path/"``) in ``container``, named as
    ``flavour`` names them (see the module docstring; ``"2.8"`` has no root).

    The container is reached at ``account_url`` with ``credential`` (an account key mapping or
    a token credential), or through ``connection_string``. ``chunk_size`` is the block size of
    :meth:`writer` and the range of each read request; ``max_connections`` sizes the HTTP
    connection pool; ``verify`` false skips TLS certificate checks. Errors as
    :class:`StorageDriver` states.

    Server-side copies (:meth:`copy_from`, Copy Blob) come from any driver on the same blob
    service (``*.blob.core.windows.net``, or one Azurite server) whose account key can sign a
    read SAS; ``copy_wait`` bounds the wait for a pending copy.
    """

    kind = "azure"
    flavours = FLAVOURS

    def __init__(self, container: str, *, account_url: str | None = None, credential: object = None,
                 connection_string: str | None = None, root: str = "",
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 max_connections: int = DEFAULT_MAX_CONCURRENCY, verify: bool = True) -> None:
        super().__init__()
        self.container = container
        self.root = root
        self.chunk_size = chunk_size
        self.flavour, self.flavour_known = DEFAULT_FLAVOUR, False
        session = requests.Session()
        pool = requests.adapters.HTTPAdapter(pool_connections=max_connections,
                                             pool_maxsize=max_connections)
        for scheme in ("http://", "https://"):
            session.mount(scheme, pool)
        options = {"retry_total": 0, "raw_request_hook": self._count,
                   "transport": RequestsTransport(session=session, connection_verify=verify),
                   "max_single_get_size": chunk_size, "max_chunk_get_size": chunk_size,
                   "max_block_size": chunk_size}
        if connection_string is not None:
            self._container = ContainerClient.from_connection_string(connection_string, container,
                                                                     **options)
        else:
            self._container = ContainerClient(account_url, container, credential=credential, **options)
        self.account = self._container.account_name
        self.copy_wait = COPY_WAIT

    @classmethod
    def from_config(cls, params: dict) -> AzureDriver:
        config = parse_parameters(params, PARAMETERS, limits=LIMITS, required=("container",))
        if not _GO_DURATION.fullmatch(config.get("retry_delay", "0s")):
            raise ConfigError("retry_delay", "must be a duration such as 100ms or 2s")
        options = {"root": root_prefix(config.get("rootdirectory", "")),
                   "chunk_size": config.get("chunksize", DEFAULT_CHUNK_SIZE),
                   "max_connections": config.get("maxconcurrency", DEFAULT_MAX_CONCURRENCY),
                   "verify": not config.get("skipverify", False)}
        if "connectionstring" in config:
            return cls._from_connection_string(config, options)
        if not config.get("accountname"):
            raise ConfigError("accountname", "is required (or give connectionstring)")
        url, credential = _account_url(config), _credential(config)
        try:
            return cls(config["container"], account_url=url, credential=credential, **options)
        except ValueError as error:  # the SDK's word on the URL, e.g. that tokens need https
            field = next((name for name in ("endpoint", "serviceurl") if name in config), "realm")
            raise ConfigError(field, str(error)) from None

    @classmethod
    def _from_connection_string(cls, config: dict, options: dict) -> AzureDriver:
        for name in ("accountkey", "endpoint", "serviceurl", "credentials"):
            if name in config:
                raise ConfigError(name, "conflicts with connectionstring, which holds the "
                                        "account's endpoint and key")
        try:
            driver = cls(config["container"], connection_string=config["connectionstring"], **options)
        except ValueError:
            raise ConfigError("connectionstring", "is malformed") from None
        if config.get("accountname", driver.account) != driver.account:
            raise ConfigError("accountname", "differs from the account of connectionstring")
        return driver

    def describe(self) -> str:
        return f"azure://{self.account}/{self.container}/{self.root}".rstrip("/")

    def _where(self, key: str) -> str:
        return f"azure://{self.account}/{self.container}/{self._names}{key}"

    @property
    def _names(self) -> str:
        return self._names_in(self.flavour)

    def _names_in(self, flavour: str) -> str:
        """What precedes a key in its blob name: 2.8's leading slash, or 3.x's root."""
        return "/" if flavour == "2.8" else self.root

    def required_flavour(self) -> str | None:
        return "3" if self.root else None

    def use_flavour(self, flavour: str) -> None:
        if flavour not in FLAVOURS:
            raise ConfigError("layout", f"must be one of {', '.join(FLAVOURS)}")
        if flavour == "2.8" and self.root:
            raise ConfigError("layout", "2.8 names azure blobs without a root directory: "
                                        "remove rootdirectory or use layout 3")
        self.flavour, self.flavour_known = flavour, True

    def flavours_present(self, prefix: str) -> set[str]:
        check_prefix(prefix)
        return {flavour for flavour in FLAVOURS
                if self._call("list", prefix, lambda flavour=flavour: self._any_blob(flavour, prefix))}

    def _any_blob(self, flavour: str, prefix: str) -> bool:
        pages = self._container.list_blobs(name_starts_with=self._names_in(flavour) + prefix,
                                           results_per_page=1).by_page()
        return bool(list(next(pages)))

    def _count(self, request) -> None:
        http = request.http_request
        self.requests.add(_request_kind(http.method, http.url, http.headers))

    @contextmanager
    def _errors(self, operation: str, key: str) -> Iterator[None]:
        where = f"azure {operation} {self._where(key)}"
        try:
            yield
        except ClientAuthenticationError as error:
            status = error.status_code or "credentials refused"
            raise AccessDenied(f"{where}: {status} {_detail(error)}") from None
        except _BROKEN_CONNECTION as error:
            raise TransientError(f"{where}: {type(error).__name__}: {_detail(error)}") from None
        except HttpResponseError as error:
            status = error.status_code
            if status is None:  # a response body that broke after the SDK's own re-reads
                raise TransientError(f"{where}: {_detail(error)}") from None
            raise error_for_status(status, f"{where}: {status} {_detail(error)}") from None
        except AzureError as error:
            raise StorageError(f"{where}: {type(error).__name__}: {_detail(error)}") from None
        except StorageError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:  # an answer cut short
            raise TransientError(f"{where}: incomplete answer ({type(error).__name__}: "
                                 f"{without_url_queries(str(error))})") from None

    def _call(self, operation: str, key: str, call: Callable[[], T]) -> T:
        """One SDK call about ``key`` (or a prefix), with errors translated and retried."""

        def attempt() -> T:
            with self._errors(operation, key):
                return call()

        return retrying(attempt)

    def _blob(self, key: str) -> BlobClient:
        return self._container.get_blob_client(self._names + key)

    def list(self, prefix: str = "") -> Iterator[list[ObjectInfo]]:
        check_prefix(prefix)
        yield from token_pages(
            lambda token: self._call("list", prefix, lambda: self._list_page(prefix, token)))

    def _list_page(self, prefix: str, token: str | None) -> tuple[list[ObjectInfo], str | None]:
        names = self._names
        pages = self._container.list_blobs(name_starts_with=names + prefix, include=["copy"],
                                           results_per_page=PAGE_SIZE).by_page(continuation_token=token)
        page = [_info(blob.name[len(names):], blob) for blob in next(pages) if _finished(blob)]
        return page, pages.continuation_token

    def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> Iterator[list[str]]:
        return delimited_pages(prefix, delimiter, lambda token: self._call(
            "list", prefix, lambda: self._prefix_page(prefix, delimiter, token)))

    def _prefix_page(self, prefix: str, delimiter: str, token: str | None) -> tuple[list[str], str | None]:
        names = self._names
        pages = self._container.walk_blobs(name_starts_with=names + prefix, delimiter=delimiter,
                                           results_per_page=PAGE_SIZE).by_page(continuation_token=token)
        page = [whole_prefix(item.name[len(names):], delimiter) for item in next(pages)
                if isinstance(item, BlobPrefix)]
        return page, pages.continuation_token

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)

        def properties() -> ObjectInfo:
            blob = self._blob(key).get_blob_properties()
            if not _finished(blob):
                raise NotFound(f"azure stat {self._where(key)}: a copy to it is {blob.copy.status}")
            return _info(key, blob)

        return self._call("stat", key, properties)

    def _read_range(self, key: str, offset: int) -> Iterator[bytes]:
        blob = self._blob(key)
        with self._errors("get", key):
            try:
                download = blob.download_blob(offset=offset, max_concurrency=1)
            except HttpResponseError as error:
                if error.status_code == 416:
                    return
                raise
            for chunk in download.chunks():
                for start in range(0, len(chunk), CHUNK_SIZE):
                    yield chunk[start:start + CHUNK_SIZE]

    def write(self, key: str, data: bytes) -> str:
        check_key(key)
        blob = self._blob(key)
        return self._call("upload", key, lambda: _etag(_put_block_blob(blob, data), self._where(key)))

    def writer(self, key: str) -> ChunkedWriter:
        return _BlockWriter(self, check_key(key))

    def writer_requests(self, size: int) -> dict[str, int]:
        """One Put Blob within a block; else a Put Block per block and the Put Block List."""
        return PartWriter.requests(self, size, self.chunk_size, {"put": 1})

    def _account_key(self) -> str | None:
        return getattr(self._container.credential, "account_key", None)

    def _service(self) -> tuple[str, str]:
        """The blob service this account is on: scheme and host, less the account's own label
        (``blob.core.windows.net``; an emulator's ``host:port`` serves accounts by path)."""
        url = urlsplit(self._container.url)
        host = url.netloc.lower()
        return url.scheme, host.removeprefix(f"{self.account.lower()}.")

    def signed_read_url(self, key: str, lifetime: float) -> str:
        """The URL of ``key`` with a read-only shared access signature valid for ``lifetime``
        seconds, made locally from the account key (no request). It grants read access to
        whoever holds it: hand it to the storage service only, never log it. Raises
        ``AccessDenied`` when this driver has no account key to sign with."""
        check_key(key)
        account_key = self._account_key()
        if account_key is None:
            raise AccessDenied(f"azure sign {self._where(key)}: no account key to sign a SAS with")
        now = datetime.now(timezone.utc)
        blob = self._blob(key)
        sas = generate_blob_sas(self.account, self.container, self._names + key, account_key=account_key,
                                permission=BlobSasPermissions(read=True), start=now - SAS_CLOCK_SKEW,
                                expiry=now + timedelta(seconds=lifetime))
        return f"{blob.url}?{sas}"

    def can_copy_from(self, source: StorageDriver) -> bool:
        return (isinstance(source, AzureDriver) and source._account_key() is not None
                and source._service() == self._service())

    def copy_from(self, source: StorageDriver, key: str, size: int | None = None) -> str:
        """Copy Blob from a read SAS of ``source``'s blob; while the copy is pending, look at it
        with pauses growing from 0.2 s to 5 s, and abort it after ``copy_wait`` seconds."""
        check_key(key)
        if not isinstance(source, AzureDriver):
            raise TypeError(f"an Azure driver cannot copy server-side from {source.describe()}")
        url = source.signed_read_url(key, self.copy_wait + SAS_CLOCK_SKEW.total_seconds())
        blob = self._blob(key)
        copy = self._call("copy", key, lambda: blob.start_copy_from_url(url))
        status, etag, description = copy["copy_status"], copy["etag"], ""
        deadline, pause = time.monotonic() + self.copy_wait, COPY_POLL[0]
        while status == "pending":
            if time.monotonic() >= deadline:
                self._abandon_copy(key, blob, copy["copy_id"])
                raise TransientError(f"azure copy {self._where(key)}: still pending after "
                                     f"{self.copy_wait:g} s; aborted")
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, COPY_POLL[1])
            properties = self._call("stat", key, blob.get_blob_properties)
            if properties.copy.id != copy["copy_id"]:
                raise StorageError(f"azure copy {self._where(key)}: another copy replaced this one")
            status, etag = properties.copy.status, properties.etag
            description = properties.copy.status_description or ""
        if status != "success":
            with suppress(StorageError):
                self.delete(key)
            raise StorageError(f"azure copy {self._where(key)}: {status} "
                               f"{without_url_queries(description)}".rstrip())
        return etag.strip('"')

    def _abandon_copy(self, key: str, blob: BlobClient, copy_id: str) -> None:
        """Abort a pending copy and delete the empty blob it leaves; never raises."""
        with suppress(StorageError):
            self._call("abort_copy", key, lambda: blob.abort_copy(copy_id))
        with suppress(StorageError):
            self.delete(key)

    def delete(self, key: str) -> None:
        check_key(key)
        blob = self._blob(key)
        with suppress(NotFound):
            self._call("delete", key, lambda: blob.delete_blob(delete_snapshots="include"))


def _put_block_blob(blob: BlobClient, data: bytes) -> dict:
    """Put Blob as a block blob. Over a blob of another type, which Azure will not change in
    place (409 ``InvalidBlobType``), delete that blob first, as Distribution's ``PutContent``
    does (2.8.3 and 3.x alike)."""
    try:
        return blob.upload_blob(data, overwrite=True)
    except ResourceExistsError as error:
        if getattr(error.error_code, "value", error.error_code) != "InvalidBlobType":
            raise
    blob.delete_blob()
    return blob.upload_blob(data, overwrite=True)


class _BlockWriter(PartWriter):
    """Parts are staged blocks, committed as the block list with the last.

    Block ids carry a per-writer prefix, so writers to the same key do not mix blocks. An
    aborted writer's blocks are never committed: nothing is visible, and Azure discards
    uncommitted blocks after a week.
    """

    def __init__(self, driver: AzureDriver, key: str) -> None:
        super().__init__(driver, key, driver.chunk_size)
        self._azure = driver
        self._blob = driver._blob(key)
        self._prefix = uuid.uuid4().hex
        self._blocks: list[str] = []

    def _send_part(self, part: bytes) -> None:
        if len(self._blocks) == MAX_BLOCKS:
            raise StorageError(f"azure stage_block {self._azure.describe()}/{self._key}: more than "
                               f"{MAX_BLOCKS} blocks of {self._azure.chunk_size} bytes")
        block_id = base64.b64encode(f"{self._prefix}-{len(self._blocks):05d}".encode()).decode()
        self._azure._call("stage_block", self._key, lambda: self._blob.stage_block(block_id, part))
        self._blocks.append(block_id)

    def _finish(self, last: bytes) -> str:
        self._send_part(last)
        where = self._azure._where(self._key)
        return self._azure._call("commit_block_list", self._key,
                                 lambda: _etag(self._blob.commit_block_list(self._blocks), where))

    def _cancel(self) -> None:
        """Nothing to do: uncommitted blocks are invisible and expire."""
