"""Shared fixtures: real services started once per session on loopback ports."""

from __future__ import annotations

import pytest

from tests.services import Service, start_moto


@pytest.fixture(scope="session")
def moto(tmp_path_factory) -> Service:
    """One moto S3 server for the session; tests make their own buckets in it."""
    service = start_moto(tmp_path_factory.mktemp("moto"))
    yield service
    service.stop()
