"""The data owner's privacy state: ε budget ledger and release history.

One SQLite file per node, ``<state_dir>/privacy.db`` (WAL, ``synchronous=FULL``),
implements the persistence hooks of :mod:`fedgov.protocols.he_stats`
(:class:`~fedgov.protocols.he_stats.BudgetStore` and
:class:`~fedgov.protocols.he_stats.HistoryStore`), so a requester's spent
budget and earlier answers survive node restarts and apply across jobs.

The budget *limits* are the owner's, never the requester's: they come from an
optional ``<state_dir>/privacy.toml``::

    [dp]
    epsilon_limit = 3.0     # per requester and scope (dataset.field); default 3.0
    delta_limit = 1e-5      # default 0 (Gaussian noise then refused)

Charging is atomic: :meth:`SqliteBudgetStore.add` re-sums the ledger inside
an ``IMMEDIATE`` transaction and refuses (``PolicyDenied``) when the limit
would be exceeded, so two concurrent jobs cannot both spend the last ε.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from fedgov.errors import ConfigError, PolicyDenied
from fedgov.tomlutil import check_keys, get_table, load_toml

DEFAULT_EPSILON_LIMIT = 3.0
DEFAULT_DELTA_LIMIT = 0.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    requester TEXT NOT NULL, scope TEXT NOT NULL, job_id TEXT NOT NULL,
    epsilon REAL NOT NULL, delta REAL NOT NULL, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_key ON budget (requester, scope);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    requester TEXT NOT NULL, scope TEXT NOT NULL, record TEXT NOT NULL, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_key ON history (requester, scope);
"""


def load_limits(state_dir: Path) -> tuple[float, float]:
    """The owner's (ε, δ) budget limits per requester and scope."""
    path = Path(state_dir) / "privacy.toml"
    if not path.exists():
        return DEFAULT_EPSILON_LIMIT, DEFAULT_DELTA_LIMIT
    doc = load_toml(path)
    check_keys(doc, ("dp",), str(path))
    dp = get_table(doc, "dp", str(path))
    w = f"{path}: dp"
    check_keys(dp, ("epsilon_limit", "delta_limit"), w)
    out = []
    for key, default in (("epsilon_limit", DEFAULT_EPSILON_LIMIT), ("delta_limit", DEFAULT_DELTA_LIMIT)):
        v = dp.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise ConfigError(f"'{key}' must be a number >= 0, got {v!r}", where=w)
        out.append(float(v))
    if out[0] <= 0:
        raise ConfigError("'epsilon_limit' must be > 0", where=w)
    return out[0], out[1]


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

    def limits(self) -> tuple[float, float]:
        """(ε, δ) limits from ``privacy.toml`` (defaults when absent)."""
        return load_limits(self.state_dir)

    def budget(self, epsilon_limit: float | None = None, delta_limit: float | None = None) -> SqliteBudgetStore:
        """A :class:`BudgetStore` enforcing the given (default: configured) limits atomically."""
        e, d = self.limits()
        return SqliteBudgetStore(self, e if epsilon_limit is None else epsilon_limit,
                                 d if delta_limit is None else delta_limit)

    def history(self) -> SqliteHistoryStore:
        """A :class:`HistoryStore` over this file."""
        return SqliteHistoryStore(self)

    # raw operations ----------------------------------------------------------
    def spent(self, requester: str, scope: str) -> tuple[float, float]:
        with contextlib.closing(self._connect()) as db:
            row = db.execute(
                "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM budget "
                "WHERE requester=? AND scope=?", (requester, scope)).fetchone()
        return float(row[0]), float(row[1])

    def charge(self, requester: str, scope: str, epsilon: float, delta: float, job_id: str,
               limits: tuple[float, float] | None) -> None:
        """Record a spend; with ``limits``, refuse atomically if it would exceed them."""
        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                if limits is not None:
                    e, d = db.execute(
                        "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM budget "
                        "WHERE requester=? AND scope=?", (requester, scope)).fetchone()
                    tol = 1e-12
                    if e + epsilon > limits[0] + tol or d + delta > limits[1] + tol:
                        db.execute("ROLLBACK")
                        raise PolicyDenied(
                            f"privacy budget exhausted: requester '{requester}' has spent ε={e:g} "
                            f"(δ={d:g}) of ε={limits[0]:g} (δ={limits[1]:g}) on {scope}; "
                            f"this query needs ε={epsilon:g} (δ={delta:g})", where="he-stats")
                db.execute(
                    "INSERT INTO budget (requester, scope, job_id, epsilon, delta, at) VALUES (?,?,?,?,?,?)",
                    (requester, scope, job_id, float(epsilon), float(delta), time.time()))
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


class SqliteBudgetStore:
    """:class:`~fedgov.protocols.he_stats.BudgetStore` on :class:`PrivacyStore`."""

    def __init__(self, store: PrivacyStore, epsilon_limit: float, delta_limit: float) -> None:
        self.store = store
        self.epsilon_limit = epsilon_limit
        self.delta_limit = delta_limit

    def spent(self, requester: str, scope: str) -> tuple[float, float]:
        return self.store.spent(requester, scope)

    def add(self, requester: str, scope: str, epsilon: float, delta: float, job_id: str) -> None:
        self.store.charge(requester, scope, epsilon, delta, job_id,
                          (self.epsilon_limit, self.delta_limit))


class SqliteHistoryStore:
    """:class:`~fedgov.protocols.he_stats.HistoryStore` on :class:`PrivacyStore`."""

    def __init__(self, store: PrivacyStore) -> None:
        self.store = store

    def load(self, requester: str, scope: str) -> list[dict[str, Any]]:
        return self.store.load_history(requester, scope)

    def append(self, requester: str, scope: str, records: list[dict[str, Any]]) -> None:
        self.store.append_history(requester, scope, records)
