"""Real servers for tests: started on free loopback ports, stopped exactly as started."""

from __future__ import annotations

import os
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class Service:
    """A child process serving HTTP on a loopback port; ``stop()`` ends it and only it."""

    def __init__(self, name: str, argv: list[str], port: int, *, ready_path: str = "/",
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

    def _wait_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log()}")
            try:
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
