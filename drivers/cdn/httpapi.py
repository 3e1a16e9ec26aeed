"""What the purgers share: the batch, URL and choice checks, one HTTP call
classified into :class:`PurgeError`, and the redaction of secrets from every message.

Classification of one answer (:func:`send`):

    2xx                         success; the body is returned for the provider to check
    429, 408, 5xx               PurgeError(retryable=True), ``retry_after`` from Retry-After
    connection refused/reset,   PurgeError(retryable=True)
    timeout, broken response
    any other status (401, 403, other 4xx, a redirect)
                                PurgeError(retryable=False), with the provider's own message
"""

from __future__ import annotations

import email.utils
import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import NamedTuple
from urllib.parse import urlsplit

from drivers.cdn.base import Purger, PurgeError
from drivers.errors import ConfigError

TIMEOUT = 30.0
"""Seconds to connect to, and then to wait on, a provider or node."""
MESSAGE_LIMIT = 300
"""Characters of a provider's error text kept in a message."""
REDACTED = "***"

_RETRYABLE_STATUSES = frozenset({408, 429})


def check_endpoint(name: str, value: str) -> str:
    """An ``http(s)://host[:port][/path]`` URL without credentials or query, with no trailing
    slash. Raises ``ConfigError`` naming ``name`` (never repeating the value)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username \
            or parts.password or parts.query or parts.fragment:
        raise ConfigError(name, "must be an http(s) URL without credentials or query")
    return value.rstrip("/")


def check_choice(config: dict, name: str, choices: tuple[str, ...]) -> str:
    """``config[name]`` (default ``choices[0]``), which must be one of ``choices``."""
    value = config.get(name, choices[0])
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}")
    return value


class Target(NamedTuple):
    """An absolute URL split as the purgers need it."""

    host: str
    """``host[:port]`` as users send it in the Host header."""
    path: str
    """The path, ``/`` if empty, as found in the URL (percent-encoding kept)."""
    query: str

    @property
    def request_target(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")


def check_batch(purger: Purger, urls: list[str]) -> list[Target]:
    """The batch's URLs split; raises ``ValueError`` for more than ``purger.batch_size`` URLs or
    one that is not an absolute http(s) URL (both are the caller's mistakes, not the CDN's)."""
    if len(urls) > purger.batch_size:
        raise ValueError(f"{len(urls)} URLs in one purge batch; at most {purger.batch_size}")
    targets = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an absolute http(s) URL: {url!r}")
        host = parts.netloc.rpartition("@")[2]
        targets.append(Target(host, parts.path or "/", parts.query))
    return targets


def redact(message: str, secrets: Iterable[str | None]) -> str:
    """``message`` with every secret replaced: the one place messages are cleaned."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, REDACTED)
    return message


def retry_after(value: str | None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from now, or ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as an error: urllib would turn a POST into a GET."""

    def redirect_request(self, *args, **kwargs):
        return None


_API = urllib.request.build_opener(_NoRedirect)
"""For providers' APIs: honours the environment's proxy settings."""
_DIRECT = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))
"""For cache nodes: never through a proxy (the node checks the purger's address)."""


def send(purger: Purger, method: str, url: str, *, headers: dict[str, str], body: bytes | None = None,
         secrets: Iterable[str | None] = (), error_text: Callable[[bytes], str] | None = None,
         direct: bool = False) -> bytes:
    """One request, counted on ``purger``; returns the body of a 2xx answer.

    Raises ``PurgeError`` as the module docstring classifies. Its message starts with
    ``purger.describe()`` and ``method url``, carries the provider's text (``error_text`` of the
    body, or the HTTP reason) and has every one of ``secrets`` redacted.
    """
    where = f"{purger.describe()}: {method} {url}"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    purger.count_call()
    try:
        with (_DIRECT if direct else _API).open(request, timeout=TIMEOUT) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        with error:
            text = _error_text(error, error_text)
        status = error.code
        retryable = status in _RETRYABLE_STATUSES or status >= 500
        message = f"{where}: HTTP {status} {text}".rstrip()
        raise PurgeError(redact(message, secrets), retryable=retryable,
                         retry_after=retry_after(error.headers.get("Retry-After"))) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", error)
        message = f"{where}: {type(reason).__name__}: {reason}"
        raise PurgeError(redact(message, secrets), retryable=True) from None


def _error_text(error: urllib.error.HTTPError, error_text: Callable[[bytes], str] | None) -> str:
    try:
        body = error.read()
    except (http.client.HTTPException, OSError):
        body = b""
    text = ""
    if error_text is not None and body:
        try:
            text = error_text(body)
        except (ValueError, TypeError, AttributeError, KeyError):
            text = ""
    return (text or str(error.reason or ""))[:MESSAGE_LIMIT]
