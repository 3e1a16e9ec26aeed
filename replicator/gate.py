"""The one gate every step that changes a destination passes: a dry run records it instead.

A pass describes each write or delete it is about to make to :meth:`Gate.allows` as one of
the steps below, each saying in words what it does (``copy <digest>``, ``write <key> ->
<digest>``, ``purge <url>``, ``delete <key>``); in a dry run the step is added to the report's
plan, handed to the gate's observer (``replicator plan`` prices it) and not made, so
``--dry-run`` shows exactly the steps a real pass would take and takes none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from replicator.report import PassReport


@dataclass(frozen=True)
class Copy:
    """A blob or manifest of ``size`` bytes copied into repository ``name``; ``route`` is
    ``stream`` (through the replicator), ``hashed`` or ``plain`` (server-side), or
    ``manifest`` (written from the bytes already read)."""

    name: str
    digest: str
    size: int
    route: str

    def __str__(self) -> str:
        return f"copy {self.digest}"


@dataclass(frozen=True)
class TagMove:
    """A tag moved to ``digest`` from ``previous`` (``None``: created)."""

    repository: str
    tag: str
    digest: str
    previous: str | None


@dataclass(frozen=True)
class Link:
    """One step of a tag plan's ``links``, in the destination's words; ``move`` is set on
    the step that moves the tag."""

    step: tuple[str, str]
    description: str
    move: TagMove | None = None

    def __str__(self) -> str:
        return self.description


@dataclass(frozen=True)
class Removal:
    """One step deleting tag ``name:tag`` at the destination."""

    name: str
    tag: str
    step: tuple[str, str]

    def __str__(self) -> str:
        return f"delete {self.step[0]}"


@dataclass(frozen=True)
class Purge:
    url: str

    def __str__(self) -> str:
        return f"purge {self.url}"


Step = Copy | Link | Removal | Purge


class Gate:
    def __init__(self, report: PassReport, dry_run: bool,
                 observer: Callable[[Step], None] | None = None):
        self.report = report
        self.dry_run = dry_run
        self.observer = observer

    def allows(self, step: Step) -> bool:
        """Whether ``step`` may be made now; in a dry run, records it as planned (and shows it
        to the observer): False."""
        if self.dry_run:
            self.report.plan(str(step))
            if self.observer is not None:
                self.observer(step)
        return not self.dry_run
