"""A single-node OpenStack Swift with tempauth on loopback, from Debian's packages.

:func:`start_swift` builds one-device, one-replica rings in a temporary directory, writes the
configuration files there, starts memcached and the account, container, object and proxy
servers on free loopback ports, and waits until a tempauth login and a container PUT succeed.
:meth:`SwiftBed.stop` stops exactly the processes it started.

Gotchas met setting it up (Swift 2.30 from Debian 12):

- ``/etc/swift/swift.conf`` (hash path prefix and suffix, storage policy 0) is always read,
  whatever ``swift_dir`` says; only rings come from ``swift_dir``. Debian ships a usable one, so
  it is left alone and everything else lives in the temporary directory.
- tempauth keeps its tokens in memcached, which must run (as root it needs ``-u root``), and
  ``[filter:cache]`` must name it, or the proxy falls back to ``/etc/swift/memcache.conf``.
- ``account_autocreate = true`` on the proxy, or the first container PUT fails: no account
  database exists yet.
- ``workers = 0`` keeps each server one process with no forked children, so the process started
  is the one to stop; ``-v`` sends the logs to stdout rather than syslog. ``mount_check =
  false``, ``disable_fallocate = true`` and a plain ``sdb1`` directory stand in for a disk;
  the object server needs user xattrs, which ``/tmp`` (ext4) has.
- Rings are built with ``swift.common.ring.RingBuilder`` in one run of Debian's
  ``/usr/bin/python3`` (about a second); ``swift-ring-builder`` takes nearly a second per call.
- The ports open seconds before the proxy works (Python imports on a small machine): only a
  login plus a container PUT proves readiness.
- ``tempurl`` stays out of the proxy pipeline: with it in ``/info``, a Distribution registry
  sets a temp-url key on its container and redirects blob GETs to Swift.
- There is no ``swift-init`` in 2.30: each ``swift-*-server`` is started directly.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.services import LOOPBACK, Service, free_port

SYSTEM_PYTHON = "/usr/bin/python3"
"""Debian's Python, which has the ``swift`` package the servers run on."""
SWIFT_USER, SWIFT_KEY = "test:tester", "testing"
"""The tempauth user (account ``AUTH_test``) and its key."""
READY_TIMEOUT = 60.0

_RINGS = """
from swift.common.ring import RingBuilder
for name, port in (("account", {account}), ("container", {container}), ("object", {object})):
    builder = RingBuilder(6, 1, 1)
    builder.add_dev({{"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": port,
                     "device": "sdb1", "weight": 1}})
    builder.rebalance()
    builder.save(f"{{name}}.builder")
    builder.get_ring().save(f"{{name}}.ring.gz")
"""

_DEFAULT = """[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = root
swift_dir = {dir}
"""

_SERVER_CONF = _DEFAULT + """devices = {dir}/devices
mount_check = false
disable_fallocate = true

[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}
"""

_PROXY_FILTERS = ("catch_errors", "gatekeeper", "healthcheck", "proxy-logging", "cache",
                  "listing_formats", "bulk", "tempauth", "copy", "slo", "dlo")

_PROXY_CONF = _DEFAULT + """
[pipeline:main]
pipeline = {pipeline} proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached}

[filter:proxy-logging]
use = egg:swift#proxy_logging
"""


@dataclass
class SwiftBed:
    """A running Swift: ``auth_url`` takes tempauth (v1) logins as ``SWIFT_USER``/``SWIFT_KEY``."""

    directory: Path
    proxy_port: int
    services: list[Service] = field(default_factory=list)

    @property
    def auth_url(self) -> str:
        return f"http://{LOOPBACK}:{self.proxy_port}/auth/v1.0"

    def driver_params(self, container: str, **extra) -> dict:
        """A ``storage.swift`` block for this Swift (Distribution's keys)."""
        return {"username": SWIFT_USER, "password": SWIFT_KEY, "authurl": self.auth_url,
                "authversion": 1, "container": container, **extra}

    def connection(self):
        """A python-swiftclient connection as the test user, its retries off."""
        from swiftclient.client import Connection
        return Connection(authurl=self.auth_url, user=SWIFT_USER, key=SWIFT_KEY, auth_version="1",
                          retries=0)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services.clear()


def _write_configs(directory: Path, ports: dict[str, int]) -> None:
    (directory / "devices" / "sdb1").mkdir(parents=True)
    for kind in ("account", "container", "object"):
        (directory / f"{kind}-server.conf").write_text(
            _SERVER_CONF.format(port=ports[kind], dir=directory, kind=kind))
    plain_filters = "".join(f"\n[filter:{name}]\nuse = egg:swift#{name}\n" for name in _PROXY_FILTERS
                            if name not in ("tempauth", "cache", "proxy-logging"))
    (directory / "proxy-server.conf").write_text(_PROXY_CONF.format(
        port=ports["proxy"], dir=directory, pipeline=" ".join(_PROXY_FILTERS),
        memcached=ports["memcached"]) + plain_filters)
    subprocess.run([SYSTEM_PYTHON, "-c", _RINGS.format(**ports)], cwd=directory, check=True,
                   capture_output=True)


def _wait_ready(bed: SwiftBed) -> None:
    from swiftclient.exceptions import ClientException
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        for service in bed.services:
            if service.process.poll() is not None:
                raise RuntimeError(f"{service.name} exited: {service.log()}")
        try:
            bed.connection().put_container("readiness")
            return
        except (ClientException, OSError) as error:
            if time.monotonic() > deadline:
                raise RuntimeError(f"swift not ready after {READY_TIMEOUT}s: {error}") from None
            time.sleep(0.2)


def start_swift(directory: Path) -> SwiftBed:
    """Build rings and configs in ``directory`` and start a Swift there; stop it with ``stop()``."""
    ports = {name: free_port() for name in ("memcached", "account", "container", "object", "proxy")}
    _write_configs(directory, ports)
    bed = SwiftBed(directory, ports["proxy"])
    try:
        bed.services.append(Service(
            "memcached", ["memcached", "-l", LOOPBACK, "-p", str(ports["memcached"]), "-U", "0",
                          "-m", "64", "-u", "root"], ports["memcached"], ready_path=None,
            log_dir=directory))
        for kind in ("account", "container", "object", "proxy"):
            bed.services.append(Service(
                f"swift-{kind}", [f"swift-{kind}-server", str(directory / f"{kind}-server.conf"),
                                  "-v"], ports[kind], ready_path=None, log_dir=directory))
        _wait_ready(bed)
    except BaseException:
        bed.stop()
        raise
    return bed
