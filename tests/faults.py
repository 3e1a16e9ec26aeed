"""A fault-injecting HTTP proxy in front of moto's S3 server, for tests.

``FaultProxy(upstream_url, seed=..., rate=...)`` listens on a free loopback port (``.url``)
and forwards every HTTP/1.1 request to ``upstream_url`` on a new upstream connection,
streaming the response back byte for byte. With probability ``rate`` a request gets one
fault instead, chosen from ``faults``:

``error500``    a 500 ``InternalError`` S3 error document; the request is not forwarded
``error503``    a 503 ``SlowDown`` S3 error document; the request is not forwarded
``reset``       the connection is reset (RST) before any response; the request is not forwarded
``reset_body``  the request is forwarded; part of the response is sent (headers and part of
                the body, or part of the headers when there is no body), then a reset
``truncate``    the request is forwarded; the headers and fewer body bytes than their
                ``Content-Length`` are sent, then the connection is closed (FIN); a response
                that has no body (to a HEAD) is cut inside its headers and reset instead
``latency``     50-200 ms of added delay, then the request is forwarded normally
``cut_headers`` the request is forwarded; the status line and some of the header lines (whole
                lines, at least one left out) are sent, then the connection is closed (FIN):
                the client reads an answer without the headers left out and with no body.
                Not among the default faults (pass ``faults=ALL_FAULTS`` or name it)

After ``reset_body`` and ``truncate`` the upstream server has applied the request but the
client never got its answer, as when a connection breaks on the way back.

``throttle``    a 429 with ``Retry-After: 1``; the request is not forwarded. Not among the
                default faults (name it)

For a Distribution registry upstream, pass ``protocol=REGISTRY``: requests are then counted by
kind as ``drivers.registry`` counts them, and upload session ids and state are left out of a
request's identity (the proxy passes ``Host`` through, so the registry's absolute
``Location`` URLs lead back to the proxy).

Deterministic: whether the n-th occurrence of a request (method, path without the bucket,
query without upload ids) gets a fault, which one and how it is cut, is a pure function of
``seed``, that request and n, whatever the interleaving of concurrent requests.

``kinds`` limits faults to requests of some kinds (``list``, ``get``, ``head``, ``put``,
``copy``, ``delete``), ``where`` to requests a predicate accepts, ``limit`` to a number of faults.
``requests`` and ``faults`` count requests by kind and faults injected by fault kind,
``body_bytes`` the response body bytes passed to clients by request path (query left out);
``events`` is every request with the fault it got, ``answered`` (index for index) when the proxy
began its answer (just before it sent the first byte of it or broke the connection): a client
that waits for an answer can send nothing caused by it earlier;
``most_in_flight`` is the most requests the proxy held at once; ``lost_uploads`` holds the ids of the
multipart uploads created upstream whose creation response the client never received.
"""

from __future__ import annotations

import fcntl
import hashlib
import random
import re
import socket
import struct
import termios
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from drivers.errors import TransientError
from tests.services import LOOPBACK

FAULTS = ("error500", "error503", "reset", "reset_body", "truncate", "latency")
ALL_FAULTS = (*FAULTS, "cut_headers", "throttle")
KINDS = ("list", "get", "head", "put", "copy", "delete")
LATENCY = (0.05, 0.2)
_BUFFER = 64 * 1024
_SMALL_BODY = 64 * 1024
_LINE_LIMIT = 64 * 1024
_UPSTREAM_TIMEOUT = 60.0
_ERRORS = {
    "error500": (500, "Internal Server Error", "InternalError",
                 "We encountered an internal error. Please try again."),
    "error503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}
_UPLOAD_ID = re.compile(rb"<UploadId>([^<]+)</UploadId>")
_THROTTLE = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
             b"Content-Length: %d\r\n\r\n")
_THROTTLE_BODY = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'
_SESSION = re.compile(r"/blobs/uploads/[^/?]+")


class HTTPFormatError(Exception):
    """A message that is not HTTP/1.1 as this proxy understands it."""


