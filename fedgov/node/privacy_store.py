"""A node's privacy state: ε budget ledger, release history, released cohort vectors.

One SQLite file per node, ``<state_dir>/privacy.db`` (WAL, ``synchronous=FULL``),
implements the persistence hooks of :mod:`fedgov.protocols.he_stats`
(:class:`~fedgov.protocols.he_stats.BudgetStore`,
:class:`~fedgov.protocols.he_stats.HistoryStore`) and the cohort holder's
auditor history, so spent budget, earlier answers and released cohorts
survive node restarts and apply across jobs.

The budget is **one per dataset and period**, shared by every requester and
every field (``dp_budget``: dataset, period, ε, job, requester). Its *limit*
is the owner's: ``policy.toml`` ``stats_budget_epsilon`` /
``stats_budget_period`` (:mod:`fedgov.params.he_stats`), never the
requester's. Charging is atomic: :meth:`SqliteBudgetStore.add` re-sums the
ledger inside an ``IMMEDIATE`` transaction and refuses (``PolicyDenied``)
when the limit would be exceeded, so two concurrent jobs cannot both spend
the last ε.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from fedgov.errors import PolicyDenied

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dp_budget (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL, period TEXT NOT NULL, job_id TEXT NOT NULL, requester TEXT NOT NULL,
    epsilon REAL NOT NULL, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dp_budget_key ON dp_budget (dataset, period);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    requester TEXT NOT NULL, scope TEXT NOT NULL, record TEXT NOT NULL, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_key ON history (requester, scope);
CREATE TABLE IF NOT EXISTS released_cohorts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL, job_id TEXT NOT NULL, members TEXT NOT NULL, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS released_cohorts_key ON released_cohorts (scope);
"""


def member_id(normalised_id: str) -> str:
    """How a released cohort's member is stored: a SHA-256 prefix, not the ID itself."""
    return hashlib.sha256(normalised_id.encode()).hexdigest()[:24]


class PrivacyStore:
    """Handle on ``<state_dir>/privacy.db``; thread-safe (one connection per call)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / "privacy.db"
        self._lock = threading.Lock()
        with contextlib.closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        return db

    def budget(self) -> SqliteBudgetStore:
        """A :class:`~fedgov.protocols.he_stats.BudgetStore` over this file."""
        return SqliteBudgetStore(self)

    def history(self) -> SqliteHistoryStore:
        """A :class:`HistoryStore` over this file."""
        return SqliteHistoryStore(self)

    # raw operations ----------------------------------------------------------
    def spent(self, dataset: str, period: str) -> float:
        with contextlib.closing(self._connect()) as db:
            row = db.execute("SELECT COALESCE(SUM(epsilon), 0) FROM dp_budget WHERE dataset=? AND period=?",
                             (dataset, period)).fetchone()
        return float(row[0])

    def charge(self, dataset: str, period: str, epsilon: float, job_id: str, requester: str,
               limit: float) -> None:
        """Record a spend; refuse atomically (recording nothing) if it would exceed ``limit``."""
        from fedgov.protocols.he_stats import budget_message  # lazy: keeps this module light

        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                (e,) = db.execute("SELECT COALESCE(SUM(epsilon), 0) FROM dp_budget WHERE dataset=? "
                                  "AND period=?", (dataset, period)).fetchone()
                if e + epsilon > limit + 1e-12:
                    db.execute("ROLLBACK")
                    raise PolicyDenied(budget_message(dataset, period, float(e), limit, epsilon),
                                       where="he-stats")
                db.execute("INSERT INTO dp_budget (dataset, period, job_id, requester, epsilon, at) "
                           "VALUES (?,?,?,?,?,?)", (dataset, period, job_id, requester, float(epsilon),
                                                    time.time()))
                db.execute("COMMIT")
            finally:
                db.close()

    def load_history(self, requester: str, scope: str) -> list[dict[str, Any]]:
        with contextlib.closing(self._connect()) as db:
            rows = db.execute("SELECT record FROM history WHERE requester=? AND scope=? ORDER BY id",
                              (requester, scope)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def append_history(self, requester: str, scope: str, records: list[dict[str, Any]]) -> None:
        now = time.time()
        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    "INSERT INTO history (requester, scope, record, at) VALUES (?,?,?,?)",
                    [(requester, scope, json.dumps(r, sort_keys=True), now) for r in records])
                db.execute("COMMIT")
            finally:
                db.close()

    def released_cohorts(self, scope: str) -> list[list[str]]:
        """Member sets (hashed IDs) of every cohort vector released on ``scope`` (auditor history)."""
        with contextlib.closing(self._connect()) as db:
            rows = db.execute("SELECT members FROM released_cohorts WHERE scope=? ORDER BY id",
                              (scope,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def add_released_cohorts(self, scope: str, job_id: str, vectors: list[list[str]]) -> None:
        now = time.time()
        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT INTO released_cohorts (scope, job_id, members, at) VALUES (?,?,?,?)",
                               [(scope, job_id, json.dumps(sorted(v)), now) for v in vectors])
                db.execute("COMMIT")
            finally:
                db.close()


class SqliteBudgetStore:
    """:class:`~fedgov.protocols.he_stats.BudgetStore` on :class:`PrivacyStore`."""

    def __init__(self, store: PrivacyStore) -> None:
        self.store = store

    def spent(self, dataset: str, period: str) -> float:
        return self.store.spent(dataset, period)

    def add(self, dataset: str, period: str, epsilon: float, job_id: str, requester: str,
            limit: float) -> None:
        self.store.charge(dataset, period, epsilon, job_id, requester, limit)


class SqliteHistoryStore:
    """:class:`~fedgov.protocols.he_stats.HistoryStore` on :class:`PrivacyStore`."""

    def __init__(self, store: PrivacyStore) -> None:
        self.store = store

    def load(self, requester: str, scope: str) -> list[dict[str, Any]]:
        return self.store.load_history(requester, scope)

    def append(self, requester: str, scope: str, records: list[dict[str, Any]]) -> None:
        self.store.append_history(requester, scope, records)
