"""Objects in a Google Cloud Storage bucket (or fake-gcs-server), via google-cloud-storage.

Keys live under the configured root directory in the bucket. The SDK's retries are off
(``retry=None`` on every call): each call is retried by :func:`drivers.retry.retrying`. All
HTTP goes through one ``requests`` session whose transport adapter counts every request; the
driver streams downloads and sends resumable-upload chunks on that session itself. Credentials
are handed to google-auth and kept nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from typing import TypeVar
from urllib.parse import quote

import google.api_core.exceptions
import google.auth
import google.auth.exceptions
import requests
import requests.adapters
import urllib3.exceptions
from google.api_core.client_info import ClientInfo
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.oauth2 import service_account

from drivers.base import (CHUNK_SIZE, ChunkedWriter, ObjectInfo, PartWriter, RequestCounter,
                          ServerSideCopy, StorageDriver, check_key, check_prefix, delimited_pages,
                          error_for_status, token_pages, whole_prefix, without_url_queries)
from drivers.errors import AccessDenied, ConfigError, NotFound, StorageError, TransientError
from drivers.parameters import parse_parameters, root_prefix
from drivers.retry import retrying

T = TypeVar("T")

MIB = 1024 * 1024
UPLOAD_QUANTUM = 256 * 1024
"""Every resumable-upload chunk but the last is a multiple of this many bytes."""
DEFAULT_CHUNK_SIZE = 8 * MIB
DEFAULT_MAX_CONCURRENCY = 32
SDK_MULTIPART_LIMIT = 8 * MIB
"""google-cloud-storage uploads up to this many bytes in one request, larger ones resumably."""
SDK_RESUMABLE_CHUNK = 100 * MIB
DEFAULT_ENDPOINT = "https://storage.googleapis.com"
PAGE_SIZE = 1000
TIMEOUT = (10, 120)
SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
CONTENT_TYPE = "application/octet-stream"
LIST_FIELDS = "items(name,size,generation,updated),nextPageToken"
PREFIX_FIELDS = "prefixes,nextPageToken"

PARAMETERS: dict[str, type] = {
    "bucket": str, "keyfile": str, "credentials": object, "rootdirectory": str, "chunksize": int,
    "maxconcurrency": int, "useragent": str, "endpoint": str, "project": str,
}
"""Distribution's GCS parameters of 2.8 and 3.x (3.x adds ``useragent``; ``maxconcurrency``
sizes the HTTP connection pool), plus ``endpoint`` (an emulator or private endpoint) and
``project``. Both versions name objects ``<root>/docker/registry/v2/...`` (``pathToKey``) and
hide objects of content type ``application/x-docker-upload-session`` (their upload sessions)
from listings and stats, so objects here are written as ``application/octet-stream``."""

LIMITS = {"chunksize": (UPLOAD_QUANTUM, None), "maxconcurrency": (1, None)}

_SESSION_GONE = frozenset({404, 410, 499})
"""What cancelling a resumable session answers: 499 once cancelled, 404/410 when already gone."""
_BROKEN_CONNECTION = (google.auth.exceptions.TransportError, requests.ConnectionError,
                      requests.Timeout, requests.exceptions.ChunkedEncodingError,
                      urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, DataCorruption)


def _request_kind(method: str, url: str) -> str:
    path, _, query = url.partition("?")
    if method == "GET":
        return "get" if "alt=media" in query.split("&") else "list" if path.endswith("/o") else "head"
    if method == "POST" and ("/copyTo/" in path or "/rewriteTo/" in path or path.endswith("/compose")):
        return "copy"
    return {"HEAD": "head", "DELETE": "delete"}.get(method, "put")


class _CountingAdapter(requests.adapters.HTTPAdapter):
    """Counts every request the session sends; urllib3's own retries are off."""

    def __init__(self, counter: RequestCounter, pool_size: int) -> None:
        super().__init__(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self._counter = counter

    def send(self, request, **kwargs):
        self._counter.add(_request_kind(request.method, request.url))
        return super().send(request, **kwargs)


def _service_account(config: dict) -> Credentials:
    accounts = service_account.Credentials
    if "keyfile" in config:
        try:
            return accounts.from_service_account_file(config["keyfile"], scopes=SCOPES)
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise ConfigError("keyfile", f"cannot be read: {reason}") from None
        except ValueError:
            raise ConfigError("keyfile", "is not a service-account JSON key") from None
    info = config["credentials"]
    try:
        info = json.loads(info) if isinstance(info, str) else info
        return accounts.from_service_account_info(dict(info), scopes=SCOPES)
    except (ValueError, KeyError, TypeError):
        raise ConfigError("credentials", "is not a service-account key (a JSON object)") from None


def _credentials(config: dict) -> Credentials:
    if "keyfile" in config and "credentials" in config:
        raise ConfigError("credentials", "give keyfile or credentials, not both")
    if "keyfile" in config or "credentials" in config:
        return _service_account(config)
    if "endpoint" in config:
        return AnonymousCredentials()
    try:
        credentials, _ = google.auth.default(scopes=SCOPES)
    except google.auth.exceptions.DefaultCredentialsError:
        raise ConfigError("keyfile", "is required: no credentials given and no Application "
                                     "Default Credentials found") from None
    return credentials


def _info(key: str, blob: storage.Blob) -> ObjectInfo:
    """The object's metadata; ``TransientError`` if the answer lacked any of it (cut short)."""
    if blob.size is None or blob.generation is None or blob.updated is None:
        raise TransientError(f"gcs gs://{blob.bucket.name}/{blob.name}: the answer has no "
                             f"size, generation or update time")
    return ObjectInfo(key, blob.size, str(blob.generation), blob.updated.timestamp())


def _generation(response: requests.Response, where: str) -> str:
    """The ``generation`` of a finished upload's JSON answer; ``TransientError`` without one."""
    try:
        return str(response.json()["generation"])
    except (ValueError, KeyError, TypeError):
        raise TransientError(f"{where}: the answer has no generation") from None


def _failure(error: Exception) -> str:
    return f"{type(error).__name__}: {without_url_queries(str(error))}"


def _persisted(response: requests.Response) -> int:
    """How many bytes a resumable session holds, from a 308 answer's ``Range: bytes=0-N``."""
    held = response.headers.get("Range", "")
    return int(held.rpartition("-")[2]) + 1 if held else 0


def _identity(credentials: Credentials) -> tuple[str, str | None]:
    """Whose credentials these are, without a request: their kind and service account."""
    kind = type(credentials)
    return f"{kind.__module__}.{kind.__qualname__}", getattr(credentials, "service_account_email", None)


class GCSDriver(StorageDriver, ServerSideCopy):
    """Objects under ``root`` (``""`` or ``"some/path/"``) in ``bucket``, as ``credentials`` allow.

    ``chunk_size`` (a multiple of 256 KiB) is the resumable-upload chunk of :meth:`writer`;
    ``max_connections`` sizes the HTTP connection pool. Errors as :class:`StorageDriver` states.
    Server-side copies (:meth:`copy_from`, the JSON API's ``rewrite``) go to drivers on the
    same endpoint with the same credentials.
    """

    kind = "gcs"

    def __init__(self, credentials: Credentials, bucket: str, *, root: str = "",
                 endpoint: str = DEFAULT_ENDPOINT, project: str | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 max_connections: int = DEFAULT_MAX_CONCURRENCY, user_agent: str | None = None) -> None:
        super().__init__()
        if chunk_size <= 0 or chunk_size % UPLOAD_QUANTUM:
            raise ValueError(f"chunk_size must be a positive multiple of {UPLOAD_QUANTUM}")
        self.bucket = bucket
        self.root = root
        self.chunk_size = chunk_size
        self._endpoint = endpoint.rstrip("/")
        self._session = AuthorizedSession(credentials)
        adapter = _CountingAdapter(self.requests, max_connections)
        for scheme in ("http://", "https://"):
            self._session.mount(scheme, adapter)
        self._client = storage.Client(project=project, credentials=credentials, _http=self._session,
                                      client_info=ClientInfo(user_agent=user_agent),
                                      client_options={"api_endpoint": self._endpoint})
        # google-cloud-storage 3.x otherwise fetches bucket metadata in a background thread on
        # the first object call, for tracing attributes: an uncounted, unretried extra request.
        self._client._bucket_metadata_cache = None
        self._bucket = self._client.bucket(bucket)
        self._copy_identity = (self._endpoint, _identity(credentials))

    @classmethod
    def from_config(cls, params: dict) -> GCSDriver:
        config = parse_parameters(params, PARAMETERS, limits=LIMITS, required=("bucket",))
        config["rootdirectory"] = root_prefix(config.get("rootdirectory", ""))
        if config.get("chunksize", DEFAULT_CHUNK_SIZE) % UPLOAD_QUANTUM:
            raise ConfigError("chunksize", f"must be a multiple of {UPLOAD_QUANTUM} (256 KiB)")
        credentials = _credentials(config)
        project = config.get("project") or getattr(credentials, "project_id", None)
        return cls(credentials, config["bucket"], root=config["rootdirectory"],
                   endpoint=config.get("endpoint", DEFAULT_ENDPOINT), project=project,
                   chunk_size=config.get("chunksize", DEFAULT_CHUNK_SIZE),
                   max_connections=config.get("maxconcurrency", DEFAULT_MAX_CONCURRENCY),
                   user_agent=config.get("useragent"))

    def describe(self) -> str:
        return f"gs://{self.bucket}/{self.root}".rstrip("/")

    @contextmanager
    def _errors(self, operation: str, key: str) -> Iterator[None]:
        where = f"gcs {operation} gs://{self.bucket}/{self.root}{key}"
        try:
            yield
        except google.api_core.exceptions.GoogleAPICallError as error:
            details = [item.get("message") for item in error.errors or () if isinstance(item, dict)]
            detail = next(filter(None, details), type(error).__name__)
            raise error_for_status(error.code, f"{where}: {error.code} {detail}") from None
        except InvalidResponse as error:
            status = getattr(error.response, "status_code", None)
            raise error_for_status(status, f"{where}: unexpected answer {status}") from None
        except google.auth.exceptions.RefreshError as error:
            kind = TransientError if error.retryable else AccessDenied
            reason = error.args[0] if error.args else type(error).__name__
            raise kind(f"{where}: credentials refused: {reason}") from None
        except _BROKEN_CONNECTION as error:
            raise TransientError(f"{where}: {_failure(error)}") from None
        except (requests.RequestException, google.auth.exceptions.GoogleAuthError) as error:
            raise StorageError(f"{where}: {_failure(error)}") from None

    def _call(self, operation: str, key: str, call: Callable[[], T]) -> T:
        """One SDK or HTTP call about ``key`` (or a prefix), with errors translated and retried."""

        def attempt() -> T:
            with self._errors(operation, key):
                return call()

        return retrying(attempt)

    def _send(self, method: str, url: str, *, ok: frozenset[int] = frozenset(),
              **args) -> requests.Response:
        """One request on the session; an error status (outside ``ok``) raises the SDK's error."""
        response = self._session.request(method, url, timeout=TIMEOUT, allow_redirects=False, **args)
        if response.status_code >= 400 and response.status_code not in ok:
            with closing(response):
                raise google.api_core.exceptions.from_http_response(response)
        return response

    def _blob(self, key: str) -> storage.Blob:
        return self._bucket.blob(self.root + key)

    def list(self, prefix: str = "") -> Iterator[list[ObjectInfo]]:
        check_prefix(prefix)
        yield from token_pages(
            lambda token: self._call("list", prefix, lambda: self._list_page(prefix, token)))

    def _list_page(self, prefix: str, token: str | None) -> tuple[list[ObjectInfo], str | None]:
        listing = self._listing(prefix, token, fields=LIST_FIELDS)
        page = [_info(blob.name[len(self.root):], blob) for blob in next(listing.pages)]
        return page, listing.next_page_token

    def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> Iterator[list[str]]:
        return delimited_pages(prefix, delimiter, lambda token: self._call(
            "list", prefix, lambda: self._prefix_page(prefix, delimiter, token)))

    def _prefix_page(self, prefix: str, delimiter: str, token: str | None) -> tuple[list[str], str | None]:
        listing = self._listing(prefix, token, delimiter=delimiter, fields=PREFIX_FIELDS)
        page = next(listing.pages)
        return [whole_prefix(name[len(self.root):], delimiter) for name in page.prefixes], \
            listing.next_page_token

    def _listing(self, prefix: str, token: str | None, **args):
        return self._client.list_blobs(self._bucket, prefix=self.root + prefix, page_size=PAGE_SIZE,
                                       page_token=token, timeout=TIMEOUT, retry=None, **args)

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        blob = self._blob(key)

        def reload() -> ObjectInfo:
            blob.reload(timeout=TIMEOUT, retry=None)
            return _info(key, blob)

        return self._call("stat", key, reload)

    def _read_range(self, key: str, offset: int) -> Iterator[bytes]:
        url = f"{self._endpoint}/download/storage/v1/b/{quote(self.bucket, safe='')}/o/" \
              f"{quote(self.root + key, safe='')}?alt=media"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self._errors("get", key):
            response = self._send("GET", url, headers=headers, stream=True, ok=frozenset({416}))
            with closing(response):
                if response.status_code != 416:
                    yield from response.raw.stream(CHUNK_SIZE, decode_content=False)

    def write(self, key: str, data: bytes) -> str:
        check_key(key)
        blob = self._blob(key)

        def upload() -> str:
            blob.upload_from_string(data, content_type=CONTENT_TYPE, timeout=TIMEOUT, retry=None)
            return _info(key, blob).etag

        return self._call("upload", key, upload)

    def writer(self, key: str) -> ChunkedWriter:
        return _ResumableWriter(self, check_key(key))

    def write_requests(self, size: int) -> dict[str, int]:
        """The SDK's one multipart upload up to its 8 MiB limit; above it, a resumable session
        and a PUT per 100 MiB."""
        if size <= SDK_MULTIPART_LIMIT:
            return {"put": 1}
        return {"put": 1 + -(-size // SDK_RESUMABLE_CHUNK)}

    def writer_requests(self, size: int) -> dict[str, int]:
        """One upload within a chunk; else the session's start and a PUT per chunk."""
        return PartWriter.requests(self, size, self.chunk_size, {"put": 1})

    def can_copy_from(self, source: StorageDriver) -> bool:
        return isinstance(source, GCSDriver) and source._copy_identity == self._copy_identity

    def copy_from(self, source: StorageDriver, key: str, size: int | None = None) -> str:
        """One ``rewrite`` call after another, each carrying the token the last one gave, until
        GCS says the object is done (large or cross-location copies take several rounds)."""
        check_key(key)
        if not isinstance(source, GCSDriver):
            raise TypeError(f"a GCS driver cannot copy server-side from {source.describe()}")
        target, origin = self._blob(key), source._blob(key)
        token = None
        while True:
            token, _, _ = self._call("rewrite", key, lambda token=token: target.rewrite(
                origin, token=token, timeout=TIMEOUT, retry=None))
            if token is None:
                return str(target.generation)

    def delete(self, key: str) -> None:
        check_key(key)
        blob = self._blob(key)
        with suppress(NotFound):
            self._call("delete", key, lambda: blob.delete(timeout=TIMEOUT, retry=None))


class _ResumableWriter(PartWriter):
    """Parts are the chunks of a resumable upload session, opened with the first.

    The last chunk carries the total size and finalises the object. A chunk whose answer was
    lost is resumed from the offset the session reports, as the JSON API's resumable protocol
    says; cancelling deletes the session.
    """

    def __init__(self, driver: GCSDriver, key: str) -> None:
        super().__init__(driver, key, driver.chunk_size)
        self._gcs = driver
        self._session_url: str | None = None
        self._persisted = 0

    def _upload(self, operation: str, call: Callable[[], T]) -> T:
        return self._gcs._call(operation, self._key, call)

    def _put(self, data: bytes, total: int | None) -> requests.Response:
        start, end = self._persisted, self._persisted + len(data) - 1
        span = f"{start}-{end}" if data else "*"
        headers = {"Content-Range": f"bytes {span}/{total if total is not None else '*'}"}
        return self._gcs._send("PUT", self._session_url, data=data, headers=headers)

    def _open_session(self) -> str:
        blob = self._gcs._blob(self._key)
        return self._upload("start_resumable_upload", lambda: blob.create_resumable_upload_session(
            content_type=CONTENT_TYPE, checksum=None, timeout=TIMEOUT, retry=None))

    def _send(self, chunk: bytes, last: bool) -> str | None:
        """Send ``chunk``; return the object's generation once it is final."""
        if self._session_url is None:
            self._session_url = self._open_session()
        base = self._persisted
        total = base + len(chunk) if last else None
        resuming = False

        def attempt() -> requests.Response:
            nonlocal resuming
            if resuming:
                status = self._put(b"", None)
                if status.status_code != 308:
                    return status
                self._persisted = _persisted(status)
                if total is None and self._persisted - base == len(chunk):
                    return status
            resuming = True
            return self._put(chunk[self._persisted - base:], total)

        while True:
            before = self._persisted
            response = self._upload("upload_chunk", attempt)
            if response.status_code != 308:
                return _generation(response, f"gcs upload_chunk {self._gcs.describe()}/{self._key}")
            self._persisted = _persisted(response)
            if self._persisted - base == len(chunk) and not last:
                return None
            if self._persisted <= before:
                raise StorageError(f"gcs upload_chunk {self._gcs.describe()}/{self._key}: the upload "
                                   f"session stopped taking bytes at {self._persisted}")
            resuming = False

    def _send_part(self, part: bytes) -> None:
        self._send(part, last=False)

    def _finish(self, last: bytes) -> str:
        return self._send(last, last=True)

    def _cancel(self) -> None:
        if self._session_url is not None:
            self._upload("cancel_resumable_upload",
                         lambda: self._gcs._send("DELETE", self._session_url, ok=_SESSION_GONE))