@dataclass(frozen=True)
class Request:
    """One request as received: its head and its body, framing included (as forwarded)."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name), None)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))

    @property
    def kind(self) -> str:
        """``list``, ``get``, ``head``, ``put``, ``copy`` (server-side) or ``delete``, as
        ``drivers.s3`` counts requests (path-style addressing)."""
        has_key = "/" in self.path.strip("/")
        if self.method == "HEAD":
            return "head"
        if self.method == "GET":
            return "get" if has_key and "uploadId" not in self.query else "list"
        if self.method == "DELETE" or (self.method == "POST" and "delete" in self.query):
            return "delete"
        return "copy" if self.header("x-amz-copy-source") else "put"

    @property
    def identity(self) -> str:
        """Method, path without the bucket, and query with upload ids blanked."""
        key = self.path.lstrip("/").partition("/")[2]
        query = sorted((name, "" if name == "uploadId" else value)
                       for name, value in self.query.items())
        return f"{self.method} /{key}?{query}"


@dataclass(frozen=True)
class Protocol:
    """How the proxy sees its upstream's requests: their kind and their identity."""

    kind: Callable[[Request], str]
    identity: Callable[[Request], str]


S3 = Protocol(lambda request: request.kind, lambda request: request.identity)


def registry_kind(request: Request) -> str:
    """A registry request's kind, as ``drivers.registry`` counts it."""
    path, query = request.path, request.query
    if request.method == "HEAD":
        return "head"
    if request.method == "DELETE":
        return "delete"
    if request.method == "GET":
        if path.endswith(("/_catalog", "/tags/list")):
            return "list"
        return "head" if "/blobs/uploads/" in path else "get"
    return "copy" if "mount" in query else "put"


def registry_identity(request: Request) -> str:
    query = sorted((name, value) for name, value in request.query.items() if name != "_state")
    return f"{request.method} {_SESSION.sub('/blobs/uploads/-', request.path)}?{query}"


REGISTRY = Protocol(registry_kind, registry_identity)


@dataclass(frozen=True)
class Event:
    """A request the proxy handled and the fault it got (``None``: passed through)."""

    kind: str
    fault: str | None
    method: str
    target: str
    range: str | None
    at: float = 0.0
    """When the proxy received the request (``time.monotonic()``)."""


@dataclass
class _Response:
    head: bytes
    status: int
    framing: str  # "length", "chunked", "eof" or "none"
    length: int
    close: bool


