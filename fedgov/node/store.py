"""Node-local state in SQLite: append-only audit log, replay counters, approvals.

The audit log is a hash chain: each row stores ``hash = SHA-256(prev_hash ||
canonical row)``, so a deleted or edited row breaks :meth:`verify_audit` at
that row. It records every payload the node released (envelope digest and
size per relay message, the full JSON of every result report) and every
decision. Replay counters persist so an envelope replayed after a node
restart is still refused.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgov.crypto.envelope import Header, check_sequence

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    job_id TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seq (
    job_id TEXT NOT NULL, sender TEXT NOT NULL, step TEXT NOT NULL, next INTEGER NOT NULL,
    PRIMARY KEY (job_id, sender, step)
);
CREATE TABLE IF NOT EXISTS pending (
    job_id TEXT PRIMARY KEY,
    manifest TEXT NOT NULL,
    requester TEXT NOT NULL,
    required INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS approvals (
    job_id TEXT NOT NULL,
    approver TEXT NOT NULL,
    approve INTEGER NOT NULL,
    reason TEXT NOT NULL,
    cert_pem BLOB NOT NULL,
    signature BLOB NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (job_id, approver)
);
CREATE TABLE IF NOT EXISTS approved (
    job_id TEXT PRIMARY KEY,
    manifest_digest TEXT NOT NULL
);
"""

GENESIS = "0" * 64


@dataclass(frozen=True)
class PendingJob:
    job_id: str
    manifest: str
    requester: str
    required: int
    status: str
    received_at: float


class NodeStore:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(state_dir / "node.db"), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- audit -------------------------------------------------------------
    @staticmethod
    def _row_hash(prev: str, ts: float, job_id: str, action: str, detail: str) -> str:
        body = json.dumps([prev, ts, job_id, action, detail], separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()

    def audit(self, job_id: str, action: str, **detail: Any) -> None:
        """Append one entry; never updates or deletes."""
        text = json.dumps(detail, sort_keys=True, separators=(",", ":"))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
                prev = row[0] if row else GENESIS
                ts = time.time()
                h = self._row_hash(prev, ts, job_id, action, text)
                self._db.execute(
                    "INSERT INTO audit(ts, job_id, action, detail, prev, hash) VALUES (?,?,?,?,?,?)",
                    (ts, job_id, action, text, prev, h),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def audit_entries(self, job_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            q = "SELECT id, ts, job_id, action, detail, prev, hash FROM audit"
            rows = self._db.execute(
                q + (" WHERE job_id=?" if job_id else "") + " ORDER BY id", (job_id,) if job_id else ()
            ).fetchall()
        return [
            {"id": i, "ts": ts, "job_id": j, "action": a, "detail": json.loads(d), "prev": p, "hash": h}
            for i, ts, j, a, d, p, h in rows
        ]

    def verify_audit(self) -> int | None:
        """Return the id of the first broken entry, or None if the chain holds."""
        prev = GENESIS
        with self._lock:
            rows = self._db.execute(
                "SELECT id, ts, job_id, action, detail, prev, hash FROM audit ORDER BY id"
            ).fetchall()
        for i, ts, j, a, d, p, h in rows:
            if p != prev or self._row_hash(p, ts, j, a, d) != h:
                return int(i)
            prev = h
        return None

    # -- replay protection -------------------------------------------------
    def accept(self, header: Header) -> None:
        """Persistent :class:`~fedgov.crypto.envelope.SequenceTracker`."""
        with self._lock:
            row = self._db.execute(
                "SELECT next FROM seq WHERE job_id=? AND sender=? AND step=?",
                (header.job_id, header.sender, header.step),
            ).fetchone()
            expected = row[0] if row else 0
            check_sequence(expected, header)
            self._db.execute(
                "INSERT INTO seq(job_id, sender, step, next) VALUES (?,?,?,?) "
                "ON CONFLICT(job_id, sender, step) DO UPDATE SET next=excluded.next",
                (header.job_id, header.sender, header.step, header.seq + 1),
            )

    # -- approvals ---------------------------------------------------------
    def add_pending(self, job_id: str, manifest: str, requester: str, required: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO pending(job_id, manifest, requester, required, received_at) "
                "VALUES (?,?,?,?,?)",
                (job_id, manifest, requester, required, time.time()),
            )

    def pending(self, status: str | None = "pending") -> list[PendingJob]:
        with self._lock:
            q = "SELECT job_id, manifest, requester, required, status, received_at FROM pending"
            rows = self._db.execute(
                q + (" WHERE status=?" if status else "") + " ORDER BY received_at",
                (status,) if status else (),
            ).fetchall()
        return [PendingJob(*r) for r in rows]

    def pending_job(self, job_id: str) -> PendingJob | None:
        rows = [p for p in self.pending(None) if p.job_id == job_id]
        return rows[0] if rows else None

    def set_pending_status(self, job_id: str, status: str) -> None:
        with self._lock:
            self._db.execute("UPDATE pending SET status=? WHERE job_id=?", (status, job_id))

    def add_approval(
        self, job_id: str, approver: str, approve: bool, reason: str, cert_pem: bytes, signature: bytes
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO approvals(job_id, approver, approve, reason, cert_pem, signature, ts) "
                "VALUES (?,?,?,?,?,?,?)",
                (job_id, approver, int(approve), reason, cert_pem, signature, time.time()),
            )

    def approvals(self, job_id: str) -> list[tuple[str, bool, str, bytes, bytes]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT approver, approve, reason, cert_pem, signature FROM approvals WHERE job_id=? ORDER BY ts",
                (job_id,),
            ).fetchall()
        return [(a, bool(ok), r, c, s) for a, ok, r, c, s in rows]

    def mark_approved(self, job_id: str, manifest_digest: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO approved(job_id, manifest_digest) VALUES (?,?)",
                (job_id, manifest_digest),
            )

    def approved_digest(self, job_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT manifest_digest FROM approved WHERE job_id=?", (job_id,)
            ).fetchone()
        return row[0] if row else None
