"""The endpoint conformance suite on each endpoint kind: Distribution storage on a filesystem
and on S3 (moto), and a registry over its HTTP API (Debian's docker-registry 2.8.2)."""

from __future__ import annotations

import pytest

from drivers.filesystem import FilesystemDriver
from drivers.registry import RegistryClient
from drivers.s3 import S3Driver
from replicator.endpoints import StorageEndpoint
from replicator.endpoints.registry import RegistryEndpoint
from tests import registry as reg
from tests.endpoint_conformance import EndpointConformance


class TestFilesystemStorage(EndpointConformance):
    @pytest.fixture
    def endpoint(self, tmp_path):
        return StorageEndpoint("fs", FilesystemDriver(str(tmp_path / "region")))


class TestS3Storage(EndpointConformance):
    @pytest.fixture
    def endpoint(self, moto):
        return StorageEndpoint("s3", S3Driver.from_config(
            reg.s3_storage(moto.url, reg.create_bucket(moto.url))["s3"]))


class TestRegistry(EndpointConformance):
    @pytest.fixture
    def endpoint(self, tmp_path):
        with reg.start_registry(reg.filesystem_storage(tmp_path / "root"), tmp_path / "logs") as service:
            yield RegistryEndpoint("registry", RegistryClient.from_config({"url": service.url}))
