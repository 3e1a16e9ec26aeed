"""A thin, streaming client of the OCI Distribution HTTP API (Docker Distribution 2.8 and 3,
and registries speaking the same API): listings, manifests, blobs, mounts, uploads.

It knows the API, not replication: no policy, no meaning of tags beyond the API. One file per
resource: :mod:`.tag` (catalog, tag lists), :mod:`.manifest`, :mod:`.blob`; :mod:`.client` is
the session they share (configuration, per-host back-off and rate limit, authentication, the
one translation of answers into :mod:`drivers.errors`), :mod:`.auth` the credentials.

Every method raises only :mod:`drivers.errors` exceptions (plus ``Unsupported``,
``InsufficientScope`` and ``CatalogUnavailable`` below, all ``StorageError``s; ``ValueError``
for a caller's mistake caught before any request). Retryable errors have been retried by
:func:`drivers.retry.retrying` by the time they reach the caller.

Every request to the registry (and to the blob storage it redirects to) is counted once in
``client.requests`` (a :class:`drivers.base.RequestCounter`): catalog and tag list pages as
``list``; manifest and blob GETs ``get``; HEADs and upload status GETs ``head``; upload POSTs,
PATCHes and PUTs and manifest PUTs ``put``; mounts ``copy``; DELETEs ``delete``. A request
answered 401 and sent again with credentials counts twice. Token requests to the realm are
counted apart, in ``client.token_requests``.
"""

from drivers.registry.blob import Blobs, Chunks
from drivers.registry.client import InsufficientScope, Unsupported
from drivers.registry.manifest import MANIFEST_TYPES, ManifestInfo, Manifests
from drivers.registry.tag import CatalogUnavailable, Tags

__all__ = ["CatalogUnavailable", "Chunks", "InsufficientScope", "MANIFEST_TYPES", "ManifestInfo",
           "RegistryClient", "Unsupported"]


class RegistryClient(Blobs, Manifests, Tags):
    """One registry (``RegistryClient.from_config(block)``); thread-safe; see the package
    docstring. ``repositories`` holds the block's names and globs, uninterpreted."""
