"""Durable coordinator state in SQLite (WAL): nodes, jobs, participants, relay.

Guarantees: every state change is one transaction, committed before the RPC
that caused it returns, so a coordinator killed with SIGKILL and restarted
keeps every registered node, job, decision and queued relay message. Nothing
here interprets payloads: relay rows are opaque sealed envelopes.

Ledger (``docs/protocols/ledger.md`` §9): every state change that the
contribution ledger records writes its entry — already built, canonical, with
its timestamp — into the ``ledger_outbox`` table **in the same transaction**
as the change. A drainer thread moves outbox rows, in order, into the
:class:`~fedgov.ledger.log.TransparencyLog` and deletes them afterwards, so a
crash at any point neither loses an entry that describes a committed change
nor (thanks to the start-up reconciliation in :meth:`CoordinatorStore.attach_ledger`)
appends one twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedgov.errors import FedgovError
from fedgov.ledger import entries as le
from fedgov.ledger.log import TransparencyLog
from fedgov.ledger.points import PointsRules, award_entry, rules_entry
from fedgov.manifest import parse_manifest
from fedgov.privatefs import open_private_db

log = logging.getLogger("fedgov.coordinator")

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    bundle BLOB NOT NULL,
    registered_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    catalog_json TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    purpose TEXT NOT NULL,
    requester TEXT NOT NULL,
    manifest TEXT NOT NULL,
    signature BLOB NOT NULL,
    requester_cert BLOB NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    result_json TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS participants (
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    node TEXT NOT NULL,
    position INTEGER NOT NULL,
    decision TEXT NOT NULL DEFAULT 'pending',
    reason TEXT NOT NULL DEFAULT '',
    approvers_json TEXT NOT NULL DEFAULT '[]',
    task_state TEXT NOT NULL DEFAULT 'waiting',
    result_json TEXT NOT NULL DEFAULT '',
    public_json TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, node)
);
CREATE TABLE IF NOT EXISTS relay (
    job_id TEXT NOT NULL,
    step TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, step, sender, recipient, seq)
);
CREATE TABLE IF NOT EXISTS ledger_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,              -- 'entry': data = canonical entry bytes; 'award': data = period label
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_state (
    key TEXT PRIMARY KEY,            -- what was last logged per node / dataset / rule set
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_keys (
    job_id TEXT NOT NULL,
    node TEXT NOT NULL,
    statement BLOB NOT NULL,           -- per-job sealing key, signed by the node (public)
    PRIMARY KEY (job_id, node)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    job_id TEXT,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    node TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_by_job ON events(job_id, id);
"""

TERMINAL = ("succeeded", "failed", "rejected", "cancelled")

#: Summary metrics a job_completed entry carries (per reporting node; ``eval.*`` too).
#: The ledger is readable by every federation member, so only these aggregates.
LEDGER_METRICS = (
    "intersection_size", "total_released", "scored", "epochs", "best_epoch", "rows", "records", "rounds",
)
#: Largest number of outbox rows appended in one ledger transaction.
OUTBOX_BATCH = 500
_HEX64 = frozenset("0123456789abcdef")


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX64


def _number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and value == value
        and abs(value) != float("inf")
    )


def result_metrics(merged: Mapping[str, Any]) -> dict[str, float]:
    """The summary metrics of a job's public facts ``{node: facts}`` (:data:`LEDGER_METRICS`).

    ``facts`` are what each node chose to publish (``TaskReport.public_json``),
    never the result released to the requester.
    """
    out: dict[str, float] = {}
    for node in sorted(merged):
        res = merged[node]
        if not isinstance(res, dict):
            continue
        for key in LEDGER_METRICS:
            if _number(res.get(key)):
                out[f"{node}.{key}"] = res[key]
        ev = res.get("eval")
        if isinstance(ev, dict):
            for key in sorted(ev):
                if _number(ev[key]):
                    out[f"{node}.eval.{key}"] = ev[key]
    return out


