"""The coordinator's per-job events (the console's timeline, ``fedgov job follow/status``): recorded with
their department and time, returned for one job only, and readable from a database made before the
``node`` column existed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fedgov.client import JobEvent
from fedgov.coordinator.store import CoordinatorStore


def _job(store: CoordinatorStore, nodes: list[str]) -> str:
    return store.create_job(kind="cohort-count", purpose="p", requester="ana", manifest="m", signature=b"",
                            requester_cert=b"", nodes=nodes)


def test_events_are_per_job_in_order_with_their_department(tmp_path: Path) -> None:
    store = CoordinatorStore(tmp_path / "coordinator.db")
    try:
        store.register_node("tax", b"bundle")
        a = _job(store, ["tax", "health"])
        b = _job(store, ["tax"])
        assert [x for x, _ in store.take_tasks("tax")] == ["evaluate", "evaluate"]
        store.record_decision(a, "tax", True, "within policy", ["ann", "bob"])
        store.record_decision(b, "tax", False, "purpose not allowed", [])
        store.take_tasks("health")
        store.record_decision(a, "health", True, "", [])
        store.take_tasks("tax")
        store.take_tasks("health")
        store.record_report(a, "tax", True, "{}", "")
        store.record_report(a, "health", False, "", "disk full")
        ev_a = store.job_events(a)
        got = [(e.event, e.node) for e in ev_a]
        assert got == [
            ("job-submitted", ""), ("node-received", "tax"), ("node-approved", "tax"), ("node-received", "health"),
            ("node-approved", "health"), ("job-running", ""), ("task-started", "tax"), ("task-started", "health"),
            ("task-succeeded", "tax"), ("task-failed", "health"), ("job-failed", ""),
        ], got
        assert [e.ts for e in ev_a] == sorted(e.ts for e in ev_a)
        assert ev_a[2].detail == "within policy (approvers: ann, bob)"
        assert ev_a[-1].detail == "health: disk full"
        ev_b = store.job_events(b)
        assert [(e.event, e.node) for e in ev_b] == [("job-submitted", ""), ("node-received", "tax"),
                                                      ("node-rejected", "tax"), ("job-rejected", "")]
        assert store.job_events("job-unknown") == []
        assert all(e.event != "node-registered" for e in ev_a + ev_b)  # federation events are not a job's
        assert JobEvent(ev_a[2].ts, ev_a[2].event, ev_a[2].node, ev_a[2].detail).text == \
            "tax approved: within policy (approvers: ann, bob)"
        assert JobEvent(1.0, "job-succeeded").text == "job succeeded"
    finally:
        store.close()


def test_a_database_from_before_the_node_column_opens(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, job_id TEXT, "
                "event TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '')")
    con.execute("INSERT INTO events(ts, job_id, event, detail) VALUES (1.5, 'job-old', 'job-submitted', 'x')")
    con.commit()
    con.close()
    store = CoordinatorStore(path)
    try:
        old = store.job_events("job-old")
        assert [(e.ts, e.event, e.node, e.detail) for e in old] == [(1.5, "job-submitted", "", "x")]
        new = _job(store, ["tax"])
        assert [e.event for e in store.job_events(new)] == ["job-submitted"]
    finally:
        store.close()
