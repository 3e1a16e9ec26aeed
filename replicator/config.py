"""Load and validate the YAML configuration; every error names its field (``ConfigError``).

``${VAR}`` and ``${VAR:-default}`` in string values are replaced from the environment after
the YAML is parsed, so a secret's characters can never change the document's structure.
Error messages name fields and never repeat values, so secrets cannot leak through them.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import yaml

import drivers
import drivers.cdn as cdn_drivers
from drivers.base import RequestCounter, StorageDriver, check_prefix
from drivers.cdn.base import Purger
from drivers.errors import ConfigError, InvalidKey
from replicator import flavours
from replicator.costs import REQUEST_CLASSES, PriceTable, Priced, Prices, Pricing
from replicator.signatures import load_keys

DEFAULT_CONCURRENCY = 8
DEFAULT_INTERVAL = 300.0
DEFAULT_AUDIT_INTERVAL = 86400.0
DEFAULT_ABANDONED_UPLOADS = 3600.0
DEFAULT_LISTEN = "0.0.0.0:9100"
DEFAULT_DEBOUNCE = 1.0
DEFAULT_PURGE_TIMEOUT = 120.0
DEFAULT_AUDIT_MAX_SIZE = 64 * 1024 * 1024
DEFAULT_AUDIT_KEEP = 90 * 86400.0
DEFAULT_AUDIT_PREFIX = "replicator-audit/"
DEFAULT_SHIP_INTERVAL = 60.0
DEFAULT_MAX_DELETE = 100
ORDERS = ("name", "newest-first", "oldest-first")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?")
_SIZE_UNITS = {None: 1, "B": 1,
               **{f"{unit}B": 1000 ** (power + 1) for power, unit in enumerate("KMGT")},
               **{f"{unit}iB": 1024 ** (power + 1) for power, unit in enumerate("KMGT")}}
_HOURS = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)?")
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Filter:
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Schedule:
    """Run every ``interval`` seconds, or on a five-field ``cron`` expression (UTC)."""

    interval: float | None = DEFAULT_INTERVAL
    cron: str | None = None


@dataclass(frozen=True)
class Window:
    """Days (0 is Monday) and minutes of the day [``start``, ``end``) in ``timezone``; ``end``
    at or before ``start`` wraps past midnight into the next day."""

    days: frozenset[int]
    start: int
    end: int
    timezone: str


@dataclass(frozen=True)
class Budget:
    """At most ``bytes`` copied per period of ``per`` seconds (periods aligned to the epoch)."""

    bytes: int
    per: float


@dataclass(frozen=True)
class DestinationSettings:
    """A policy's settings for one destination; the defaults limit nothing."""

    bandwidth: float | None = None
    """Bytes per second streamed into the destination, shared by every copy of a pass."""
    windows: tuple[Window, ...] = ()
    """When scheduled passes may start (none: always)."""
    egress_budget: Budget | None = None


@dataclass(frozen=True)
class Policy:
    name: str
    source: str
    destinations: tuple[str, ...]
    repositories: Filter
    tags: Filter
    delete: bool
    schedule: Schedule = Schedule()
    priority: tuple[str, ...] = ()
    """Tag globs: tags matching an earlier one start first."""
    order: str = "name"
    """Within a priority: ``name``, ``newest-first`` or ``oldest-first`` (by the source tag's time)."""
    keep_latest: int | None = None
    """Replicate only this many of the newest selected tags per repository."""
    settings: tuple[tuple[str, DestinationSettings], ...] = ()
    """Per-destination settings, for the destinations that have any."""
    strict_windows: bool = False
    """Push-event passes honour the destinations' windows too."""
    delete_delay: float = 0.0
    """Seconds a tag must stay deleted at the source before ``delete`` removes it."""
    max_delete: int = DEFAULT_MAX_DELETE
    """A pass that would delete more tags than this deletes none (unless forced)."""

    def destination_settings(self, destination: str) -> DestinationSettings:
        return dict(self.settings).get(destination, DestinationSettings())
    artifacts: str = "follow"
    """``follow``: artifacts (signatures, attestations, SBOMs, referrers) travel with their
    image whatever the tag filter says; ``tags``: artifact tags are tags like any other."""
    artifact_types: Filter = Filter()
    """Which artifacts are followed, by artifact type (``artifactType``, else config media type)."""
    signature_keys: tuple = ()
    """``require_signature.keys``: when set, only digests with a cosign signature verifying
    against one of them are replicated."""


