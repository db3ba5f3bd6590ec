"""Operator views through real processes (issue 14, finding 2): `fedgov status`, `fedgov job
follow`, `--json`, an empty `job list`, and the coordinator's loopback Prometheus endpoint."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fedgov.runner import LocalFederation
from tests.test_federation import PURPOSE, build_world, manifest

pytestmark = pytest.mark.slow

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("status")
    f = LocalFederation(
        tmp / "federation",
        build_world(tmp),
        approvers={"gamma": ["ann", "bob"]},
        extra_kits=[("other_analyst", "analyst")],
        metrics_listen="127.0.0.1:0",
    )
    with f:
        yield f


def fedgov(fed: LocalFederation, who: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FEDGOV_KIT=str(fed.kits / who), FEDGOV_COORDINATOR=fed.address)
    return subprocess.run([sys.executable, "-m", "fedgov", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _wait(pred, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_empty_job_list_says_so(fed: LocalFederation) -> None:
    out = fedgov(fed, "other_analyst", "job", "list")
    assert out.returncode == 0 and out.stdout.strip() == "no jobs", out.stderr
    out = fedgov(fed, "other_analyst", "job", "list", "--json")
    assert json.loads(out.stdout) == []


def test_status_shows_nodes_pending_approvals_and_ledger(fed: LocalFederation) -> None:
    with fed.client() as c:
        job = c.submit(manifest([("alpha", ["y"], ""), ("gamma", ["x2"], "")]))  # gamma: two approvers
    out = fedgov(fed, "admin", "status", "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    nodes = {n["name"]: n for n in st["nodes"]}
    assert set(nodes) == {"alpha", "beta", "gamma"} and all(n["online"] for n in nodes.values())
    for n in nodes.values():
        assert ISO.match(n["last_contact"]) and ISO.match(n["certificate_expires"]), n
        assert n["seconds_since_contact"] < 30
    assert st["pending_approvals"] == {"gamma": [job.job_id]}
    assert st["jobs"]["by_state"] == {"submitted": 1}
    assert st["ledger"]["size"] > 0 and len(st["ledger"]["root"]) == 64
    assert ISO.match(st["ledger"]["coordinator_certificate_expires"])
    text = fedgov(fed, "admin", "status").stdout
    assert "gamma" in text and job.job_id in text and "pending approvals:" in text and "ledger:" in text
    # another analyst sees nodes and ledger, but not someone else's job or its approvals
    other = json.loads(fedgov(fed, "other_analyst", "status", "--json").stdout)
    assert other["pending_approvals"] == {} and other["jobs"]["by_state"] == {}
    assert len(other["nodes"]) == 3
    with fed.client() as c:
        c.cancel(job.job_id)


def test_status_shows_witness_state(fed: LocalFederation) -> None:
    # witnesses cosign as they run; wait for one, then check status names it with its lag
    _wait(lambda: json.loads(fedgov(fed, "admin", "status", "--json").stdout)["ledger"]["witnesses"],
          "a witness cosignature")
    st = json.loads(fedgov(fed, "admin", "status", "--json").stdout)
    for w in st["ledger"]["witnesses"]:
        assert w["lag"] >= 0 and ISO.match(w["cosigned_at"])


def test_job_follow_streams_changes_until_done(fed: LocalFederation) -> None:
    with fed.client() as c:
        job = c.submit(manifest([("alpha", ["y"], ""), ("beta", ["x1"], "")]))
    out = fedgov(fed, "analyst", "job", "follow", job.job_id, "--json")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert events[-1]["done"] is True and events[-1]["state"] == "succeeded"
    assert all(ISO.match(e["time"]) for e in events)
    assert any("alpha" in ch for e in events for ch in e["changes"])
    text = fedgov(fed, "analyst", "job", "follow", job.job_id)
    assert text.returncode == 0 and "job succeeded" in text.stdout
    # a job that does not succeed: follow exits 2 with the reason
    with fed.client() as c:
        job2 = c.submit(manifest([("alpha", ["y"], ""), ("gamma", ["x2"], "")]))
        c.cancel(job2.job_id)
    bad = fedgov(fed, "analyst", "job", "follow", job2.job_id)
    assert bad.returncode == 2 and "cancelled" in bad.stderr and "Traceback" not in bad.stderr
    shown = fedgov(fed, "analyst", "job", "status", job.job_id)
    assert re.search(r"submitted \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ by analyst", shown.stdout), shown.stdout
    listed = fedgov(fed, "analyst", "job", "list")
    assert job.job_id in listed.stdout and re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listed.stdout)


def test_the_catalogue_shows_the_purposes_each_policy_allows(fed: LocalFederation) -> None:
    from fedgov.policy import load_policy

    out = fedgov(fed, "other_analyst", "catalog", "--json")
    assert out.returncode == 0, out.stderr
    nodes = {n["name"]: n for n in json.loads(out.stdout)}
    for spec in fed.nodes:  # each node published what its own policy.toml allows, as {purpose: [kinds]}
        want = {p: list(k) for p, k in load_policy(spec.policy).datasets["data"].allowed_purposes().items()}
        got = {d["name"]: d for d in nodes[spec.name]["datasets"]}["data"]["purposes"]
        assert want and got == want, (spec.name, got, want)
    text = fedgov(fed, "other_analyst", "catalog").stdout
    assert f"purposes its policy allows: {PURPOSE} (cohort-count)" in text, text


def test_job_status_and_follow_show_the_coordinators_events(fed: LocalFederation) -> None:
    with fed.client() as c:
        job = c.submit(manifest([("alpha", ["y"], ""), ("beta", ["x1"], "")]))
        other = c.submit(manifest([("alpha", ["y"], "")]))
        assert c.wait(job.job_id, timeout=60).state == "succeeded"
        c.wait(other.job_id, timeout=60)
        st = c.status(job.job_id)
    out = fedgov(fed, "analyst", "job", "status", job.job_id, "--json")
    assert out.returncode == 0, out.stderr
    events = json.loads(out.stdout)["events"]
    assert all(ISO.match(e["time"]) for e in events)
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts) and st.created_at - 1 <= ts[0] and ts[-1] <= st.updated_at + 1
    assert [e["event"] for e in events if not e["node"]] == ["job-submitted", "job-running", "job-succeeded"]
    for node in ("alpha", "beta"):  # each department's own steps, in order; nothing of the other job
        assert [e["event"] for e in events if e["node"] == node] == [
            "node-received", "node-approved", "task-started", "task-succeeded"], events
    text = fedgov(fed, "analyst", "job", "status", job.job_id).stdout
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ beta finished its part", text), text
    follow = fedgov(fed, "analyst", "job", "follow", job.job_id)
    assert follow.returncode == 0 and [line.split(" ", 2)[2] for line in follow.stdout.splitlines()] == [
        e["text"] for e in events]
    assert [line.split(" ", 1)[0] for line in follow.stdout.splitlines()] == [e["time"] for e in events]
    # the same readers as the rest of the status: another analyst gets no events (nor the job)
    denied = fedgov(fed, "other_analyst", "job", "status", job.job_id, "--json")
    assert denied.returncode != 0 and "may not see" in denied.stderr and "job-submitted" not in denied.stdout
    assert json.loads(fedgov(fed, "auditor", "job", "status", job.job_id, "--json").stdout)["events"] == events


def _metrics(fed: LocalFederation) -> str:
    addr = (fed.workdir / "state" / "coordinator" / "metrics.addr").read_text().strip()
    assert addr.startswith("127.0.0.1:")
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        return r.read().decode()


def test_metrics_endpoint_on_loopback(fed: LocalFederation) -> None:
    with fed.client() as c:
        job = c.submit(manifest([("alpha", ["y"], ""), ("beta", ["x1"], "")]))
        assert c.wait(job.job_id, timeout=60).state == "succeeded"
    text = _metrics(fed)
    succeeded = re.search(r'^fedgov_jobs\{state="succeeded"\} (\S+)$', text, re.M)
    assert succeeded and float(succeeded[1]) >= 1
    assert re.search(r"^fedgov_relay_queue_messages \S+$", text, re.M)
    moved = re.search(r'^fedgov_relay_bytes_total\{direction="in"\} (\S+)$', text, re.M)
    assert moved and float(moved[1]) > 0
    assert re.search(r"^fedgov_ledger_entries \S+$", text, re.M)
    assert "fedgov_witness_lag_entries" in text


def test_metrics_listen_must_be_loopback() -> None:
    from fedgov.coordinator.prom import check_listen
    from fedgov.errors import ConfigError

    for ok in ("127.0.0.1:9464", "127.0.0.2:0", "[::1]:9464", "localhost:9464"):
        check_listen(ok, "t")
    for bad in ("0.0.0.0:9464", "10.1.2.3:9464", "[::]:9464", "metrics.example.gov:9464", "9464"):
        with pytest.raises(ConfigError):
            check_listen(bad, "t")


def test_metrics_on_a_network_address_is_refused(tmp_path: Path, fed: LocalFederation) -> None:
    cfg = tmp_path / "coordinator.toml"
    cfg.write_text(
        "[coordinator]\nlisten = \"127.0.0.1:0\"\n"
        f"kit = {json.dumps(str(fed.kits / 'coordinator'))}\n"
        f"state_dir = {json.dumps(str(tmp_path / 'state'))}\n"
        'metrics_listen = "0.0.0.0:0"\n'
    )
    proc = subprocess.Popen([sys.executable, "-m", "fedgov", "coordinator", "start", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it started: the endpoint is on the network
        proc.kill()
        proc.communicate()
        raise AssertionError("the coordinator started with metrics on 0.0.0.0") from None
    assert proc.returncode == 2 and "not a loopback address" in err and "Traceback" not in err


def test_running_coordinator_returns_free_pages(fed: LocalFederation) -> None:
    """Finding 5 through the real process: the watchdog's housekeeping empties the free list."""
    import sqlite3

    with fed.client() as c:  # a job's envelopes are deleted when it ends: free pages
        job = c.submit(manifest([("alpha", ["y"], ""), ("beta", ["x1"], "")]))
        assert c.wait(job.job_id, timeout=60).state == "succeeded"
    db = fed.workdir / "state" / "coordinator" / "coordinator.db"

    def pragma(name: str) -> int:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return int(con.execute(f"PRAGMA {name}").fetchone()[0])
        finally:
            con.close()

    assert pragma("auto_vacuum") == 2  # incremental
    # relay data of a finished job, deleted (as _set_state does at a job's end): ~8 MB of free pages
    con = sqlite3.connect(db, timeout=30)
    try:
        con.executemany(
            "INSERT INTO relay(job_id, step, sender, recipient, seq, data, created_at) VALUES (?,?,?,?,?,?,0)",
            [(job.job_id, "bulk", "alpha", "beta", i, os.urandom(64 * 1024)) for i in range(128)],
        )
        con.commit()
        con.execute("DELETE FROM relay WHERE job_id=? AND step='bulk'", (job.job_id,))
        con.commit()
    finally:
        con.close()
    assert pragma("freelist_count") > 1000
    _wait(lambda: pragma("freelist_count") == 0, "housekeeping to return the free pages", timeout=120)
    assert pragma("page_count") * pragma("page_size") < 4 * 1024 * 1024


def test_status_marks_a_stopped_node_offline(fed: LocalFederation) -> None:
    # last: stops a node of the shared federation
    fed.kill("gamma")

    def offline() -> bool:
        st = json.loads(fedgov(fed, "admin", "status", "--json").stdout)
        return not {n["name"]: n for n in st["nodes"]}["gamma"]["online"]

    _wait(offline, "gamma shown offline", timeout=90)
    text = fedgov(fed, "admin", "status").stdout
    assert re.search(r"gamma\s+OFFLINE\s+last contact \d{4}-", text), text