class FaultProxy:
    """See the module docstring. Use as a context manager, or ``start()`` and ``stop()``."""

    def __init__(self, upstream_url: str, *, seed: int = 0, rate: float = 0.0,
                 faults: Collection[str] = FAULTS, kinds: Collection[str] | None = None,
                 where: Callable[[Request], bool] | None = None, limit: int | None = None,
                 latency: tuple[float, float] = LATENCY, protocol: Protocol = S3):
        unknown = set(faults) - set(ALL_FAULTS) or set(kinds or ()) - set(KINDS)
        if unknown or not faults or not 0 <= rate <= 1:
            raise ValueError(f"bad fault proxy settings: {sorted(unknown) or (faults, rate)}")
        upstream = urlsplit(upstream_url)
        self.upstream = (upstream.hostname, upstream.port or 80)
        self.seed, self.rate, self.limit, self.latency = seed, rate, limit, latency
        self.protocol = protocol
        self.fault_kinds = tuple(faults)
        self.kinds = frozenset(kinds if kinds is not None else KINDS)
        self.where = where
        self.requests: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.body_bytes: Counter[str] = Counter()
        self.events: list[Event] = []
        self.answered: list[float | None] = []
        self.most_in_flight = 0
        self._in_flight = 0
        self.lost_uploads: list[str] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.port = 0
        self.url = ""

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((LOOPBACK, 0))
        listener.listen(128)
        listener.settimeout(0.05)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._acceptor = threading.Thread(target=self._accept, name=f"fault-proxy-{self.port}",
                                          daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection the proxy holds; join its threads."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=10)
        alive = [thread.name for thread in threads if thread.is_alive()]
        if alive:
            raise RuntimeError(f"fault proxy threads did not stop: {alive}")

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- connections ----------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True,
                                      name=f"fault-proxy-{self.port}-client")
            with self._lock:
                self._sockets.add(client)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb", buffering=_BUFFER)
        try:
            while not self._stopping.is_set():
                request = _read_request(reader, client)
                if request is None or not self._handle(request, client):
                    return
        except (OSError, HTTPFormatError, ValueError):
            return
        finally:
            reader.close()
            with self._lock:
                self._sockets.discard(client)
            with suppress(OSError):
                client.close()

    def _decide(self, request: Request) -> tuple[str | None, random.Random, int]:
        """Count the request and draw its fault, if any; the third value is its event's index."""
        with self._lock:
            kind, identity = self.protocol.kind(request), self.protocol.identity(request)
            self.requests[kind] += 1
            self._seen[identity] += 1
            occurrence = self._seen[identity]
            draw = f"{self.seed}\0{identity}\0{occurrence}"
            rng = random.Random(hashlib.sha256(draw.encode()).digest())
            fault = None
            if (kind in self.kinds and (self.where is None or self.where(request))
                    and (self.limit is None or self.faults.total() < self.limit)
                    and rng.random() < self.rate):
                fault = rng.choice(self.fault_kinds)
                self.faults[fault] += 1
            self.events.append(Event(kind, fault, request.method, request.target,
                                     request.header("range"), time.monotonic()))
            self.answered.append(None)
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
            return fault, rng, len(self.events) - 1

    def _handle(self, request: Request, client: socket.socket) -> bool:
        """Answer one request; return whether the client connection stays open."""
        fault, rng, index = self._decide(request)
        try:
            return self._answer(request, client, fault, rng, index)
        finally:
            self._note_answer(index)
            with self._lock:
                self._in_flight -= 1

    def _note_answer(self, index: int) -> None:
        with self._lock:
            if self.answered[index] is None:
                self.answered[index] = time.monotonic()

    def _answer(self, request: Request, client: socket.socket, fault: str | None,
                rng: random.Random, index: int) -> bool:
        if fault in _ERRORS or fault in ("throttle", "reset"):
            self._note_answer(index)
        if fault in _ERRORS:
            client.sendall(_error_response(request, *_ERRORS[fault]))
            return True
        if fault == "throttle":
            client.sendall(_THROTTLE % len(_THROTTLE_BODY)
                           + (b"" if request.method == "HEAD" else _THROTTLE_BODY))
            return True
        if fault == "reset":
            _reset(client)
            return False
        if fault == "latency":
            time.sleep(rng.uniform(*self.latency))
        upstream = socket.create_connection(self.upstream, timeout=_UPSTREAM_TIMEOUT)
        with self._lock:
            self._sockets.add(upstream)
        try:
            upstream.sendall(_forwarded(request))
            with upstream.makefile("rb", buffering=_BUFFER) as reader:
                response = _read_response_head(reader, request.method)
                self._note_answer(index)
                if fault in ("reset_body", "truncate", "cut_headers"):
                    self._break(client, reader, request, response, fault, rng)
                    return False
                client.sendall(response.head)
                for piece in _body(reader, response):
                    client.sendall(piece)
                    with self._lock:
                        self.body_bytes[request.path] += len(piece)
        finally:
            with self._lock:
                self._sockets.discard(upstream)
            upstream.close()
        keep = not response.close and request.header("connection") != "close"
        return keep and response.framing != "eof"

    def _break(self, client: socket.socket, reader, request: Request, response: _Response,
               fault: str, rng: random.Random) -> None:
        """Send part of an applied request's response, then reset or close the connection."""
        has_body = response.framing == "length" and response.length > 0
        small = response.framing == "length" and response.length <= _SMALL_BODY
        body = b"".join(_body(reader, response)) if small else None
        if body and "uploads" in request.query:
            with self._lock:
                self.lost_uploads.extend(m.decode() for m in _UPLOAD_ID.findall(body))
        if fault == "cut_headers":
            lines = response.head.split(b"\r\n")[:-2]   # the status line and the header lines
            kept = rng.randint(1, max(1, len(lines) - 1))
            client.sendall(b"".join(line + b"\r\n" for line in lines[:kept]))
            with suppress(OSError):
                client.shutdown(socket.SHUT_WR)
            return
        if fault == "reset_body" and not has_body:
            client.sendall(response.head[:max(1, int(len(response.head) * rng.uniform(0.1, 0.9)))])
            _reset(client)
            return
        head = response.head
        if fault == "truncate" and response.framing == "length" and response.length == 0:
            head = re.sub(rb"(?im)^content-length:[ \t]*0[ \t]*\r$",
                          b"Content-Length: %d\r" % rng.randint(1, 100), head)
        elif fault == "truncate" and not has_body and response.framing != "chunked":
            # No body whose length could lie (HEAD, 204, 304, no framing): break the headers.
            client.sendall(head[:max(1, int(len(head) * rng.uniform(0.1, 0.9)))])
            _reset(client)
            return
        cut = int(response.length * rng.uniform(0.0, 0.9) if fault == "reset_body"
                  else response.length * rng.uniform(0.5, 0.99)) if has_body else 0
        client.sendall(head)
        pieces = iter([body]) if body is not None else _body(reader, response)
        for piece in pieces:
            if cut <= 0:
                break
            client.sendall(piece[:cut])
            cut -= len(piece)
        if fault == "reset_body":
            _drain(client)
            _reset(client)
        else:
            with suppress(OSError):
                client.shutdown(socket.SHUT_WR)