@dataclass(frozen=True)
class Server:
    """``debounce``: seconds a repository's push events must be quiet before its targeted pass."""

    host: str
    port: int
    webhook_token: str | None = field(default=None, repr=False)
    debounce: float = DEFAULT_DEBOUNCE
    api_token: str | None = field(default=None, repr=False)
    """When set, the status page and ``/v1/`` need ``Authorization: Bearer <api_token>``."""


@dataclass(frozen=True)
class Cdn:
    """The edge in front of a region: the base URLs users pull from, and its purger."""

    baseurls: tuple[str, ...]
    purger: Purger
    timeout: float = DEFAULT_PURGE_TIMEOUT
    """Seconds a ``sync`` keeps retrying its purges before it reports them outstanding."""
    sending: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)
    """Held while the region's purge queue is being sent, so that no batch goes out twice."""


@dataclass(frozen=True)
class Region:
    """A region: Distribution storage (``storage``) or an OCI registry's HTTP API
    (``registry``), exactly one of them; behind a CDN or not."""

    name: str
    storage: StorageDriver | None
    cdn: Cdn | None = None
    registry: object | None = None
    """A ``drivers.registry.RegistryClient``."""

    @property
    def requests(self) -> RequestCounter:
        """The requests sent to the region, by kind."""
        return (self.storage or self.registry).requests


@dataclass(frozen=True)
class AuditLog:
    """The audit trail: appended at ``path``, rotated past ``max_size`` bytes, rotated files
    kept ``keep`` seconds; shipped every ``ship_interval`` seconds under ``prefix`` of the
    storage region ``region``, if one is named."""

    path: Path
    max_size: int = DEFAULT_AUDIT_MAX_SIZE
    keep: float = DEFAULT_AUDIT_KEEP
    region: str | None = None
    prefix: str = DEFAULT_AUDIT_PREFIX
    ship_interval: float = DEFAULT_SHIP_INTERVAL


@dataclass(frozen=True)
class Config:
    state_path: Path
    regions: dict[str, Region]
    policies: tuple[Policy, ...]
    concurrency: int
    server: Server
    audit_interval: float
    server_side_copy: str = "verified"
    """``verified``: a destination's storage copies blobs from the source's itself only where the
    provider proves their SHA-256; ``trusted``: wherever it can (size checked); ``off``: never."""
    abandoned_uploads_after: float = DEFAULT_ABANDONED_UPLOADS
    """Incomplete uploads (of a process killed mid-copy) older than this are discarded."""
    audit_log: AuditLog | None = None
    """The ``audit:`` block: where changes applied to destinations are recorded."""
    pricing: Pricing | None = None
    """The prices ``replicator plan`` estimates costs with (``pricing:``), if any."""

    def policy(self, name: str) -> Policy:
        for policy in self.policies:
            if policy.name == name:
                return policy
        raise ConfigError("--policy", f"no policy named {name!r}")


CLIENT_BLOCKS = ("storage", "registry", "cdn")
"""The parts of a region that build clients (and hold credentials)."""


def load(path: str | Path, *, clients: bool = True) -> Config:
    """Read, expand and validate a configuration file. Raises ``ConfigError``.

    Without ``clients`` (for commands that read only the state store, such as ``status``), the
    regions' storage, registry and CDN blocks are neither expanded nor built, so that no
    credential (nor the environment variables holding them) is needed; such a configuration's
    regions have no clients."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError("--config", f"cannot read {path}: {error.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"{path}: invalid YAML{where}") from None
    if not clients:
        document = _without_clients(document)
    return parse(expand(document, ""), base=Path(path).parent, clients=clients)


def _without_clients(document: object) -> object:
    """``document`` with each region's client blocks replaced by empty mappings."""
    if not isinstance(document, dict) or not isinstance(document.get("regions"), dict):
        return document
    regions = {name: {key: ({} if key in CLIENT_BLOCKS else value) for key, value in block.items()}
               if isinstance(block, dict) else block
               for name, block in document["regions"].items()}
    return {**document, "regions": regions}


