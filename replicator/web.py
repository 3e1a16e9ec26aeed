"""The service's HTTP face: ``/metrics``, ``/healthz``, ``/readyz``, ``POST /events/<region>``,
the status page ``/`` and the image status ``GET /v1/images/<image>``.

The webhook answers fast: it validates the whole envelope (size, content type, token, JSON
shape) before anything is queued, so a rejected request changes nothing.

    401  webhook_token configured and ``Authorization: Bearer <token>`` missing or wrong
         (checked first, in constant time, so region names are not revealed)
    404  unknown path or region
    411  no Content-Length
    413  body over 1 MiB
    400  wrong Content-Type or malformed envelope
    200  ``{"accepted": N, "triggered": M}``

The page and ``/v1/`` need ``Authorization: Bearer <api_token>`` when ``server.api_token`` is
set (401 otherwise, compared in constant time). ``GET /v1/images/<image>`` (``name:tag``,
``name@sha256:<hex>`` or both; ``?wait=SECONDS``, at most ``MAX_WAIT``, long-polls until the
image is in sync everywhere; ``?destination=NAME``, repeatable; ``?through_cdn=1``) answers 200
with :meth:`replicator.barrier.ImageStatus.as_dict`, 400 for a bad reference or wait, 404 when
no policy selects the image, a destination named is not one of its destinations or the source
lacks it, 502 when the source cannot be read.
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from drivers.errors import StorageError
from replicator.barrier import BadReference, Barrier, BarrierError, parse_reference
from replicator.notifications import (
    MAX_BODY,
    MEDIA_TYPES,
    EnvelopeError,
    parse_envelope,
)
from replicator.page import render_page
from replicator.service import Service

log = logging.getLogger(__name__)


DISCARD_LIMIT = 8 * MAX_BODY
"""An oversized body up to this size is read and dropped so the client sees the 413."""
IMAGES = "/v1/images/"
MAX_WAIT = 300.0
"""Seconds an image status request may long-poll."""
WAIT_INTERVAL = 1.0
"""Seconds between the checks of a long-polling image status request."""


class WebServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, service: Service, host: str, port: int):
        self.service = service
        super().__init__((host, port), _Handler)

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("client %s went away: %s", client_address, error)
        else:
            log.exception("error while answering %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    server: WebServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        service = self.server.service
        if self.path == "/metrics":
            self._send(200, generate_latest(service.metrics.registry), CONTENT_TYPE_LATEST)
        elif self.path == "/healthz":
            self._json(200, {"status": "alive"})
        elif self.path == "/readyz":
            regions = service.readiness
            ready = all(value == "ok" for value in regions.values()) and not service.stopping.is_set()
            self._json(200 if ready else 503, {"ready": ready, "regions": regions})
        elif urlsplit(self.path).path == "/" or self.path.startswith(IMAGES):
            self._protected(service)
        else:
            self._json(404, {"error": "not found"})

    def _protected(self, service: Service) -> None:
        if not self._bearer(service.config.server.api_token):
            return
        url = urlsplit(self.path)
        if url.path == "/":
            page = render_page(service.config, service.state)
            self._send(200, page.encode(), "text/html; charset=utf-8")
            return
        query = parse_qs(url.query)
        try:
            wait = min(float(query.get("wait", ["0"])[0]), MAX_WAIT)
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= MAX_WAIT:
            self._json(400, {"error": f"wait must be a number of seconds from 0 to {MAX_WAIT:.0f}"})
            return
        try:
            barrier = Barrier(service.config, service.state,
                              parse_reference(unquote(url.path[len(IMAGES):])),
                              query.get("destination", []),
                              query.get("through_cdn", [""])[0] in ("1", "true"))
            status = barrier.wait(wait, WAIT_INTERVAL, service.stopping)
        except BadReference as error:
            self._json(400, {"error": str(error)})
        except BarrierError as error:
            self._json(404, {"error": str(error)})
        except StorageError as error:
            self._json(502, {"error": f"cannot read the source: {error}"})
        else:
            self._json(200, status.as_dict())

    def _bearer(self, token: str | None) -> bool:
        """Whether the request carries ``token`` (or none is needed); answers 401 if not."""
        supplied = self.headers.get("Authorization", "")
        if token is None or hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode()):
            return True
        self._json(401, {"error": "missing or wrong bearer token"})
        return False

    def do_POST(self) -> None:
        service = self.server.service
        if not self._bearer(service.config.server.webhook_token):
            return
        prefix = "/events/"
        region = self.path[len(prefix):] if self.path.startswith(prefix) else None
        if region not in service.config.regions:
            self._json(404, {"error": "unknown region" if region is not None else "not found"})
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._json(411, {"error": "Content-Length required"})
            return
        if int(length) > MAX_BODY:
            self._discard(int(length))
            self._json(413, {"error": f"body over {MAX_BODY} bytes"})
            return
        body = self.rfile.read(int(length))
        media_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media_type not in MEDIA_TYPES:
            self._json(400, {"error": f"Content-Type must be {MEDIA_TYPES[0]}"})
            return
        try:
            events = parse_envelope(body)
        except EnvelopeError as error:
            self._json(400, {"error": str(error)})
            return
        self._json(200, {"accepted": len(events), "triggered": service.receive(region, events)})

    def _discard(self, length: int) -> None:
        if length > DISCARD_LIMIT:
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 65536))
            if not chunk:
                return
            length -= len(chunk)

    def _json(self, status: int, document: dict) -> None:
        self._send(status, json.dumps(document).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status >= 400 and self.command == "POST":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
