"""The session under every registry request: configuration, hosts, authentication, errors.

Every request goes through :meth:`Session.send`, which

- waits for its host: a 429 (or a 503 with ``Retry-After``) from a host makes every request
  to that host wait out the back-off of :data:`HOST_BACKOFF`, which honours ``Retry-After``,
  and then lets one request go first to see whether the host takes requests again;
  ``requests_per_second`` spaces a host's requests evenly;
- sends the registry's ``Authorization`` only to the registry's own host (never to the blob
  storage a redirect leads to), and after a 401 learns the challenge and sends once more;
- counts the request in ``requests`` under the kind its caller names.

:func:`error_for` is the one place an answer becomes an error of :mod:`drivers.errors`:

    404                      NotFound
    401, 403                 AccessDenied (after one renewed authentication); its subclass
                             InsufficientScope for a 403 or a 401 ``insufficient_scope``
                             (credentials accepted, this operation not granted)
    405                      Unsupported (the registry does not offer the operation)
    408, 429, 5xx            TransientError, ``retry_after`` from ``Retry-After``
    connection errors,       TransientError
    timeouts, cut answers
    other statuses           StorageError

Messages carry the registry's JSON error ``code`` and ``message``, never credentials or
tokens, nor URL query strings (which hold upload session state).
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urljoin, urlsplit

import certifi
import httpx

from drivers.backoff import Backoff
from drivers.base import RequestCounter
from drivers.cdn.httpapi import check_endpoint, redact, retry_after
from drivers.errors import (AccessDenied, ConfigError, NotFound, StorageError, TransientError)
from drivers.parameters import parse_parameters
from drivers.registry.auth import Credentials
from drivers.retry import retrying

MIB = 1024 * 1024
DEFAULT_TIMEOUT = 60
DEFAULT_CHUNK_SIZE = 8 * MIB
MIN_CHUNK_SIZE = 64 * 1024
MESSAGE_LIMIT = 300
KEEP_ALIVE = 32
"""Connections to a registry kept open for later requests (httpx keeps 20): as many as the
widest concurrency of a caller, so that none is closed and opened again between requests."""
HOST_BACKOFF = Backoff(initial=0.5, maximum=30.0, jitter=0.1, retry_after_limit=60.0)
"""How long a throttled host is left alone: after its ``n``-th consecutive 429 (or 503 with
``Retry-After``), never less than the ``Retry-After`` it sent (up to a minute)."""

PARAMETERS: dict[str, type] = {
    "url": str, "username": str, "password": str, "cacert": str, "tlsverify": bool,
    "repositories": list, "requests_per_second": int, "timeout": int, "chunksize": int,
}
"""A region's ``registry:`` block. ``url`` is the registry's base URL (``https://host[:port]``;
``http://`` is meant for loopback tests); ``username``/``password`` are sent as Basic
credentials, or to the token realm the registry names; ``cacert`` is a PEM file of the CAs to
trust (instead of the system's); ``tlsverify: false`` turns certificate checks off;
``repositories`` (names or globs) is kept as data for the caller; ``requests_per_second`` limits
the requests sent to each host; ``timeout`` is the seconds to connect and to wait for each
read; ``chunksize`` the bytes of each upload request (blobs up to it go in one request)."""

LIMITS = {"requests_per_second": (1, None), "timeout": (1, None), "chunksize": (MIN_CHUNK_SIZE, None)}


class Unsupported(StorageError):
    """The registry does not offer this operation (405 ``UNSUPPORTED``: deletes disabled,
    a read-only registry)."""


class InsufficientScope(AccessDenied):
    """The credentials were accepted but do not grant this operation."""


class _Host:
    """One host's shared back-off and request spacing.

    A throttling answer (429, or 503 with ``Retry-After``) blocks the host for
    :data:`HOST_BACKOFF`'s delay. When the block ends, one request goes alone (the probe); the
    others follow once its answer shows the host takes requests again, and a throttled probe
    blocks the host for longer. An answer to a request sent before the latest throttle was known
    neither clears nor lengthens the back-off beyond its own ``Retry-After``.
    """

    def __init__(self, interval: float) -> None:
        self._changed = threading.Condition()
        self._interval = interval
        self._next_slot = 0.0
        self._blocked_until = 0.0
        self._throttled = 0
        self._epoch = 0
        self._probing = False

    def send(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        """``send()`` once this host takes a request; its answer recorded."""
        probe, epoch = self._turn()
        try:
            response = send()
        except BaseException:
            self._answered(probe, epoch, None)
            raise
        self._answered(probe, epoch, response)
        return response

    def _turn(self) -> tuple[bool, int]:
        with self._changed:
            while True:
                now = time.monotonic()
                ready = max(self._blocked_until, self._next_slot)
                if ready > now:
                    self._changed.wait(ready - now)
                elif self._probing:
                    self._changed.wait()
                else:
                    break
            self._probing = self._throttled > 0
            self._next_slot = now + self._interval
            return self._probing, self._epoch

    def _answered(self, probe: bool, epoch: int, response: httpx.Response | None) -> None:
        with self._changed:
            if probe:
                self._probing = False
            if response is not None:
                delay = retry_after(response.headers.get("Retry-After"))
                current = epoch == self._epoch
                if response.status_code == 429 or (response.status_code == 503 and delay is not None):
                    if current:
                        self._throttled += 1
                        self._epoch += 1
                    until = time.monotonic() + HOST_BACKOFF.delay(self._throttled, delay)
                    self._blocked_until = max(self._blocked_until, until)
                elif current:
                    self._throttled = 0
            self._changed.notify_all()


def _error_text(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{error.get('code', '')} {error.get('message', '')}".strip()
                         for error in errors if isinstance(error, dict))
    except (ValueError, AttributeError, TypeError, httpx.HTTPError):
        text = ""
    return (text or response.reason_phrase or "")[:MESSAGE_LIMIT]


def error_for(response: httpx.Response, where: str, secrets: list[str] = ()) -> StorageError:
    """The error an unexpected answer means (see the module docstring), its message starting
    with ``where`` and every one of ``secrets`` redacted; reads a streamed body."""
    status = response.status_code
    with contextlib.suppress(httpx.HTTPError):
        response.read()
    message = redact(f"{where}: HTTP {status} {_error_text(response)}".rstrip(), secrets)
    if status == 404:
        return NotFound(message)
    if status == 403 or 'error="insufficient_scope"' in response.headers.get("WWW-Authenticate", ""):
        return InsufficientScope(message)
    if status == 401:
        return AccessDenied(message)
    if status == 405:
        return Unsupported(f"{message} (the registry does not offer this operation)")
    if status in (408, 429) or status >= 500:
        return TransientError(message, retry_after(response.headers.get("Retry-After")))
    return StorageError(message)


class _DefaultTrust(ssl.SSLContext):
    """What httpx's ``verify=True`` means (certifi's CA bundle), the bundle loaded at the first
    TLS handshake: a pass that makes none (a registry over ``http://`` redirecting nowhere)
    never spends the CPU loading it takes (45 ms here)."""

    def __new__(cls) -> _DefaultTrust:
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self) -> None:
        self._bundle_lock = threading.Lock()
        self.bundle_loaded = False

    def _load_bundle(self) -> None:
        with self._bundle_lock:
            if not self.bundle_loaded:
                self.load_verify_locations(cafile=certifi.where())
                self.bundle_loaded = True

    def wrap_socket(self, *args, **kwargs) -> ssl.SSLSocket:
        self._load_bundle()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args, **kwargs) -> ssl.SSLObject:
        self._load_bundle()
        return super().wrap_bio(*args, **kwargs)


@functools.cache
def default_tls() -> ssl.SSLContext:
    """The default trust (:class:`_DefaultTrust`), one per process."""
    return _DefaultTrust()


def _tls(config: dict) -> ssl.SSLContext | bool:
    if not config.get("tlsverify", True):
        return False
    if "cacert" in config:
        try:
            return ssl.create_default_context(cafile=config["cacert"])
        except (OSError, ssl.SSLError):
            raise ConfigError("cacert", "is not a readable PEM file of certificates") from None
    return True


class Session:
    """The connection to one registry; see the module docstring. Thread-safe.

    ``transport`` replaces httpx's network transport (an ``httpx.MockTransport`` in a unit test).
    """

    def __init__(self, url: str, *, username: str | None = None, password: str | None = None,
                 verify: ssl.SSLContext | bool = True, repositories: tuple[str, ...] = (),
                 requests_per_second: int | None = None, timeout: float = DEFAULT_TIMEOUT,
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.repositories = tuple(repositories)
        self.chunk_size = chunk_size
        self.requests = RequestCounter()
        self._netloc = urlsplit(self.url).netloc
        self._interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._hosts: dict[str, _Host] = {}
        self._hosts_lock = threading.Lock()
        self._transport = transport or httpx.HTTPTransport(
            verify=default_tls() if verify is True else verify, trust_env=False,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=KEEP_ALIVE))
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False,
                                  trust_env=False, transport=self._transport)
        self._credentials = Credentials(username, password, self._fetch_token)

    @classmethod
    def from_config(cls, params: dict):
        """A client for a region's ``registry:`` block (see ``PARAMETERS``).

        Raises ``ConfigError`` naming the bad parameter, never quoting its value.
        """
        config = parse_parameters(params, PARAMETERS, limits=LIMITS, required=("url",))
        url = check_endpoint("url", config["url"])
        if bool(config.get("username")) != bool(config.get("password")):
            raise ConfigError("password" if config.get("username") else "username",
                              "is required when the other of username and password is set")
        return cls(url, username=config.get("username"), password=config.get("password"),
                   verify=_tls(config), repositories=tuple(config.get("repositories", ())),
                   requests_per_second=config.get("requests_per_second"),
                   timeout=config.get("timeout", DEFAULT_TIMEOUT),
                   chunk_size=config.get("chunksize", DEFAULT_CHUNK_SIZE))

    @property
    def token_requests(self) -> int:
        """Token requests sent to the realm so far (not counted in ``requests``)."""
        return self._credentials.token_requests

    def describe(self) -> str:
        """The registry's base URL; never contains secrets."""
        return self.url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def endpoint(self, path: str) -> str:
        """The absolute URL of an API path such as ``/v2/<name>/tags/list``."""
        return self.url + path

    def where(self, method: str, url: str) -> str:
        """The start of a message about a request: the client and the URL without its query."""
        return f"{self.describe()}: {method} {urlsplit(url).path}"

    def _host(self, url: str) -> _Host:
        netloc = urlsplit(url).netloc
        with self._hosts_lock:
            return self._hosts.setdefault(netloc, _Host(self._interval))

    @contextlib.contextmanager
    def translating(self, where: str) -> Iterator[None]:
        """Turn httpx's exceptions inside the block into ``TransientError``s, redacted."""
        try:
            yield
        except httpx.HTTPError as error:
            message = redact(f"{where}: {type(error).__name__}: {error}", self._credentials.secrets())
            raise TransientError(message) from None

    def send(self, method: str, url: str, *, kind: str, scopes: tuple[str, ...] = (),
             headers: dict[str, str] | None = None, content: bytes | None = None,
             params: dict[str, str] | None = None, stream: bool = False) -> httpx.Response:
        """One request (two after a 401 with a challenge worth answering), counted as ``kind``.

        Returns the answer whatever its status (redirects are not followed); raises
        ``TransientError`` when no answer came, ``AccessDenied``/``TransientError`` when a token
        could not be had. A ``stream`` answer must be closed by the caller.
        """
        ours = urlsplit(url).netloc == self._netloc
        response = self._send_once(method, url, kind, scopes if ours else None, headers, content,
                                   params, stream)
        if response.status_code == 401 and ours and self._credentials.challenge(response, scopes):
            response.close()
            response = self._send_once(method, url, kind, scopes, headers, content, params, stream)
        return response

    def _send_once(self, method: str, url: str, kind: str, scopes: tuple[str, ...] | None,
                   headers: dict[str, str] | None, content: bytes | None,
                   params: dict[str, str] | None, stream: bool) -> httpx.Response:
        """One request; ``scopes`` ``None`` sends no ``Authorization``."""
        sent = dict(headers or {})
        if scopes is not None:
            sent.update(self._credentials.header(scopes))
        request = self._http.build_request(method, url, headers=sent, content=content, params=params)
        with self.translating(self.where(method, url)):
            return self._host(url).send(lambda: self._counted(kind, request, stream))

    def _counted(self, kind: str, request: httpx.Request, stream: bool) -> httpx.Response:
        """``request`` sent through the transport itself: ``httpx.Client.send`` would add a
        cookie jar (registries set no cookies; Docker's and containerd's clients keep none)
        and redirect and authentication handling this session does itself, a fifth of the CPU
        a manifest HEAD costs the client."""
        self.requests.add(kind)
        response = self._transport.handle_request(request)
        response.request = request
        if not stream:
            try:
                response.read()
            except BaseException:
                response.close()
                raise
        return response

    def call(self, method: str, url: str, *, kind: str, scopes: tuple[str, ...] = (),
             statuses: tuple[int, ...] = (200,), **options) -> httpx.Response:
        """:meth:`send` then :meth:`expect`, retried by :func:`drivers.retry.retrying`: for
        requests that may be repeated. The answer's body is read."""
        where = self.where(method, url)
        return retrying(lambda: self.expect(
            self.send(method, url, kind=kind, scopes=scopes, **options), statuses, where))

    def expect(self, response: httpx.Response, statuses: tuple[int, ...], where: str) -> httpx.Response:
        """``response`` if its status is one of ``statuses``, else its error (the body read)."""
        if response.status_code in statuses:
            return response
        error = error_for(response, where, self._credentials.secrets())
        response.close()
        raise error

    def location(self, response: httpx.Response, where: str) -> str:
        """The absolute URL of the answer's ``Location``; ``TransientError`` if it has none."""
        value = response.headers.get("Location")
        if not value:
            raise TransientError(f"{where}: the answer has no Location")
        return urljoin(str(response.request.url), value)

    def _fetch_token(self, realm: str, params: list[tuple[str, str]],
                     headers: dict[str, str]) -> httpx.Response:
        parts = urlsplit(realm)
        where = f"{self.describe()}: token request GET {parts.netloc}{parts.path}"
        with self.translating(where):
            response = self._host(realm).send(
                lambda: self._http.get(realm, params=params, headers=headers))
        return self.expect(response, (200,), where)