# -- HTTP/1.1 messages ----------------------------------------------------------------------


def _read_head(reader) -> list[bytes] | None:
    """The start line and header lines of one message (CRLF kept); ``None`` at a clean EOF."""
    lines = []
    while True:
        line = reader.readline(_LINE_LIMIT + 1)
        if not line:
            if lines:
                raise HTTPFormatError("connection closed inside a message head")
            return None
        if len(line) > _LINE_LIMIT or not line.endswith(b"\n"):
            raise HTTPFormatError("message head line too long or cut")
        if line in (b"\r\n", b"\n"):
            if lines:
                return lines
            continue  # tolerate stray blank lines between messages
        lines.append(line)


def _headers(lines: list[bytes]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for line in lines[1:]:
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise HTTPFormatError(f"malformed header line {line[:80]!r}")
        pairs.append((name.strip(), value.strip()))
    return tuple(pairs)


def _framing(headers: tuple[tuple[str, str], ...]) -> tuple[str, int]:
    values = {name.lower(): value for name, value in headers}
    if "chunked" in values.get("transfer-encoding", "").lower():
        return "chunked", -1
    if "content-length" in values:
        length = int(values["content-length"])
        if length < 0:
            raise HTTPFormatError("negative Content-Length")
        return "length", length
    return "eof", -1


def _exactly(reader, size: int) -> Iterator[bytes]:
    while size > 0:
        piece = reader.read(min(size, _BUFFER))
        if not piece:
            raise HTTPFormatError("connection closed inside a message body")
        size -= len(piece)
        yield piece


def _chunked(reader) -> Iterator[bytes]:
    """The raw bytes of a chunked body, framing and trailers included."""
    while True:
        line = reader.readline(_LINE_LIMIT)
        if not line.endswith(b"\n"):
            raise HTTPFormatError("bad chunk size line")
        yield line
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:
                line = reader.readline(_LINE_LIMIT)
                if not line.endswith(b"\n"):
                    raise HTTPFormatError("bad chunked trailer")
                yield line
                if line in (b"\r\n", b"\n"):
                    return
        yield from _exactly(reader, size + 2)


def _read_request(reader, client: socket.socket) -> Request | None:
    lines = _read_head(reader)
    if lines is None:
        return None
    parts = lines[0].decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HTTPFormatError(f"malformed request line {lines[0][:80]!r}")
    headers = _headers(lines)
    if any(name.lower() == "expect" and value.lower() == "100-continue" for name, value in headers):
        client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        headers = tuple((name, value) for name, value in headers if name.lower() != "expect")
    framing, length = _framing(headers)
    if framing == "chunked":
        body = b"".join(_chunked(reader))
    elif framing == "length":
        body = b"".join(_exactly(reader, length))
    else:
        body = b""  # a request without framing has no body
    return Request(parts[0], parts[1], parts[2], headers, body)


def _forwarded(request: Request) -> bytes:
    head = [f"{request.method} {request.target} {request.version}\r\n"]
    head += [f"{name}: {value}\r\n" for name, value in request.headers]
    return "".join(head).encode("latin-1") + b"\r\n" + request.body


def _read_response_head(reader, method: str) -> _Response:
    while True:
        lines = _read_head(reader)
        if lines is None:
            raise HTTPFormatError("upstream closed the connection without a response")
        parts = lines[0].decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HTTPFormatError(f"malformed status line {lines[0][:80]!r}")
        status = int(parts[1])
        if status >= 200 or status == 101:
            break
    headers = _headers(lines)
    framing, length = _framing(headers)
    if method == "HEAD" or status in (101, 204, 304):
        framing, length = "none", 0
    close = any(name.lower() == "connection" and value.lower() == "close"
                for name, value in headers)
    return _Response(b"".join(lines) + b"\r\n", status, framing, length, close)


def _body(reader, response: _Response) -> Iterator[bytes]:
    if response.framing == "length":
        yield from _exactly(reader, response.length)
    elif response.framing == "chunked":
        yield from _chunked(reader)
    elif response.framing == "eof":
        while piece := reader.read1(_BUFFER):
            yield piece


def _error_response(request: Request, status: int, reason: str, code: str, message: str) -> bytes:
    request_id = hashlib.sha256(request.target.encode()).hexdigest()[:16].upper()
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>{request_id}</RequestId>"
            f"<HostId>fault-proxy</HostId></Error>").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nx-amz-request-id: {request_id}\r\n"
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}\r\n\r\n").encode()
    return head if request.method == "HEAD" else head + body


