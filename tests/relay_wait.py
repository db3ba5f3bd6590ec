"""Reading a federation's durable relay from outside (read-only), for stack tests that act mid-job.

One place for "wait until the relay holds N envelopes of this job":
``tests/test_restart_stack.py`` kills the coordinator there,
``tests/test_hosts.py`` takes a host's link down there.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Protocol

TERMINAL = ("succeeded", "failed", "rejected", "cancelled")


class _HasWorkdir(Protocol):
    workdir: Path


def coordinator_db(fed: _HasWorkdir) -> Path:
    return fed.workdir / "state" / "coordinator" / "coordinator.db"


def relay_state(fed: _HasWorkdir, job_id: str) -> tuple[str, int]:
    """(job state, envelopes the relay holds for the job), read from coordinator.db (read-only)."""
    con = sqlite3.connect(f"file:{coordinator_db(fed)}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute("SELECT state FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        n = con.execute("SELECT COUNT(*) FROM relay WHERE job_id=?", (job_id,)).fetchone()[0]
    finally:
        con.close()
    return (row[0] if row else "unknown"), int(n)


def wait_for_relay(fed: _HasWorkdir, job_id: str, at_least: int, *, timeout: float = 300,
                   poll: float = 0.01, why: str = "") -> int:
    """Block until the relay holds ``at_least`` envelopes of ``job_id``; returns the count seen.

    Fails (AssertionError) if the job reaches a terminal state first — the caller wanted to act
    mid-job — or after ``timeout`` seconds. ``why`` names the caller's purpose in the message.
    """
    deadline = time.monotonic() + timeout
    while True:
        state, n = relay_state(fed, job_id)
        assert state not in TERMINAL, (
            f"job {job_id} ended ({state}) before the relay held {at_least} envelopes{' ' + why if why else ''}"
        )
        if n >= at_least:
            return n
        assert time.monotonic() < deadline, f"job {job_id}: relay still at {n} of {at_least} after {timeout:g} s"
        time.sleep(poll)
