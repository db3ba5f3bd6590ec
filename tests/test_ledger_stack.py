"""The contribution ledger in the running system: real coordinator and node processes over mTLS.

Jobs leave the expected entries; ``fedgov ledger verify`` passes online and
offline; a row edited in the SQLite file is named by index; a coordinator
whose ledger.db was swapped for an older copy (then grew a different history)
is caught by the nodes' witnesses, which halt; ``fedgov ledger points`` gives
every department its points and share.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from fedgov.crypto.keys import NodeKeys
from fedgov.ledger.witness import WitnessError
from fedgov.node.witness import STATE_FILE, NodeWitness
from fedgov.runner import LocalFederation
from fedgov.transport.tls import TlsMaterial, secure_channel
from fedgov.v1 import ledger_pb2_grpc
from tests.test_federation import build_world, manifest

pytestmark = pytest.mark.slow


def ledger_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``fedgov ledger ...`` as an auditor runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "fedgov", "ledger", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def last_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def open_size(db: Path) -> int:
    """Entries in a live ledger.db."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
    finally:
        con.close()


def backup(src: Path, dst: Path) -> Path:
    """A consistent copy of a live WAL database (SQLite online backup)."""
    dst.unlink(missing_ok=True)
    s = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    d = sqlite3.connect(dst)
    s.backup(d)
    d.close()
    s.close()
    return dst


def run(fed: LocalFederation, parts: list[tuple[str, list[str], str]], timeout: float = 60) -> Any:
    with fed.client() as c:
        return c.wait(c.submit(manifest(parts)).job_id, timeout=timeout)


def witness_state(fed: LocalFederation, node: str) -> dict[str, Any]:
    path = fed.workdir / "state" / node / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def wait_for(what: str, cond: Any, timeout: float = 60.0, every: float = 0.2) -> Any:
    """Poll ``cond()`` until it returns something truthy (returned); fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def outbox_empty(fed: LocalFederation) -> bool:
    """True once the coordinator's drainer has moved every queued entry into the log."""
    db = sqlite3.connect(f"file:{fed.workdir / 'state' / 'coordinator' / 'coordinator.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM ledger_outbox").fetchone()[0] == 0
    finally:
        db.close()


class World:
    fed: LocalFederation
    db: Path
    online: list[str]
    ca: str
    jobs: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("ledger")
    fed = LocalFederation(tmp / "federation", build_world(tmp)[:2], node_timeout=20)
    w = World()
    w.fed = fed
    w.db = fed.workdir / "state" / "coordinator" / "ledger.db"
    w.jobs = {}
    w.ca = str(fed.kits / "auditor" / "ca.crt")
    with fed:
        w.online = ["--kit", str(fed.kits / "auditor"), "--coordinator", fed.address]
        # the jobs every test reads, run here so that each test also runs alone
        first = run(fed, [("alpha", ["y"], '{ field = "y", op = "==", value = 1 }'), ("beta", ["x1"], "")])
        assert first.state == "succeeded", first.reason
        second = run(fed, [("alpha", ["y", "x0"], ""), ("beta", ["x1"], "")])
        assert second.state == "succeeded", second.reason
        refused = run(fed, [("alpha", ["y"], ""), ("beta", ["secret"], "")])
        assert refused.state == "rejected"
        w.jobs = {"first": first.job_id, "second": second.job_id, "refused": refused.job_id}
        wait_for("the awards of both jobs in the log", lambda: outbox_empty(fed))
        yield w


