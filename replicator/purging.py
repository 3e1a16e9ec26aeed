"""Purging a destination's CDN for tags that changed, through the durable queue in the state store.

The engine enqueues a tag's purge URLs before it writes (or deletes) the tag's
``current/link`` and marks them ready right after; :func:`send_purges` then sends what is
ready, in the provider's batch size, and keeps what failed for a later attempt with back-off;
:func:`deliver_purges` retries within the run until the provider accepts or time runs out.
A process that died in between leaves not-ready rows, which :func:`recover_purges` makes
ready at the next start: a purge is sent at least once after its tag moved, never lost.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

from drivers.backoff import Backoff
from drivers.cdn.base import PurgeError
from replicator.config import Region
from state.store import PurgeItem, StateStore

log = logging.getLogger(__name__)

BACKOFF = Backoff(initial=1.0, maximum=600.0)
"""The wait before a failed purge batch is tried again (at least its ``Retry-After``); a batch
refused for good waits ``maximum``."""


def purge_urls(baseurls: tuple[str, ...], name: str, tag: str) -> list[str]:
    """The URLs whose cached answers change when ``name:tag`` moves: the tag's manifest and
    the repository's tag list, under every base URL. Never blobs or digest URLs."""
    return [url for base in baseurls
            for url in (manifest_url(base, name, tag), f"{base}/v2/{name}/tags/list")]


def manifest_url(base: str, name: str, reference: str) -> str:
    """The URL of ``name``'s manifest ``reference`` (a tag or a digest) under ``base``."""
    return f"{base}/v2/{name}/manifests/{reference}"


def outstanding_tag_purges(region: Region, state: StateStore, name: str, tag: str) -> list[str]:
    """The tag's manifest URLs whose purge the provider has not accepted yet."""
    if region.cdn is None:
        return []
    outstanding = {item.url for item in state.outstanding_purges(region.name)}
    return [url for url in _manifest_urls(region, name, tag) if url in outstanding]


def _manifest_urls(region: Region, name: str, tag: str) -> list[str]:
    return [manifest_url(base, name, tag) for base in region.cdn.baseurls]


@dataclass
class PurgeOutcome:
    """URLs accepted, failed but worth retrying, and refused for good. ``timed_out`` counts the
    retrying ones still not accepted when a delivery's time ran out (they stay queued)."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0
    timed_out: int = 0
    errors: tuple[str, ...] = ()


def batch_id(items: list[PurgeItem]) -> str:
    """Names exactly these changes: the same for a retry, different once any URL changed again."""
    text = "\n".join(sorted(f"{item.generation} {item.created!r} {item.url}" for item in items))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def recover_purges(regions: dict[str, Region], state: StateStore) -> None:
    """Make every recorded purge sendable now, whatever its back-off: call once at start,
    before any pass, so that a new run tries what an earlier one left outstanding."""
    for name, region in regions.items():
        if region.cdn is not None:
            state.ready_purges(name, due=True)


def deliver_purges(region: Region, state: StateStore, timeout: float | None,
                   sleep=time.sleep) -> PurgeOutcome:
    """Send the ready purges of ``region`` that are due and, with a ``timeout``, keep retrying
    those that fail retryably (after the back-off, at least their ``Retry-After``) until the
    provider accepts them or ``timeout`` seconds have passed. Without one: one attempt.
    Never raises for a provider's error; refused and timed-out purges stay queued."""
    total = send_purges(region, state)
    if timeout is None or region.cdn is None:
        return total
    deadline = time.time() + timeout
    errors = list(total.errors)
    last = total
    while last.retrying:
        due = state.next_purge_due(region.name)
        if due is None or due > deadline:
            break
        sleep(max(0.0, due - time.time()))
        last = send_purges(region, state)
        total.sent += last.sent
        total.failed += last.failed
        errors.extend(last.errors)
    total.retrying = last.retrying
    total.timed_out = last.retrying
    total.errors = tuple(errors)
    return total


def send_purges(region: Region, state: StateStore, now: float | None = None) -> PurgeOutcome:
    """Send every ready purge of ``region`` that is due. Never raises for a provider's error."""
    outcome = PurgeOutcome()
    if region.cdn is None:
        return outcome
    with region.cdn.sending:
        return _send(region, state, time.time() if now is None else now)


def _send(region: Region, state: StateStore, now: float) -> PurgeOutcome:
    outcome = PurgeOutcome()
    purger = region.cdn.purger
    items = state.due_purges(region.name, now)
    offset = now - time.time()   # waits count from each answer, on the caller's clock
    errors = []
    for start in range(0, len(items), purger.batch_size):
        batch = items[start:start + purger.batch_size]
        urls = [item.url for item in batch]
        try:
            purger.purge(urls, batch_id(batch))
        except PurgeError as error:
            attempts = max(item.attempts for item in batch) + 1
            wait = BACKOFF.delay(attempts, error.retry_after) if error.retryable else BACKOFF.maximum
            state.purges_failed(region.name, urls, str(error), time.time() + offset + wait)
            log.warning("purge of %d URLs at %s failed (%s): %s", len(urls), purger.describe(),
                        "will retry" if error.retryable else "permanent", error)
            errors.append(str(error))
            if error.retryable:
                outcome.retrying += len(urls)
            else:
                outcome.failed += len(urls)
        else:
            state.purges_done(batch)
            outcome.sent += len(urls)
    outcome.errors = tuple(errors)
    _note_purged(region, state)
    return outcome


def _note_purged(region: Region, state: StateStore) -> None:
    """Mark the moves whose manifest URLs have no purge outstanding any more as purged now."""
    awaiting = state.awaiting_purge(region.name)
    if awaiting:
        outstanding = {item.url for item in state.outstanding_purges(region.name)}
        purged = [(name, tag) for name, tag in awaiting
                  if not outstanding.intersection(_manifest_urls(region, name, tag))]
        state.record_purged(region.name, purged, time.time())
