"""PSI through the real stack: coordinator + node processes, sealed relay."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedgov.crypto.envelope import MemorySequenceTracker, open_envelope
from fedgov.errors import FedgovError
from fedgov.protocols._psi_worker import hash_to_u
from fedgov.protocols.psi import _tag
from fedgov.runner import DatasetSpec, LocalFederation, NodeSpec
from fedgov.runspec import run_spec
from tests.conftest import write_csv
from tests.fakenode import FakeNode

pytestmark = pytest.mark.slow


def _spec(tmp: Path, guest_ids: list[str], host_ids: list[str], mode: str = "align") -> Path:
    write_csv(tmp / "g.csv", ["id", "y"], [[i, n % 2] for n, i in enumerate(guest_ids)])
    write_csv(tmp / "h.csv", ["id", "x"], [[i, 0.5] for i in host_ids])
    spec = tmp / "spec.toml"
    spec.write_text(
        f'[job]\nkind = "psi"\npurpose = "test"\nmode = "{mode}"\n'
        '[[parties]]\nname = "civil"\nrole = "guest"\ndata = "g.csv"\nid = "id"\n'
        '[[parties]]\nname = "tax"\nrole = "host"\ndata = "h.csv"\nid = "id"\n'
    )
    return spec


def test_fedgov_run_psi_matches_plaintext_and_writes_aligned_ids(tmp_path: Path) -> None:
    guest = [f"1101051949123100{i:02d}" for i in range(60)] + ["110105194912310099 "]
    host = [f"1101051949123100{i:02d}" for i in range(30, 90)] + ["110105194912310099"]  # whitespace normalised
    spec = _spec(tmp_path, guest, host)
    out = subprocess.run(
        [sys.executable, "-m", "fedgov", "run", str(spec), "--json", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {g.strip() for g in guest} & {h.strip() for h in host}
    assert summary["intersection_size"] == len(expected) == 31
    rows = {}
    for party in ("civil", "tax"):
        with open(summary["outputs"][party]) as fh:
            rows[party] = [r["id"] for r in csv.DictReader(fh)]
    assert rows["civil"] == rows["tax"]  # same order at both parties
    assert set(rows["civil"]) == expected


def test_cardinality_mode_reveals_only_the_size(tmp_path: Path) -> None:
    spec = _spec(tmp_path, [str(i) for i in range(40)], [str(i) for i in range(25, 70)], mode="cardinality")
    summary = run_spec(spec, out_dir=tmp_path / "out")
    assert summary["intersection_size"] == 15
    assert summary["outputs"] == {}  # nobody gets the members


def test_malformed_ids_stop_the_node_naming_the_row(tmp_path: Path) -> None:
    """An empty required ID is found when the node starts (it reads every dataset before it
    dials), so no job ever runs on it: the error names the file, row and column."""
    spec = _spec(tmp_path, ["1", "2", "", "4"], ["1", "2"])
    with pytest.raises(FedgovError, match=r"g\.csv row 3 column id: empty value in required ID field"):
        run_spec(spec)


def test_host_never_receives_guest_ids_in_the_clear(tmp_path: Path) -> None:
    guest_ids = [f"11010519491231{i:04d}" for i in range(200)]
    write_csv(tmp_path / "g.csv", ["id"], [[i] for i in guest_ids])
    (tmp_path / "s.toml").write_text('[dataset]\nname = "data"\n[[fields]]\nname = "id"\ntype = "string"\nrequired = true\n')
    (tmp_path / "p.toml").write_text('[[datasets.data.rules]]\npurposes = ["test"]\nkinds = ["psi"]\nfields = ["id"]\n')
    spec = NodeSpec("civil", tmp_path / "p.toml", [DatasetSpec("data", tmp_path / "s.toml", str(tmp_path / "g.csv"))])
    fed = LocalFederation(tmp_path / "f", [spec], extra_kits=[("mallory", "node")])
    manifest = (
        '[job]\nkind = "psi"\npurpose = "test"\n'
        '[[participants]]\nnode = "civil"\ndataset = "data"\nfields = ["id"]\nrole = "guest"\n'
        '[[participants]]\nnode = "mallory"\ndataset = "data"\nfields = ["id"]\nrole = "host"\n'
    )
    with fed:
        m = FakeNode(fed.kits / "mallory", fed.address)
        m.register(["id"])
        m.heartbeat()
        with fed.client() as c:
            job = c.submit(manifest)
        deadline = time.monotonic() + 20
        while job.job_id not in m.approve_all({job.job_id}):
            assert time.monotonic() < deadline
        with fed.client() as c:  # the guest decides on its own; wait until the job runs
            while c.status(job.job_id).state != "running":
                assert time.monotonic() < deadline
                time.sleep(0.1)
        tracker = MemorySequenceTracker()
        received = b""
        for seq in range(100):
            blob = None
            while blob is None:
                assert time.monotonic() < deadline + 60
                blob = m.fetch(job.job_id, "psi/guest-set", "civil", seq, wait=5)
            _, payload = open_envelope(blob, m.publish_job_key(job.job_id), m.peer, tracker)
            received += payload[1:]
            if payload[0] == 1:
                break
        m.close()
    assert len(received) == 32 * len(guest_ids)  # one masked point per distinct ID, nothing else
    sent = [received[i : i + 32] for i in range(0, len(received), 32)]
    points = set(sent)
    assert len(points) == len(guest_ids)
    # the protocol's own (job-tagged) hash of each ID: what the host would see without the mask
    tag = _tag(job.job_id, b"hash-to-u")
    for gid in guest_ids:
        assert gid.encode() not in received
        assert hashlib.sha256(gid.encode()).digest() not in points
        assert hash_to_u(tag, gid) not in points, "a guest ID reached the host unmasked"
    # the order carries nothing: the set arrives sorted by value (the guest's rows are in ID order)
    assert sent == sorted(sent)


def _psi_node(tmp: Path, name: str, ids: list[str]) -> NodeSpec:
    """A department whose policy lets tax (only) receive aligned IDs of its PSI jobs."""
    write_csv(tmp / f"{name}.csv", ["id"], [[i] for i in ids])
    (tmp / f"{name}-s.toml").write_text(
        '[dataset]\nname = "data"\n[[fields]]\nname = "id"\ntype = "string"\nrequired = true\n')
    (tmp / f"{name}-p.toml").write_text(
        '[datasets.data.disclosure]\npsi_id_recipients = ["tax"]\n'
        '[[datasets.data.rules]]\npurposes = ["test"]\nkinds = ["psi"]\nfields = ["id"]\n')
    return NodeSpec(name, tmp / f"{name}-p.toml", [DatasetSpec("data", tmp / f"{name}-s.toml", str(tmp / f"{name}.csv"))])


def test_aligned_order_reaches_only_the_hosts_the_manifest_names(tmp_path: Path) -> None:
    """Three departments; the manifest names tax (not hrss) to receive the aligned order. What the
    relay carried (recorded at the coordinator) and what each host process kept show it."""
    ids = [f"P{i:05d}" for i in range(120)]
    specs = [_psi_node(tmp_path, "civil", ids[:90]), _psi_node(tmp_path, "tax", ids[30:]),
             _psi_node(tmp_path, "hrss", ids[20:100])]
    manifest = '[job]\nkind = "psi"\npurpose = "test"\n'
    for name, role in (("civil", "guest"), ("tax", "host"), ("hrss", "host")):
        manifest += f'[[participants]]\nnode = "{name}"\ndataset = "data"\nfields = ["id"]\nrole = "{role}"\n'
    manifest += '[results]\nrecipients = ["requester", "tax"]\n'
    with LocalFederation(tmp_path / "f", specs) as fed:
        db = sqlite3.connect(fed.workdir / "state" / "coordinator" / "coordinator.db", timeout=30)
        with db:  # a curious coordinator records every envelope it relays
            db.execute("CREATE TABLE recorded (job_id, step, sender, recipient)")
            db.execute("CREATE TRIGGER record_relay AFTER INSERT ON relay BEGIN "
                       "INSERT INTO recorded VALUES (NEW.job_id, NEW.step, NEW.sender, NEW.recipient); END")
        with fed.client() as c:
            job = c.submit(manifest)
            st = c.wait(job.job_id, timeout=180)
            assert st.state == "succeeded", st.reason
        steps = db.execute("SELECT step, sender, recipient FROM recorded WHERE job_id=?", (job.job_id,)).fetchall()
        db.close()
        kept = {n: sorted((fed.workdir / "state" / n / "outputs").glob(f"{job.job_id}/aligned_ids*"))
                for n in ("civil", "tax", "hrss")}
        with kept["tax"][0].open() as fh:
            tax_ids = [r["id"] for r in csv.DictReader(fh)]
    results = {(s, r) for step, s, r in steps if step.endswith("/result")}
    assert results == {("civil", "tax")}  # the aligned order went to tax only
    assert {r for _, _, r in steps} == {"civil", "tax", "hrss"}  # hrss took part (its sets crossed)
    assert kept["civil"] and kept["tax"] and not kept["hrss"]
    assert sorted(tax_ids) == ids[30:90]  # the global intersection: P00030 .. P00089
