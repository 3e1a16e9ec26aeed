"""Shared fixtures: real services started once per session on loopback ports."""

from __future__ import annotations

import subprocess

import pytest
import tenacity

import drivers.retry
from tests.services import AZURITE_ACCOUNTS, Service, start_azurite, start_fake_gcs, start_moto
from tests.swift_bed import SwiftBed, start_swift


@pytest.fixture(scope="session")
def moto(tmp_path_factory) -> Service:
    """One moto S3 server for the session; tests make their own buckets in it."""
    service = start_moto(tmp_path_factory.mktemp("moto"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory) -> Service:
    """One fake-gcs-server for the session; tests make their own buckets in it."""
    service = start_fake_gcs(tmp_path_factory.mktemp("fake-gcs"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory) -> Service:
    """One Azurite Blob server for the session, serving both test accounts (``AZURITE_ACCOUNTS``);
    tests make their own containers."""
    service = start_azurite(tmp_path_factory.mktemp("azurite"), accounts=AZURITE_ACCOUNTS)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def swift(tmp_path_factory) -> SwiftBed:
    """One single-node Swift (tempauth) for the session; tests make their own containers."""
    bed = start_swift(tmp_path_factory.mktemp("swift"))
    yield bed
    bed.stop()


@pytest.fixture
def no_backoff(monkeypatch):
    """Retries without sleeping, for tests that run the retry policy to its end."""
    monkeypatch.setattr(drivers.retry, "_policy", drivers.retry._policy.copy(wait=tenacity.wait_none()))
    monkeypatch.setattr(drivers.retry, "pause", lambda failures: None)


@pytest.fixture
def walks(monkeypatch) -> list[subprocess.Popen]:
    """The child processes started in the test (the filesystem driver's walks; real ones,
    recorded)."""
    started = []
    real = subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)
    return started
