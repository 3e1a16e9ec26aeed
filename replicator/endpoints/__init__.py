"""Endpoints: places where images live, behind one interface (:mod:`replicator.endpoints.base`).

The engine, the copier, verify and the service speak only that interface; what a kind of place
stores, and how, is its endpoint's business. A region's endpoint is built from its
configuration by :func:`endpoint_for`.
"""

from replicator.endpoints.base import Capabilities, Endpoint, TagEntry
from replicator.endpoints.storage import StorageEndpoint


def endpoint_for(region) -> Endpoint:
    """The endpoint of a configured region (today: Distribution storage over its driver)."""
    return StorageEndpoint(region.name, region.storage)


__all__ = ["Capabilities", "Endpoint", "StorageEndpoint", "TagEntry", "endpoint_for"]
