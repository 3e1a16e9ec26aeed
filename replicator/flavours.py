"""Which layout flavour each region's storage holds, Distribution 2.8's or 3.x's, decided once.

Only backends whose two versions name objects differently have flavours (drivers with
:class:`~drivers.base.LayoutFlavours`: Azure, see :mod:`drivers.azure`). S3 (``s3Path``:
``TrimLeft(TrimRight(rootdirectory, "/") + path, "/")``), GCS (``pathToKey``) and filesystem
(``fullPath``) name them alike in 2.8.3 and 3.1.x, and for them this module sends nothing. A
region's flavour is, in order:

1. its ``layout`` key in the configuration (no request);
2. the form its storage holds: one one-object listing per flavour under the registry root. A
   storage holding both forms is a ``ConfigError`` naming the region;
3. for storage holding no registry yet: the flavour its own configuration implies (only 3.x
   has a ``rootdirectory``), else the flavour of the policy's source when that is the same
   backend kind, else ``"2.8"``.

A decided flavour stays for the life of the process: later passes send no listing for it. A
region that cannot be listed stays undecided; its pass then fails on its own listing as
usual, and the next pass asks again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.base import LayoutFlavours, StorageDriver
from drivers.errors import ConfigError, StorageError
from replicator import layout

if TYPE_CHECKING:
    from replicator.config import Config, Policy

LAYOUTS = ("2.8", "3")
DEFAULT_LAYOUT = "2.8"


def configure(storage: StorageDriver, value: object, field: str) -> None:
    """Apply a region's ``layout`` value (``"2.8"`` or ``"3"``; YAML's numbers 2.8 and 3 too;
    ``None``: not set) to its storage. Every backend takes the key; only flavoured ones change.
    Raises ``ConfigError`` naming ``field`` for another value or one the storage's
    configuration contradicts (2.8 with an Azure ``rootdirectory``)."""
    if value is None:
        return
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    if text not in LAYOUTS:
        raise ConfigError(field, 'must be "2.8" or "3": the Distribution version whose storage '
                                 "layout the region holds")
    if isinstance(storage, LayoutFlavours):
        try:
            storage.use_flavour(text)
        except ConfigError as error:
            raise ConfigError(field, error.message) from None


def resolve_flavours(config: Config, policy: Policy) -> None:
    """Decide the flavour of ``policy``'s source, then of each destination (see the module
    docstring). Raises ``ConfigError`` naming a region that holds both forms; never
    ``StorageError``."""
    source = config.regions[policy.source].storage
    _decide(policy.source, source, None)
    for name in policy.destinations:
        _decide(name, config.regions[name].storage, source)


def resolve_all_flavours(config: Config) -> None:
    """:func:`resolve_flavours` for every policy, as a long-running service starts."""
    for policy in config.policies:
        resolve_flavours(config, policy)


def _decide(name: str, storage: StorageDriver, source: StorageDriver | None) -> None:
    if not isinstance(storage, LayoutFlavours) or storage.flavour_known:
        return
    try:
        present = storage.flavours_present(layout.ROOT)
    except StorageError:
        return
    if len(present) > 1:
        raise ConfigError(f"regions.{name}", "its storage holds a registry in both the Distribution "
                                             "2.8 and the 3.x layout; keep one, or set layout to "
                                             "the one to use")
    flavour = present.pop() if present else _default(storage, source)
    try:
        storage.use_flavour(flavour)
    except ConfigError as error:
        raise ConfigError(f"regions.{name}", f"holds the Distribution {flavour} layout, but "
                                             f"{error.message}") from None


def _default(storage: LayoutFlavours, source: StorageDriver | None) -> str:
    if required := storage.required_flavour():
        return required
    if (isinstance(source, LayoutFlavours) and source.kind == storage.kind
            and source.flavour_known):
        return source.flavour
    return DEFAULT_LAYOUT
