"""Distribution's notification envelopes: validation and the events they carry. Pure.

An envelope is ``{"events": [...]}``; each event has an ``action`` (push, pull, mount,
delete) and a ``target`` with ``repository`` and, as fits, ``tag``, ``digest`` and
``mediaType``. Index children are pushed by digest (no tag); a manifest delete names a digest.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime

from replicator import layout

MEDIA_TYPES = ("application/vnd.docker.distribution.events.v1+json", "application/json")
MAX_BODY = 1024 * 1024
ACTIONS = frozenset({"push", "pull", "mount", "delete"})
_FRACTION = re.compile(r"(\.\d+)")
TRIGGERS = frozenset({"push", "delete"})
"""Actions that change what a repository serves."""


class EnvelopeError(ValueError):
    """The body is not a valid notification envelope; nothing in it is used."""


@dataclass(frozen=True)
class Event:
    action: str
    repository: str
    tag: str
    timestamp: float


def parse_envelope(body: bytes, now: float | None = None) -> list[Event]:
    """Every event of an envelope, or ``EnvelopeError`` naming the first problem."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EnvelopeError(f"body is not JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("events"), list):
        raise EnvelopeError("body must be an object with an 'events' list")
    now = time.time() if now is None else now
    return [_event(item, index, now) for index, item in enumerate(document["events"])]


def _event(item: object, index: int, now: float) -> Event:
    where = f"events[{index}]"
    if not isinstance(item, dict) or not isinstance(item.get("target"), dict):
        raise EnvelopeError(f"{where} must be an object with a 'target' object")
    action = item.get("action")
    if action not in ACTIONS:
        raise EnvelopeError(f"{where}.action must be one of {', '.join(sorted(ACTIONS))}")
    target = item["target"]
    repository, tag = target.get("repository"), target.get("tag") or ""
    if not isinstance(repository, str) or not isinstance(tag, str):
        raise EnvelopeError(f"{where}.target: repository and tag must be strings")
    try:
        layout.check_name(repository)
        if tag:
            layout.check_tag(tag)
    except layout.LayoutError as error:
        raise EnvelopeError(f"{where}.target: {error}") from None
    return Event(action, repository, tag, _timestamp(item.get("timestamp"), now))


def _timestamp(value: object, now: float) -> float:
    if not isinstance(value, str):
        return now
    text = _FRACTION.sub(lambda m: m[1][:7], value.replace("Z", "+00:00"))
    try:
        return min(now, datetime.fromisoformat(text).timestamp())
    except ValueError:
        return now
