"""Storage drivers, chosen by the kind key of a Distribution ``storage:`` block.

A driver is a dotted class path imported only when a configuration uses it, so the SDKs of
unused clouds need not be installed. Adding a backend is one module plus one line here.
"""

import importlib

from drivers.base import StorageDriver
from drivers.errors import ConfigError

DRIVERS = {
    "filesystem": ("drivers.filesystem", "FilesystemDriver", "pyyaml"),
    "s3": ("drivers.s3", "S3Driver", "boto3"),
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
    if kind not in DRIVERS:
        raise ConfigError(str(kind), f"unknown storage kind; supported: {', '.join(DRIVERS)}")
    params = block[kind] if block[kind] is not None else {}
    if not isinstance(params, dict):
        raise ConfigError(kind, "must be a mapping of parameters")
    module_name, class_name, package = DRIVERS[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(kind, f"driver unavailable ({error}); install {package}") from None
    try:
        return getattr(module, class_name).from_config(params)
    except ConfigError as error:
        raise error.under(kind) from None
