"""Endpoints: places where images live, behind one interface (:mod:`replicator.endpoints.base`).

The engine, the copier, verify and the service speak only that interface; what a kind of place
stores, and how, is its endpoint's business. A region's endpoint is built from its
configuration by :func:`endpoint_for`.
"""

from replicator.endpoints.base import Destination, Endpoint, TagEntry
from replicator.endpoints.storage import StorageEndpoint


def endpoint_for(region) -> Endpoint:
    """The endpoint of a configured region: Distribution storage over its driver, or a
    registry over its HTTP API; both are :class:`Destination` s."""
    if region.registry is not None:
        from replicator.endpoints.registry import RegistryEndpoint
        return RegistryEndpoint(region.name, region.registry)
    return StorageEndpoint(region.name, region.storage)


__all__ = ["Destination", "Endpoint", "StorageEndpoint", "TagEntry", "endpoint_for"]