def expand(value: object, field: str) -> object:
    """Replace ``${VAR}`` in every string of a parsed document. Raises ``ConfigError``."""
    if isinstance(value, dict):
        return {key: expand(item, _join(field, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [expand(item, f"{field}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, str):
        def substitute(match: re.Match) -> str:
            found = os.environ.get(match[1])
            if found is None and match[2] is None:
                raise ConfigError(field, f"environment variable {match[1]} is not set")
            return found if found is not None else match[2]
        return _VARIABLE.sub(substitute, value)
    return value


def parse(document: object, base: Path = Path("."), clients: bool = True) -> Config:
    """Validate an expanded document. Relative state and key file paths are taken from
    ``base``; without ``clients``, regions get none (see :func:`load`)."""
    root = _mapping(document, "", {"state", "regions", "policies", "concurrency", "server",
                                   "audit_interval", "server_side_copy", "abandoned_uploads_after",
                                   "audit", "pricing"})
    state = _mapping(root.get("state", {}), "state", {"path"})
    state_path = Path(_string(state.get("path", "replicator.db"), "state.path"))
    concurrency = _integer(root.get("concurrency", DEFAULT_CONCURRENCY), "concurrency", 1, 256)
    audit_interval = duration(root.get("audit_interval", DEFAULT_AUDIT_INTERVAL), "audit_interval")
    abandoned = duration(root.get("abandoned_uploads_after", DEFAULT_ABANDONED_UPLOADS),
                         "abandoned_uploads_after", allow_zero=True)
    server_side_copy = _server_side_copy(root.get("server_side_copy", "verified"))
    regions = _regions(root.get("regions"), clients)
    policies = _policies(root.get("policies"), regions, base)
    audit_log = _audit_log(root["audit"], base, root["regions"]) if "audit" in root else None
    pricing = _pricing(root["pricing"], base, regions) if "pricing" in root else None
    return Config(base / state_path, regions, policies, concurrency,
                  _server(root.get("server", {})), audit_interval, server_side_copy, abandoned,
                  audit_log, pricing)


def _audit_log(value: object, base: Path, regions: dict) -> AuditLog:
    block = _mapping(value, "audit", {"path", "max_size", "keep", "region", "prefix",
                                      "ship_interval"})
    path = base / _string(block.get("path"), "audit.path")
    max_size = size(block.get("max_size", DEFAULT_AUDIT_MAX_SIZE), "audit.max_size")
    keep = duration(block.get("keep", DEFAULT_AUDIT_KEEP), "audit.keep")
    region = block.get("region")
    if region is not None:
        region = _region_name(region, "audit.region", regions)
        if "storage" not in regions[region]:
            raise ConfigError("audit.region", "must be a storage region (objects are written "
                                              "through its storage driver)")
    prefix = _string(block.get("prefix", DEFAULT_AUDIT_PREFIX), "audit.prefix").strip("/") + "/"
    try:
        check_prefix(prefix)
    except InvalidKey:
        raise ConfigError("audit.prefix", "must be a relative path of safe segments, "
                                          "such as replicator-audit/") from None
    ship_interval = duration(block.get("ship_interval", DEFAULT_SHIP_INTERVAL),
                             "audit.ship_interval")
    return AuditLog(path, max_size, keep, region, prefix, ship_interval)


def _server_side_copy(value: object) -> str:
    """``verified`` (also ``true``, as configurations before the choice said), ``trusted``, or
    ``off`` (also ``false``)."""
    mode = ("verified" if value else "off") if isinstance(value, bool) else value
    if mode not in ("verified", "trusted", "off"):
        raise ConfigError("server_side_copy", "must be verified, trusted or false")
    return mode


def duration(value: object, field: str, allow_zero: bool = False) -> float:
    """Seconds from a number or a string like ``90s``, ``5m``, ``1h``, ``1d``."""
    lowest = 0 if allow_zero else 1e-9
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= lowest:
        return float(value)
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match or float(match[1]) < lowest:
        kind = "non-negative" if allow_zero else "positive"
        raise ConfigError(field, f"must be a {kind} duration such as 30s, 5m, 1h or 1d")
    return float(match[1]) * _UNITS[match[2]]


def _server(value: object) -> Server:
    block = _mapping(value, "server", {"listen", "webhook_token", "debounce", "api_token"})
    listen = _string(block.get("listen", DEFAULT_LISTEN), "server.listen")
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("server.listen", "must be HOST:PORT, for example 0.0.0.0:9100")
    token = _optional_string(block, "webhook_token", "server.webhook_token")
    debounce = duration(block.get("debounce", DEFAULT_DEBOUNCE), "server.debounce")
    api_token = _optional_string(block, "api_token", "server.api_token")
    return Server(host.strip("[]"), int(port), token, debounce, api_token)


def _schedule(value: object, field: str) -> Schedule:
    if value is None:
        return Schedule()
    block = _mapping(value, field, {"interval", "cron"})
    if len(block) != 1:
        raise ConfigError(field, "needs exactly one of interval or cron")
    if "interval" in block:
        return Schedule(interval=duration(block["interval"], f"{field}.interval"))
    expression = _string(block["cron"], f"{field}.cron")
    try:
        from apscheduler.triggers.cron import CronTrigger
        CronTrigger.from_crontab(expression, timezone="UTC")
    except ValueError as error:
        raise ConfigError(f"{field}.cron", f"invalid cron expression ({error})") from None
    return Schedule(interval=None, cron=expression)


def _regions(value: object, clients: bool = True) -> dict[str, Region]:
    if not value:
        raise ConfigError("regions", "at least one region is required")
    regions = {}
    for name, block in _mapping(value, "regions").items():
        field = f"regions.{name}"
        region = _mapping(block, field, {"storage", "registry", "cdn", "layout"})
        if ("storage" in region) == ("registry" in region):
            raise ConfigError(f"{field}.storage", "is required (or, instead, a registry block)")
        if not clients:
            regions[str(name)] = Region(str(name), None)
            continue
        cdn = _cdn(region["cdn"], f"{field}.cdn") if "cdn" in region else None
        if "registry" in region:
            if "layout" in region:
                raise ConfigError(f"{field}.layout", "applies to storage regions only")
            regions[str(name)] = Region(str(name), None, cdn, _registry(region["registry"],
                                                                        f"{field}.registry"))
            continue
        try:
            storage = drivers.open_storage(region["storage"])
        except ConfigError as error:
            raise error.under(f"{field}.storage") from None
        flavours.configure(storage, region.get("layout"), f"{field}.layout")
        regions[str(name)] = Region(str(name), storage, cdn)
    return regions


def _registry(value: object, field: str):
    from drivers.registry import RegistryClient
    try:
        return RegistryClient.from_config(_mapping(value, field))
    except ConfigError as error:
        raise error.under(field) from None


def _cdn(value: object, field: str) -> Cdn:
    block = _mapping(value, field)
    baseurls = block.get("baseurls")
    if not isinstance(baseurls, list) or not baseurls:
        raise ConfigError(f"{field}.baseurls", "must be a non-empty list of URLs users pull from")
    for index, url in enumerate(baseurls):
        parts = urlsplit(url) if isinstance(url, str) else None
        if not parts or parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ConfigError(f"{field}.baseurls[{index}]", "must be an http(s) URL such as "
                                                             "https://registry.example.com")
    timeout = duration(block.get("timeout", DEFAULT_PURGE_TIMEOUT), f"{field}.timeout")
    providers = [key for key in block if key not in ("baseurls", "timeout")]
    if len(providers) != 1:
        raise ConfigError(field, f"needs exactly one provider of {', '.join(cdn_drivers.PURGERS)}")
    try:
        purger = cdn_drivers.open_purger(providers[0], block[providers[0]])
    except ConfigError as error:
        raise error.under(field) from None
    return Cdn(tuple(url.rstrip("/") for url in baseurls), purger, timeout)


def _policies(value: object, regions: dict[str, Region], base: Path = Path(".")) -> tuple[Policy, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError("policies", "must be a non-empty list")
    policies: list[Policy] = []
    for index, item in enumerate(value):
        field = f"policies[{index}]"
        block = _mapping(item, field, {"name", "source", "destinations", "repositories", "tags",
                                       "delete", "schedule", "priority", "order", "keep_latest",
                                       "strict_windows", "delete_delay", "max_delete", "artifacts",
                                       "artifact_types", "require_signature"})
        name = _string(block.get("name"), f"{field}.name")
        if any(policy.name == name for policy in policies):
            raise ConfigError(f"{field}.name", f"duplicate policy name {name!r}")
        source = _region_name(block.get("source"), f"{field}.source", regions)
        raw_destinations = block.get("destinations")
        if not isinstance(raw_destinations, list) or not raw_destinations:
            raise ConfigError(f"{field}.destinations", "must be a non-empty list of regions")
        entries = [_destination(item, f"{field}.destinations[{position}]", regions)
                   for position, item in enumerate(raw_destinations)]
        destinations = tuple(name for name, _ in entries)

        if source in destinations:
            raise ConfigError(f"{field}.destinations", f"includes the source region {source!r}")
        if len(set(destinations)) != len(destinations):
            raise ConfigError(f"{field}.destinations", "lists a region twice")
        delete = block.get("delete", False)
        if not isinstance(delete, bool):
            raise ConfigError(f"{field}.delete", "must be true or false")
        policies.append(Policy(name, source, destinations,
                               _filter(block.get("repositories"), f"{field}.repositories"),
                               _filter(block.get("tags"), f"{field}.tags"), delete,
                               _schedule(block.get("schedule"), f"{field}.schedule"),
                               **_pacing(block, field), **_artifact_settings(block, field, base),
                               settings=tuple(entry for entry in entries if entry[1] is not None)))
    return tuple(policies)


def _pacing(block: dict, field: str) -> dict:
    """The policy keys that order its tags and guard its deletions."""
    priority = block.get("priority", [])
    if not isinstance(priority, list) or not all(isinstance(item, str) and item for item in priority):
        raise ConfigError(f"{field}.priority", "must be a list of tag glob patterns")
    order = block.get("order", "name")
    if order not in ORDERS:
        raise ConfigError(f"{field}.order", f"must be one of {', '.join(ORDERS)}")
    keep_latest = block.get("keep_latest")
    strict = block.get("strict_windows", False)
    if not isinstance(strict, bool):
        raise ConfigError(f"{field}.strict_windows", "must be true or false")
    return {"priority": tuple(priority), "order": order, "strict_windows": strict,
            "keep_latest": None if keep_latest is None
            else _integer(keep_latest, f"{field}.keep_latest", 1, 1_000_000),
            "delete_delay": duration(block.get("delete_delay", 0), f"{field}.delete_delay",
                                     allow_zero=True),
            "max_delete": _integer(block.get("max_delete", DEFAULT_MAX_DELETE), f"{field}.max_delete",
                                   0, 1_000_000_000)}


def _destination(value: object, field: str, regions: dict[str, Region]
                 ) -> tuple[str, DestinationSettings | None]:
    """A destination entry: a region's name, or a mapping of ``region`` and its settings."""
    if not isinstance(value, dict):
        return _region_name(value, field, regions), None
    block = _mapping(value, field, {"region", "bandwidth", "windows", "egress_budget"})
    name = _region_name(block.get("region"), f"{field}.region", regions)
    bandwidth = block.get("bandwidth")
    if bandwidth is not None:
        bandwidth = _rate(bandwidth, f"{field}.bandwidth")
    budget = block.get("egress_budget")
    if budget is not None:
        budget_block = _mapping(budget, f"{field}.egress_budget", {"bytes", "per"})
        budget = Budget(size(budget_block.get("bytes"), f"{field}.egress_budget.bytes"),
                        duration(budget_block.get("per", "1d"), f"{field}.egress_budget.per"))
    windows = block.get("windows", [])
    if not isinstance(windows, list):
        raise ConfigError(f"{field}.windows", "must be a list of {days, hours, timezone} mappings")
    return name, DestinationSettings(bandwidth, tuple(_window(item, f"{field}.windows[{index}]")
                                                      for index, item in enumerate(windows)), budget)


def size(value: object, field: str) -> int:
    """Bytes from a positive number or a string like ``500GiB``, ``50MB``, ``1024``."""
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if not match or float(match[1]) <= 0:
        raise ConfigError(field, "must be a positive size such as 1048576, 50MiB or 500GiB")
    return int(float(match[1]) * _SIZE_UNITS[match[2]])


def _rate(value: object, field: str) -> float:
    """Bytes per second from a string like ``50MiB/s``."""
    if not isinstance(value, str) or not value.endswith("/s"):
        raise ConfigError(field, "must be a rate such as 50MiB/s")
    return float(size(value[:-2], field))


def _window(value: object, field: str) -> Window:
    block = _mapping(value, field, {"days", "hours", "timezone"})
    days = block.get("days", list(DAYS))
    if not isinstance(days, list) or not days or not all(day in DAYS for day in days):
        raise ConfigError(f"{field}.days", f"must be a non-empty list of {', '.join(DAYS)}")
    hours = _HOURS.fullmatch(block["hours"]) if isinstance(block.get("hours"), str) else None
    if not hours:
        raise ConfigError(f"{field}.hours", "must be HH:MM-HH:MM, such as 02:00-05:00 or 22:00-04:00")
    start, end = int(hours[1]) * 60 + int(hours[2]), int(hours[3]) * 60 + int(hours[4])
    if start == end or end > 24 * 60:
        raise ConfigError(f"{field}.hours", "must be HH:MM-HH:MM with different times, at most 24:00")
    zone = _string(block.get("timezone", "UTC"), f"{field}.timezone")
    try:
        ZoneInfo(zone)
    except (ValueError, LookupError):
        raise ConfigError(f"{field}.timezone",
                          "is not a known time zone, such as Asia/Kolkata") from None
    return Window(frozenset(DAYS.index(day) for day in days), start, end, zone)


def _artifact_settings(block: dict, field: str, base: Path) -> dict:
    """A policy's ``artifacts``, ``artifact_types`` and ``require_signature.keys`` (key files
    relative to ``base``)."""
    artifacts = block.get("artifacts", "follow")
    if artifacts not in ("follow", "tags"):
        raise ConfigError(f"{field}.artifacts", "must be follow or tags")
    keys: tuple = ()
    if "require_signature" in block:
        gate = _mapping(block["require_signature"], f"{field}.require_signature", {"keys"})
        keys = load_keys(gate.get("keys"), f"{field}.require_signature.keys", base)
        if artifacts != "follow":
            raise ConfigError(f"{field}.require_signature", "needs artifacts: follow (signatures "
                                                            "travel with the images they sign)")
    return {"artifacts": artifacts, "signature_keys": keys,
            "artifact_types": _filter(block.get("artifact_types"), f"{field}.artifact_types")}

def _pricing(value: object, base: Path, regions: dict[str, Region]) -> Pricing:
    """``pricing:``: tables from ``file`` (or ``files``, relative to the configuration's
    folder) and ``regions``, each configured region's entry inline or the name of a table
    entry; a region not named there is priced by the table entry of its own name, if any."""
    block = _mapping(value, "pricing", {"file", "files", "regions"})
    if "file" in block and "files" in block:
        raise ConfigError("pricing.files", "give file or files, not both")
    paths = [block["file"]] if "file" in block else block.get("files", [])
    if not isinstance(paths, list):
        raise ConfigError("pricing.files", "must be a list of price table files")
    fields = ["pricing.file"] if "file" in block else [f"pricing.files[{i}]" for i in range(len(paths))]
    tables = [_price_table(base / _string(path, where), where) for path, where in zip(paths, fields)]
    named = _mapping(block.get("regions", {}), "pricing.regions")
    inline = {str(name): _prices(entry, f"pricing.regions.{name}")
              for name, entry in named.items() if not isinstance(entry, str)}
    if inline:
        tables.append(PriceTable("config", inline))
    priced = {}
    for name, entry in named.items():
        where = f"pricing.regions.{name}"
        if name not in regions:
            raise ConfigError(where, f"unknown region; defined: {', '.join(regions)}")
        if not isinstance(entry, str):
            priced[str(name)] = Priced(tables[-1], str(name), inline[str(name)])
            continue
        table = next((table for table in tables if table.path and entry in table.regions), None)
        if table is None:
            raise ConfigError(where, f"no price table has an entry {entry!r}")
        priced[str(name)] = Priced(table, entry, table.regions[entry])
    for name in regions:
        table = next((table for table in tables if table.path and name in table.regions), None)
        if name not in priced and table is not None:
            priced[name] = Priced(table, name, table.regions[name])
    return Pricing(tuple(tables), priced)


def _price_table(path: Path, field: str) -> PriceTable:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(field, f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(field, f"{path}: invalid YAML") from None
    block = _mapping(document, field, {"name", "taken", "sources", "currency", "note", "regions"})
    sources = block.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(item, str) for item in sources):
        raise ConfigError(f"{field}.sources", "must be a list of URLs")
    regions = _mapping(block.get("regions"), f"{field}.regions")
    return PriceTable(_string(block.get("name", path.stem), f"{field}.name"),
                      {str(name): _prices(entry, f"{field}.regions.{name}")
                       for name, entry in regions.items()},
                      str(block["taken"]) if "taken" in block else None, tuple(sources),
                      _string(block.get("currency", "USD"), f"{field}.currency"), str(path))


def _prices(value: object, field: str) -> Prices:
    block = _mapping(value, field, {"egress_per_gib", "requests_per_1000", "cdn_invalidation_path"})
    egress = _mapping(block.get("egress_per_gib", {}), f"{field}.egress_per_gib")
    requests = _mapping(block.get("requests_per_1000", {}), f"{field}.requests_per_1000",
                        set(REQUEST_CLASSES))
    return Prices({str(key): _price(price, f"{field}.egress_per_gib.{key}")
                   for key, price in egress.items()},
                  {key: _price(price, f"{field}.requests_per_1000.{key}")
                   for key, price in requests.items()},
                  _price(block.get("cdn_invalidation_path", 0), f"{field}.cdn_invalidation_path"))


def _price(value: object, field: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ConfigError(field, "must be a non-negative number (a price)")
    return float(value)


def _filter(value: object, field: str) -> Filter:
    if value is None:
        return Filter()
    block = _mapping(value, field, {"include", "exclude"})
    patterns = {}
    for key, default in (("include", ["*"]), ("exclude", [])):
        items = block.get(key, default)
        if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
            raise ConfigError(f"{field}.{key}", "must be a list of glob patterns")
        patterns[key] = tuple(items)
    return Filter(**patterns)


def _region_name(value: object, field: str, regions: dict[str, Region]) -> str:
    name = _string(value, field)
    if name not in regions:
        raise ConfigError(field, f"unknown region {name!r}; defined: {', '.join(regions)}")
    return name


def _mapping(value: object, field: str, allowed: set[str] | None = None) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(field, "must be a mapping")
    for key in value:
        if allowed is not None and key not in allowed:
            raise ConfigError(_join(field, key), f"unknown key; expected one of {', '.join(sorted(allowed))}")
    return value


def _string(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(field, "is required and must be a non-empty string")
    return value


def _optional_string(block: dict, key: str, field: str) -> str | None:
    return None if block.get(key) is None else _string(block[key], field)


def _integer(value: object, field: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(field, f"must be an integer from {low} to {high}")
    return value


def _join(field: str, key: object) -> str:
    return f"{field}.{key}" if field else str(key)
