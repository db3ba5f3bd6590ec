"""Identity lifecycle through real processes: a coordinator and department nodes over mutual TLS.

Each test mounts an attack the way the issue describes it — a coordinator that replays or
forges manifests, records relay traffic or serves a superseded key bundle; a leaked or
revoked kit; a second process with a node's identity — and shows it refused. Malicious
coordinator behaviour is played by editing the coordinator's SQLite database, which the
real coordinator process then serves.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from fedgov.crypto.envelope import Header, MemorySequenceTracker, TamperedEnvelope, open_envelope, seal
from fedgov.crypto.keys import NodeKeys, ResultKey, verify_bundle
from fedgov.crypto.kits import issue_kit
from fedgov.crypto.pki import create_ca
from fedgov.crypto.signing import sign_manifest
from fedgov.errors import FedgovError
from fedgov.manifest import parse_manifest, stamp_manifest
from fedgov.runner import DatasetSpec, LocalFederation, NodeSpec
from fedgov.transport.chunks import relay_chunks
from fedgov.transport.tls import GRPC_OPTIONS, TlsMaterial, secure_channel
from fedgov.v1 import registry_pb2, registry_pb2_grpc, relay_pb2
from tests.conftest import write_csv
from tests.fakenode import FakeNode
from tests.test_federation import schema

pytestmark = pytest.mark.slow

PURPOSE = "test-identity"
STEP = "cohort-count/count"


def _policy(path: Path) -> Path:
    path.write_text(
        '[defaults]\nmin_cohort = 11\nrequesters = ["*"]\napproval = "auto"\n'
        # these owners let the PSI jobs below release exact sizes and deliver the aligned IDs, and
        # release exact counts (the owners' choice): plumbing tests
        '[defaults.disclosure]\npsi_size_release = "exact"\npsi_id_recipients = ["*"]\nstats_dp = false\n\n'
        "[[datasets.data.rules]]\n"
        f'purposes = ["{PURPOSE}"]\nkinds = ["cohort-count", "psi"]\nfields = ["id", "x"]\n'
    )
    return path


def _world(tmp: Path) -> list[NodeSpec]:
    specs = []
    for name, ids in (("alpha", range(0, 120)), ("beta", range(60, 180))):
        data = write_csv(tmp / f"{name}.csv", ["id", "x"], [[f"p{i:04d}", i % 10] for i in ids])
        specs.append(NodeSpec(name, _policy(tmp / f"{name}-policy.toml"), [
            DatasetSpec("data", schema(tmp / f"{name}-schema.toml", "data", {"id": "string", "x": "int"}), str(data))
        ]))
    return specs


def count_manifest(*nodes: str, where: str = '{ field = "x", op = ">=", value = 3 }') -> str:
    text = f'[job]\nkind = "cohort-count"\npurpose = "{PURPOSE}"\n'
    for i, n in enumerate(nodes):
        text += f'\n[[participants]]\nnode = "{n}"\ndataset = "data"\nfields = ["x"]\nwhere = [{where}]\n'
        if i == 0:
            text += 'role = "aggregator"\n'
    return text


def psi_manifest() -> str:
    return (
        f'[job]\nkind = "psi"\npurpose = "{PURPOSE}"\n'
        '[[participants]]\nnode = "alpha"\ndataset = "data"\nfields = ["id"]\nrole = "guest"\n'
        '[[participants]]\nnode = "beta"\ndataset = "data"\nfields = ["id"]\nrole = "host"\n'
        '[parameters]\nsize_release = "exact"\n'
        '[results]\nrecipients = ["requester", "alpha", "beta"]\n'
    )


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("identity")
    f = LocalFederation(
        tmp / "federation",
        _world(tmp),
        extra_kits=[("mallory", "node"), ("mallory2", "node"), ("eve", "node")],
        node_timeout=30,
        crl_refresh_seconds=1,
    )
    with f:
        yield f


def _db(fed: LocalFederation) -> sqlite3.Connection:
    return sqlite3.connect(fed.workdir / "state" / "coordinator" / "coordinator.db", timeout=30)


def _inject_job(fed: LocalFederation, node: str, manifest: str, signature: bytes, cert: bytes) -> str:
    """What a malicious coordinator can do: create a job out of signed bytes it holds, for one node."""
    job_id = "job-" + uuid.uuid4().hex[:12]
    now = time.time()
    db = _db(fed)
    with db:
        db.execute(
            "INSERT INTO jobs(job_id, kind, purpose, requester, manifest, signature, requester_cert, state, "
            "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (job_id, parse_manifest(manifest).kind, PURPOSE, "analyst", manifest, signature, cert, "submitted",
             now, now),
        )
        db.execute("INSERT INTO participants(job_id, node, position) VALUES (?,?,0)", (job_id, node))
    db.close()
    return job_id


def _job_row(fed: LocalFederation, job_id: str) -> tuple[str, bytes, bytes]:
    db = _db(fed)
    row = db.execute("SELECT manifest, signature, requester_cert FROM jobs WHERE job_id=?", (job_id,)).fetchone()
    db.close()
    return row[0], bytes(row[1]), bytes(row[2])


def _wait_terminal(fed: LocalFederation, job_id: str, timeout: float = 60):
    with fed.client("admin") as admin:
        return admin.wait(job_id, timeout=timeout)


def _run(fed: LocalFederation, manifest: str):
    with fed.client() as c:
        job = c.submit(manifest)
        st = c.wait(job.job_id, timeout=120)
        assert st.state == "succeeded", st.reason
        return job.job_id, c.result(job.job_id)


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedgov", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _wait_log(fed: LocalFederation, name: str, needle: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while needle not in fed.procs[name].log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{name} never logged {needle!r}:\n{fed.tail(name)}"
        time.sleep(0.2)


def _publish(fed: LocalFederation) -> int:
    r = _cli("provision", "publish-crl", "--ca", str(fed.workdir / "ca"), "--kit", str(fed.kits / "admin"),
             "--coordinator", fed.address)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.rsplit("#", 1)[1])


# --------------------------------------------------------------------------- replayed manifests


def test_a_replayed_signed_manifest_is_refused_by_every_node(fed: LocalFederation) -> None:
    """Under automatic approval, a coordinator re-running an old signed manifest gets nothing."""
    job_id, _ = _run(fed, count_manifest("alpha", "beta"))
    manifest, signature, cert = _job_row(fed, job_id)
    replays = {n: _inject_job(fed, n, manifest, signature, cert) for n in ("alpha", "beta")}
    for node, replay in replays.items():
        st = _wait_terminal(fed, replay)
        assert st.state == "rejected", (node, st.reason)
        assert st.reason.startswith(f"{node}: ") and "refusing a replayed signed manifest" in st.reason
        assert job_id in st.reason  # names the job that already used it


def test_a_job_runs_once_at_each_node(fed: LocalFederation) -> None:
    """A coordinator that puts a finished job back to 'running' gets no second run (no fresh result)."""
    job_id, _ = _run(fed, count_manifest("alpha", "beta"))
    db = _db(fed)
    with db:
        db.execute("UPDATE jobs SET state='running', reason='' WHERE job_id=?", (job_id,))
        db.execute("UPDATE participants SET task_state='waiting' WHERE job_id=?", (job_id,))
    db.close()
    st = _wait_terminal(fed, job_id)
    assert st.state == "failed"
    assert f"job {job_id} already ran here: refusing to run it twice" in st.reason


def test_a_manifest_whose_analyst_signature_fails_is_refused_by_every_node(fed: LocalFederation) -> None:
    job_id, _ = _run(fed, count_manifest("alpha", "beta"))
    manifest, signature, cert = _job_row(fed, job_id)
    widened = manifest.replace('value = 3 }', 'value = 0 }')  # the coordinator widens the cohort
    assert widened != manifest
    for node in ("alpha", "beta"):
        st = _wait_terminal(fed, _inject_job(fed, node, widened, signature, cert))
        assert st.state == "rejected"
        assert f"{node}: " in st.reason and "signature by 'analyst' does not verify" in st.reason


def test_an_expired_manifest_is_refused_by_every_node(fed: LocalFederation) -> None:
    """A signed manifest the coordinator withheld past its window never runs."""
    import datetime as dt

    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    text = stamp_manifest(count_manifest("alpha", "beta"), result_key=ResultKey("analyst").public_bytes,
                          now=past, valid_for=dt.timedelta(days=1))
    sig = sign_manifest((fed.kits / "analyst" / "tls.key").read_bytes(), text)
    cert = (fed.kits / "analyst" / "tls.crt").read_bytes()
    for node in ("alpha", "beta"):
        st = _wait_terminal(fed, _inject_job(fed, node, text, sig, cert))
        assert st.state == "rejected" and f"{node}: " in st.reason and "manifest expired at" in st.reason
    # an honest coordinator refuses it at submission already, with the same reason
    from fedgov.v1 import jobs_pb2, jobs_pb2_grpc

    ch = secure_channel(TlsMaterial.from_kit(fed.kits / "analyst"), fed.address)
    with pytest.raises(grpc.RpcError) as exc:
        jobs_pb2_grpc.JobsStub(ch).Submit(jobs_pb2.SubmitJobRequest(manifest_toml=text, signature=sig), timeout=10)
    ch.close()
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "expired" in exc.value.details()


# --------------------------------------------------------------------------- sealed results


def test_results_are_sealed_to_the_requester_and_the_coordinator_learns_sizes_only(fed: LocalFederation) -> None:
    job_id, result = _run(fed, count_manifest("alpha", "beta"))
    counts = result["alpha"]["counts"]
    assert counts == {"alpha": 84, "beta": 84}  # x >= 3: 7 of every 10 rows of 120
    db = _db(fed)
    rows = db.execute("SELECT node, result_json, length(sealed_result) FROM participants WHERE job_id=?",
                      (job_id,)).fetchall()
    assert db.execute("SELECT result_json FROM jobs WHERE job_id=?", (job_id,)).fetchone()[0] in ("", "{}")
    db.close()
    assert {n for n, _, _ in rows} == {"alpha", "beta"}
    assert all(r == "" and size > 1200 for _, r, size in rows)  # sealed: plaintext + envelope overhead
    # nothing the coordinator keeps on disk holds the released figures
    marker = json.dumps(result["alpha"], sort_keys=True).encode()
    state = fed.workdir / "state" / "coordinator"
    for path in state.iterdir():
        if path.is_file():
            blob = path.read_bytes()
            assert marker not in blob and b'"counts"' not in blob, path.name
    # only the requester's key opens it: an admin may fetch the job's result, not read it
    with fed.client("admin") as admin, pytest.raises(FedgovError, match="no private result key"):
        admin.result(job_id)
    # the key the requester kept is private
    keys = list((fed.kits / "analyst" / "results").iterdir())
    assert keys and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    assert stat.S_IMODE((fed.kits / "analyst" / "results").stat().st_mode) == 0o700


# --------------------------------------------------------------------------- relay by outsiders


def _job_with(fed: LocalFederation, fake: FakeNode, *nodes: str, manifest: str | None = None) -> str:
    with fed.client() as c:
        job = c.submit(manifest or count_manifest(*nodes))
    deadline = time.monotonic() + 30
    while job.job_id not in fake.approve_all({job.job_id}):
        assert time.monotonic() < deadline
    with fed.client() as c:
        while c.status(job.job_id).state != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    return job.job_id


def test_relay_and_job_keys_refuse_a_node_outside_the_job(fed: LocalFederation) -> None:
    mallory = FakeNode(fed.kits / "mallory", fed.address)
    outsider = FakeNode(fed.kits / "mallory2", fed.address)
    try:
        mallory.register(["x"])
        mallory.heartbeat()
        outsider.register(["x"])
        job_id = _job_with(fed, mallory, "alpha", "mallory")
        blob = mallory.envelope(job_id, STEP, "alpha", 0, b'{"count": 50}')
        attempts = {
            "Send": lambda: outsider.post(job_id, STEP, "alpha", 0, blob),
            "Receive": lambda: outsider.fetch(job_id, STEP, "alpha", 0, wait=0),
            "GetJobKey": lambda: outsider.peer_job_key(job_id, "alpha", wait=0),
            "PublishJobKey": lambda: outsider.publish_job_key(job_id),
        }
        for what, attempt in attempts.items():
            with pytest.raises(grpc.RpcError) as exc:
                attempt()
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED, what
            assert "'mallory2' is not a participant" in exc.value.details(), what
        # nothing the outsider tried reached the relay queue
        db = _db(fed)
        assert db.execute("SELECT COUNT(*) FROM relay WHERE job_id=? AND sender='mallory2'",
                          (job_id,)).fetchone()[0] == 0
        db.close()
        with fed.client() as c:
            c.cancel(job_id)
    finally:
        mallory.close()
        outsider.close()


# --------------------------------------------------------------------------- forward secrecy


def test_recorded_job_traffic_stays_closed_to_the_long_term_keys(fed: LocalFederation) -> None:
    """A coordinator records every relayed envelope of a job; after the job it gets the nodes'
    long-term keys (kits stolen). The envelopes were sealed to per-job keys: they stay closed."""
    db = _db(fed)
    with db:
        db.execute("CREATE TABLE IF NOT EXISTS recorded (job_id, step, sender, recipient, seq, data BLOB)")
        db.execute("CREATE TRIGGER IF NOT EXISTS record_relay AFTER INSERT ON relay BEGIN "
                   "INSERT INTO recorded VALUES (NEW.job_id, NEW.step, NEW.sender, NEW.recipient, NEW.seq, NEW.data); "
                   "END")
    db.close()
    try:
        job_id, result = _run(fed, psi_manifest())
        assert result["alpha"]["intersection_size"] == 60
    finally:
        db = _db(fed)
        with db:
            db.execute("DROP TRIGGER IF EXISTS record_relay")
        recorded = db.execute("SELECT sender, recipient, data FROM recorded WHERE job_id=?", (job_id,)).fetchall()
        with db:
            db.execute("DROP TABLE recorded")
        db.close()
    assert {(s, r) for s, r, _ in recorded} == {("alpha", "beta"), ("beta", "alpha")}
    ca = x509.load_pem_x509_certificate((fed.kits / "alpha" / "ca.crt").read_bytes())
    stolen = {n: NodeKeys.load(fed.kits / n) for n in ("alpha", "beta")}  # taken after the job

    def senders(name: str):
        return verify_bundle((fed.kits / name / "sealing.bundle").read_bytes(), ca, name)

    for _sender, recipient, data in recorded:
        with pytest.raises(TamperedEnvelope, match="decryption failed"):
            open_envelope(bytes(data), stolen[recipient], senders, MemorySequenceTracker())
    # control: the stolen keys are the real ones — what is sealed to them opens
    h = Header(job_id=job_id, step="psi/control", sender="beta", recipient="alpha", seq=0)
    control = seal(h, b"opens", stolen["beta"], stolen["alpha"].public())
    assert open_envelope(control, stolen["alpha"], senders, MemorySequenceTracker())[1] == b"opens"


# --------------------------------------------------------------------------- revocation


def test_a_revoked_node_is_refused_at_the_coordinator_and_its_envelopes_by_nodes(fed: LocalFederation) -> None:
    """eve (a leaked kit) takes part in a PSI job as host; alpha has already verified and cached
    eve's keys (it sealed its set to eve) when the admin revokes eve mid-job."""
    eve = FakeNode(fed.kits / "eve", fed.address)
    try:
        eve.register(["id"])
        eve.heartbeat()
        job_id = _job_with(fed, eve, manifest=psi_manifest().replace('"beta"', '"eve"').replace(
            '[results]\nrecipients = ["requester", "alpha", "eve"]\n', ""))
        target = eve.peer_job_key(job_id, "alpha")  # eve holds alpha's key for the job
        deadline = time.monotonic() + 60
        while True:  # alpha has sealed its masked set to eve: eve's keys are in alpha's job cache
            db = _db(fed)
            sent = db.execute("SELECT COUNT(*) FROM relay WHERE job_id=? AND sender='alpha' AND recipient='eve'",
                              (job_id,)).fetchone()[0]
            db.close()
            if sent:
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        r = _cli("provision", "revoke", "--ca", str(fed.workdir / "ca"), "--name", "eve",
                 "--reason", "keyCompromise", "--yes")
        assert r.returncode == 0 and "revoked 2 certificate(s)" in r.stdout, r.stderr
        number = _publish(fed)
        # the coordinator refuses eve on every call from now on, registration included
        for call in (lambda: eve.registry.Register(registry_pb2.RegisterRequest(key_bundle=eve.keys.bundle()),
                                                   timeout=10),
                     lambda: eve.registry.ListNodes(registry_pb2.ListNodesRequest(), timeout=10)):
            with pytest.raises(grpc.RpcError) as exc:
                call()
            assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "of 'eve'" in exc.value.details() and "revoked" in exc.value.details()
        # within one refresh interval alpha holds the new list ...
        _wait_log(fed, "alpha", f"revocation list #{number} applied")
        # ... so eve's answer, relayed by a coordinator that does not check, is refused
        h = Header(job_id=job_id, step="psi/host-set", sender="eve", recipient="alpha", seq=0)
        blob = seal(h, b"\x01" + bytes(32), eve.keys, target)
        db = _db(fed)
        with db:
            db.execute("INSERT INTO relay(job_id, step, sender, recipient, seq, data, created_at) "
                       "VALUES (?,?,?,?,?,?,?)", (job_id, h.step, "eve", "alpha", 0, blob, time.time()))
        db.close()
        st = _wait_terminal(fed, job_id)
        assert st.state == "failed" and st.reason.startswith("alpha: ")
        assert "from eve" in st.reason and "revoked" in st.reason
    finally:
        eve.close()