def _drain(sock: socket.socket, timeout: float = 2.0) -> None:
    """Wait (bounded) until the peer has received what was sent: an abortive close discards
    unsent bytes, which would make the break point depend on timing."""
    deadline = time.monotonic() + timeout
    with suppress(OSError, AttributeError):
        while (struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0] > 0
               and time.monotonic() < deadline):
            time.sleep(0.001)


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` abortively: the peer gets a TCP reset, not an orderly end of stream."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with suppress(OSError):
        sock.close()


def cut_header_outcomes(upstream_url: str, driver_behind, data: bytes, seeds) -> dict[str, set]:
    """What each call of a storage driver gives through a proxy that cuts every answer inside
    its headers (``cut_headers`` at rate 1), one proxy per seed: by request kind, ``True`` for
    a right result and ``"transient"`` for a ``TransientError`` (any other exception raises).
    ``driver_behind(proxy)`` is the driver talking to the proxy; the object ``object`` must
    hold ``data`` upstream already."""
    calls = {"get": lambda d: d.read("object", limit=len(data)) == data,
             "head": lambda d: d.stat("object").size == len(data),
             "put": lambda d: bool(d.write("other", b"x")),
             "list": lambda d: [info.key for page in d.list() for info in page][:1] == ["object"]}
    outcomes: dict[str, set] = {}
    for seed in seeds:
        with FaultProxy(upstream_url, seed=seed, rate=1.0, faults=["cut_headers"]) as proxy:
            driver = driver_behind(proxy)
            for kind, call in calls.items():
                try:
                    outcome = call(driver)
                except TransientError:
                    outcome = "transient"
                outcomes.setdefault(kind, set()).add(outcome)
        assert proxy.faults["cut_headers"] == proxy.requests.total()
    return outcomes
