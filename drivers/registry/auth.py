"""Credentials for a registry: anonymous, Basic, or Bearer tokens from the registry's realm.

The scheme is learned from the registry's first ``WWW-Authenticate`` challenge. Bearer tokens
are requested from the challenge's realm (``GET realm?service=..&scope=..``, with the Basic
credentials when configured), cached per set of scopes until ``expires_in`` runs out, and
dropped when the registry refuses one. Token requests are counted in ``token_requests``, not
among the registry's storage requests.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable

import httpx

from drivers.errors import TransientError

DEFAULT_TOKEN_LIFETIME = 60
"""Seconds a token lives when its answer gives no ``expires_in`` (the Docker token spec's)."""

_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``WWW-Authenticate`` as (lower-case scheme, parameters)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {match[1].lower(): match[2] or match[3] for match in _PARAM.finditer(rest)}
    return scheme.lower(), params


class Credentials:
    """What the client sends as ``Authorization`` to its registry; thread-safe.

    ``fetch(url, params, headers)`` sends one token request and returns its 200 answer, or
    raises the error of :func:`drivers.registry.client.error_for`, which :meth:`header` passes on.
    """

    def __init__(self, username: str | None, password: str | None,
                 fetch: Callable[[str, list[tuple[str, str]], dict[str, str]], httpx.Response]):
        self._basic = None
        if username:
            pair = f"{username}:{password or ''}".encode()
            self._basic = "Basic " + base64.b64encode(pair).decode()
        self._fetch = fetch
        self._lock = threading.Lock()
        self._scheme: str | None = None
        self._realm: str | None = None
        self._service: str | None = None
        self._password = password
        self._tokens: dict[str, tuple[str, float]] = {}
        self._wanted: dict[str, tuple[str, ...]] = {}
        self.token_requests = 0

    def secrets(self) -> list[str]:
        """Every secret a message could carry: the password, the Basic header, cached tokens."""
        with self._lock:
            tokens = [token for token, _ in self._tokens.values()]
        return [secret for secret in (self._password, self._basic, *tokens) if secret]

    def header(self, scopes: tuple[str, ...]) -> dict[str, str]:
        """The ``Authorization`` header for a request needing ``scopes`` (may be empty).

        Raises ``AccessDenied`` when the realm refuses the credentials, ``TransientError``
        when it fails or answers without a token, ``StorageError`` for its other errors.
        """
        with self._lock:
            scheme = self._scheme
        if scheme == "basic" and self._basic:
            return {"Authorization": self._basic}
        if scheme == "bearer":
            return {"Authorization": "Bearer " + self._token(scopes)}
        return {}

    def challenge(self, response: httpx.Response, scopes: tuple[str, ...]) -> bool:
        """Learn from a 401 answer; whether sending the request again may now succeed."""
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        with self._lock:
            previous = self._scheme
            if scheme == "basic":
                self._scheme = "basic"
                return self._basic is not None and previous != "basic"
            if scheme != "bearer" or not params.get("realm"):
                return False
            self._scheme, self._realm, self._service = "bearer", params["realm"], params.get("service")
            key = " ".join(scopes)
            asked = tuple(params.get("scope", "").split())
            self._wanted[key] = (*scopes, *(scope for scope in asked if scope not in scopes))
            self._tokens.pop(key, None)
            return True

    def _token(self, scopes: tuple[str, ...]) -> str:
        key = " ".join(scopes)
        with self._lock:
            cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic():
                return cached[0]
            wanted = self._wanted.get(key, scopes)
            realm, service = self._realm, self._service
        params = [("service", service)] if service else []
        params += [("scope", scope) for scope in wanted]
        headers = {"Authorization": self._basic} if self._basic else {}
        with self._lock:
            self.token_requests += 1
        response = self._fetch(realm, params, headers)
        try:
            answer = response.json()
            token = answer.get("token") or answer.get("access_token")
            lifetime = float(answer.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise TransientError("the token realm answered without a token")
        now = time.monotonic()
        with self._lock:
            self._tokens = {name: entry for name, entry in self._tokens.items() if entry[1] > now}
            self._tokens[key] = (token, now + max(lifetime - 10, lifetime / 2))
        return token
