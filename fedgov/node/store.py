"""Node-local state in SQLite: append-only audit log, replay counters, approvals.

The audit log is a hash chain: each row stores ``hash = SHA-256(prev_hash ||
canonical row)``, so a deleted or edited row breaks :meth:`verify_audit` at
that row. It records every payload the node released (envelope digest and
size per relay message, the full JSON of every result report) and every
decision. Replay counters persist so an envelope replayed after a node
restart is still refused.

Identity lifecycle state kept here (h13b): the digest of every manifest this
node has taken for a job (``manifests``: a digest is taken by one job only,
so a replayed signed manifest is refused), the jobs it has started
(``runs``: a job runs at most once here), and the highest key-bundle serial
seen per peer (``peer_bundles``: an older bundle is refused).

Permissions: the state directory is made 0700 and ``node.db`` 0600 (SQLite
creates its ``-wal`` / ``-shm`` files with the database file's mode), also
when they existed before with wider modes.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgov.crypto.envelope import Header, check_sequence
from fedgov.errors import CryptoError
from fedgov.privatefs import open_private_db

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
CREATE TABLE IF NOT EXISTS pending_briefs (
    job_id TEXT PRIMARY KEY,
    requester_cert BLOB NOT NULL,
    brief TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS approved (
    job_id TEXT PRIMARY KEY,
    manifest_digest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS manifests (
    digest TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    not_after REAL NOT NULL,
    first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    job_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS peer_bundles (
    node TEXT PRIMARY KEY,
    serial INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
"""


class SupersededBundle(CryptoError):
    """A peer's key bundle is older than one this node has already seen (or conflicts with it)."""


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
        self._db = open_private_db(Path(state_dir) / "node.db")
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

    def set_brief(self, job_id: str, requester_cert: bytes, brief_json: str) -> None:
        """Keep the approver's brief (fedgov.node.brief) and the requester's certificate of a pending job."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO pending_briefs(job_id, requester_cert, brief) VALUES (?,?,?)",
                (job_id, requester_cert, brief_json),
            )

    def brief(self, job_id: str) -> tuple[bytes, str] | None:
        """(requester certificate PEM, brief JSON) of a pending job, if the node recorded them."""
        with self._lock:
            row = self._db.execute(
                "SELECT requester_cert, brief FROM pending_briefs WHERE job_id=?", (job_id,)
            ).fetchone()
        return (bytes(row[0]), str(row[1])) if row else None

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

    # -- identity lifecycle (replay-proof manifests, single runs, bundle freshness) --
    def claim_manifest(self, digest: str, job_id: str, nonce: str, not_after: float) -> str:
        """Record that ``digest`` is job ``job_id``'s manifest; return the job that owns it.

        The first job to claim a digest owns it for good (the row outlives the
        manifest's window by a day, after which the window alone refuses it);
        a different returned job id means the manifest is being replayed.
        """
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM manifests WHERE not_after < ?", (now - 86400,))
                self._db.execute(
                    "INSERT OR IGNORE INTO manifests(digest, job_id, nonce, not_after, first_seen) "
                    "VALUES (?,?,?,?,?)",
                    (digest, job_id, nonce, not_after, now),
                )
                row = self._db.execute("SELECT job_id FROM manifests WHERE digest=?", (digest,)).fetchone()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return str(row[0])

    def claim_run(self, job_id: str) -> bool:
        """True the first time ``job_id`` starts here; False if it already ran (or runs)."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO runs(job_id, started_at) VALUES (?,?)", (job_id, time.time())
            )
            return cur.rowcount == 1

    def note_bundle(self, node: str, serial: int, bundle_sha256: str) -> None:
        """Remember ``node``'s bundle serial; raise SupersededBundle if an older one is offered.

        A higher serial replaces the stored one (the peer rotated or renewed
        its keys); the same serial must come with the same bundle bytes.
        """
        with self._lock:
            row = self._db.execute("SELECT serial, sha256 FROM peer_bundles WHERE node=?", (node,)).fetchone()
            if row is not None:
                seen, digest = int(row[0]), str(row[1])
                if serial < seen:
                    raise SupersededBundle(
                        f"the coordinator served a superseded key bundle of {node} (serial {serial} "
                        f"is older than serial {seen} seen before)",
                        where=f"key bundle of {node}",
                    )
                if serial == seen and digest != bundle_sha256:
                    raise SupersededBundle(
                        f"two different key bundles of {node} carry serial {serial}",
                        where=f"key bundle of {node}",
                    )
                if serial == seen:
                    return
            self._db.execute(
                "INSERT INTO peer_bundles(node, serial, sha256) VALUES (?,?,?) "
                "ON CONFLICT(node) DO UPDATE SET serial=excluded.serial, sha256=excluded.sha256",
                (node, serial, bundle_sha256),
            )
