"""Local HTTP servers for purger tests: a recording, scripted API fake and a Varnish edge.

:class:`RecordingServer` runs ``http.server`` in a thread on a free loopback port, records
every request and answers with ``respond(request)``; :func:`scripted` makes ``respond`` from a
list of replies (a Cloudflare or Fastly fake), and the same server with a dict of bodies is a
tiny origin. :func:`start_varnish` runs ``varnishd`` with ``registry-cdn.vcl`` in front of an
origin port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.services import LOOPBACK, Service, free_port

VCL = Path(__file__).parent / "registry-cdn.vcl"
"""A test CDN edge: long-TTL caching, PURGE, soft purge, xkey and BAN from loopback."""


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased."""
    body: bytes
    at: float = field(default_factory=time.monotonic)
    """When it arrived (``time.monotonic()``)."""

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict | list = b""
    """A dict or list is sent as JSON."""
    headers: dict[str, str] = field(default_factory=dict)


def scripted(replies: list[Reply], then: Reply | None = None) -> Callable[[Recorded], Reply]:
    """Answers ``replies`` in order, then ``then`` (default 200 with an empty body) for ever."""
    queue = list(replies)
    lock = threading.Lock()

    def respond(_: Recorded) -> Reply:
        with lock:
            return queue.pop(0) if queue else (then or Reply())

    return respond


class RecordingServer:
    """An HTTP/1.1 server on ``url`` that records ``requests`` (any method) and answers each with
    ``respond``. ``stop()`` shuts it down and joins its thread."""

    def __init__(self, respond: Callable[[Recorded], Reply]) -> None:
        self.respond = respond
        self.requests: list[Recorded] = []
        self._server = ThreadingHTTPServer((LOOPBACK, 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=f"http-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> RecordingServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _handler(server: RecordingServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def __getattr__(self, name: str):
            if name.startswith("do_"):
                return self._answer
            raise AttributeError(name)

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Recorded(self.command, self.path,
                               {name.lower(): value for name, value in self.headers.items()},
                               self.rfile.read(length) if length else b"")
            server.requests.append(request)
            reply = server.respond(request)
            body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if isinstance(reply.body, (dict, list)):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


def origin(bodies: dict[str, bytes]) -> Callable[[Recorded], Reply]:
    """Serves ``bodies[path]`` (read at each request, so tests may change it) with a strong
    ETag, 404 for other paths."""

    def respond(request: Recorded) -> Reply:
        if request.path not in bodies:
            return Reply(404, b"not found")
        body = bodies[request.path]
        return Reply(200, body, {"ETag": f'"{abs(hash(body)):x}"', "Content-Type": "text/plain"})

    return respond


def start_varnish(origin_port: int, work_dir: Path) -> Service:
    """``varnishd -F`` with ``registry-cdn.vcl`` (its backend port set to ``origin_port``) on a
    free loopback port, its state in ``work_dir``. As root, varnishd's worker runs as its own
    user, which cannot enter pytest's private temp folders: then ``-j none`` keeps it root."""
    varnishd = shutil.which("varnishd") or "/usr/sbin/varnishd"
    if not os.path.exists(varnishd):
        raise RuntimeError("varnishd is not installed (apt-get install varnish varnish-modules)")
    vcl = work_dir / VCL.name
    text, count = re.subn(r'(\.port\s*=\s*)"\d+"', rf'\g<1>"{origin_port}"', VCL.read_text())
    if count != 1:
        raise RuntimeError(f"{VCL.name}: expected one backend port, found {count}")
    vcl.write_text(text)
    port = free_port()
    argv = [varnishd, "-F", "-a", f"{LOOPBACK}:{port}", "-T", f"{LOOPBACK}:{free_port()}",
            "-n", str(work_dir / "varnish"), "-f", str(vcl), "-s", "malloc,64m"]
    if os.geteuid() == 0:
        argv[1:1] = ["-j", "none"]
    return Service("varnish", argv, port, ready_path="/__varnish_ready", log_dir=work_dir)
