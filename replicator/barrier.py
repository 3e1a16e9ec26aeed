"""The deploy barrier: whether every destination serves an image, and waiting until they do.

An image is named ``name:tag``, ``name@sha256:<hex>`` or ``name:tag@sha256:<hex>``. A
:class:`Barrier` resolves it once: the policies that select it (and their destinations), and
the digest wanted (the one given, else the source tag's at that moment). Each
:meth:`Barrier.check` then asks every one of those destinations, reading only:

- the tag's digest there (one read: its ``current/link``, or a manifest ``HEAD``);
- once that is the digest wanted, everything a pull of it needs
  (:class:`~replicator.verify.ContentChecker`: each manifest by digest, a probe per blob, and,
  for storage, one listing of the image's repository for its links; never a whole region);
- the state store's CDN purge queue: the tag's manifest URLs still waiting to be purged;
- with ``through_cdn``, once all of the above hold, the manifest as each ``cdn.baseurls`` entry
  serves it (a ``GET``).

It writes nothing, anywhere; without a state store (``serve`` never ran here) it knows of no
outstanding purge and no pending reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from drivers.cdn.edge import edge_manifest_digest
from drivers.errors import NotFound, StorageError
from replicator import layout
from replicator.config import Config, Policy, Region
from replicator.endpoints import endpoint_for
from replicator.filters import policy_selects, selected
from replicator.flavours import resolve_flavours
from replicator.manifests import MAX_MANIFEST_SIZE
from replicator.purging import manifest_url, outstanding_tag_purges
from replicator.status import when_text
from replicator.verify import ContentChecker
from state.store import StateStore

MAX_CONTENT_REASONS = 3
"""Missing pieces named per destination; the rest are counted."""


class BadReference(ValueError):
    """An image reference that is not ``name:tag``, ``name@sha256:<hex>`` or both."""


class BarrierError(Exception):
    """The image cannot be waited for: no policy selects it, a ``--destination`` is not one of
    its destinations, or the source does not have it (for ``name:tag@digest``: the source's
    tag points at another digest, so that one is what will be replicated)."""


@dataclass(frozen=True)
class ImageReference:
    name: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_reference(text: str) -> ImageReference:
    """Raises ``BadReference`` naming what is wrong."""
    rest, _, digest = text.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    name, tag = (rest[:colon], rest[colon + 1:]) if colon > slash else (rest, None)
    if not digest and tag is None:
        raise BadReference(f"{text!r}: name a tag (name:tag) or a digest (name@sha256:<hex>)")
    try:
        layout.check_name(name)
        if tag is not None:
            layout.check_tag(tag)
        if digest:
            layout.check_digest(digest)
    except layout.LayoutError as error:
        raise BadReference(f"{text!r}: {error}") from None
    return ImageReference(name, tag, digest or None)


@dataclass(frozen=True)
class DestinationImage:
    """The image at one destination of one policy. ``served`` is the digest the tag points at
    there (for a digest reference: that digest, once its manifest is there); ``reasons`` say
    what is still missing (empty: in sync); ``pending`` is what the state store knows of the
    tag (pending since when, or failing with which error)."""

    policy: str
    destination: str
    wanted: str
    served: str | None
    reasons: tuple[str, ...]
    replicated_at: float | None = None
    purged_at: float | None = None
    pending: str | None = None

    @property
    def in_sync(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict:
        return {"policy": self.policy, "destination": self.destination, "wanted": self.wanted,
                "digest": self.served, "in_sync": self.in_sync, "reasons": list(self.reasons),
                "replicated_at": self.replicated_at, "purged_at": self.purged_at,
                "pending": self.pending}

    def text(self) -> str:
        detail = "; ".join(self.reasons) if self.reasons else f"serves {self.wanted}"
        return f"{self.destination} (policy {self.policy}): {detail}" + (
            f" [{self.pending}]" if self.pending and self.reasons else "")


@dataclass(frozen=True)
class ImageStatus:
    image: str
    destinations: tuple[DestinationImage, ...]

    @property
    def in_sync(self) -> bool:
        return all(destination.in_sync for destination in self.destinations)

    def as_dict(self) -> dict:
        return {"image": self.image, "in_sync": self.in_sync,
                "destinations": [destination.as_dict() for destination in self.destinations]}

    def summary(self) -> str:
        done = sum(destination.in_sync for destination in self.destinations)
        waiting = [d.text() for d in self.destinations if not d.in_sync]
        return (f"{self.image}: {done}/{len(self.destinations)} destinations in sync"
                + (f"; {waiting[0]}" if waiting else ""))


class Barrier:
    """The image ``reference`` at the destinations (all, or ``destinations``) of every policy
    of ``config`` that selects it. Raises ``BarrierError``, or ``StorageError`` when the source
    cannot be read. ``state`` may be ``None``."""

    def __init__(self, config: Config, state: StateStore | None, reference: ImageReference,
                 destinations: Sequence[str] = (), through_cdn: bool = False):
        self.config = config
        self.state = state
        self.reference = reference
        self.through_cdn = through_cdn
        policies = [policy for policy in config.policies if self._selects(policy)]
        if not policies:
            raise BarrierError(f"no policy selects {reference}")
        self.targets = [(policy, name) for policy in policies for name in policy.destinations
                        if not destinations or name in destinations]
        unknown = set(destinations) - {name for _, name in self.targets}
        if unknown:
            raise BarrierError(f"{', '.join(sorted(unknown))}: not a destination of {reference}")
        self.wanted: dict[str, str] = {}
        """Source region -> the digest its destinations must serve."""
        for policy in policies:
            resolve_flavours(config, policy)
            if policy.source not in self.wanted:
                self.wanted[policy.source] = self._source_digest(config.regions[policy.source])

    def _selects(self, policy: Policy) -> bool:
        name, tag = self.reference.name, self.reference.tag
        return policy_selects(policy, name, tag) if tag else selected(policy.repositories, name)

    def _source_digest(self, region: Region) -> str:
        name, tag, digest = self.reference.name, self.reference.tag, self.reference.digest
        source = endpoint_for(region)
        try:
            current = source.tag_read(name, tag) if tag else None
            if digest is None:
                return current
            source.manifest_read(name, digest, MAX_MANIFEST_SIZE)
        except (NotFound, layout.LayoutError):
            raise BarrierError(f"{self.reference} is not at the source region {region.name}") from None
        if current is not None and current != digest:
            raise BarrierError(f"{self.reference} is not at the source region {region.name}: its "
                               f"tag points at {current} there (it will not be replicated)")
        return digest

    def check(self) -> ImageStatus:
        """Every destination's state now; never raises for a destination's error (it becomes
        a reason)."""
        return ImageStatus(str(self.reference), tuple(
            self._destination(policy, self.config.regions[name]) for policy, name in self.targets))

    def wait(self, timeout: float, interval: float, stop: threading.Event | None = None,
             on_check: Callable[[ImageStatus], None] | None = None) -> ImageStatus:
        """Check every ``interval`` seconds until every destination is in sync, ``timeout``
        seconds have passed or ``stop`` is set; the last status."""
        deadline = time.monotonic() + timeout
        stop = stop or threading.Event()
        while True:
            status = self.check()
            if on_check is not None:
                on_check(status)
            remaining = deadline - time.monotonic()
            if status.in_sync or remaining <= 0 or stop.wait(min(interval, remaining)):
                return status

    def _destination(self, policy: Policy, region: Region) -> DestinationImage:
        wanted = self.wanted[policy.source]
        served, reasons = self._served(region, wanted)
        tag = self.reference.tag
        if not reasons and tag and self.state is not None:
            reasons = [f"CDN purge outstanding: {url}"
                       for url in outstanding_tag_purges(region, self.state, self.reference.name, tag)]
        if not reasons and self.through_cdn and region.cdn is not None:
            reasons = self._edges(region, wanted)
        replicated = purged = pending = None
        if self.state is not None and tag:
            record = self.state.replication(policy.name, region.name, self.reference.name, tag)
            if record is not None and record.digest == wanted:
                replicated, purged = record.replicated, record.purged
            pending = self._pending(policy, region.name)
        return DestinationImage(policy.name, region.name, wanted, served, tuple(reasons),
                                replicated, purged, pending)

    def _served(self, region: Region, wanted: str) -> tuple[str | None, list[str]]:
        """What the destination serves for the reference, and what keeps it from serving
        ``wanted`` completely."""
        name, tag = self.reference.name, self.reference.tag
        destination = endpoint_for(region)
        try:
            served = destination.tag_read(name, tag) if tag else wanted
        except NotFound:
            return None, [f"old digest: the tag is not there yet (wanted {wanted})"]
        except layout.LayoutError as error:
            return None, [f"old digest: the tag's link is unreadable ({error})"]
        except StorageError as error:
            return None, [f"cannot read the destination: {error}"]
        if served != wanted:
            return served, [f"old digest {served} (wanted {wanted})"]
        try:
            checker = ContentChecker(destination, destination.destination_snapshot(name, None, True),
                                     deep=False)
            checker.check_manifest(name, tag or "", wanted)
        except StorageError as error:
            return served, [f"cannot read the destination: {error}"]
        drift = checker.result.drift
        if not tag and any(item.kind == "missing-manifest" and item.detail == wanted for item in drift):
            served = None
        reasons = [f"missing content: {item.kind} {item.detail}" for item in drift[:MAX_CONTENT_REASONS]]
        if len(drift) > MAX_CONTENT_REASONS:
            reasons.append(f"missing content: {len(drift) - MAX_CONTENT_REASONS} more")
        return served, reasons

    def _edges(self, region: Region, wanted: str) -> list[str]:
        reasons = []
        for base in region.cdn.baseurls:
            url = manifest_url(base, self.reference.name, self.reference.tag or wanted)
            try:
                served = edge_manifest_digest(url)
            except NotFound:
                reasons.append(f"CDN still stale: {url} answers 404")
                continue
            except StorageError as error:
                reasons.append(f"CDN unreachable: {error}")
                continue
            if served != wanted:
                reasons.append(f"CDN still stale: {url} serves {served}")
        return reasons

    def _pending(self, policy: Policy, destination: str) -> str | None:
        key = (self.reference.name, self.reference.tag)
        failure = self.state.failures(policy.name, destination).get(key)
        if failure is not None:
            return f"failing after {failure.attempts} attempts: {failure.error}"
        pending = self.state.pending(policy.name, destination)
        since = pending.get(key, pending.get((self.reference.name, "")))
        return None if since is None else f"pending since {when_text(since)}"