def period_of(ts_ms: int) -> str:
    """The points period (UTC calendar month, ``YYYY-MM``) an entry's timestamp falls in."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m")


@dataclass(frozen=True)
class ParticipantRow:
    node: str
    decision: str
    reason: str
    approvers: tuple[str, ...]
    task_state: str
    result_json: str


@dataclass(frozen=True)
class EventRow:
    """One recorded event of a job: coordinator time, what, which department ("" for the job), detail."""

    ts: float
    event: str
    node: str
    detail: str


@dataclass(frozen=True)
class JobRow:
    job_id: str
    kind: str
    purpose: str
    requester: str
    manifest: str
    signature: bytes
    requester_cert: bytes
    state: str
    reason: str
    result_json: str
    created_at: float
    updated_at: float
    participants: tuple[ParticipantRow, ...]


class CoordinatorStore:
    """Thread-safe access to the coordinator database; one writer at a time."""

    def __init__(self, path: Path) -> None:
        self._db = open_private_db(path, timeout=5.0)  # 0700 directory, 0600 database (+ WAL)
        self._enable_incremental_vacuum()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(participants)")}
        if "public_json" not in cols:  # databases from before public facts
            self._db.execute("ALTER TABLE participants ADD COLUMN public_json TEXT NOT NULL DEFAULT ''")
        if "sealed_result" not in cols:  # databases from before results sealed to the requester
            self._db.execute("ALTER TABLE participants ADD COLUMN sealed_result BLOB NOT NULL DEFAULT x''")
        if "facts_json" not in cols:  # the node's own signed ledger facts (fedgov.ledger.facts)
            self._db.execute("ALTER TABLE participants ADD COLUMN facts_json TEXT NOT NULL DEFAULT '[]'")
        node_cols = {r[1] for r in self._db.execute("PRAGMA table_info(nodes)")}
        if "session" not in node_cols:  # the registered process (h14a: restart attribution)
            self._db.execute("ALTER TABLE nodes ADD COLUMN session TEXT")
        event_cols = {r[1] for r in self._db.execute("PRAGMA table_info(events)")}
        if "node" not in event_cols:  # which department a node-/task- event is about (the job timeline)
            self._db.execute("ALTER TABLE events ADD COLUMN node TEXT NOT NULL DEFAULT ''")
        self._lock = threading.RLock()
        #: notified on every change, for long polls
        self.changed = threading.Condition(self._lock)
        self.ledger: TransparencyLog | None = None
        self.rules = PointsRules()
        self._outbox_wake = threading.Event()
        self._drain_lock = threading.Lock()
        self._drainer: threading.Thread | None = None
        self._drainer_stop = threading.Event()
        self._touched: dict[str, float] = {}
        #: envelope bytes stored into / read out of the relay since start (metrics)
        self.relay_bytes_in = 0
        self.relay_bytes_out = 0

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
                if self._outbox_wake_pending:
                    self._outbox_wake_pending = False
                    self._outbox_wake.set()
                # wake long polls only on a real change (a no-op poll must not
                # wake every other poller, which would then wake this one ...)
                if self._db.total_changes != before:
                    self.changed.notify_all()

    _outbox_wake_pending = False

    # -- housekeeping (issue 14, finding 5) ------------------------------
    #: relayed envelopes are deleted when their job ends; without this the
    #: freed pages stay in the file (90 MB, 99.9% free, after nine jobs)
    AUTO_VACUUM_INCREMENTAL = 2

    def _enable_incremental_vacuum(self) -> None:
        """Put the database in ``auto_vacuum=INCREMENTAL`` mode (a one-off VACUUM for an old file)."""
        mode = self._db.execute("PRAGMA auto_vacuum").fetchone()[0]
        if mode != self.AUTO_VACUUM_INCREMENTAL:
            self._db.execute(f"PRAGMA auto_vacuum={self.AUTO_VACUUM_INCREMENTAL}")
            self._db.execute("VACUUM")  # the mode takes effect on an existing file only after VACUUM

    def housekeeping(self) -> int:
        """Return free pages to the file system; returns the pages freed.

        Runs ``PRAGMA incremental_vacuum`` (releases every free page) and a
        truncating WAL checkpoint, so ``coordinator.db`` stays near its live size.
        """
        with self._lock:
            before = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            if before:
                # executescript steps the pragma to the end (execute() frees one page only)
                self._db.executescript("PRAGMA incremental_vacuum;")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return int(before)

    def relay_depth(self) -> tuple[int, int]:
        """``(messages, bytes)`` waiting in the relay (for the metrics endpoint)."""
        with self._lock:
            n, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM relay").fetchone()
        return int(n), int(size)

    def job_counts(self) -> dict[str, int]:
        """Number of jobs per state (for status views and metrics)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: int(n) for state, n in rows}

    def close(self) -> None:
        """Stop the ledger drainer (after a last drain) and close the database."""
        self.detach_ledger()
        with self._lock:
            self._db.close()

    # -- ledger ----------------------------------------------------------
    def _changed(self, db: sqlite3.Connection, key: str, value: str) -> bool:
        """Record ``value`` under ``key`` in ledger_state; True if it differs from the stored one."""
        row = db.execute("SELECT value FROM ledger_state WHERE key=?", (key,)).fetchone()
        if row is not None and row[0] == value:
            return False
        db.execute(
            "INSERT INTO ledger_state(key, value) VALUES (?,?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )
        return True

    def _ledger(self, db: sqlite3.Connection, build: Any) -> None:
        """Queue the entry ``build()`` returns in the outbox, inside the caller's transaction.

        A malformed entry (e.g. a name the entry format refuses) is logged and
        skipped: the ledger must never block the federation's own state change.
        """
        try:
            entry = build()
        except _Skip:
            return
        except Exception as exc:  # noqa: BLE001 - never roll back the state change for the ledger
            log.warning("ledger entry not recorded: %s", exc)
            return
        db.execute("INSERT INTO ledger_outbox(kind, data) VALUES ('entry', ?)", (entry.encode(),))
        self._outbox_wake_pending = True

    def _ledger_job_end(self, db: sqlite3.Connection, job_id: str, state: str) -> None:
        """Entries for a job reaching ``state``: contributions first (success), then job_completed."""
        row = db.execute("SELECT kind, manifest FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            return
        kind, manifest_text = row
        metrics: dict[str, float] = {}
        if state == "succeeded":
            public: dict[str, Any] = {}
            for n, r in db.execute("SELECT node, public_json FROM participants WHERE job_id=?", (job_id,)):
                try:
                    facts = json.loads(r or "{}")
                except ValueError:
                    facts = {}
                if isinstance(facts, dict) and facts:
                    public[n] = facts
            metrics = result_metrics(public)
            catalogs = {
                n: {d["name"]: d for d in json.loads(c)}
                for n, c in db.execute("SELECT name, catalog_json FROM nodes").fetchall()
            }
            signed = _signed_job_facts(db, job_id)
            for entry in signed:
                self._ledger(db, lambda entry=entry: entry)
            for build in _contribution_entries(job_id, kind, manifest_text, public, catalogs):
                # old nodes sign nothing: their facts are logged unsigned (the coordinator's
                # word, which `fedgov ledger verify` reports and `ledger points` does not count)
                self._ledger(db, lambda build=build: _unless_signed(build(), signed))
        completed = le.job_completed(job_id, state, metrics)
        self._ledger(db, lambda: completed)
        if state == "succeeded":
            db.execute(
                "INSERT INTO ledger_outbox(kind, data) VALUES ('award', ?)",
                (period_of(completed.ts).encode(),),
            )

    def attach_ledger(self, ledger: TransparencyLog, rules: PointsRules | None = None) -> None:
        """Start recording into ``ledger``: reconcile the outbox, publish the rules once, start draining."""
        self.ledger = ledger
        self.rules = rules or PointsRules()
        with self._drain_lock:
            self._reconcile()
        with self.tx() as db:
            if self._changed(db, "points_rules", self.rules.digest()):
                self._ledger(db, lambda: rules_entry(self.rules))
        try:
            self.flush_ledger()
        except FedgovError as exc:  # e.g. a damaged log: keep serving, entries wait in the outbox
            log.error("ledger: cannot append (entries kept in the outbox): %s", exc)
        self._drainer_stop.clear()
        self._drainer = threading.Thread(target=self._drain_forever, name="ledger-drainer", daemon=True)
        self._drainer.start()

    def detach_ledger(self) -> None:
        """Stop the drainer thread after a final drain (the log itself is closed by its owner)."""
        if self._drainer is None:
            return
        self._drainer_stop.set()
        self._outbox_wake.set()
        self._drainer.join(timeout=10)
        self._drainer = None
        try:
            self.flush_ledger()
        except FedgovError as exc:
            log.error("ledger outbox not drained at shutdown (kept for the next start): %s", exc)

    def _outbox(self, limit: int) -> list[tuple[int, str, bytes]]:
        with self._lock:
            return [
                (i, k, bytes(d))
                for i, k, d in self._db.execute(
                    "SELECT id, kind, data FROM ledger_outbox ORDER BY id LIMIT ?", (limit,)
                ).fetchall()
            ]

    def _outbox_delete(self, ids: list[int]) -> None:
        # not through tx(): removing outbox rows is no state change long polls care about
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM ledger_outbox WHERE id=?", [(i,) for i in ids])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _reconcile(self) -> None:
        """Delete outbox rows a crashed drainer had already appended (the log's tail equals them).

        The drainer appends at most :data:`OUTBOX_BATCH` rows (or one award) per
        ledger transaction and deletes them right after, so only a prefix of the
        outbox of at most that length can already be in the log.
        """
        assert self.ledger is not None
        pending = self._outbox(OUTBOX_BATCH)
        size = self.ledger.size
        for k in range(min(len(pending), size), 0, -1):
            tail = self.ledger.entries(size - k, size)
            if all(_same(p, t) for p, t in zip(pending[:k], tail, strict=True)):
                log.warning(
                    "ledger: %d outbox row(s) were already in the log (crash after append); dropped", k
                )
                self._outbox_delete([i for i, _, _ in pending[:k]])
                return

    def flush_ledger(self) -> int:
        """Append every outbox row to the ledger now; returns how many were appended."""
        if self.ledger is None:
            return 0
        done = 0
        with self._drain_lock:
            while True:
                rows = self._outbox(OUTBOX_BATCH)
                if not rows:
                    return done
                if rows[0][1] == "award":
                    i, _, period = rows[0]
                    entry = award_entry(self.ledger.points_entries(), period.decode(), self.rules)
                    self.ledger.append(entry)
                    self._outbox_delete([i])
                    done += 1
                    continue
                batch = []
                for row in rows:
                    if row[1] != "entry":
                        break
                    batch.append(row)
                self.ledger.append_many([d for _, _, d in batch])
                self._outbox_delete([i for i, _, _ in batch])
                done += len(batch)

    def outbox_size(self) -> int:
        """Ledger entries committed in the state but not yet appended to the log."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM ledger_outbox").fetchone()[0])

    def _drain_forever(self) -> None:
        delay = 0.5
        while not self._drainer_stop.is_set():
            self._outbox_wake.wait(timeout=1.0)
            self._outbox_wake.clear()
            try:
                self.flush_ledger()
                delay = 0.5
            except Exception as exc:  # noqa: BLE001 - rows stay in the outbox; retry
                log.error("ledger append failed (entries kept in the outbox, retrying): %s", exc)
                self._drainer_stop.wait(delay)
                delay = min(delay * 2, 30.0)

    # -- nodes -----------------------------------------------------------
    def register_node(
        self, name: str, bundle: bytes, cert_sha256: str | None = None, session: str | None = None
    ) -> list[str]:
        """Upsert a node; returns the running jobs it was part of (now broken).

        With ``cert_sha256`` (SHA-256 of the node's TLS certificate, DER) a
        ``node_registered`` ledger entry is written the first time and whenever
        the certificate changes (not on every reconnect).

        ``session`` is the registering process's random session id (persisted).
        The same session registering again is the same process reconnecting —
        after a coordinator restart or a network outage — and breaks nothing:
        its jobs carry on. A different (or unknown) session is a new process,
        which lost the old one's in-memory protocol state: its running jobs are
        returned as broken.
        """
        now = time.time()
        with self.tx() as db:
            if cert_sha256 is not None and self._changed(db, f"node:{name}", cert_sha256):
                self._ledger(db, lambda: le.node_registered(name, cert_sha256))
            if bundle and self._changed(db, f"bundle:{name}", hashlib.sha256(bundle).hexdigest()):
                # the CA-certified keys verifiers check this node's signed facts with
                self._ledger(db, lambda: le.node_key(name, bundle))
            row = db.execute("SELECT session FROM nodes WHERE name=?", (name,)).fetchone()
            same_process = row is not None and same_process_session(row[0], session)
            db.execute(
                "INSERT INTO nodes(name, bundle, registered_at, last_seen, session) VALUES (?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET bundle=excluded.bundle, "
                "registered_at=excluded.registered_at, last_seen=excluded.last_seen, session=excluded.session",
                (name, bundle, now, now, session),
            )
            broken = [] if same_process else [
                r[0]
                for r in db.execute(
                    "SELECT j.job_id FROM jobs j JOIN participants p ON p.job_id=j.job_id "
                    "WHERE p.node=? AND j.state='running' AND p.task_state='delivered'",
                    (name,),
                )
            ]
            # evaluations in flight must be delivered again to the new process
            db.execute(
                "UPDATE participants SET task_state='waiting' WHERE node=? AND task_state='evaluating'",
                (name,),
            )
            self._event(db, None, "node-registered", name)
        return broken

    #: ``last_seen`` is written at most this often per node: each write is a durable
    #: (fsync'd) transaction under the store lock, and nodes touch on every poll.
    TOUCH_INTERVAL = 1.0

    def touch_node(self, name: str) -> None:
        """Record that ``name`` was heard from now (to :attr:`TOUCH_INTERVAL` resolution)."""
        now = time.time()
        if now - self._touched.get(name, 0.0) < self.TOUCH_INTERVAL:
            return
        with self._lock:
            self._db.execute("UPDATE nodes SET last_seen=? WHERE name=?", (now, name))
            self._touched[name] = now

    def registered_session(self, name: str) -> str | None:
        """The session id node ``name`` last registered with (persisted across restarts), if any."""
        with self.tx() as db:
            row = db.execute("SELECT session FROM nodes WHERE name=?", (name,)).fetchone()
        return str(row[0]) if row is not None and row[0] else None

    def reset_liveness(self) -> None:
        """After a coordinator restart, give every node a fresh grace period."""
        with self.tx() as db:
            db.execute("UPDATE nodes SET last_seen=?", (time.time(),))

    def publish_catalog(self, name: str, catalog: list[dict[str, Any]]) -> None:
        """Replace a node's catalogue; logs ``dataset_published`` for each new or changed dataset.

        Each catalogue item may carry ``quality`` (the node's public scores).
        """
        with self.tx() as db:
            db.execute(
                "UPDATE nodes SET catalog_json=? WHERE name=?",
                (json.dumps([{k: v for k, v in d.items() if k != "fact"} for d in catalog], sort_keys=True), name),
            )
            for d in catalog:
                digest = d.get("schema_digest")
                if not _is_hex64(digest):
                    canon = json.dumps(d.get("schema", {}), sort_keys=True, separators=(",", ":"))
                    digest = hashlib.sha256(canon.encode("utf-8")).hexdigest()
                quality = {k: v for k, v in (d.get("quality") or {}).items() if _number(v)}
                rows = max(int(d.get("rows", 0)), 0)
                state = json.dumps([digest, rows, quality], sort_keys=True)
                if self._changed(db, f"dataset:{name}/{d['name']}", state):
                    self._ledger(
                        db,
                        lambda d=d, digest=digest, rows=rows, quality=quality: _own_fact(
                            d.get("fact"), name, ("dataset_published",), dataset=d["name"]
                        )
                        or le.dataset_published(name, d["name"], digest, rows, quality),
                    )
            self._event(db, None, "catalog-published", name)

    def nodes(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, registered_at, last_seen, catalog_json FROM nodes ORDER BY name"
            ).fetchall()
        return [
            {"name": n, "registered_at": r, "last_seen": s, "catalog": json.loads(c)} for n, r, s, c in rows
        ]

    def node_bundle(self, name: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT bundle FROM nodes WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    # -- jobs ------------------------------------------------------------
    def create_job(
        self,
        *,
        kind: str,
        purpose: str,
        requester: str,
        manifest: str,
        signature: bytes,
        requester_cert: bytes,
        nodes: list[str],
    ) -> str:
        job_id = "job-" + uuid.uuid4().hex[:12]
        now = time.time()
        with self.tx() as db:
            db.execute(
                "INSERT INTO jobs(job_id, kind, purpose, requester, manifest, signature, requester_cert, "
                "state, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    kind,
                    purpose,
                    requester,
                    manifest,
                    signature,
                    requester_cert,
                    "submitted",
                    now,
                    now,
                ),
            )
            for i, n in enumerate(nodes):
                db.execute("INSERT INTO participants(job_id, node, position) VALUES (?,?,?)", (job_id, n, i))
            self._event(db, job_id, "job-submitted", f"{kind} by {requester}")
            self._ledger(db, lambda: _submitted_entry(job_id, kind, purpose, requester, manifest))
        return job_id

    def job(self, job_id: str) -> JobRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT job_id, kind, purpose, requester, manifest, signature, requester_cert, state, "
                "reason, result_json, created_at, updated_at FROM jobs WHERE job_id=?",
                (job_id,),
            ).fetchone()
            if row is None:
                return None
            parts = self._db.execute(
                "SELECT node, decision, reason, approvers_json, task_state, result_json FROM participants "
                "WHERE job_id=? ORDER BY position",
                (job_id,),
            ).fetchall()
        return JobRow(
            *row,
            participants=tuple(
                ParticipantRow(n, d, r, tuple(json.loads(a)), t, res) for n, d, r, a, t, res in parts
            ),
        )

    def jobs(self, state: str | None = None) -> list[JobRow]:
        with self._lock:
            q = "SELECT job_id FROM jobs" + (" WHERE state=?" if state else "") + " ORDER BY created_at"
            ids = [r[0] for r in self._db.execute(q, (state,) if state else ())]
        return [j for j in (self.job(i) for i in ids) if j is not None]

    def _set_state(self, db: sqlite3.Connection, job_id: str, state: str, reason: str = "") -> None:
        db.execute(
            "UPDATE jobs SET state=?, reason=?, updated_at=? WHERE job_id=?",
            (state, reason, time.time(), job_id),
        )
        if state in TERMINAL:
            db.execute("DELETE FROM relay WHERE job_id=?", (job_id,))
            db.execute("DELETE FROM job_keys WHERE job_id=?", (job_id,))
        self._event(db, job_id, f"job-{state}", reason)
        if state == "running":
            self._ledger(db, lambda: le.job_started(job_id))
        elif state in TERMINAL:
            self._ledger_job_end(db, job_id, state)

    def finish_job(self, job_id: str, state: str, reason: str = "") -> bool:
        """Move a non-terminal job to a terminal state; False if already terminal."""
        with self.tx() as db:
            cur = db.execute("SELECT state FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if cur is None or cur[0] in TERMINAL:
                return False
            self._set_state(db, job_id, state, reason)
            return True

    def record_decision(
        self, job_id: str, node: str, approve: bool, reason: str, approvers: list[str], fact: bytes = b""
    ) -> str | None:
        """Store a node's decision; returns the job's new state if it changed."""
        with self.tx() as db:
            cur = db.execute("SELECT state FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if cur is None or cur[0] != "submitted":
                return None
            db.execute(
                "UPDATE participants SET decision=?, reason=?, approvers_json=?, task_state='waiting' "
                "WHERE job_id=? AND node=?",
                ("approved" if approve else "rejected", reason, json.dumps(approvers), job_id, node),
            )
            self._event(
                db, job_id, "node-approved" if approve else "node-rejected",
                reason + (f" (approvers: {', '.join(approvers)})" if approvers else ""), node=node,
            )
            own = _own_fact(fact, node, ("job_approved",) if approve else ("policy_refusal",), job=job_id)
            if own is not None:
                self._ledger(db, lambda: own)
            elif approve:
                self._ledger(db, lambda: le.job_approved(job_id, node, approvers))
            else:
                reasons = [reason or "refused"] + (
                    [f"approvers: {', '.join(approvers)}"] if approvers else []
                )
                self._ledger(db, lambda: le.policy_refusal(job_id, node, reasons))
            if not approve:
                self._set_state(db, job_id, "rejected", f"{node}: {reason}")
                return "rejected"
            pending = db.execute(
                "SELECT COUNT(*) FROM participants WHERE job_id=? AND decision!='approved'", (job_id,)
            ).fetchone()[0]
            if pending == 0:
                self._set_state(db, job_id, "running")
                return "running"
        return None

    def record_report(
        self,
        job_id: str,
        node: str,
        ok: bool,
        result_json: str,
        error: str,
        public_json: str = "",
        *,
        sealed_result: bytes = b"",
        facts: list[bytes] | None = None,
    ) -> str | None:
        """Store a node's outcome; ``public_json`` holds the facts it lets the ledger record.

        ``sealed_result`` is the node's result sealed to the requester: stored
        and relayed as opaque bytes.
        """
        with self.tx() as db:
            cur = db.execute("SELECT state FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if cur is None or cur[0] != "running":
                return None
            db.execute(
                "UPDATE participants SET task_state=?, result_json=?, public_json=?, sealed_result=? "
                "WHERE job_id=? AND node=?",
                ("succeeded" if ok else "failed", result_json if ok else error, public_json if ok else "",
                 sealed_result if ok else b"", job_id, node),
            )
            own = [
                e.encode().decode("utf-8")
                for f in (facts or [])
                if ok and (e := _own_fact(f, node, ("contribution", "model_contribution"), job=job_id))
            ]
            db.execute(
                "UPDATE participants SET facts_json=? WHERE job_id=? AND node=?", (json.dumps(own), job_id, node)
            )
            self._event(db, job_id, "task-succeeded" if ok else "task-failed", "" if ok else error, node=node)
            if not ok:
                self._set_state(db, job_id, "failed", f"{node}: {error}")
                return "failed"
            rows = db.execute(
                "SELECT node, task_state, result_json FROM participants WHERE job_id=? ORDER BY position",
                (job_id,),
            ).fetchall()
            if all(t == "succeeded" for _, t, _ in rows):
                merged = {n: json.loads(r) for n, _, r in rows if r and r != "{}"}
                db.execute("UPDATE jobs SET result_json=? WHERE job_id=?", (json.dumps(merged), job_id))
                self._set_state(db, job_id, "succeeded")
                return "succeeded"
        return None

    def take_tasks(self, node: str) -> list[tuple[str, JobRow]]:
        """Tasks due for ``node``; marks them delivered in the same transaction."""
        out: list[tuple[str, str]] = []
        with self.tx() as db:
            rows = db.execute(
                "SELECT j.job_id, j.state, p.decision, p.task_state FROM jobs j JOIN participants p "
                "ON p.job_id=j.job_id WHERE p.node=? AND p.task_state IN ('waiting','delivered','evaluating')",
                (node,),
            ).fetchall()
            for job_id, state, decision, task_state in rows:
                new = None
                if state == "submitted" and decision == "pending" and task_state == "waiting":
                    out.append(("evaluate", job_id))
                    new = "evaluating"
                elif state == "running" and task_state == "waiting":
                    out.append(("run", job_id))
                    new = "delivered"
                elif state in ("failed", "cancelled", "rejected") and task_state in (
                    "delivered",
                    "evaluating",
                ):
                    out.append(("abort", job_id))
                    new = "aborted"
                if new:
                    db.execute(
                        "UPDATE participants SET task_state=? WHERE job_id=? AND node=?", (new, job_id, node)
                    )
                    if new in ("evaluating", "delivered"):
                        self._event(db, job_id, "node-received" if new == "evaluating" else "task-started", "",
                                    node=node)
        result = []
        for action, job_id in out:
            job = self.job(job_id)
            if job is not None:
                result.append((action, job))
        return result

    def stale_participants(self, timeout: float) -> list[tuple[str, str, float]]:
        """(job_id, node, seconds since seen) for running jobs with silent nodes."""
        cutoff = time.time() - timeout
        with self._lock:
            rows = self._db.execute(
                "SELECT j.job_id, n.name, n.last_seen FROM jobs j JOIN participants p ON p.job_id=j.job_id "
                "JOIN nodes n ON n.name=p.node WHERE j.state='running' AND p.task_state!='succeeded' "
                "AND n.last_seen < ?",
                (cutoff,),
            ).fetchall()
        now = time.time()
        return [(j, n, now - s) for j, n, s in rows]

    # -- sealed results and per-job keys (opaque to the coordinator) -------
    def sealed_results(self, job_id: str) -> list[tuple[str, bytes]]:
        """(node, sealed result) of every participant that reported one, in manifest order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT node, sealed_result FROM participants WHERE job_id=? AND length(sealed_result) > 0 "
                "ORDER BY position",
                (job_id,),
            ).fetchall()
        return [(n, bytes(b)) for n, b in rows]

    def put_job_key(self, job_id: str, node: str, statement: bytes) -> bool:
        """Store a node's per-job key statement; False if it already published a different one."""
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO job_keys(job_id, node, statement) VALUES (?,?,?)", (job_id, node, statement)
            )
            row = db.execute("SELECT statement FROM job_keys WHERE job_id=? AND node=?", (job_id, node)).fetchone()
            return bytes(row[0]) == statement

    def job_key(self, job_id: str, node: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT statement FROM job_keys WHERE job_id=? AND node=?", (job_id, node)
            ).fetchone()
        return bytes(row[0]) if row else None

    # -- relay -----------------------------------------------------------
    def put_message(self, job_id: str, step: str, sender: str, recipient: str, seq: int, data: bytes) -> None:
        """Store an envelope; idempotent for a retried send of the same address."""
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO relay(job_id, step, sender, recipient, seq, data, created_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (job_id, step, sender, recipient, seq, data, time.time()),
            )
        self.relay_bytes_in += len(data)

    def get_message(self, job_id: str, step: str, sender: str, recipient: str, seq: int) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM relay WHERE job_id=? AND step=? AND sender=? AND recipient=? AND seq=?",
                (job_id, step, sender, recipient, seq),
            ).fetchone()
        if row:
            self.relay_bytes_out += len(row[0])
        return row[0] if row else None

    # -- events ----------------------------------------------------------
    def _event(
        self, db: sqlite3.Connection, job_id: str | None, event: str, detail: str, *, node: str = ""
    ) -> None:
        db.execute(
            "INSERT INTO events(ts, job_id, event, detail, node) VALUES (?,?,?,?,?)",
            (time.time(), job_id, event, detail, node),
        )

    #: at most this many events of one job are returned (the oldest first; a job has about 4 per department)
    MAX_JOB_EVENTS = 1000

    def job_events(self, job_id: str) -> list[EventRow]:
        """What was recorded about ``job_id`` (and only that job), oldest first, at most MAX_JOB_EVENTS.

        Leaks to whoever is shown them: only times of what the job's status says anyway (its states,
        each department's decision with reason and approvers, task start/end, a failure's error).
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT ts, event, node, detail FROM events WHERE job_id=? ORDER BY id LIMIT ?",
                (job_id, self.MAX_JOB_EVENTS),
            ).fetchall()
        return [EventRow(float(ts), ev, node or "", detail or "") for ts, ev, node, detail in rows]


# -- ledger entry builders ---------------------------------------------------------


def _own_fact(
    blob: bytes | None, node: str, types: tuple[str, ...], *, job: str | None = None, dataset: str | None = None
) -> le.Entry | None:
    """The signed fact ``node`` sent, if it is a well-formed fact of ``types`` about itself (else None).

    The coordinator cannot check more than the shape: the department's
    signature is what verifiers check (:mod:`fedgov.ledger.facts`).
    """
    if not blob:
        return None
    try:
        e = le.parse_entry(bytes(blob))
    except FedgovError as exc:
        log.warning("signed fact from %s refused: %s", node, exc)
        return None
    if (
        e.type not in types
        or e.signer != node
        or (job is not None and e["job"] != job)
        or (dataset is not None and e["dataset"] != dataset)
        or (e.type != "model_contribution" and e["node"] != node)
    ):
        log.warning("signed fact from %s refused: a %s that is not its own fact here", node, e.type)
        return None
    return e


def _signed_job_facts(db: sqlite3.Connection, job_id: str) -> list[le.Entry]:
    """The signed contribution facts the participants of ``job_id`` reported, in position order."""
    out = []
    for (text,) in db.execute("SELECT facts_json FROM participants WHERE job_id=? ORDER BY position", (job_id,)):
        for blob in json.loads(text or "[]"):
            out.append(le.parse_entry(blob.encode("utf-8")))
    return out


def _unless_signed(entry: le.Entry, signed: list[le.Entry]) -> le.Entry:
    """``entry`` unless its department already signed a fact of that kind (raises to skip it)."""
    for s in signed:
        if s.type == entry.type and (entry.type == "model_contribution" or s["node"] == entry["node"]):
            raise _Skip(f"{entry.type} of {s.signer} is signed by it")
    return entry


class _Skip(Exception):
    """The node signed this fact itself; the coordinator's unsigned version is not logged."""
def same_process_session(registered: str | None, session: str | None) -> bool:
    """True iff ``session`` is the registered node process (``registered``) reconnecting.

    Both must be known and equal: a process that sends no session id, or a new
    one, counts as a new process (which lost the old one's protocol state).
    """
    return bool(session) and registered == session


def _same(row: tuple[int, str, bytes], stored: bytes) -> bool:
    """Whether the outbox ``row`` is what the log holds as ``stored``."""
    _, kind, data = row
    if kind == "entry":
        return data == stored
    try:
        e = le.parse_entry(stored)
    except FedgovError:
        return False
    return e.type == "points_awarded" and e["period"] == data.decode()


def _validation(manifest: Any) -> str:
    """The held-out validation set a manifest names: ``node/eval_dataset`` (guest first), or ''."""
    named = [p for p in manifest.data_participants if p.extra.get("eval_dataset")]
    named.sort(key=lambda p: (p.role != "guest", "label" not in p.extra))
    return f"{named[0].node}/{named[0].extra['eval_dataset']}" if named else ""


def _submitted_entry(job_id: str, kind: str, purpose: str, requester: str, manifest_text: str) -> le.Entry:
    m = parse_manifest(manifest_text)
    participants = {p.node: (p.dataset, p.fields) for p in m.data_participants}
    return le.job_submitted(
        job_id,
        kind,
        purpose,
        requester,
        m.digest,
        participants,
        validation=_validation(m),
    )


def _contribution_entries(
    job_id: str,
    kind: str,
    manifest_text: str,
    public: Mapping[str, Any],
    catalogs: Mapping[str, Mapping[str, Any]],
) -> list[Any]:
    """Builders of the contribution (and model contribution) entries of a job that succeeded.

    ``public`` maps each node to the facts it published (``TaskReport.public_json``).
    ``records`` per participant: the ``records`` its own facts report if any;
    for vertical models the aligned training rows (the guest's
    ``intersection_size``); otherwise the rows it published for the dataset.
    A ``coalitions`` object (``{"a+b": metric}``, all ``2**n`` subsets) in
    published ``eval`` facts becomes a ``model_contribution`` entry.
    """
    try:
        m = parse_manifest(manifest_text)
    except FedgovError:
        return []
    intersection = next(
        (
            r["intersection_size"]
            for r in public.values()
            if isinstance(r, dict) and _number(r.get("intersection_size"))
        ),
        None,
    )
    builds: list[Any] = []
    for p in m.data_participants:
        own = public.get(p.node) or {}
        rows = catalogs.get(p.node, {}).get(p.dataset, {}).get("rows", 0)
        if isinstance(own, dict) and _number(own.get("records")) and int(own["records"]) >= 0:
            records = int(own["records"])
        elif kind == "vertical-lr" and intersection is not None:
            records = int(intersection)
        else:
            records = int(rows or 0)
        builds.append(
            lambda p=p, records=records: le.contribution(job_id, p.node, p.dataset, records, p.fields)
        )
    validation = _validation(m)
    for res in public.values():
        ev = res.get("eval") if isinstance(res, dict) else None
        coalitions = ev.get("coalitions") if isinstance(ev, dict) else None
        if isinstance(coalitions, dict) and validation:
            metric = str(ev.get("coalition_metric", "auc"))
            builds.append(
                lambda metric=metric, coalitions=coalitions: le.model_contribution(
                    job_id,
                    metric,
                    validation,
                    {le.parse_coalition_key(k): float(v) for k, v in coalitions.items() if _number(v)},
                )
            )
            break
    return builds
