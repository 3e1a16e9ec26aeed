"""Objects in an S3 bucket (or an S3-compatible store such as moto or MinIO), via boto3.

Keys live under the configured root directory in the bucket. botocore's own retries are off:
each SDK call is retried by :func:`drivers.retry.retrying`, and every HTTP request botocore
sends is counted by one event handler. Credentials are handed to botocore and kept nowhere else.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import time
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import closing, contextmanager, suppress
from datetime import datetime

import boto3
import botocore.config
import botocore.exceptions
import botocore.parsers
import urllib3.exceptions

from drivers.base import (CHUNK_SIZE, ChunkedWriter, HashedCopy, HashedServerSideCopy, ObjectInfo,
                          StorageDriver, check_delimiter, check_key, check_prefix)
from drivers.errors import (AccessDenied, ConfigError, NotFound, PreconditionFailed, StorageError,
                            TransientError)
from drivers.parameters import parse_parameters, root_prefix
from drivers.retry import retrying

MIB = 1024 * 1024
MIN_CHUNK_SIZE = 5 * MIB
DEFAULT_CHUNK_SIZE = 10 * MIB
DEFAULT_MAX_CONNECTIONS = 32
PAGE_SIZE = 1000
MAX_COPY_SIZE = 5 * 1024 * MIB
"""S3's limit on one CopyObject and on one UploadPartCopy part."""
MAX_PARTS = 10_000
DEFAULT_COPY_THRESHOLD = 32 * MIB
DEFAULT_COPY_CHUNK_SIZE = 32 * MIB
DEFAULT_COPY_CONCURRENCY = 100

PARAMETERS: dict[str, type] = {
    "accesskey": str, "secretkey": str, "sessiontoken": str, "region": str, "regionendpoint": str,
    "bucket": str, "encrypt": bool, "keyid": str, "secure": bool, "skipverify": bool, "v4auth": bool,
    "chunksize": int, "multipartcopychunksize": int, "multipartcopymaxconcurrency": int,
    "multipartcopythresholdsize": int, "rootdirectory": str, "storageclass": str, "objectacl": str,
    "useragent": str, "usedualstack": bool, "accelerate": bool, "loglevel": str,
    "forcepathstyle": bool, "maxconnections": int, "usefipsendpoint": bool,
}
"""Distribution's S3 parameters of 2.8 and 3.x (``loglevel`` is accepted and unused), plus
``maxconnections``: the size of the HTTP connection pool. As in Distribution, an object of at
most ``multipartcopythresholdsize`` bytes is copied server-side with one CopyObject, a larger
one in ``multipartcopychunksize`` parts, ``multipartcopymaxconcurrency`` at a time (at most
``maxconnections``)."""

LIMITS = {"chunksize": (MIN_CHUNK_SIZE, None), "maxconnections": (1, None),
          "multipartcopychunksize": (MIN_CHUNK_SIZE, MAX_COPY_SIZE),
          "multipartcopymaxconcurrency": (1, None), "multipartcopythresholdsize": (0, MAX_COPY_SIZE)}

REQUEST_KINDS = {
    "ListObjectsV2": "list", "ListMultipartUploads": "list", "ListParts": "list",
    "GetObject": "get",
    "HeadObject": "head", "HeadBucket": "head",
    "PutObject": "put", "CreateMultipartUpload": "put", "UploadPart": "put",
    "CompleteMultipartUpload": "put",
    "CopyObject": "copy", "UploadPartCopy": "copy",
    "DeleteObject": "delete", "DeleteObjects": "delete", "AbortMultipartUpload": "delete",
}

_TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                              "InternalError", "ServiceUnavailable"})
_TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
_BROKEN_CONNECTION = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,
                      botocore.exceptions.IncompleteReadError, botocore.parsers.ResponseParserError,
                      urllib3.exceptions.HTTPError, http.client.IncompleteRead, ConnectionError,
                      TimeoutError)

ANSWER_FIELDS = {
    "create_multipart_upload": ("UploadId",),
    "put_object": ("ETag",), "upload_part": ("ETag",), "complete_multipart_upload": ("ETag",),
    "copy_object": ("CopyObjectResult.ETag",), "upload_part_copy": ("CopyPartResult.ETag",),
    "head_object": ("ContentLength", "ETag", "LastModified"), "get_object": ("ContentLength", "Body"),
    "list_objects_v2": ("IsTruncated",), "list_multipart_uploads": ("IsTruncated",),
}
"""What each answer must carry. S3 always sends these; an answer without one was cut short
(a connection closed inside the headers, an empty body), which is retried like a 5xx."""


