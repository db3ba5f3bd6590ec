"""coordinator.db stays near its live size after relay data is deleted (issue 14, finding 5)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from fedgov.coordinator.store import CoordinatorStore


def _size(path: Path) -> int:
    return sum(os.path.getsize(p) for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def _fill_and_expire(store: CoordinatorStore, job: str, n: int = 200) -> None:
    blob = os.urandom(64 * 1024)
    for i in range(n):
        store.put_message(job, "step", "a", "b", i, blob)
    with store.tx() as db:  # what a job reaching a terminal state does (_set_state)
        db.execute("DELETE FROM relay WHERE job_id=?", (job,))


def test_file_shrinks_after_relay_data_is_deleted(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    store = CoordinatorStore(path)
    try:
        live = _size(path)
        _fill_and_expire(store, "j1")
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        bloated = _size(path)
        assert bloated > 10 * 1024 * 1024  # 12.5 MB of envelopes went through
        freed = store.housekeeping()
        assert freed > 1000
        after = _size(path)
        assert after < live + 1024 * 1024, (live, bloated, after)
        assert store.relay_depth() == (0, 0)
    finally:
        store.close()


def test_an_old_database_is_converted_on_open(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    con = sqlite3.connect(path)  # a database made before housekeeping: auto_vacuum=NONE
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    store = CoordinatorStore(path)
    try:
        assert store._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        _fill_and_expire(store, "j2", n=50)
        store.housekeeping()
        assert _size(path) < 1024 * 1024
    finally:
        store.close()
