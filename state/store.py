"""The local state store: a cache and a journal in SQLite, never the source of truth.

Deleting the database costs one full re-scan, nothing else. It holds:

- ``tag_links``: for each region, the etag of each tag's ``current/link`` when it was last
  read or written, and the digest it held then, so a pass reads a link only when its listing
  entry changed;
- ``passes``: every pass with its start, end, outcome and counts;
- ``failures``: every failing tag with attempts, last error and the time of the next retry;
- ``purges``: the durable CDN purge queue: a purge is recorded (not ready) before the tag link
  it follows is written, made ready once it is written, retried until the provider accepts
  it, and deduplicated by (destination, URL);
- ``blob_homes``: for each registry destination, a repository holding each blob it was given,
  so that later runs mount the blob into other repositories instead of uploading it again;
- ``egress_budgets``: per policy and destination with an egress budget, the bytes copied in
  the current budget period and how many tags the last full pass left waiting for the next;
- ``made_tags``: for each destination, the tags the replicator itself created or last moved
  there, with the digest it wrote (only these may be deleted by a policy with ``delete``);
- ``tag_absences``: since when a pass has seen each such tag missing at the policy's source
  (for ``delete_delay``);
- ``replications``: for each policy, destination and tag, the digest last moved there, when
  its change was made at the source, when the move was applied and when its CDN purge was
  accepted (``visible``: the later of the two, once both happened), and whether the
  replication-delay histogram has observed it;
- ``pending``: tags (or whole repositories, tag ``""``, when a push event named no tag) known
  to differ between a policy's source and a destination, with the time the change was made at
  the source: the lag is the age of the oldest;
- ``listing_keys``: for each storage region, how many keys its last listings found under each
  repository (``""``: under none), from which a sharded pass tells whether listing only its
  own repositories costs fewer requests than one listing of all (:mod:`replicator.listing`);
- ``settled``: for each policy, destination and repository that a pass found entirely in sync
  (nothing to copy, move, delete or retry), a digest of what the listings of the repository at
  the source and at the destination showed then, of the policy's settings, and how many of its
  tags the pass compared: a later pass whose listings show the same skips the repository
  (:mod:`replicator.settling`);
- ``announced``: the tags (or repositories, tag ``""``) a push or delete event announced, until
  a pass that began after the event leaves them in sync, so that a scheduled pass can tell the
  changes it finds that no event announced.

All SQL of the project lives in this package. The database runs in WAL mode so that
``replicator status`` can read while ``serve`` writes. Methods are thread-safe; they raise
``sqlite3.Error`` only if the database file itself is unusable.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

from drivers.backoff import Backoff

migrations = Migrations("replicator")


@migrations(name="0001_initial")
def _initial(db: sqlite_utils.Database) -> None:
    db["tag_links"].create({"region": str, "repository": str, "tag": str, "etag": str, "digest": str},
                           pk=("region", "repository", "tag"))
    db["passes"].create({"id": int, "policy": str, "source": str, "destination": str,
                         "started": float, "finished": float, "ok": int, "audit": int, "counts": str},
                        pk="id")
    db["passes"].create_index(["policy", "destination", "finished"])
    db["failures"].create({"policy": str, "destination": str, "repository": str, "tag": str,
                           "digest": str, "attempts": int, "error": str, "first_failed": float,
                           "last_failed": float, "next_retry": float},
                          pk=("policy", "destination", "repository", "tag"))
    db["pending"].create({"policy": str, "destination": str, "repository": str, "tag": str,
                          "since": float}, pk=("policy", "destination", "repository", "tag"))


@migrations(name="0002_purge_queue")
def _purge_queue(db: sqlite_utils.Database) -> None:
    db["purges"].create({"destination": str, "url": str, "ready": int, "attempts": int,
                         "created": float, "next_try": float, "error": str, "generation": int},
                        pk=("destination", "url"))


@migrations(name="0003_pending_noted")
def _pending_noted(db: sqlite_utils.Database) -> None:
    db["pending"].add_column("noted", float, not_null_default=0.0)


@migrations(name="0004_running_passes")
def _running_passes(db: sqlite_utils.Database) -> None:
    db["running"].create({"policy": str, "destination": str, "started": float},
                         pk=("policy", "destination"))


@migrations(name="0005_blob_homes")
def _blob_homes(db: sqlite_utils.Database) -> None:
    db["blob_homes"].create({"destination": str, "digest": str, "repository": str},
                            pk=("destination", "digest"))


@migrations(name="0006_replications")
def _replications(db: sqlite_utils.Database) -> None:
    db["replications"].create({"policy": str, "destination": str, "repository": str, "tag": str,
                               "digest": str, "changed": float, "replicated": float,
                               "purged": float, "visible": float, "observed": int},
                              pk=("policy", "destination", "repository", "tag"),
                              not_null={"digest", "changed", "replicated", "observed"})
    db["replications"].create_index(["destination", "visible"])
    db["replications"].create_index(["observed", "visible"])


@migrations(name="0007_announced_changes")
def _announced_changes(db: sqlite_utils.Database) -> None:
    db["announced"].create({"policy": str, "destination": str, "repository": str, "tag": str,
                            "noted": float}, pk=("policy", "destination", "repository", "tag"))


@migrations(name="0009_pacing_and_guards")
def _pacing_and_guards(db: sqlite_utils.Database) -> None:
    db["egress_budgets"].create({"policy": str, "destination": str, "period": float, "used": int,
                                 "waiting": int}, pk=("policy", "destination"))
    db["made_tags"].create({"destination": str, "repository": str, "tag": str, "digest": str},
                           pk=("destination", "repository", "tag"))
    db["tag_absences"].create({"policy": str, "destination": str, "repository": str, "tag": str,
                               "since": float}, pk=("policy", "destination", "repository", "tag"))


@migrations(name="0010_failure_kinds")
def _failure_kinds(db: sqlite_utils.Database) -> None:
    db["failures"].add_column("kind", str, not_null_default="")


@migrations(name="0011_listing_keys")
def _listing_keys(db: sqlite_utils.Database) -> None:
    db["listing_keys"].create({"region": str, "repository": str, "keys": int},
                              pk=("region", "repository"))


@migrations(name="0012_settled")
def _settled(db: sqlite_utils.Database) -> None:
    db["settled"].create({"policy": str, "destination": str, "repository": str, "source": str,
                          "held": str, "settings": str, "tags": int},
                         pk=("policy", "destination", "repository"))


@dataclass(frozen=True)
class PurgeItem:
    """``generation`` counts the changes this URL was enqueued for; with the URL it names one
    change, so a retry of the same change can be told from a later one."""

    destination: str
    url: str
    attempts: int
    created: float
    error: str
    generation: int


@dataclass(frozen=True)
class TagLink:
    etag: str
    digest: str


@dataclass(frozen=True)
class SettledRepository:
    """A repository a pass found in sync: the fingerprints of its listings at the source
    and at the destination (``held``), of the policy's settings, and the tags it compared."""

    source: str
    held: str
    settings: str
    tags: int


