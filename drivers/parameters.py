"""Checking a configuration block (a ``storage.<kind>`` or a CDN purger's) against a type table.

Every error is a :class:`~drivers.errors.ConfigError` naming the parameter; none quotes a
value, since values may be secrets.
"""

from __future__ import annotations

from drivers.base import check_key
from drivers.errors import ConfigError, InvalidKey

DEFAULT_LIMITS = (0, None)


def parse_parameters(params: dict, kinds: dict[str, type | dict], *,
                     limits: dict[str, tuple[int, int | None]] | None = None,
                     required: tuple[str, ...] = ()) -> dict:
    """``params`` checked against ``kinds``; its non-null values, converted.

    ``kinds`` maps every known parameter to ``str``, ``int``, ``bool``, ``list`` (of non-empty
    strings), ``object`` (anything) or a nested table of the same form (a mapping checked
    likewise; its errors name ``parameter.field``). ``"true"``/``"false"`` and digit strings count as
    booleans and integers, as YAML and environment overrides give them; an integer must lie
    within ``limits.get(name, (0, None))`` (``None``: no upper bound). ``None`` values are
    dropped. Raises ``ConfigError`` naming the first unknown or ill-typed parameter, then the
    first of ``required`` that is missing or empty.
    """
    limits = limits or {}
    config = {}
    for name, value in params.items():
        if name not in kinds:
            raise ConfigError(str(name), "unknown parameter")
        if value is not None:
            config[name] = _typed(name, value, kinds[name], limits.get(name, DEFAULT_LIMITS))
    for name in required:
        if config.get(name) in (None, "", []):
            raise ConfigError(name, "is required")
    return config


def _typed(name: str, value: object, kind: type | dict, limit: tuple[int, int | None]) -> object:
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            raise ConfigError(name, "must be a mapping")
        try:
            return parse_parameters(value, kind)
        except ConfigError as error:
            raise error.under(name) from None
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(name, "must be true or false")
    elif kind is int:
        if isinstance(value, str) and value.isdecimal():
            value = int(value)
        low, high = limit
        if (isinstance(value, bool) or not isinstance(value, int) or value < low
                or (high is not None and value > high)):
            raise ConfigError(name, f"must be an integer of at least {low}" if high is None
                              else f"must be an integer from {low} to {high}")
    elif kind is list:
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise ConfigError(name, "must be a list of strings")
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(name, "must be a string")
    elif kind is not object:
        raise TypeError(f"parameter {name}: unsupported kind {kind!r}")
    return value


def root_prefix(value: str) -> str:
    """A ``rootdirectory`` as a key prefix: ``""`` or ``"some/path/"``. Raises ``ConfigError``."""
    root = value.strip("/")
    try:
        return check_key(root) + "/" if root else ""
    except InvalidKey:
        raise ConfigError("rootdirectory", "must be a plain /-separated path") from None