def _parse(params: dict) -> dict:
    config = parse_parameters(params, PARAMETERS, limits=LIMITS, required=("bucket", "region"))
    if bool(config.get("accesskey")) != bool(config.get("secretkey")):
        raise ConfigError("secretkey" if config.get("accesskey") else "accesskey",
                          "is required when the other of accesskey and secretkey is set")
    config["rootdirectory"] = root_prefix(config.get("rootdirectory", ""))
    return config


def _client(config: dict):
    secure = config.get("secure", True)
    endpoint = config.get("regionendpoint")
    if endpoint and "://" not in endpoint:
        endpoint = ("https://" if secure else "http://") + endpoint
    s3 = {"addressing_style": "path" if endpoint or config.get("forcepathstyle") else "auto",
          "use_dualstack_endpoint": config.get("usedualstack", False),
          "use_accelerate_endpoint": config.get("accelerate", False)}
    options = botocore.config.Config(
        use_fips_endpoint=config.get("usefipsendpoint", False),
        retries={"total_max_attempts": 1},
        max_pool_connections=config.get("maxconnections", DEFAULT_MAX_CONNECTIONS),
        signature_version="s3v4" if config.get("v4auth", True) else "s3",
        user_agent_extra=config.get("useragent"),
        s3=s3,
    )
    credentials = {}
    if config.get("accesskey"):
        credentials = {"aws_access_key_id": config["accesskey"],
                       "aws_secret_access_key": config["secretkey"],
                       "aws_session_token": config.get("sessiontoken")}
    return boto3.session.Session().client(
        "s3", region_name=config["region"], endpoint_url=endpoint, use_ssl=secure,
        verify=False if config.get("skipverify") else None, config=options, **credentials)


def _copy_identity(config: dict, client) -> tuple[str, str]:
    """Where and as whom a driver's requests go: its endpoint (AWS's partition when none is
    configured) and a fingerprint of its access key id (``""`` for the credential chain).
    Server-side copies are tried only between drivers with the same identity."""
    endpoint = config.get("regionendpoint") and client.meta.endpoint_url.rstrip("/").lower()
    key = config.get("accesskey")
    return endpoint or client.meta.partition, hashlib.sha256(key.encode()).hexdigest() if key else ""


def _put_args(config: dict) -> dict:
    args = {}
    if config.get("encrypt"):
        if config.get("keyid"):
            args.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=config["keyid"])
        else:
            args["ServerSideEncryption"] = "AES256"
    if config.get("storageclass", "STANDARD") != "NONE":
        args["StorageClass"] = config.get("storageclass", "STANDARD")
    if "objectacl" in config:
        args["ACL"] = config["objectacl"]
    return args


def _info(key: str, size: int, etag: str, modified: datetime) -> ObjectInfo:
    return ObjectInfo(key, size, etag.strip('"'), modified.timestamp())


def _check_answer(operation: str, response: dict, where: str) -> dict:
    """``response``, if it carries every field ``ANSWER_FIELDS`` names (dotted paths) for
    ``operation``; else ``TransientError``."""
    for path in ANSWER_FIELDS.get(operation, ()):
        found = response
        for name in path.split("."):
            found = found.get(name) if isinstance(found, dict) else None
        if found is None:
            raise TransientError(f"{where}: the answer has no {path}")
    return response


