"""Building a backend from a table of lazily imported classes (``kind -> (module, class, package)``)."""

import importlib

from drivers.errors import ConfigError


def build(table: dict[str, tuple[str, str, str]], kind: str, params: object, what: str):
    """``table[kind]``'s class ``from_config(params)``. Raises ``ConfigError`` naming the field
    relative to the block that holds ``kind``."""
    if kind not in table:
        raise ConfigError(str(kind), f"unknown {what}; supported: {', '.join(table)}")
    if not isinstance(params, dict):
        raise ConfigError(kind, "must be a mapping of parameters")
    module_name, class_name, package = table[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(kind, f"{what} unavailable ({error}); install {package}") from None
    try:
        return getattr(module, class_name).from_config(params)
    except ConfigError as error:
        raise error.under(kind) from None
