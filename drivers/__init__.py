"""Storage drivers, chosen by the kind key of a Distribution ``storage:`` block.

A driver is a dotted class path imported only when a configuration uses it, so the SDKs of
unused clouds need not be installed. Adding a backend is one module plus one line here.
"""

from drivers.base import StorageDriver
from drivers.errors import ConfigError
from drivers.plugins import build

DRIVERS = {
    "filesystem": ("drivers.filesystem", "FilesystemDriver", "nothing more"),
    "s3": ("drivers.s3", "S3Driver", "boto3"),
    "gcs": ("drivers.gcs", "GCSDriver", "google-cloud-storage"),
    "azure": ("drivers.azure", "AzureDriver", "azure-storage-blob"),
    "swift": ("drivers.swift", "SwiftDriver", "python-swiftclient"),
}

DISTRIBUTION_ONLY_KEYS = frozenset({"cache", "delete", "redirect", "maintenance", "tag"})
"""Keys of Distribution's ``storage:`` block that configure the registry, not the storage."""


def open_storage(block: object) -> StorageDriver:
    """Build the driver a Distribution-style ``storage:`` block describes.

    Exactly one driver key must be present besides Distribution's registry-only keys.
    Raises ``ConfigError`` naming the offending key (relative to the block).
    """
    if not isinstance(block, dict):
        raise ConfigError("", "must be a mapping with one storage kind (filesystem, s3, ...)")
    kinds = [key for key in block if key not in DISTRIBUTION_ONLY_KEYS]
    if len(kinds) != 1:
        found = ", ".join(map(str, kinds)) or "none"
        raise ConfigError("", f"needs exactly one storage kind of {', '.join(DRIVERS)}; found {found}")
    kind = kinds[0]
    return build(DRIVERS, kind, block[kind] if block[kind] is not None else {}, "storage kind")