def test_jobs_leave_the_expected_entries(world: World) -> None:
    rows = last_json(ledger_cli("show", "--json", *world.online))
    types = [r["type"] for r in rows]
    assert types[0] == "points_rules"
    assert sorted(r["node"] for r in rows if r["type"] == "node_registered") == ["alpha", "beta"]
    published = {r["node"]: r for r in rows if r["type"] == "dataset_published"}
    assert published["alpha"]["rows"] == 100 and published["beta"]["rows"] == 100
    assert 0 < published["alpha"]["quality"]["overall"] <= 1  # scores only, published by the node
    for key in ("first", "second"):
        job = [r for r in rows if r.get("job") == world.jobs[key]]
        kinds = [r["type"] for r in job]
        assert kinds[0] == "job_submitted" and kinds[-1] == "job_completed", kinds
        assert sorted(r["node"] for r in job if r["type"] == "job_approved") == ["alpha", "beta"]
        assert kinds.count("job_started") == 1
        contrib = {r["node"]: r for r in job if r["type"] == "contribution"}
        assert contrib["alpha"]["records"] == 100 and contrib["beta"]["fields"] == ["x1"]
        assert kinds.index("contribution") < kinds.index("job_completed")  # points need this order
        assert job[-1]["outcome"] == "succeeded"
    done = next(r for r in rows if r.get("job") == world.jobs["first"] and r["type"] == "job_completed")
    assert done["metrics"]["alpha.total_released"] > 0
    assert [r for r in rows if r.get("job") == world.jobs["second"]][0]["participants"]["alpha"][
        "fields"
    ] == [
        "x0",
        "y",
    ]
    refusal = [r for r in rows if r.get("job") == world.jobs["refused"]]
    assert any(
        r["type"] == "policy_refusal" and r["node"] == "beta" and "secret" in r["reasons"][0] for r in refusal
    )
    assert refusal[-1]["type"] == "job_completed" and refusal[-1]["outcome"] == "rejected"
    assert types.count("points_awarded") == 2  # one per successful job
    # every department fact is in the department's own signed words
    facts = [
        r
        for r in rows
        if r["type"] in ("dataset_published", "job_approved", "contribution", "policy_refusal")
    ]
    assert facts and all(r.get("signer") == r["node"] and len(r.get("sig", "")) == 128 for r in facts), facts
    assert sorted(r["node"] for r in rows if r["type"] == "node_key") == ["alpha", "beta"]

    # an inclusion proof against the signed head, verified by the client
    proof = last_json(ledger_cli("proof", "3", "--json", *world.online))
    assert proof["verified"] is True and proof["index"] == 3


