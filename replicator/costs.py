"""Prices and the money a plan's figures cost. Pure: the configuration reads the tables.

A price table (``config/pricing/*.yml``, or entries inline in the configuration) gives, per
region: egress per GiB by where the bytes go (``default``: another region of the same table,
``internet``: anywhere else, or a region by name), requests per 1,000 by price class
(``list``, ``get``, ``head``, ``put`` (also POST), ``copy``, ``delete``), and the price of one
CDN invalidation path. Egress is charged to the region the bytes leave, requests to the region
that serves them, invalidations to the region whose CDN is purged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

GIB = 1024 ** 3
REQUEST_CLASSES = ("list", "get", "head", "put", "copy", "delete")
"""Price classes, the kinds the request counters count (a POST counts as ``put``)."""


@dataclass(frozen=True)
class Prices:
    """One region's prices, in the table's currency."""

    egress_per_gib: Mapping[str, float] = field(default_factory=dict)
    requests_per_1000: Mapping[str, float] = field(default_factory=dict)
    cdn_invalidation_path: float = 0.0


@dataclass(frozen=True)
class PriceTable:
    """A named set of region prices and where they come from: the date they were taken
    (``taken``) and the providers' pages (``sources``); ``path`` is the file, ``None`` inline."""

    name: str
    regions: Mapping[str, Prices]
    taken: str | None = None
    sources: tuple[str, ...] = ()
    currency: str = "USD"
    path: str | None = None


@dataclass(frozen=True)
class Priced:
    """A configured region priced as entry ``entry`` of ``table``."""

    table: PriceTable
    entry: str
    prices: Prices


@dataclass(frozen=True)
class Pricing:
    """The tables in use and, by configured region name, the prices of each priced region."""

    tables: tuple[PriceTable, ...]
    regions: Mapping[str, Priced]

    def egress_per_gib(self, source: str, destination: str) -> float:
        """What one GiB from region ``source`` to region ``destination`` costs ``source``:
        its price for ``destination`` by name (or by the entry ``destination`` is priced as,
        in the same table), else ``default`` for a region of the same table, ``internet``
        (or else ``default``) for any other; 0 for an unpriced source."""
        priced = self.regions.get(source)
        if priced is None:
            return 0.0
        egress = priced.prices.egress_per_gib
        target = self.regions.get(destination)
        same_table = target is not None and target.table is priced.table
        for key in (destination, target.entry if same_table else None):
            if key is not None and key in egress:
                return egress[key]
        if same_table:
            return egress.get("default", 0.0)
        return egress.get("internet", egress.get("default", 0.0))


@dataclass
class RegionCost:
    requests: float = 0.0
    egress: float = 0.0
    cdn: float = 0.0

    @property
    def total(self) -> float:
        return self.requests + self.egress + self.cdn


def requests_cost(prices: Prices, requests: Mapping[str, int]) -> float:
    return sum(requests.get(kind, 0) * prices.requests_per_1000.get(kind, 0.0) / 1000
               for kind in REQUEST_CLASSES)


def estimate(pricing: Pricing, requests: Mapping[str, Mapping[str, int]],
             egress: Mapping[tuple[str, str], int],
             purge_paths: Mapping[str, int]) -> dict[str, RegionCost]:
    """The cost per region of ``requests`` (region -> kind -> count), ``egress`` ((from, to)
    -> bytes) and CDN invalidation ``purge_paths`` (region -> paths). Unpriced regions cost 0."""
    costs: dict[str, RegionCost] = {}
    for region, counts in requests.items():
        priced = pricing.regions.get(region)
        costs.setdefault(region, RegionCost()).requests = (
            requests_cost(priced.prices, counts) if priced else 0.0)
    for (source, destination), size in egress.items():
        costs.setdefault(source, RegionCost()).egress += (
            size / GIB * pricing.egress_per_gib(source, destination))
    for region, paths in purge_paths.items():
        priced = pricing.regions.get(region)
        costs.setdefault(region, RegionCost()).cdn = (
            paths * priced.prices.cdn_invalidation_path if priced else 0.0)
    return costs
