"""Durable coordinator state in SQLite (WAL): nodes, jobs, participants, relay.

Guarantees: every state change is one transaction, committed before the RPC
that caused it returns, so a coordinator killed with SIGKILL and restarted
keeps every registered node, job, decision and queued relay message. Nothing
here interprets payloads: relay rows are opaque sealed envelopes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    job_id TEXT,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
"""

TERMINAL = ("succeeded", "failed", "rejected", "cancelled")


@dataclass(frozen=True)
class ParticipantRow:
    node: str
    decision: str
    reason: str
    approvers: tuple[str, ...]
    task_state: str
    result_json: str


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
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()
        #: notified on every change, for long polls
        self.changed = threading.Condition(self._lock)

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
                # wake long polls only on a real change (a no-op poll must not
                # wake every other poller, which would then wake this one ...)
                if self._db.total_changes != before:
                    self.changed.notify_all()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- nodes -----------------------------------------------------------
    def register_node(self, name: str, bundle: bytes) -> list[str]:
        """Upsert a node; returns the running jobs it was part of (now broken)."""
        now = time.time()
        with self.tx() as db:
            db.execute(
                "INSERT INTO nodes(name, bundle, registered_at, last_seen) VALUES (?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET bundle=excluded.bundle, "
                "registered_at=excluded.registered_at, last_seen=excluded.last_seen",
                (name, bundle, now, now),
            )
            broken = [
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

    def touch_node(self, name: str) -> None:
        with self._lock:
            self._db.execute("UPDATE nodes SET last_seen=? WHERE name=?", (time.time(), name))

    def reset_liveness(self) -> None:
        """After a coordinator restart, give every node a fresh grace period."""
        with self.tx() as db:
            db.execute("UPDATE nodes SET last_seen=?", (time.time(),))

    def publish_catalog(self, name: str, catalog: list[dict[str, Any]]) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE nodes SET catalog_json=? WHERE name=?", (json.dumps(catalog, sort_keys=True), name)
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
        self._event(db, job_id, f"job-{state}", reason)

    def finish_job(self, job_id: str, state: str, reason: str = "") -> bool:
        """Move a non-terminal job to a terminal state; False if already terminal."""
        with self.tx() as db:
            cur = db.execute("SELECT state FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if cur is None or cur[0] in TERMINAL:
                return False
            self._set_state(db, job_id, state, reason)
            return True

    def record_decision(
        self, job_id: str, node: str, approve: bool, reason: str, approvers: list[str]
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
                db, job_id, "node-approved" if approve else "node-rejected", f"{node} {reason} {approvers}"
            )
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

    def record_report(self, job_id: str, node: str, ok: bool, result_json: str, error: str) -> str | None:
        with self.tx() as db:
            cur = db.execute("SELECT state FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if cur is None or cur[0] != "running":
                return None
            db.execute(
                "UPDATE participants SET task_state=?, result_json=? WHERE job_id=? AND node=?",
                ("succeeded" if ok else "failed", result_json if ok else error, job_id, node),
            )
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

    # -- relay -----------------------------------------------------------
    def put_message(self, job_id: str, step: str, sender: str, recipient: str, seq: int, data: bytes) -> None:
        """Store an envelope; idempotent for a retried send of the same address."""
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO relay(job_id, step, sender, recipient, seq, data, created_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (job_id, step, sender, recipient, seq, data, time.time()),
            )

    def get_message(self, job_id: str, step: str, sender: str, recipient: str, seq: int) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM relay WHERE job_id=? AND step=? AND sender=? AND recipient=? AND seq=?",
                (job_id, step, sender, recipient, seq),
            ).fetchone()
        return row[0] if row else None

    def queued_messages(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM relay").fetchone()[0])

    # -- events ----------------------------------------------------------
    def _event(self, db: sqlite3.Connection, job_id: str | None, event: str, detail: str) -> None:
        db.execute(
            "INSERT INTO events(ts, job_id, event, detail) VALUES (?,?,?,?)",
            (time.time(), job_id, event, detail),
        )

    def events(self, job_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            q = "SELECT ts, job_id, event, detail FROM events" + (" WHERE job_id=?" if job_id else "")
            rows = self._db.execute(q + " ORDER BY id", (job_id,) if job_id else ()).fetchall()
        return [{"ts": t, "job_id": j, "event": e, "detail": d} for t, j, e, d in rows]
