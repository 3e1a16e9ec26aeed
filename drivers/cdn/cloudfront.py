"""Amazon CloudFront: one invalidation per batch, via boto3 (botocore's own retries off).

A batch becomes one ``CreateInvalidation`` of its URLs' paths (host, query and fragment
dropped; duplicates removed; percent-encoding normalised so that ``*`` is never a wildcard)::

    InvalidationBatch = {"Paths": {"Quantity": 2, "Items": ["/v2/app/manifests/1.0",
                                                           "/v2/app/tags/list"]},
                         "CallerReference": "replicator-<sha256 hex>"}

**CallerReference.** CloudFront answers a CallerReference it has seen before, with the same
paths, with the invalidation it already made, and invalidates nothing. The engine sends the
same URL list again for every later move of the same tag, so a reference derived from the URLs
alone would silently skip every purge after the first. The reference is therefore the sha256
of the sorted paths *and* a batch id: ``purge(urls, batch_id=...)`` with an id that names one
change (a queue row's id, say) gives the same reference each time that batch is sent again, so a
retry after a lost answer costs no second invalidation. Without a ``batch_id`` (the plain
protocol call) each call draws a fresh id: at worst one invalidation too many, never one too few.

CloudFront allows 3,000 paths in invalidations in progress per distribution, hence the default
batch of 1,000 and the ``batchsize`` bound of 3,000. Throttling, ``TooManyInvalidationsInProgress``,
5xx and connection errors are retryable; ``AccessDenied``, ``InvalidArgument``,
``NoSuchDistribution``, ``BatchTooLarge`` and every other error are permanent.
"""

from __future__ import annotations

import hashlib
import http.client
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, unquote

import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions

from drivers.cdn.base import Purger, PurgeError
from drivers.cdn.httpapi import check_batch, check_endpoint, redact, retry_after
from drivers.errors import ConfigError
from drivers.parameters import parse_parameters

DEFAULT_BATCH_SIZE = 1000
MAX_PATHS_IN_PROGRESS = 3000
DEFAULT_REGION = "us-east-1"
"""CloudFront is global; its API is signed for us-east-1."""
PARAMETERS: dict[str, type] = {"distributionid": str, "endpoint": str, "region": str,
                               "accesskey": str, "secretkey": str, "sessiontoken": str,
                               "batchsize": int}
LIMITS = {"batchsize": (1, MAX_PATHS_IN_PROGRESS)}
PATH_SAFE = "/:@!$&'()+,;=-._~"
"""Characters left as they are in an invalidation path; all others (``*`` included) are
percent-encoded, as CloudFront expects."""

_RETRYABLE_CODES = frozenset({"TooManyInvalidationsInProgress", "Throttling", "ThrottlingException",
                              "RequestLimitExceeded", "TooManyRequestsException", "RequestTimeout",
                              "InternalError", "InternalFailure", "ServiceUnavailable"})
_BROKEN_CONNECTION = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,
                      botocore.exceptions.IncompleteReadError, urllib3.exceptions.HTTPError,
                      http.client.HTTPException, ConnectionError, TimeoutError)


def invalidation_path(path: str) -> str:
    """A URL's path as an invalidation path: decoded once, then encoded the one way CloudFront
    compares (a literal ``*`` becomes ``%2A`` instead of a wildcard)."""
    return quote(unquote(path), safe=PATH_SAFE)


def caller_reference(paths: list[str], batch_id: str) -> str:
    """The same for the same batch id and set of paths, in any order."""
    digest = hashlib.sha256("\n".join([batch_id, *sorted(paths)]).encode()).hexdigest()
    return f"replicator-{digest}"


class CloudFrontPurger(Purger):
    """The paths of one CloudFront distribution, invalidated through ``client`` (boto3)."""

    kind = "cloudfront"

    def __init__(self, client, distribution_id: str, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._client = client
        self.distribution_id = distribution_id
        self.batch_size = batch_size
        self._secrets = secrets

    @classmethod
    def from_config(cls, params: dict) -> CloudFrontPurger:
        config = parse_parameters(params, PARAMETERS, limits=LIMITS, required=("distributionid",))
        if bool(config.get("accesskey")) != bool(config.get("secretkey")):
            raise ConfigError("secretkey" if config.get("accesskey") else "accesskey",
                              "is required when the other of accesskey and secretkey is set")
        endpoint = config.get("endpoint")
        if endpoint:
            endpoint = check_endpoint("endpoint", endpoint)
        credentials = {}
        if config.get("accesskey"):
            credentials = {"aws_access_key_id": config["accesskey"],
                           "aws_secret_access_key": config["secretkey"],
                           "aws_session_token": config.get("sessiontoken")}
        options = botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=30,
                                         read_timeout=60)
        client = boto3.session.Session().client(
            "cloudfront", region_name=config.get("region", DEFAULT_REGION), endpoint_url=endpoint,
            config=options, **credentials)
        secrets = tuple(config[name] for name in ("accesskey", "secretkey", "sessiontoken")
                        if config.get(name))
        return cls(client, config["distributionid"],
                   batch_size=config.get("batchsize", DEFAULT_BATCH_SIZE), secrets=secrets)

    def describe(self) -> str:
        return f"cloudfront:{self.distribution_id}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        where = f"{self.describe()}: CreateInvalidation"
        try:
            yield
        except botocore.exceptions.ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            metadata = error.response.get("ResponseMetadata", {})
            status = metadata.get("HTTPStatusCode") or 0
            text = error.response.get("Error", {}).get("Message", "")
            message = f"{where}: {code or status} {text}".rstrip()
            raise PurgeError(redact(message, self._secrets),
                             retryable=code in _RETRYABLE_CODES or status == 429 or status >= 500,
                             retry_after=retry_after(metadata.get("HTTPHeaders", {}).get("retry-after"))
                             ) from None
        except _BROKEN_CONNECTION as error:
            message = f"{where}: {type(error).__name__}: {error}"
            raise PurgeError(redact(message, self._secrets), retryable=True) from None
        except botocore.exceptions.BotoCoreError as error:
            message = f"{where}: {type(error).__name__}: {error}"
            raise PurgeError(redact(message, self._secrets), retryable=False) from None

    def purge(self, urls: list[str], batch_id: str | None = None) -> None:
        """As :meth:`Purger.purge`; ``batch_id`` names the change this batch purges (see the
        module docstring): the same id and URLs always send the same CallerReference."""
        targets = check_batch(self, urls)
        paths = sorted({invalidation_path(target.path) for target in targets})
        if not paths:
            return
        reference = caller_reference(paths, uuid.uuid4().hex if batch_id is None else batch_id)
        batch = {"Paths": {"Quantity": len(paths), "Items": paths}, "CallerReference": reference}
        self.count_call()
        with self._errors():
            self._client.create_invalidation(DistributionId=self.distribution_id,
                                             InvalidationBatch=batch)
