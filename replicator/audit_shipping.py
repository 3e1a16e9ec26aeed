"""Shipping the audit trail to a storage region, in batches, each line exactly once.

A batch is the lines from the first one not shipped yet (the durable marker kept beside the
trail, :func:`replicator.audit.shipped_seq`), at most ``MAX_BATCH_LINES`` lines or
``MAX_BATCH_BYTES`` bytes, written as one object through the region's storage driver at::

    <prefix>YYYY/MM/DD/<time of its first line, YYYYMMDDTHHMMSS.mmmZ>-<seq of its first line>.jsonl

The name depends only on the batch's first line, so a ship that died after writing the object
and before moving the marker finds that object again: it is read back, never overwritten, and
the marker moves past the lines it holds. Lines appended since form the next batch. A process
killed anywhere between the append of a line and the marker's move thus neither loses nor
duplicates it. Shippers in several processes take turns on ``<path>.ship.lock``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from drivers.base import StorageDriver
from drivers.errors import NotFound, StorageError
from replicator import audit
from replicator.config import AuditLog, Config

log = logging.getLogger(__name__)

MAX_BATCH_LINES = 10000
MAX_BATCH_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ShipOutcome:
    objects: int = 0
    """Objects written."""
    lines: int = 0
    """Lines shipped (including those found already shipped by an earlier, interrupted ship)."""


def ship_configured(config: Config) -> ShipOutcome | None:
    """Ship ``config``'s audit trail if it names a region (``None`` otherwise). A storage
    error is logged and the lines stay for the next ship; never raises ``StorageError``."""
    settings = config.audit_log
    if settings is None or settings.region is None:
        return None
    try:
        return ship(settings, config.regions[settings.region].storage)
    except StorageError as error:
        log.warning("audit trail not shipped to %s (will retry): %s", settings.region, error,
                    extra={"destination": settings.region})
        return ShipOutcome()


def ship(settings: AuditLog, storage: StorageDriver) -> ShipOutcome:
    """Ship every line not shipped yet. Raises ``StorageError`` (the marker then stands after
    the last batch written) and ``OSError`` for the local files."""
    objects = lines = 0
    with audit.file_lock(settings.path, ".ship.lock"):
        while True:
            batch = _batch(settings, audit.shipped_seq(settings.path))
            if not batch:
                return ShipOutcome(objects, lines)
            first = batch[0][0]
            key = object_key(settings.prefix, json.loads(batch[0][1])["time"], first)
            try:
                held = storage.read(key, MAX_BATCH_BYTES * 2).count(b"\n")
            except NotFound:
                storage.write(key, b"".join(line for _, line in batch))
                held = len(batch)
                objects += 1
            audit.mark_shipped(settings.path, first + held)
            lines += held


def _batch(settings: AuditLog, first: int) -> list[tuple[int, bytes]]:
    """Consecutive lines from the first one numbered ``first`` or later, within the bounds."""
    batch: list[tuple[int, bytes]] = []
    size = 0
    for seq, line in audit.raw_lines(settings.path, first):
        if (batch and (seq != batch[0][0] + len(batch) or len(batch) == MAX_BATCH_LINES
                       or size + len(line) > MAX_BATCH_BYTES)):
            break
        batch.append((seq, line))
        size += len(line)
    return batch


def object_key(prefix: str, first_time: str, first_seq: int) -> str:
    """The batch's key from its first line's ``time`` (``2026-12-01T23:30:12.123Z``) and seq."""
    day, clock = first_time.split("T")
    compact = day.replace("-", "") + "T" + clock.replace(":", "")
    return f"{prefix}{day.replace('-', '/')}/{compact}-{first_seq:012d}.jsonl"