# --------------------------------------------------------------------------- one process per identity


def test_a_second_live_process_with_a_node_identity_is_refused(fed: LocalFederation, tmp_path: Path) -> None:
    cfg = (fed.workdir / "nodes" / "alpha" / "node.toml").read_text()
    twin = tmp_path / "twin.toml"
    twin.write_text(cfg.replace(str(fed.workdir / "state" / "alpha"), str(tmp_path / "twin-state")))
    r = _cli("node", "start", "--config", str(twin), timeout=90)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fedgov: error: registration refused: node 'alpha' is already connected from "
                           "another process"), r.stderr[-2000:]
    # the live alpha kept its identity and works
    _, result = _run(fed, count_manifest("alpha", "beta"))
    assert result["alpha"]["counts"]["alpha"] == 84


# --------------------------------------------------------------------------- CSR path, rotation, stale bundles


def test_csr_path_ends_with_a_working_kit(fed: LocalFederation, tmp_path: Path) -> None:
    kit = tmp_path / "delta"
    assert _cli("provision", "csr", "--name", "delta", "--role", "node", "--out", str(kit)).returncode == 0
    # the admin signs only what it was shown and confirmed; with no terminal, --yes is required
    r = _cli("provision", "sign", "--ca", str(fed.workdir / "ca"), str(kit / "tls.csr"), str(kit / "signing.csr"))
    assert r.returncode == 2 and "node 'delta'" in r.stdout and "pass --yes" in r.stderr
    assert not (kit / "tls.crt").exists()
    r = _cli("provision", "sign", "--ca", str(fed.workdir / "ca"), "--yes", str(kit / "tls.csr"),
             str(kit / "signing.csr"))
    assert r.returncode == 0, r.stderr
    r = _cli("provision", "finish", str(kit))  # no ca.crt copied by hand
    assert r.returncode == 0, r.stderr
    delta = FakeNode(kit, fed.address)
    try:
        delta.register(["x"])
        with fed.client() as c:
            assert "delta" in {n["name"] for n in c.nodes()}
        assert FakeNode.peer(delta, "delta").name == "delta"
    finally:
        delta.close()