def _client_error(where: str, error: botocore.exceptions.ClientError) -> StorageError:
    code = error.response.get("Error", {}).get("Code", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    message = f"{where}: {code or status} {error.response.get('Error', {}).get('Message', '')}".rstrip()
    if status == 404 or code in ("NoSuchKey", "NotFound"):
        return NotFound(message)
    if status == 412 or code == "PreconditionFailed":
        return PreconditionFailed(message)
    if status == 403 or code == "AccessDenied":
        return AccessDenied(message)
    if status in _TRANSIENT_STATUSES or code in _TRANSIENT_CODES:
        return TransientError(message)
    return StorageError(message)


class S3Driver(StorageDriver, HashedServerSideCopy):
    """Objects under ``root`` (``""`` or ``"some/path/"``) in ``bucket``, through ``client``.

    ``chunk_size`` is the multipart part size of :meth:`writer`; ``put_args`` (encryption,
    storage class, ACL) are added to every object creation. Errors as :class:`StorageDriver`
    states; an unreadable bucket raises ``NotFound`` or ``AccessDenied``.

    Server-side copies (:meth:`copy_from`) go to drivers of the same ``copy_identity`` (see
    :func:`_copy_identity`; ``None``: never): one CopyObject up to ``copy_threshold`` bytes,
    else UploadPartCopy parts of ``copy_chunk_size`` bytes, at most ``copy_concurrency`` at a
    time across the driver. A hashed copy (:meth:`copy_from_hashed`) is one CopyObject with
    ``ChecksumAlgorithm=SHA256`` whatever the threshold, so up to S3's 5 GiB single-copy limit:
    its answer carries the SHA-256 S3 computed over the stored object.
    """

    kind = "s3"

    def __init__(self, client, bucket: str, *, root: str = "", chunk_size: int = DEFAULT_CHUNK_SIZE,
                 put_args: dict | None = None, copy_identity: tuple[str, str] | None = None,
                 copy_threshold: int = DEFAULT_COPY_THRESHOLD,
                 copy_chunk_size: int = DEFAULT_COPY_CHUNK_SIZE,
                 copy_concurrency: int = DEFAULT_COPY_CONCURRENCY) -> None:
        super().__init__()
        self._client = client
        self.bucket = bucket
        self.root = root
        self.chunk_size = chunk_size
        self.put_args = dict(put_args or {})
        self.copy_identity = copy_identity
        self.copy_threshold = min(copy_threshold, MAX_COPY_SIZE)
        self.copy_chunk_size = copy_chunk_size
        self._copy_concurrency = copy_concurrency
        self._copy_pool: ThreadPoolExecutor | None = None
        self._copy_pool_lock = threading.Lock()
        client.meta.events.register("before-send.s3", self._count)

    @classmethod
    def from_config(cls, params: dict) -> S3Driver:
        config = _parse(params)
        client = _client(config)
        concurrency = min(config.get("multipartcopymaxconcurrency", DEFAULT_COPY_CONCURRENCY),
                          config.get("maxconnections", DEFAULT_MAX_CONNECTIONS))
        return cls(client, config["bucket"], root=config["rootdirectory"],
                   chunk_size=config.get("chunksize", DEFAULT_CHUNK_SIZE), put_args=_put_args(config),
                   copy_identity=_copy_identity(config, client),
                   copy_threshold=config.get("multipartcopythresholdsize", DEFAULT_COPY_THRESHOLD),
                   copy_chunk_size=config.get("multipartcopychunksize", DEFAULT_COPY_CHUNK_SIZE),
                   copy_concurrency=concurrency)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.root}".rstrip("/")

    def _count(self, event_name: str, **_) -> None:
        kind = REQUEST_KINDS.get(event_name.rsplit(".", 1)[-1])
        if kind:
            self.requests.add(kind)

    def _where(self, operation: str, key: str) -> str:
        return f"s3 {operation} s3://{self.bucket}/{self.root}{key}"

    @contextmanager
    def _errors(self, operation: str, key: str) -> Iterator[None]:
        where = self._where(operation, key)
        try:
            yield
        except botocore.exceptions.ClientError as error:
            raise _client_error(where, error) from None
        except _BROKEN_CONNECTION as error:
            raise TransientError(f"{where}: {type(error).__name__}: {error}") from None
        except botocore.exceptions.BotoCoreError as error:
            raise StorageError(f"{where}: {type(error).__name__}: {error}") from None

    def _call(self, operation: str, key: str, *, lost: list | None = None, **args) -> dict:
        """One SDK call about ``key`` (or a prefix), with errors translated and retried.
        Each attempt that failed transiently (whose answer may have been lost after the call
        was applied) is appended to ``lost``, if given."""
        method = getattr(self._client, operation)

        def attempt() -> dict:
            try:
                with self._errors(operation, key):
                    return _check_answer(operation, method(Bucket=self.bucket, **args),
                                         self._where(operation, key))
            except TransientError as error:
                if lost is not None:
                    lost.append(error)
                raise

        return retrying(attempt)

    def create_upload(self, key: str) -> str:
        """Start a multipart upload at ``key``; its id. If an attempt whose answer was lost may
        have created an upload anyway, every other upload at exactly ``key`` is aborted, so
        none is left behind (a concurrent writer of the same key then fails and retries)."""
        lost: list = []
        upload_id = self._call("create_multipart_upload", key, lost=lost, Key=self.root + key,
                               **self.put_args)["UploadId"]
        if lost:
            for other_key, other_id, _ in self._uploads(key):
                if other_key == key and other_id != upload_id:
                    self.abort_upload(key, other_id)
        return upload_id

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one multipart upload; one that is already gone is not an error."""
        with suppress(NotFound):
            self._call("abort_multipart_upload", key, Key=self.root + key, UploadId=upload_id)

    def _uploads(self, prefix: str) -> Iterator[tuple[str, str, float]]:
        """(key, upload id, initiated) of every incomplete multipart upload under ``prefix``."""
        args = {"Prefix": self.root + prefix}
        while True:
            page = self._call("list_multipart_uploads", prefix, **args)
            for upload in page.get("Uploads", []):
                yield upload["Key"][len(self.root):], upload["UploadId"], upload["Initiated"].timestamp()
            if not page.get("IsTruncated"):
                return
            args.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])

    def sweep_abandoned_uploads(self, prefix: str, older_than: float) -> int:
        check_prefix(prefix)
        cutoff = time.time() - older_than
        abandoned = [(key, upload_id) for key, upload_id, initiated in self._uploads(prefix)
                     if initiated <= cutoff]
        for key, upload_id in abandoned:
            self.abort_upload(key, upload_id)
        return len(abandoned)

    def list(self, prefix: str = "") -> Iterator[list[ObjectInfo]]:
        check_prefix(prefix)
        for page in self._listing(prefix):
            if page.get("Contents"):
                yield [_info(item["Key"][len(self.root):], item["Size"], item["ETag"],
                             item["LastModified"]) for item in page["Contents"]]

    def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> Iterator[list[str]]:
        check_prefix(prefix)
        for page in self._listing(prefix, Delimiter=check_delimiter(delimiter)):
            if page.get("CommonPrefixes"):
                yield [item["Prefix"][len(self.root):] for item in page["CommonPrefixes"]]

    def _listing(self, prefix: str, **args) -> Iterator[dict]:
        """The answers of ListObjectsV2 of ``prefix``, page after page."""
        args.update(Prefix=self.root + prefix, MaxKeys=PAGE_SIZE)
        while True:
            page = self._call("list_objects_v2", prefix, **args)
            yield page
            if not page.get("IsTruncated"):
                return
            args["ContinuationToken"] = page["NextContinuationToken"]

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        head = self._call("head_object", key, Key=self.root + key)
        return _info(key, head["ContentLength"], head["ETag"], head["LastModified"])

    def _read_range(self, key: str, offset: int) -> Iterator[bytes]:
        args = {"Key": self.root + key}
        if offset:
            args["Range"] = f"bytes={offset}-"
        with self._errors("get_object", key):
            try:
                body = _check_answer("get_object", self._client.get_object(Bucket=self.bucket, **args),
                                     self._where("get_object", key))["Body"]
            except botocore.exceptions.ClientError as error:
                if error.response.get("Error", {}).get("Code") == "InvalidRange":
                    return
                raise
            with closing(body):
                yield from body.iter_chunks(CHUNK_SIZE)

    def write(self, key: str, data: bytes) -> str:
        check_key(key)
        response = self._call("put_object", key, Key=self.root + key, Body=data, **self.put_args)
        return response["ETag"].strip('"')

    def writer(self, key: str) -> ChunkedWriter:
        return _MultipartWriter(self, check_key(key))

    def writer_requests(self, size: int) -> dict[str, int]:
        """One PutObject below ``chunk_size``; else CreateMultipartUpload, a part per
        ``chunk_size`` and CompleteMultipartUpload."""
        return {"put": 1 if size < self.chunk_size else 2 + -(-size // self.chunk_size)}

    def delete(self, key: str) -> None:
        check_key(key)
        with suppress(NotFound):
            self._call("delete_object", key, Key=self.root + key)

    def can_copy_from(self, source: StorageDriver) -> bool:
        return (isinstance(source, S3Driver) and self.copy_identity is not None
                and source.copy_identity == self.copy_identity)

    def copy_from(self, source: StorageDriver, key: str, size: int | None = None) -> str:
        check_key(key)
        if not isinstance(source, S3Driver):
            raise TypeError(f"an S3 driver cannot copy server-side from {source.describe()}")
        copy_source = {"Bucket": source.bucket, "Key": source.root + key}
        if size is None:
            size = source.stat(key).size
        if size <= self.copy_threshold:
            response = self._call("copy_object", key, Key=self.root + key, CopySource=copy_source,
                                  **self.put_args)
            return response["CopyObjectResult"]["ETag"].strip('"')
        return self._copy_parts(key, copy_source, size)

    def hashes_copy(self, size: int) -> bool:
        return 0 <= size <= MAX_COPY_SIZE

    def copy_requests(self, size: int, hashed: bool) -> dict[str, int]:
        if hashed or size <= self.copy_threshold:
            return {"copy": 1}
        part_size = max(self.copy_chunk_size, -(-size // MAX_PARTS))
        return {"put": 2, "copy": -(-size // part_size)}

    def copy_from_hashed(self, source: StorageDriver, key: str, size: int) -> HashedCopy:
        check_key(key)
        if not isinstance(source, S3Driver):
            raise TypeError(f"an S3 driver cannot copy server-side from {source.describe()}")
        if not self.hashes_copy(size):
            raise ValueError(f"{key}: {size} bytes is over S3's single-copy limit")
        response = self._call("copy_object", key, Key=self.root + key, ChecksumAlgorithm="SHA256",
                              CopySource={"Bucket": source.bucket, "Key": source.root + key},
                              **self.put_args)
        result = response["CopyObjectResult"]
        checksum = result.get("ChecksumSHA256")
        if checksum is not None and result.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
            checksum = None
        sha256 = base64.b64decode(checksum).hex() if checksum else None
        return HashedCopy(result["ETag"].strip('"'), sha256)

    def _copy_parts(self, key: str, copy_source: dict, size: int) -> str:
        """A multipart upload of UploadPartCopy parts, aborted if anything fails."""
        part_size = max(self.copy_chunk_size, -(-size // MAX_PARTS))
        args = {"Key": self.root + key, "UploadId": self.create_upload(key)}

        def copy_part(number: int, start: int) -> dict:
            last = min(start + part_size, size) - 1
            response = self._call("upload_part_copy", key, PartNumber=number, CopySource=copy_source,
                                  CopySourceRange=f"bytes={start}-{last}", **args)
            return {"ETag": response["CopyPartResult"]["ETag"], "PartNumber": number}

        pool = self._parts_pool()
        futures = [pool.submit(copy_part, number, start)
                   for number, start in enumerate(range(0, size, part_size), 1)]
        try:
            parts = [future.result() for future in futures]
            response = self._call("complete_multipart_upload", key, MultipartUpload={"Parts": parts},
                                  **args)
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)  # parts under way finish before the abort, or they would outlive it
            with suppress(StorageError):
                self._call("abort_multipart_upload", key, **args)
            raise
        return response["ETag"].strip('"')

    def _parts_pool(self) -> ThreadPoolExecutor:
        """The driver's pool for UploadPartCopy requests, shared by all its copies, so that at
        most ``copy_concurrency`` parts are in flight however many objects are being copied."""
        with self._copy_pool_lock:
            if self._copy_pool is None:
                self._copy_pool = ThreadPoolExecutor(self._copy_concurrency, "s3-copy")
            return self._copy_pool


class _MultipartWriter(ChunkedWriter):
    """Buffers one part; a single PutObject if the object ends within it, else a multipart upload."""

    def __init__(self, driver: S3Driver, key: str) -> None:
        super().__init__()
        self._driver, self._key = driver, key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict] = []

    def _upload(self, operation: str, *, lost: list | None = None, **args) -> dict:
        return self._driver._call(operation, self._key, lost=lost, Key=self._driver.root + self._key,
                                  **args)

    def _upload_part(self, size: int) -> None:
        if self._upload_id is None:
            self._upload_id = self._driver.create_upload(self._key)
        number = len(self._parts) + 1
        part = bytes(self._buffer[:size])
        response = self._upload("upload_part", UploadId=self._upload_id, PartNumber=number, Body=part)
        del self._buffer[:size]
        self._parts.append({"ETag": response["ETag"], "PartNumber": number})

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        while len(self._buffer) >= self._driver.chunk_size:
            self._upload_part(self._driver.chunk_size)

    def commit(self) -> str:
        if self._upload_id is None:
            response = self._upload("put_object", Body=bytes(self._buffer), **self._driver.put_args)
        else:
            if self._buffer:
                self._upload_part(len(self._buffer))
            response = self._complete()
        self._buffer.clear()
        self.closed = True
        return response["ETag"].strip('"')

    def _complete(self) -> dict:
        """CompleteMultipartUpload. When an attempt whose answer was lost completed the upload,
        the retry finds no upload: then the object at the key, if it has the size written, is
        this upload's (its answer's ETag is what a listing shows)."""
        lost: list = []
        try:
            return self._upload("complete_multipart_upload", lost=lost, UploadId=self._upload_id,
                                MultipartUpload={"Parts": self._parts})
        except NotFound:
            if not lost:
                raise
            info = self._driver.stat(self._key)
            if info.size != self.size:
                raise
            return {"ETag": info.etag}

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._buffer.clear()
        if self._upload_id is not None:
            with suppress(StorageError):
                self._upload("abort_multipart_upload", UploadId=self._upload_id)
