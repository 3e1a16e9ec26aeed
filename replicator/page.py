"""The status page ``serve`` answers at ``/``: plain HTML rendered on the server, no script.

The page is a list of sections, each a function of one :class:`PageContext` returning an HTML
fragment; adding a section is adding a function to ``SECTIONS``. Everything shown comes from
the state store (the same reading as ``replicator status``) or the audit trail, and is escaped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html import escape

from replicator import audit
from replicator.config import Config
from replicator.status import DestinationStatus, destination_statuses, when_text
from state.store import StateStore

REFRESH_SECONDS = 10
RECENT_CHANGES = 20


@dataclass(frozen=True)
class PageContext:
    config: Config
    state: StateStore
    statuses: list[DestinationStatus]
    now: float


Section = Callable[[PageContext], str]


def render_page(config: Config, state: StateStore, now: float | None = None) -> str:
    now = time.time() if now is None else now
    context = PageContext(config, state, destination_statuses(config, state, now), now)
    body = "\n".join(section(context) for section in SECTIONS)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
            f"<title>replicator status</title><style>{_STYLE}</style></head>\n<body>\n"
            f"<h1>replicator status</h1><p>as of {escape(when_text(now))}</p>\n{body}\n</body></html>\n")


def destinations_section(context: PageContext) -> str:
    rows = [(s.policy, f"{s.source} \u2192 {s.destination}", "in sync" if s.in_sync else "NOT in sync",
             _age(s.lag_seconds), s.pending_tags, len(s.failing), s.purges_outstanding,
             when_text(s.last_success)) for s in context.statuses]
    return _table("Destinations", ("policy", "source \u2192 destination", "state", "lag", "pending",
                                   "failing", "purges outstanding", "last success"), rows)


def pending_section(context: PageContext) -> str:
    rows = []
    for status in context.statuses:
        pending = context.state.pending(status.policy, status.destination)
        for (name, tag), since in sorted(pending.items()):
            rows.append((status.policy, status.destination, f"{name}:{tag}" if tag else f"{name} (repository)",
                         when_text(since), _age(context.now - since)))
    return _table("Pending tags", ("policy", "destination", "image", "changed at source", "waiting"),
                  rows, "No tag is pending.")


def failing_section(context: PageContext) -> str:
    rows = [(s.policy, s.destination, f"{f.repository}:{f.tag}", f.digest, f.attempts,
             when_text(f.next_retry), f.error) for s in context.statuses for f in s.failing]
    return _table("Failing tags", ("policy", "destination", "image", "digest", "attempts",
                                   "next retry", "reason"), rows, "No tag is failing.")


def purges_section(context: PageContext) -> str:
    rows = [(name, item.url, when_text(item.created), item.attempts, item.error or "")
            for name, region in context.config.regions.items() if region.cdn is not None
            for item in context.state.outstanding_purges(name)]
    return _table("Outstanding CDN purges", ("destination", "URL", "since", "attempts", "last error"),
                  rows, "No CDN purge is outstanding.")


def changes_section(context: PageContext) -> str:
    trail = context.config.audit_log
    if trail is None:
        return _table("Latest changes", (), (), "No audit trail is configured (audit.path).")
    rows = [(line["time"], line["action"], f"{line['repository']}:{line['tag']}",
             f"{line['source']} \u2192 {line['destination']}", line["policy"],
             line["old_digest"] or "", line["new_digest"] or "", line["bytes_copied"])
            for line in audit.recent(trail.path, RECENT_CHANGES)]
    return _table("Latest changes", ("time", "action", "image", "source \u2192 destination", "policy",
                                     "old digest", "new digest", "bytes copied"),
                  rows, "No change recorded yet.")


SECTIONS: list[Section] = [destinations_section, pending_section, failing_section, purges_section,
                           changes_section]


def _table(title: str, headings: tuple[str, ...], rows: Iterable[tuple], empty: str = "Nothing.") -> str:
    rows = list(rows)
    slug = title.lower().replace(" ", "-")
    if not rows:
        return f'<section id="{slug}"><h2>{escape(title)}</h2><p>{escape(empty)}</p></section>'
    head = "".join(f"<th>{escape(heading)}</th>" for heading in headings)
    body = "\n".join("<tr>" + "".join(f"<td>{escape(str(value))}</td>" for value in row) + "</tr>"
                     for row in rows)
    return (f'<section id="{slug}"><h2>{escape(title)}</h2>'
            f"<table><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></section>")


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


_STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
          "th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}"
          "th{background:#eee}")
