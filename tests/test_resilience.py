"""Crashes: coordinator SIGKILL + restart, a node vanishing mid-job. Real processes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from fedgov.runner import LocalFederation
from tests.fakenode import FakeNode
from tests.test_federation import STEP, build_world, manifest

pytestmark = pytest.mark.slow


def _running(fed: LocalFederation, job_id: str, timeout: float = 20) -> None:
    with fed.client() as c:
        deadline = time.monotonic() + timeout
        while c.status(job_id).state != "running":
            assert time.monotonic() < deadline, c.status(job_id)
            time.sleep(0.1)


def test_coordinator_sigkill_keeps_nodes_jobs_and_queued_messages(tmp_path: Path) -> None:
    fed = LocalFederation(
        tmp_path / "federation",
        build_world(tmp_path)[:2],
        extra_kits=[("mallory", "node"), ("mallory2", "node")],
        node_timeout=30,
    )
    with fed:
        m1 = FakeNode(fed.kits / "mallory", fed.address)
        m2 = FakeNode(fed.kits / "mallory2", fed.address)
        m1.register(["x"])
        m2.register(["x"])
        with fed.client() as c:
            # a running job between the two fake nodes, with a message queued in the relay
            job = c.submit(manifest([("mallory", ["x"], ""), ("mallory2", ["x"], "")]))
            pending = c.submit(manifest([("alpha", ["y"], ""), ("mallory", ["x"], "")]))
        for m in (m1, m2):
            deadline = time.monotonic() + 10
            while job.job_id not in m.approve_all({job.job_id}):
                assert time.monotonic() < deadline
        _running(fed, job.job_id)
        m1.publish_job_key(job.job_id)  # as a node does when its part starts: envelopes are sealed to it
        blob = m2.envelope(job.job_id, STEP, "mallory", 0, b'{"count": 42}')
        m2.post(job.job_id, STEP, "mallory", 0, blob)

        fed.kill("coordinator", signal.SIGKILL)
        fed.restart_coordinator_on_same_port()

        with fed.client("admin") as admin:
            names = {n["name"] for n in admin.nodes()}
            assert {"alpha", "beta", "mallory", "mallory2"} <= names
            assert admin.status(job.job_id).state == "running"
            assert admin.status(pending.job_id).state == "submitted"  # still awaiting mallory
        got = None
        deadline = time.monotonic() + 20
        while got is None:  # the fake node's channel reconnects too
            assert time.monotonic() < deadline
            try:
                got = m1.fetch(job.job_id, STEP, "mallory2", 0, wait=2)
            except Exception:
                time.sleep(0.3)
        assert got == blob
        assert m1.open(job.job_id, got) == b'{"count": 42}'
        # the real nodes reconnected by themselves: a fresh job runs through them
        with fed.client() as c:
            fresh = c.submit(manifest([("alpha", ["y"], ""), ("beta", ["x1"], "")]))
            st = c.wait(fresh.job_id, timeout=60)
            assert st.state == "succeeded", st.reason
        m1.close()
        m2.close()


def test_node_vanishing_mid_job_fails_the_job_with_a_reason(tmp_path: Path) -> None:
    fed = LocalFederation(
        tmp_path / "federation", build_world(tmp_path)[:2], extra_kits=[("mallory", "node")], node_timeout=3
    )
    with fed:
        mallory = FakeNode(fed.kits / "mallory", fed.address)
        mallory.register(["x"])
        mallory.heartbeat(0.3)
        with fed.client() as c:
            # alpha aggregates and waits for mallory, which approves and then never sends
            job = c.submit(manifest([("alpha", ["y"], ""), ("mallory", ["x"], "")]))
        deadline = time.monotonic() + 10
        while job.job_id not in mallory.approve_all():
            assert time.monotonic() < deadline
        _running(fed, job.job_id)
        fed.kill("alpha", signal.SIGKILL)  # the waiting node disappears
        with fed.client() as c:
            st = c.wait(job.job_id, timeout=60)
        assert st.state == "failed"
        # the coordinator's watchdog ended it (not a node's own receive timeout, 600 s), and
        # named the silent node — not mallory, which kept its heartbeat
        assert "node 'alpha' stopped responding" in st.reason, st.reason
        assert "mallory" not in st.reason
        mallory.close()
    # no process outlives the federation
    for proc in fed.procs.values():
        assert proc.popen.poll() is not None


def test_reregistration_breaks_jobs_only_for_a_new_process(tmp_path: Path) -> None:
    """Restart attribution, at the store: the same session re-registering (coordinator restart,
    dropped link) keeps its running jobs; a new or missing session is a restarted process."""
    from fedgov.coordinator.store import CoordinatorStore

    store = CoordinatorStore(tmp_path / "coordinator.db")
    try:
        assert store.register_node("alpha", b"bundle", session="s1") == []
        now = time.time()
        with store.tx() as db:
            for job in ("job-a", "job-b", "job-c"):
                db.execute(
                    "INSERT INTO jobs(job_id, kind, purpose, requester, manifest, signature, requester_cert, "
                    "state, created_at, updated_at) VALUES (?, 'psi', 't', 'analyst', '', x'', x'', "
                    "'running', ?, ?)", (job, now, now))
                db.execute("INSERT INTO participants(job_id, node, position, decision, task_state) "
                           "VALUES (?, 'alpha', 0, 'approved', 'delivered')", (job,))
        assert store.register_node("alpha", b"bundle", session="s1") == []  # same process reconnecting
        assert sorted(store.register_node("alpha", b"bundle", session="s2")) == ["job-a", "job-b", "job-c"]
        assert sorted(store.register_node("alpha", b"bundle", session=None)) == ["job-a", "job-b", "job-c"]
    finally:
        store.close()