def test_verify_passes_online_and_offline_and_names_an_edited_row(
    world: World, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = last_json(ledger_cli("verify", "--json", *world.online))
    assert out["verified"] is True and out["source"] == "online" and out["awards_checked"] == 2
    pub = (world.db.parent / "ledger.pub").read_text().strip()
    assert out["public_key"] == pub
    copy = backup(world.db, tmp_path_factory.mktemp("copy") / "ledger.db")
    out = last_json(ledger_cli("verify", "--json", "--db", str(copy), "--trusted-key", pub, "--ca", world.ca))
    assert out["verified"] is True and out["size"] > 20
    assert out["facts"]["accepted"] == out["facts"]["facts"] > 0 and not out["facts"]["unsigned"]
    # without the CA nothing vouches for the departments' facts: verify says so and fails
    bare = ledger_cli("verify", "--json", "--db", str(copy), check=False)
    assert bare.returncode == 2 and "department signatures not checked" in bare.stdout

    # export, then recompute everything (points included) from the export alone
    export = copy.parent / "ledger.jsonl"
    ledger_cli("export", "--db", str(copy), "--out", str(export))
    assert (
        last_json(ledger_cli("verify", "--json", "--export", str(export), "--ca", world.ca))["verified"]
        is True
    )

    # someone with file access edits entry 5 (dropping the append-only trigger first)
    db = sqlite3.connect(copy)
    entry = json.loads(db.execute("SELECT data FROM entries WHERE idx=5").fetchone()[0])
    entry["ts"] += 1  # still a well-formed, canonical entry: only its leaf hash gives it away
    forged = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    db.execute("DROP TRIGGER entries_no_update")
    db.execute("UPDATE entries SET data=? WHERE idx=5", (forged,))
    db.commit()
    db.close()
    bad = ledger_cli("verify", "--db", str(copy), "--ca", world.ca, check=False)
    assert bad.returncode == 2
    assert "entry 5: stored bytes do not match its leaf hash (row edited)" in bad.stdout
    assert bad.stderr.startswith("fedgov: error: ledger verification failed: entry 5")


def test_points_per_department(world: World) -> None:
    out = last_json(ledger_cli("points", "--period", "all", "--budget", "1000", "--json", *world.online))
    rows = {r["dept"]: r for r in out["rows"]}
    assert set(rows) == {"alpha", "beta"}
    assert rows["alpha"]["points"] > 0 and rows["beta"]["points"] > 0
    assert abs(sum(r["share"] for r in rows.values()) - 1) < 1e-6
    assert sum(float(r["budget_amount"]) for r in rows.values()) == pytest.approx(1000)
    # alpha brought 2 fields to the second job, beta 1: alpha ranks first
    assert rows["alpha"]["rank"] == 1
    table = ledger_cli("points", "--period", "all", "--budget", "1000", *world.online).stdout
    assert "alpha" in table and "share" in table
    csv = ledger_cli("points", "--csv", *world.online).stdout.splitlines()
    assert csv[0].startswith("dept,points,share") and len(csv) == 3


def test_rewritten_ledger_is_caught_by_the_node_witnesses(
    world: World, tmp_path_factory: pytest.TempPathFactory
) -> None:
    fed = world.fed
    # a witness of our own (alpha's kit, separate state) next to the agents' ones
    kit = fed.kits / "alpha"
    material = TlsMaterial.from_kit(kit)
    mine = tmp_path_factory.mktemp("witness")

    def my_witness() -> tuple[NodeWitness, Any]:
        ch = secure_channel(material, fed.address)
        nw = NodeWitness(
            mine,
            ledger_pb2_grpc.LedgerStub(ch),
            None,
            NodeKeys.load(kit).sign,
            ca_cert=x509.load_pem_x509_certificate(material.ca),
        )
        return nw, ch

    nw, ch = my_witness()
    nw.check()
    seen = nw.last_head
    assert seen is not None and seen.size > 20
    ch.close()
    # the agents' witnesses vouched for the current head too (cosignatures in the log)
    deadline = time.monotonic() + 30
    while min(witness_state(fed, n).get("head", {}).get("size", 0) for n in ("alpha", "beta")) < seen.size:
        assert time.monotonic() < deadline, "node witnesses did not catch up"
        time.sleep(0.5)
    out = last_json(ledger_cli("verify", "--json", *world.online))
    assert out["verified"] and out["cosignatures_checked"] >= 3

    # a head counts only once k of n departments cosigned it (default: a majority, here both)
    def node_witness(n: str) -> dict[str, Any]:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedgov",
                "node",
                "witness",
                "--json",
                "--config",
                str(fed.workdir / "nodes" / n / "node.toml"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.splitlines()[0])

    last: dict[str, Any] = {}

    def settled(n: str) -> dict[str, Any] | None:
        st = last[n] = node_witness(n)
        q = st["quorum_head"]
        ok = q and q["cosigners"] == ["alpha", "beta"] and q["size"] >= seen.size and st["pending_facts"] == 0
        return st if ok else None

    for n in ("alpha", "beta"):
        try:
            st = wait_for(f"{n}: own facts under a head both cosigned", lambda n=n: settled(n))
        except AssertionError:
            raise AssertionError(json.dumps(last)[:3000]) from None
        assert st["facts_included"] > 0 and not st["alarms"] and st["last_error"] is None, st
    out = last_json(ledger_cli("verify", "--json", "--require-quorum", *world.online))
    assert out["quorum"]["k"] == 2 and out["quorum"]["n"] == 2
    assert out["quorum"]["cosigners"] == ["alpha", "beta"] and out["quorum"]["counted_size"] >= seen.size
    # a quorum of 2 is not met if only alpha's cosignatures counted
    only = ledger_cli(
        "verify", "--json", "--require-quorum", "--witnesses", "alpha,gamma", *world.online, check=False
    )
    assert only.returncode == 2 and "under no head cosigned by 2 of the 2 departments" in only.stdout

    # the coordinator keeps a copy of its log, lets it grow (witnessed), then swaps the
    # copy back in and carries on with a different history
    old_copy = backup(world.db, tmp_path_factory.mktemp("old") / "ledger.db")
    grown = run(fed, [("alpha", ["y", "x0"], ""), ("beta", ["x1"], "")])
    assert grown.state == "succeeded", grown.reason
    wait_for("the grown log", lambda: outbox_empty(fed) and open_size(world.db) > seen.size)
    nw, ch = my_witness()
    nw.check()  # our witness vouches for the grown history too
    ch.close()
    seen = nw.last_head
    wait_for(
        "the witnesses to vouch for the grown log",
        lambda: (
            min(witness_state(fed, n).get("head", {}).get("size", 0) for n in ("alpha", "beta")) >= seen.size
        ),
    )
    fed.kill("coordinator", signal.SIGKILL)
    for suffix in ("", "-wal", "-shm"):
        Path(str(world.db) + suffix).unlink(missing_ok=True)
    world.db.write_bytes(old_copy.read_bytes())
    fed.restart_coordinator_on_same_port()
    with fed.client() as c:
        c.submit(manifest([("alpha", ["y"], ""), ("beta", ["x1"], "")]))

    nw, ch = my_witness()
    caught: WitnessError | None = None
    for _ in range(40):
        try:
            nw.check()
        except WitnessError as exc:
            if "stale" not in str(exc):  # the restored, older head itself is refused as a replay
                caught = exc
                break
        time.sleep(0.5)
    ch.close()
    assert caught is not None and nw.alarm is not None
    assert "rewritten" in str(caught) or "forked" in str(caught) or "backwards" in str(caught)

    # the node agents raise the alarm, persist it, and refuse further tasks
    deadline = time.monotonic() + 45
    while not all(witness_state(fed, n).get("alarm") for n in ("alpha", "beta")):
        assert time.monotonic() < deadline, "node witnesses did not raise the alarm"
        time.sleep(0.5)
    assert "ALARM" in fed.tail("alpha", 200)

    def alarms(n: str) -> int:
        return fed.tail(n, 100_000).count("refuses all tasks")

    with fed.client() as c:
        job = c.submit(manifest([("alpha", ["y"], ""), ("beta", ["x1"], "")]))
        seen_alarms = {n: alarms(n) for n in ("alpha", "beta")}
        # each node has gone round its loop again (raising the alarm instead of polling for tasks)
        wait_for("another round of alarms", lambda: all(alarms(n) > seen_alarms[n] for n in seen_alarms))
        st = c.status(job.job_id)
    assert st.state == "submitted" and all(p.decision == "pending" for p in st.participants)


def test_fact_forged_at_the_coordinator_is_named_by_verify(world: World) -> None:
    """The coordinator (its database edited while stopped) logs facts no department signed.

    Two forgeries go through the coordinator's own outbox, so the log hashes
    and signs them like any entry: an unsigned contribution claiming beta
    brought 10,000 records to a job, and alpha's genuine signed contribution
    with its record count raised. `ledger verify` names both (index, kind,
    department); `ledger points` leaves them out.
    """
    fed = world.fed
    before = {r["dept"]: r for r in last_json(ledger_cli("points", "--json", *world.online))["rows"]}
    rows = last_json(ledger_cli("show", "--json", *world.online))
    genuine = next(r for r in rows if r["type"] == "contribution" and r["node"] == "alpha")
    genuine = {k: v for k, v in genuine.items() if k != "index"}
    altered = dict(genuine, records=genuine["records"] + 50)
    unsigned = {k: v for k, v in genuine.items() if k not in ("signer", "sig")} | {
        "node": "beta",
        "records": 10_000,
    }
    fed.kill("coordinator", signal.SIGKILL)
    db = sqlite3.connect(fed.workdir / "state" / "coordinator" / "coordinator.db")
    for forged in (unsigned, altered):
        blob = json.dumps(forged, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        db.execute("INSERT INTO ledger_outbox(kind, data) VALUES ('entry', ?)", (blob,))
    db.commit()
    db.close()
    fed.restart_coordinator_on_same_port()
    size = len(rows)
    wait_for("the forged entries in the log", lambda: outbox_empty(fed))
    bad = ledger_cli("verify", "--json", *world.online, check=False)
    assert bad.returncode == 2
    out = json.loads(bad.stdout.splitlines()[0])  # the report (the last line is the error)
    lines = out["problems"]
    assert any(line.startswith(f"entry {size}: contribution about beta is unsigned") for line in lines), lines
    assert any(
        line.startswith(f"entry {size + 1}: contribution about alpha: signature by alpha does not verify")
        for line in lines
    ), lines
    assert out["facts"]["unsigned"] == [size] and out["facts"]["rejected"] == [size + 1]
    after = ledger_cli("points", "--json", *world.online)
    assert "not counted: entry" in after.stderr
    rows_after = {r["dept"]: r for r in last_json(after)["rows"]}
    assert {d: r["points"] for d, r in rows_after.items()} == {d: r["points"] for d, r in before.items()}