def test_rotating_one_node_leaves_the_others_alone_and_old_bundles_are_refused(fed: LocalFederation) -> None:
    ca = fed.workdir / "ca"
    old_kit = fed.kits / "beta-retired"
    new_kit = fed.kits / "beta-next"
    alpha_kit_before = {p.name: p.read_bytes() for p in (fed.kits / "alpha").iterdir() if p.is_file()}
    assert _cli("provision", "csr", "--name", "beta", "--role", "node", "--out", str(new_kit)).returncode == 0
    assert _cli("provision", "sign", "--ca", str(ca), "--yes", str(new_kit / "tls.csr"),
                str(new_kit / "signing.csr")).returncode == 0
    assert _cli("provision", "finish", str(new_kit)).returncode == 0
    old_bundle = (fed.kits / "beta" / "sealing.bundle").read_bytes()
    fed.kill("beta", signal.SIGTERM)
    (fed.kits / "beta").rename(old_kit)
    new_kit.rename(fed.kits / "beta")
    spec = next(s for s in fed.nodes if s.name == "beta")
    fed.start_node(spec)
    fed.wait_registered(["beta"])
    _, result = _run(fed, count_manifest("alpha", "beta"))
    assert result["alpha"]["counts"] == {"alpha": 84, "beta": 84}
    # a coordinator that serves beta's superseded bundle again is refused by alpha
    db = _db(fed)
    new_bundle = db.execute("SELECT bundle FROM nodes WHERE name='beta'").fetchone()[0]
    with db:
        db.execute("UPDATE nodes SET bundle=? WHERE name='beta'", (old_bundle,))
    db.close()
    with fed.client() as c:
        job = c.submit(count_manifest("alpha", "beta"))
        st = c.wait(job.job_id, timeout=120)
    assert st.state == "failed" and "superseded key bundle of beta" in st.reason
    db = _db(fed)
    with db:
        db.execute("UPDATE nodes SET bundle=? WHERE name='beta'", (new_bundle,))
    db.close()
    # the old kit is revoked; it can no longer talk to the coordinator, the new one can
    old_tls = x509.load_pem_x509_certificate((old_kit / "tls.crt").read_bytes())
    old_sig = x509.load_pem_x509_certificate((old_kit / "signing.crt").read_bytes())
    r = _cli("provision", "revoke", "--ca", str(ca), "--serial", f"{old_tls.serial_number:x}",
             "--serial", f"{old_sig.serial_number:x}", "--reason", "superseded", "--yes")
    assert r.returncode == 0, r.stderr
    number = _publish(fed)
    stale = FakeNode(old_kit, fed.address)
    try:
        with pytest.raises(grpc.RpcError) as exc:
            stale.registry.ListNodes(registry_pb2.ListNodesRequest(), timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED and "superseded" in exc.value.details()
    finally:
        stale.close()
    _wait_log(fed, "beta", f"revocation list #{number} applied")
    _, result = _run(fed, count_manifest("alpha", "beta"))
    assert result["alpha"]["counts"]["beta"] == 84
    # nobody else was re-keyed
    assert {p.name: p.read_bytes() for p in (fed.kits / "alpha").iterdir() if p.is_file()} == alpha_kit_before


# --------------------------------------------------------------------------- private files


def test_private_state_files_are_0600_in_0700_folders(fed: LocalFederation) -> None:
    _run(fed, psi_manifest())  # leaves outputs/<job>/aligned_ids.csv at alpha and beta
    state = fed.workdir / "state"
    aligned = list(state.rglob("aligned_ids.csv"))
    assert {p.relative_to(state).parts[0] for p in aligned} >= {"alpha", "beta"}
    expected = {"node.db", "node.db-wal", "coordinator.db", "coordinator.db-wal", "ledger.db", "ledger.key"}
    seen = set()
    public = {"ledger.pub"}  # the log's public key, pinned by auditors: public on purpose
    for path in [state, *state.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            assert mode == 0o700, f"{path} is {mode:o}"
        elif path.name in public:
            assert mode == 0o644, path
        else:
            seen.add(path.name)
            assert mode == 0o600, f"{path} is {mode:o}"
    assert expected <= seen
    for kit in (fed.kits / "alpha", fed.kits / "analyst", fed.kits / "coordinator"):
        assert stat.S_IMODE(kit.stat().st_mode) == 0o700
        assert stat.S_IMODE((kit / "tls.key").stat().st_mode) == 0o600


# --------------------------------------------------------------------------- transport limits


def _tls12_proxy(fed: LocalFederation) -> tuple[str, threading.Event]:
    """A plaintext port that forwards HTTP/2 bytes to the coordinator over a TLS 1.2 connection
    carrying the analyst's valid client certificate (a client that cannot do TLS 1.3)."""
    host, port = fed.address.rsplit(":", 1)
    kit = fed.kits / "analyst"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(kit / "ca.crt")
    ctx.load_cert_chain(kit / "tls.crt", kit / "tls.key")
    ctx.set_alpn_protocols(["h2"])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def serve() -> None:
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            upstream = ctx.wrap_socket(socket.create_connection((host, int(port))), server_hostname="127.0.0.1")
            assert upstream.version() == "TLSv1.2"
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{listener.getsockname()[1]}", stop


def test_calls_over_tls12_are_refused_tls13_is_required(fed: LocalFederation) -> None:
    addr, stop = _tls12_proxy(fed)
    try:
        stub = registry_pb2_grpc.RegistryStub(grpc.insecure_channel(addr))
        with pytest.raises(grpc.RpcError) as exc:
            stub.ListNodes(registry_pb2.ListNodesRequest(), timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert exc.value.details() == "TLS 1.3 required: this connection negotiated TLSv1.2"
    finally:
        stop.set()
    # fedgov's own clients negotiate TLS 1.3 and get answers
    with fed.client() as c:
        assert {"alpha", "beta"} <= {n["name"] for n in c.nodes()}


def test_message_limits_4mib_per_message_1mib_chunks(fed: LocalFederation) -> None:
    material = TlsMaterial.from_kit(fed.kits / "mallory")
    big = registry_pb2.RegisterRequest(key_bundle=b"\0" * (5 * 1024 * 1024))
    # our client refuses to send more than 4 MiB in one message ...
    with pytest.raises(grpc.RpcError) as exc:
        registry_pb2_grpc.RegistryStub(secure_channel(material, fed.address)).Register(big, timeout=20)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "4194304" in exc.value.details()
    # ... and the coordinator refuses to receive it from a client that would
    creds = grpc.ssl_channel_credentials(material.ca, material.key, material.cert)
    unlimited = grpc.secure_channel(fed.address, creds, options=[("grpc.max_send_message_length", -1)])
    with pytest.raises(grpc.RpcError) as exc:
        registry_pb2_grpc.RegistryStub(unlimited).Register(big, timeout=20)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    unlimited.close()
    assert dict(GRPC_OPTIONS)["grpc.max_receive_message_length"] == 4 * 1024 * 1024
    # a payload larger than one message crosses the relay as 1 MiB chunks, intact
    m1, m2 = FakeNode(fed.kits / "mallory", fed.address), FakeNode(fed.kits / "mallory2", fed.address)
    try:
        for m in (m1, m2):
            m.register(["x"])
            m.heartbeat()
        with fed.client() as c:
            job = c.submit(count_manifest("mallory", "mallory2"))
        deadline = time.monotonic() + 30
        for m in (m1, m2):
            while job.job_id not in m.approve_all({job.job_id}):
                assert time.monotonic() < deadline
        with fed.client() as c:
            while c.status(job.job_id).state != "running":
                assert time.monotonic() < deadline
                time.sleep(0.1)
        payload = os.urandom(3 * 1024 * 1024 + 17)
        assert [len(ch.data) for ch in relay_chunks(payload, job_id="j", step="s", recipient="r", seq=0)] == [
            1024 * 1024, 1024 * 1024, 1024 * 1024, 17]
        m2.post(job.job_id, STEP, "mallory", 0, payload)
        parts = list(m1.relay.Receive(relay_pb2.ReceiveRequest(job_id=job.job_id, step=STEP, sender="mallory2",
                                                               seq=0, wait_seconds=5), timeout=30))
        assert [len(p.data) for p in parts] == [1024 * 1024] * 3 + [17]
        assert b"".join(p.data for p in parts) == payload
        with fed.client() as c:
            c.cancel(job.job_id)
    finally:
        m1.close()
        m2.close()


# --------------------------------------------------------------------------- a node's own kit


def _lone_node(tmp: Path, kit: Path) -> Path:
    data = write_csv(tmp / "d.csv", ["id", "x"], [["p1", 1]])
    cfg = tmp / "node.toml"
    cfg.write_text(
        '[node]\nname = "tax"\ncoordinator = "127.0.0.1:9"\n'
        f'kit = "{kit}"\nstate_dir = "{tmp / "state"}"\npolicy = "{_policy(tmp / "p.toml")}"\n\n'
        f'[[datasets]]\nname = "data"\nschema = "{schema(tmp / "s.toml", "data", {"id": "string", "x": "int"})}"\n'
        f'source = "{data}"\n'
    )
    return cfg


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("expired", "tls.crt: certificate expired on"),
        ("key-mismatch", "tls.crt does not match tls.key"),
        ("foreign-ca", "(foreign CA?)"),
    ],
)
def test_a_node_with_a_broken_kit_exits_with_the_reason(tmp_path: Path, fault: str, message: str) -> None:
    """It does not dial (the coordinator address is a closed port) and does not retry: it says why."""
    import datetime as dt

    create_ca(tmp_path / "ca")
    kit = tmp_path / "kit"
    if fault == "expired":
        issue_kit(tmp_path / "ca", kit, "tax", "node", days=1,
                  not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    else:
        issue_kit(tmp_path / "ca", kit, "tax", "node")
    if fault == "key-mismatch":
        issue_kit(tmp_path / "ca", tmp_path / "other", "tax", "node")
        shutil.copy(tmp_path / "other" / "tls.crt", kit / "tls.crt")
    elif fault == "foreign-ca":
        create_ca(tmp_path / "evil")
        issue_kit(tmp_path / "evil", tmp_path / "evil-kit", "tax", "node")
        for f in ("tls.crt", "tls.key"):
            (kit / f).unlink()
            shutil.copy(tmp_path / "evil-kit" / f, kit / f)
    r = _cli("node", "start", "--config", str(_lone_node(tmp_path, kit)), timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("fedgov: error: cannot start: ") and message in lines[-1]
    assert "unreachable" not in r.stderr and "Traceback" not in r.stderr