@dataclass(frozen=True)
class FailureRecord:
    policy: str
    destination: str
    repository: str
    tag: str
    digest: str
    attempts: int
    error: str
    first_failed: float
    last_failed: float
    next_retry: float
    kind: str = ""
    """The error's kind (``replicator.errors.error_kind``)."""


@dataclass(frozen=True)
class Replication:
    """A tag's last move at a destination: ``changed`` at the source, ``replicated`` (the move
    applied), ``purged`` (its CDN purge accepted; ``None`` while outstanding or without a CDN)
    and ``visible`` (when users could pull it; ``None`` until then)."""

    policy: str
    destination: str
    repository: str
    tag: str
    digest: str
    changed: float
    replicated: float
    purged: float | None
    visible: float | None


@dataclass(frozen=True)
class PassRecord:
    policy: str
    source: str
    destination: str
    started: float
    finished: float
    ok: bool
    counts: dict
    audit: bool = False


BATCH = 500


class StateStore:
    """The state database at ``path`` (``":memory:"`` for a throwaway one)."""

    def __init__(self, path: str | Path):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        # no sqlite-utils plugin is used: loading them scans every installed package's metadata
        self.db = sqlite_utils.Database(connection, execute_plugins=False)
        self._lock = threading.RLock()
        self._pending: dict[tuple[str, str, str], TagLink | None] = {}
        with self._lock:
            if str(path) != ":memory:":
                self.db.enable_wal()
            self.db.execute("PRAGMA synchronous=NORMAL")
            migrations.apply(self.db)

    def close(self) -> None:
        with self._lock:
            self.flush()
            self.db.conn.close()

    def tag_links(self, region: str, repository: str) -> dict[str, TagLink]:
        """The recorded tag links of ``region``'s ``repository``, by tag."""
        with self._lock:
            self.flush()
            rows = self.db.execute("select tag, etag, digest from tag_links where region = ? "
                                   "and repository = ?", [region, repository])
            intern = sys.intern
            return {intern(tag): TagLink(etag, intern(digest)) for tag, etag, digest in rows}

    def record_tag_link(self, region: str, repository: str, tag: str, etag: str, digest: str) -> None:
        """Remember that ``region``'s link for the tag had ``etag`` and held ``digest``."""
        self._stage((region, repository, tag), TagLink(etag, digest))

    def forget_tag_link(self, region: str, repository: str, tag: str) -> None:
        self._stage((region, repository, tag), None)

    def _stage(self, key: tuple[str, str, str], link: TagLink | None) -> None:
        with self._lock:
            self._pending[key] = link
            if len(self._pending) >= BATCH:
                self.flush()

    def flush(self) -> None:
        """Write staged tag links (done by every read, at ``BATCH`` and at ``close``)."""
        with self._lock:
            if not self._pending:
                return
            pending, self._pending = self._pending, {}
            with self.db.conn:
                upserts = [{"region": region, "repository": repository, "tag": tag,
                            "etag": link.etag, "digest": link.digest}
                           for (region, repository, tag), link in pending.items() if link]
                if upserts:
                    self.db["tag_links"].upsert_all(upserts, pk=("region", "repository", "tag"))
                for (region, repository, tag), link in pending.items():
                    if link is None:
                        self.db.execute("delete from tag_links where region = ? and repository = ? "
                                        "and tag = ?", [region, repository, tag])

    def listing_keys(self, region: str) -> dict[str, int]:
        """The keys ``region``'s listings last found, by repository (``""``: under none)."""
        with self._lock:
            rows = self.db.query("select repository, keys from listing_keys where region = ?", [region])
            return {row["repository"]: row["keys"] for row in rows}

    def record_listing_keys(self, region: str, counts: dict[str, int], keep: set[str]) -> None:
        """Replace ``region``'s key counts by ``counts``, keeping the recorded counts of the
        repositories in ``keep`` (seen, but not listed this time)."""
        with self._lock, self.db.conn:
            kept = {name: keys for name, keys in self.listing_keys(region).items() if name in keep}
            self.db.execute("delete from listing_keys where region = ?", [region])
            self.db["listing_keys"].insert_all(
                [{"region": region, "repository": name, "keys": keys}
                 for name, keys in {**kept, **counts}.items()], pk=("region", "repository"))

    def settled(self, policy: str) -> dict[tuple[str, str], SettledRepository]:
        """The repositories found in sync by the policy's passes, by (destination, repository)."""
        with self._lock:
            rows = self.db.execute("select destination, repository, source, held, settings, tags "
                                   "from settled where policy = ?", [policy])
            return {(destination, repository): SettledRepository(*rest)
                    for destination, repository, *rest in rows}

    def replace_settled(self, policy: str, destination: str,
                        settled: dict[str, SettledRepository], scope: Callable[[str], bool]) -> None:
        """Make ``settled`` the destination's settled repositories among those ``scope``
        accepts (the others' rows stay as they are)."""
        with self._lock, self.db.conn:
            rows = self.db.execute("select repository from settled where policy = ? and "
                                   "destination = ?", [policy, destination]).fetchall()
            self.db.conn.executemany(
                "delete from settled where policy = ? and destination = ? and repository = ?",
                [(policy, destination, name) for name, in rows if scope(name)])
            self.db.conn.executemany(
                "insert or replace into settled (policy, destination, repository, source, held, "
                "settings, tags) values (?, ?, ?, ?, ?, ?, ?)",
                [(policy, destination, name, row.source, row.held, row.settings, row.tags)
                 for name, row in settled.items()])

    def record_pass(self, record: PassRecord) -> None:
        with self._lock, self.db.conn:
            self.db["passes"].insert({"policy": record.policy, "source": record.source,
                                      "destination": record.destination, "started": record.started,
                                      "finished": record.finished, "ok": int(record.ok),
                                      "audit": int(record.audit), "counts": json.dumps(record.counts)})

    def begin_pass(self, policy: str, destination: str, started: float) -> bool:
        """Note a full pass as running; True if the previous one never ended (the process died)."""
        with self._lock, self.db.conn:
            died = bool(list(self.db.query("select 1 from running where policy = ? and destination = ?",
                                           [policy, destination])))
            self.db["running"].upsert({"policy": policy, "destination": destination, "started": started},
                                      pk=("policy", "destination"))
        return died

    def unfinished_passes(self, policy: str) -> list[str]:
        """The destinations of ``policy`` whose last full pass began and never ended."""
        with self._lock:
            return [row["destination"] for row in
                    self.db.query("select destination from running where policy = ?", [policy])]

    def end_pass(self, policy: str, destination: str) -> None:
        with self._lock, self.db.conn:
            self.db.execute("delete from running where policy = ? and destination = ?",
                            [policy, destination])

    def last_pass(self, policy: str, destination: str, *, ok_only: bool = False,
                  audit_only: bool = False) -> PassRecord | None:
        where = ("policy = ? and destination = ?" + (" and ok = 1" if ok_only else "")
                 + (" and audit = 1" if audit_only else ""))
        with self._lock:
            rows = list(self.db.query(f"select * from passes where {where} order by finished desc limit 1",
                                      [policy, destination]))
        if not rows:
            return None
        row = rows[0]
        return PassRecord(row["policy"], row["source"], row["destination"], row["started"],
                          row["finished"], bool(row["ok"]), json.loads(row["counts"]),
                          bool(row["audit"]))

    def record_failure(self, policy: str, destination: str, repository: str, tag: str,
                       digest: str, error: str, backoff: Backoff,
                       now: float | None = None, kind: str = "") -> FailureRecord:
        """Count one more failed attempt; the next retry waits ``backoff.delay(attempts)``."""
        now = time.time() if now is None else now
        with self._lock, self.db.conn:
            key = (policy, destination, repository, tag)
            previous = list(self.db.query(
                "select attempts, first_failed from failures where policy = ? and destination = ? "
                "and repository = ? and tag = ?", list(key)))
            attempts = previous[0]["attempts"] + 1 if previous else 1
            first = previous[0]["first_failed"] if previous else now
            record = FailureRecord(policy, destination, repository, tag, digest, attempts, error,
                                   first, now, now + backoff.delay(attempts), kind)
            self.db["failures"].upsert(record.__dict__, pk=("policy", "destination", "repository", "tag"))
        return record

    def clear_failure(self, policy: str, destination: str, repository: str, tag: str) -> None:
        with self._lock, self.db.conn:
            self.db.execute("delete from failures where policy = ? and destination = ? and "
                            "repository = ? and tag = ?", [policy, destination, repository, tag])

    def failures(self, policy: str, destination: str) -> dict[tuple[str, str], FailureRecord]:
        with self._lock:
            rows = self.db.query("select * from failures where policy = ? and destination = ?",
                                 [policy, destination])
            return {(row["repository"], row["tag"]): FailureRecord(**row) for row in rows}

    def replace_pending(self, policy: str, destination: str, pending: dict[tuple[str, str], float],
                        started: float, repository: str | None = None) -> None:
        """Make ``pending`` ((repository, tag) -> since) the policy's pending set for the
        destination, as a pass that listed the source at ``started`` saw it: the whole set, or
        only ``repository``'s part. Rows noted after ``started`` (events that arrived while the
        pass ran) are kept: the pass may not have seen their change. A tag still pending keeps
        the earliest time it was pending since (the oldest change not yet visible)."""
        scope = "policy = ? and destination = ? and noted < ?" + (" and repository = ?" if repository else "")
        params = [policy, destination, started] + ([repository] if repository else [])
        with self._lock, self.db.conn:
            earlier = {(row[0], row[1]): row[2] for row in self.db.execute(
                f"select repository, tag, since from pending where {scope}", params)}
            self.db.execute(f"delete from pending where {scope}", params)
            self.db.conn.executemany(
                "insert into pending (policy, destination, repository, tag, since, noted) "
                "values (?, ?, ?, ?, ?, ?) on conflict do update set since = min(since, excluded.since)",
                [(policy, destination, name, tag, min(since, earlier.get((name, tag), since)), started)
                 for (name, tag), since in pending.items()])

    def add_pending(self, policy: str, destination: str, repository: str, tag: str,
                    since: float) -> None:
        """Record a change known at the source (keeping the earliest time if already pending)."""
        with self._lock, self.db.conn:
            self.db.execute(
                "insert into pending (policy, destination, repository, tag, since, noted) "
                "values (?, ?, ?, ?, ?, ?) "
                "on conflict do update set since = min(since, excluded.since), noted = excluded.noted",
                [policy, destination, repository, tag, since, time.time()])

    def pending(self, policy: str, destination: str) -> dict[tuple[str, str], float]:
        with self._lock:
            rows = self.db.query("select repository, tag, since from pending where policy = ? "
                                 "and destination = ?", [policy, destination])
            return {(row["repository"], row["tag"]): row["since"] for row in rows}

    def enqueue_purges(self, destination: str, urls: list[str], now: float | None = None) -> None:
        """Record purges that a tag change at ``destination`` will need (not ready yet)."""
        now = time.time() if now is None else now
        with self._lock, self.db.conn:
            self.db.conn.executemany(
                "insert into purges (destination, url, ready, attempts, created, next_try, error, "
                "generation) values (?, ?, 0, 0, ?, ?, '', 1) "
                "on conflict do update set ready = 0, generation = generation + 1",
                [(destination, url, now, now) for url in urls])

    def ready_purges(self, destination: str, urls: list[str] | None = None, *,
                     due: bool = False) -> None:
        """Mark purges sendable: ``urls`` of ``destination``, or all of them (after a restart);
        with ``due``, also due now, whatever their back-off said."""
        now = time.time()
        with self._lock, self.db.conn:
            if urls is None:
                self.db.execute("update purges set ready = 1, next_try = min(next_try, ?) "
                                "where destination = ?", [now if due else float("inf"), destination])
            else:
                self.db.conn.executemany("update purges set ready = 1 where destination = ? and url = ?",
                                         [(destination, url) for url in urls])

    def next_purge_due(self, destination: str) -> float | None:
        """When the earliest ready purge of ``destination`` is due; ``None`` if none is ready."""
        with self._lock:
            rows = list(self.db.query("select min(next_try) as due from purges "
                                      "where destination = ? and ready = 1", [destination]))
            return rows[0]["due"]

    def due_purges(self, destination: str, now: float | None = None) -> list[PurgeItem]:
        now = time.time() if now is None else now
        with self._lock:
            rows = self.db.query("select destination, url, attempts, created, error, generation from purges "
                                 "where destination = ? and ready = 1 and next_try <= ? order by created, url",
                                 [destination, now])
            return [PurgeItem(**row) for row in rows]

    def purges_done(self, items: list[PurgeItem]) -> None:
        """Forget purges the provider accepted, unless their URL was enqueued again since."""
        with self._lock, self.db.conn:
            self.db.conn.executemany(
                "delete from purges where destination = ? and url = ? and generation = ?",
                [(item.destination, item.url, item.generation) for item in items])

    def purges_failed(self, destination: str, urls: list[str], error: str, next_try: float) -> None:
        with self._lock, self.db.conn:
            self.db.conn.executemany(
                "update purges set attempts = attempts + 1, error = ?, next_try = ? "
                "where destination = ? and url = ?",
                [(error, next_try, destination, url) for url in urls])

    def blob_home(self, destination: str, digest: str) -> str | None:
        """A repository of a registry destination known to hold the blob (to mount it from)."""
        with self._lock:
            rows = list(self.db.query("select repository from blob_homes where destination = ? "
                                      "and digest = ?", [destination, digest]))
        return rows[0]["repository"] if rows else None

    def record_blob_home(self, destination: str, digest: str, repository: str) -> None:
        """Remember the first repository of ``destination`` seen holding the blob."""
        with self._lock, self.db.conn:
            self.db.execute("insert or ignore into blob_homes (destination, digest, repository) "
                            "values (?, ?, ?)", [destination, digest, repository])

    def forget_blob_home(self, destination: str, digest: str) -> None:
        with self._lock, self.db.conn:
            self.db.execute("delete from blob_homes where destination = ? and digest = ?",
                            [destination, digest])

    def outstanding_purges(self, destination: str) -> list[PurgeItem]:
        """Every purge not yet accepted by the provider, oldest first."""
        with self._lock:
            rows = self.db.query("select destination, url, attempts, created, error, generation from purges "
                                 "where destination = ? order by created, url", [destination])
            return [PurgeItem(**row) for row in rows]

    def announce(self, policy: str, destination: str, repository: str, tag: str) -> None:
        """Note that an event announced a change of ``repository:tag`` (``tag`` ``""``: some
        change in the repository)."""
        with self._lock, self.db.conn:
            self.db.execute("insert into announced (policy, destination, repository, tag, noted) "
                            "values (?, ?, ?, ?, ?) on conflict do update set noted = excluded.noted",
                            [policy, destination, repository, tag, time.time()])

    def announced(self, policy: str, destination: str, repository: str, tag: str) -> bool:
        """Whether an event announced a change of the tag (or of its repository)."""
        with self._lock:
            return bool(list(self.db.query(
                "select 1 from announced where policy = ? and destination = ? and repository = ? "
                "and tag in (?, '')", [policy, destination, repository, tag])))

    def forget_announced(self, policy: str, destination: str, before: float,
                         repository: str | None = None) -> None:
        """Forget the announcements noted before ``before`` (the start of a pass over the
        repository, or every repository) whose tag, or any tag of whose repository, is no
        longer pending."""
        scope = "policy = ? and destination = ? and noted < ?" + (" and repository = ?" if repository else "")
        params = [policy, destination, before] + ([repository] if repository else [])
        with self._lock, self.db.conn:
            self.db.execute(
                f"delete from announced where {scope} and not exists (select 1 from pending p "
                "where p.policy = announced.policy and p.destination = announced.destination and "
                "p.repository = announced.repository and (announced.tag = '' or p.tag in "
                "(announced.tag, '')))", params)
    def egress_used(self, policy: str, destination: str, period: float) -> tuple[int, int]:
        """Bytes copied into the destination in the budget period starting at ``period``, and
        the tags the last full pass left waiting for the budget (0, 0 for another period)."""
        with self._lock:
            rows = list(self.db.query("select used, waiting from egress_budgets where policy = ? "
                                      "and destination = ? and period = ?", [policy, destination, period]))
        return (rows[0]["used"], rows[0]["waiting"]) if rows else (0, 0)

    def add_egress(self, policy: str, destination: str, period: float, n: int) -> int:
        """Count ``n`` more bytes (negative: give back) in the period starting at ``period``
        (an earlier period's count is dropped); the bytes counted in it now."""
        with self._lock, self.db.conn:
            self.db.execute(
                "insert into egress_budgets (policy, destination, period, used, waiting) "
                "values (?, ?, ?, max(?, 0), 0) on conflict do update set "
                "used = max(case when period = excluded.period then used else 0 end + ?, 0), "
                "waiting = case when period = excluded.period then waiting else 0 end, "
                "period = excluded.period", [policy, destination, period, n, n])
            return self.egress_used(policy, destination, period)[0]

    def note_budget_waiting(self, policy: str, destination: str, period: float, waiting: int) -> None:
        """Record how many tags a pass in the period starting at ``period`` left waiting."""
        self.add_egress(policy, destination, period, 0)
        with self._lock, self.db.conn:
            self.db.execute("update egress_budgets set waiting = ? where policy = ? and destination = ?",
                            [waiting, policy, destination])

    def made_tags(self, destination: str) -> dict[tuple[str, str], str]:
        """The tags the replicator made at ``destination``, with the digest it wrote."""
        with self._lock:
            rows = self.db.query("select repository, tag, digest from made_tags where destination = ?",
                                 [destination])
            return {(row["repository"], row["tag"]): row["digest"] for row in rows}

    def forget_made_tag(self, destination: str, repository: str, tag: str) -> None:
        with self._lock, self.db.conn:
            self.db.execute("delete from made_tags where destination = ? and repository = ? and tag = ?",
                            [destination, repository, tag])

    def tag_absences(self, policy: str, destination: str) -> dict[tuple[str, str], float]:
        """Since when each tag the replicator made at ``destination`` has been seen missing at
        the policy's source."""
        with self._lock:
            rows = self.db.query("select repository, tag, since from tag_absences where policy = ? "
                                 "and destination = ?", [policy, destination])
            return {(row["repository"], row["tag"]): row["since"] for row in rows}

    def replace_tag_absences(self, policy: str, destination: str,
                             absences: dict[tuple[str, str], float],
                             repository: str | None = None) -> None:
        """Make ``absences`` the policy's absences for the destination (or for ``repository``)."""
        scope = "policy = ? and destination = ?" + (" and repository = ?" if repository else "")
        params = [policy, destination] + ([repository] if repository else [])
        with self._lock, self.db.conn:
            self.db.execute(f"delete from tag_absences where {scope}", params)
            self.db.conn.executemany(
                "insert into tag_absences (policy, destination, repository, tag, since) "
                "values (?, ?, ?, ?, ?)",
                [(policy, destination, name, tag, since) for (name, tag), since in absences.items()])

    def record_move(self, policy: str, destination: str, repository: str, tag: str,
                    digest: str, changed: float, replicated: float, purge: bool) -> None:
        """Note, in one transaction, that the replicator itself moved the tag at
        ``destination`` to ``digest`` (``made_tags``) at ``replicated``, for a change made at
        the source at ``changed``; with ``purge``, the move becomes visible when its CDN purge
        is accepted (:meth:`record_purged`), else at once (``replications``)."""
        with self._lock, self.db.conn:
            self.db.execute("insert into made_tags (destination, repository, tag, digest) "
                            "values (?, ?, ?, ?) on conflict do update set digest = excluded.digest",
                            [destination, repository, tag, digest])
            self.db.execute(
                "insert into replications (policy, destination, repository, tag, digest, changed, "
                "replicated, purged, visible, observed) values (?, ?, ?, ?, ?, ?, ?, null, ?, 0) "
                "on conflict do update set digest = excluded.digest, changed = excluded.changed, "
                "replicated = excluded.replicated, purged = null, visible = excluded.visible, "
                "observed = 0",
                [policy, destination, repository, tag, digest, changed, replicated,
                 None if purge else replicated])

    def awaiting_purge(self, destination: str) -> list[tuple[str, str]]:
        """(repository, tag) of every move at ``destination`` whose purge is not yet noted."""
        with self._lock:
            rows = self.db.execute("select distinct repository, tag from replications "
                                   "where destination = ? and visible is null", [destination])
            return [(row[0], row[1]) for row in rows]

    def record_purged(self, destination: str, tags: list[tuple[str, str]], purged: float) -> None:
        """Note that the CDN purge of each (repository, tag) moved at ``destination`` was accepted."""
        with self._lock, self.db.conn:
            self.db.conn.executemany(
                "update replications set purged = ?, visible = max(replicated, ?) "
                "where destination = ? and repository = ? and tag = ? and visible is null",
                [(purged, purged, destination, name, tag) for name, tag in tags])

    def replication(self, policy: str, destination: str, repository: str,
                    tag: str) -> Replication | None:
        with self._lock:
            rows = list(self.db.query(
                "select policy, destination, repository, tag, digest, changed, replicated, purged, "
                "visible from replications where policy = ? and destination = ? and repository = ? "
                "and tag = ?", [policy, destination, repository, tag]))
        return Replication(**rows[0]) if rows else None

    def take_visible_replications(self) -> list[Replication]:
        """Every move that became visible and was not taken yet, each returned once."""
        columns = "policy, destination, repository, tag, digest, changed, replicated, purged, visible"
        with self._lock, self.db.conn:
            rows = list(self.db.query(f"select {columns} from replications "
                                      "where observed = 0 and visible is not null"))
            self.db.conn.executemany(
                "update replications set observed = 1 where policy = ? and destination = ? "
                "and repository = ? and tag = ? and visible = ?",
                [(row["policy"], row["destination"], row["repository"], row["tag"], row["visible"])
                 for row in rows])
        return [Replication(**row) for row in rows]
