"""Per-applicant check budget of a department's figures (eligibility-check).

Each eligibility job tells civil affairs, per applicant, which side of a
threshold a department's figure lies on. One job may ask few rules per figure
(``elig_max_rules_per_figure``), but repeated jobs could still binary-search
one applicant's figure. So a department counts, durably in its own state
directory, how often each of *its own* records has been checked per figure and
period, and refuses the job (naming ``elig_checks_per_applicant``) once a
record in the batch would go over its owner's limit.

What the department learns by counting: nothing new. After the alignment it
already knows which of its own records are in the batch (fresh PSI: the
positions of its matched records; standing alignment likewise); the store only
keeps, per period, figure and record, a count. Records are stored as HMACs
under a random key kept in the same database (no plaintext ID list appears),
no job ids or times beyond the period are kept per record, and applicants the
department has no record of are never counted (it has no figure about them).

A refusal says only that *some* record's budget is spent (not which, not how
many), and a refused job charges nobody. Spending is atomic across concurrent
jobs (one SQLite transaction) and idempotent per job (a retried job is not
charged twice).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from fedgov.errors import PolicyDenied
from fedgov.privatefs import open_private_db, private_dir

__all__ = ["PERIODS", "CheckBudget", "period_label"]

#: periods a budget may run over (policy key ``elig_check_period``)
PERIODS = ("month", "quarter", "year")
SETTING = "elig_checks_per_applicant"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checks (
    period TEXT NOT NULL, dataset TEXT NOT NULL, field TEXT NOT NULL, who BLOB NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (period, dataset, field, who)
);
CREATE TABLE IF NOT EXISTS charged (job_id TEXT NOT NULL, dataset TEXT NOT NULL, PRIMARY KEY (job_id, dataset));
"""


def period_label(period: str, now: float | None = None) -> str:
    """``2026-12`` / ``2026-Q4`` / ``2026`` for the UTC time ``now``."""
    t = time.gmtime(time.time() if now is None else now)
    if period == "month":
        return f"{t.tm_year}-{t.tm_mon:02d}"
    if period == "quarter":
        return f"{t.tm_year}-Q{(t.tm_mon - 1) // 3 + 1}"
    if period == "year":
        return str(t.tm_year)
    raise ValueError(f"unknown period {period!r} (allowed: {', '.join(PERIODS)})")


class CheckBudget:
    """The durable check counts of one node (``<state_dir>/check_budget.sqlite``)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = private_dir(Path(state_dir)) / "check_budget.sqlite"
        db = self._connect()
        try:
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('hmac_key', ?)", (os.urandom(32),))
            self._key = bytes(db.execute("SELECT v FROM meta WHERE k = 'hmac_key'").fetchone()[0])
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        db = open_private_db(self.path)
        db.isolation_level = None
        return db

    def _who(self, record_id: str) -> bytes:
        return hmac.new(self._key, record_id.encode("utf-8"), hashlib.sha256).digest()[:16]

    def spend(
        self,
        dataset: str,
        fields: Sequence[str],
        record_ids: Iterable[str],
        *,
        limit: int,
        period: str,
        job_id: str,
        now: float | None = None,
        source: str = "",
    ) -> None:
        """Charge one check per (record, field) for this job, or refuse the job.

        Raises :class:`PolicyDenied` naming ``elig_checks_per_applicant`` (and
        charges nothing) when any record already had ``limit`` checks of any of
        ``fields`` in the current ``period``. A job already charged here is not
        charged again.
        """
        label = period_label(period, now)
        whos = sorted({self._who(str(r)) for r in record_ids})
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM charged WHERE job_id = ? AND dataset = ?",
                              (job_id, dataset)).fetchone():
                    db.execute("COMMIT")
                    return
                wanted = set(whos)
                for f in fields:
                    spent = db.execute(
                        "SELECT who FROM checks WHERE period = ? AND dataset = ? AND field = ? AND n >= ?",
                        (label, dataset, f, limit),
                    )
                    if any(bytes(w) in wanted for (w,) in spent):
                        src = f"{source}." if source else "disclosure."
                        raise PolicyDenied(
                            f"the check budget of some applicant in this batch is spent: at most "
                            f"{limit} check(s) of '{f}' per applicant per {period} "
                            f"(policy key {src}{SETTING})",
                            where=f"dataset '{dataset}'",
                        )
                db.executemany(
                    "INSERT INTO checks (period, dataset, field, who, n) VALUES (?, ?, ?, ?, 1) "
                    "ON CONFLICT (period, dataset, field, who) DO UPDATE SET n = n + 1",
                    [(label, dataset, f, w) for f in fields for w in whos],
                )
                db.execute("INSERT INTO charged (job_id, dataset) VALUES (?, ?)", (job_id, dataset))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()
