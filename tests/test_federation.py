"""Multi-process tests: real coordinator and node processes over mutual TLS on loopback."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from fedgov.crypto.kits import issue_kit
from fedgov.crypto.pki import create_ca
from fedgov.errors import FedgovError
from fedgov.runner import DatasetSpec, LocalFederation, NodeSpec
from fedgov.transport.tls import TlsMaterial, secure_channel
from fedgov.v1 import jobs_pb2, jobs_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.conftest import write_csv
from tests.fakenode import FakeNode

pytestmark = pytest.mark.slow

PURPOSE = "test-counting"


def schema(path: Path, name: str, fields: dict[str, str]) -> Path:
    lines = ["[dataset]", f'name = "{name}"', 'key = "id"']
    for f, t in fields.items():
        lines += ["[[fields]]", f'name = "{f}"', f'type = "{t}"', f"required = {str(f == 'id').lower()}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def policy(path: Path, fields: list[str], *, manual: int = 0, requesters: str = '["*"]') -> Path:
    approval = f'approval = "manual"\napprovers_required = {manual}\n' if manual else 'approval = "auto"\n'
    path.write_text(
        f"[defaults]\nmin_cohort = 11\nrequesters = {requesters}\n{approval}\n"
        # exact counts (the owners' explicit choice): these tests are about the federation's
        # plumbing; DP counts are tested in tests/test_disclosure_stats.py
        "[defaults.disclosure]\nstats_dp = false\n\n"
        "[[datasets.data.rules]]\n"
        f'purposes = ["{PURPOSE}"]\nkinds = ["cohort-count"]\nfields = {json.dumps(fields)}\n'
    )
    return path


def build_world(tmp: Path) -> list[NodeSpec]:
    a = write_csv(tmp / "a.csv", ["id", "y", "x0"], [[i, i % 2, (i * 37 % 100) / 100] for i in range(100)])
    b = write_csv(
        tmp / "b.csv", ["id", "x1", "secret"], [[i, (i * 53 % 100) / 100, i] for i in range(50, 150)]
    )
    c = write_csv(tmp / "c.csv", ["id", "x2"], [[i, i % 7] for i in range(30)])
    return [
        NodeSpec(
            "alpha",
            policy(tmp / "pa.toml", ["y", "x0"]),
            [
                DatasetSpec(
                    "data",
                    schema(tmp / "sa.toml", "data", {"id": "string", "y": "int", "x0": "float"}),
                    str(a),
                )
            ],
        ),
        NodeSpec(
            "beta",
            policy(tmp / "pb.toml", ["x1"]),  # 'secret' is never allowed
            [
                DatasetSpec(
                    "data",
                    schema(tmp / "sb.toml", "data", {"id": "string", "x1": "float", "secret": "int"}),
                    str(b),
                )
            ],
        ),
        NodeSpec(
            "gamma",
            policy(tmp / "pc.toml", ["x2"], manual=2),
            [DatasetSpec("data", schema(tmp / "sc.toml", "data", {"id": "string", "x2": "int"}), str(c))],
        ),
    ]


def manifest(
    parts: list[tuple[str, list[str], str]], *, purpose: str = PURPOSE, dataset: str = "data"
) -> str:
    """parts: (node, fields, where-clause TOML or '')"""
    text = f'[job]\nkind = "cohort-count"\npurpose = "{purpose}"\n'
    for i, (node, fields, where) in enumerate(parts):
        text += f'\n[[participants]]\nnode = "{node}"\ndataset = "{dataset}"\nfields = {json.dumps(fields)}\n'
        if i == 0:
            text += 'role = "aggregator"\n'
        if where:
            text += f"where = [{where}]\n"
    return text


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("fed")
    f = LocalFederation(
        tmp / "federation",
        build_world(tmp),
        approvers={"gamma": ["ann", "bob"], "alpha": ["carl"]},
        extra_kits=[("mallory", "node"), ("mallory2", "node")],
        node_timeout=20,
        max_payload_mb=2,
    )
    with f:
        yield f


def count_csv(path: Path, pred) -> int:
    with path.open() as fh:
        return sum(1 for row in csv.DictReader(fh) if pred(row))


def test_cohort_count_end_to_end(fed: LocalFederation) -> None:
    m = manifest(
        [
            ("alpha", ["y"], '{ field = "y", op = "==", value = 1 }'),
            ("beta", ["x1"], '{ field = "x1", op = ">", value = 0.5 }'),
        ]
    )
    with fed.client() as c:
        job = c.submit(m)
        st = c.wait(job.job_id, timeout=60)
        assert st.state == "succeeded", st.reason
        res = c.result(job.job_id)["alpha"]
    tmp = Path(fed.workdir).parent
    assert res["counts"]["alpha"] == count_csv(tmp / "a.csv", lambda r: r["y"] == "1")
    assert res["counts"]["beta"] == count_csv(tmp / "b.csv", lambda r: float(r["x1"]) > 0.5)
    assert res["total_released"] == res["counts"]["alpha"] + res["counts"]["beta"]
    # beta's audit log records the sealed envelope it sent, and the chain verifies
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedgov",
            "node",
            "audit",
            "--json",
            "--job",
            job.job_id,
            "--config",
            str(fed.workdir / "nodes" / "beta" / "node.toml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    audit = json.loads(out.stdout.splitlines()[-1])
    assert audit["chain_ok"] is True
    sends = [e for e in audit["entries"] if e["action"] == "relay-send"]
    assert len(sends) == 1 and sends[0]["detail"]["to"] == "alpha"
    # the relay queue is emptied once the job is over
    db = sqlite3.connect(fed.workdir / "state" / "coordinator" / "coordinator.db")
    assert db.execute("SELECT COUNT(*) FROM relay WHERE job_id=?", (job.job_id,)).fetchone()[0] == 0


SMALL_CELL = '{ field = "x1", op = "<", value = 0.05 }'  # 5 of beta's 100 rows, below its min_cohort 11


def test_small_cells_are_suppressed(fed: LocalFederation) -> None:
    """Released result: beta's small cell is reported as suppressed and is not in the total."""
    with fed.client() as c:
        job = c.submit(manifest([("alpha", ["x0"], ""), ("beta", ["x1"], SMALL_CELL)]))
        assert c.wait(job.job_id, timeout=60).state == "succeeded"
        res = c.result(job.job_id)["alpha"]
    assert res["counts"] == {"alpha": 100, "beta": None} and res["suppressed"] == ["beta"]
    assert res["total_released"] == 100  # the suppressed cell is not in the total


def test_a_small_cell_never_leaves_its_data_owner(fed: LocalFederation, mallory: FakeNode) -> None:
    """Suppression happens at the data owner, not at the aggregator: mallory plays the aggregator
    and opens what beta's process actually sent it."""
    with fed.client() as c:
        job = c.submit(manifest([("mallory", ["x"], ""), ("beta", ["x1"], SMALL_CELL)]))
    deadline = time.monotonic() + 30
    while job.job_id not in mallory.approve_all({job.job_id}):
        assert time.monotonic() < deadline
    with fed.client() as c:  # beta decides on its own; the relay opens once the job runs
        while c.status(job.job_id).state != "running":
            assert time.monotonic() < deadline, "job never started"
            time.sleep(0.1)
    blob = None
    while blob is None:
        assert time.monotonic() < deadline + 30, "beta never sent its count"
        blob = mallory.fetch(job.job_id, STEP, "beta", 0, wait=5)
    assert json.loads(mallory.open(job.job_id, blob)) == {"count": None}
    mallory.report(job.job_id)
    assert _final(fed, job.job_id).state == "succeeded"


def test_tls_refuses_missing_or_foreign_certificate(fed: LocalFederation, tmp_path: Path) -> None:
    ca_pem = (fed.kits / "analyst" / "ca.crt").read_bytes()
    no_cert = grpc.secure_channel(fed.address, grpc.ssl_channel_credentials(root_certificates=ca_pem))
    with pytest.raises(grpc.RpcError) as exc:
        registry_pb2_grpc.RegistryStub(no_cert).ListNodes(registry_pb2.ListNodesRequest(), timeout=5)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE  # handshake failed, no RPC ran
    create_ca(tmp_path / "evil-ca")
    issue_kit(tmp_path / "evil-ca", tmp_path / "evil", "analyst", "analyst")
    evil = TlsMaterial.from_kit(tmp_path / "evil")
    # trust the real CA for the server, but present a certificate from another CA
    foreign = secure_channel(TlsMaterial(ca=ca_pem, cert=evil.cert, key=evil.key), fed.address)
    with pytest.raises(grpc.RpcError) as exc:
        registry_pb2_grpc.RegistryStub(foreign).ListNodes(registry_pb2.ListNodesRequest(), timeout=5)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    plain = grpc.insecure_channel(fed.address)
    with pytest.raises(grpc.RpcError):
        registry_pb2_grpc.RegistryStub(plain).ListNodes(registry_pb2.ListNodesRequest(), timeout=5)


def test_roles_come_from_certificates(fed: LocalFederation) -> None:
    analyst = secure_channel(TlsMaterial.from_kit(fed.kits / "analyst"), fed.address)
    with pytest.raises(grpc.RpcError) as exc:
        jobs_pb2_grpc.JobsStub(analyst).PollTasks(jobs_pb2.PollTasksRequest(), timeout=5)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    mallory = FakeNode(fed.kits / "mallory", fed.address)
    try:
        # a node cannot submit jobs, nor register under another node's keys
        with pytest.raises(grpc.RpcError) as exc:
            mallory.jobs.Submit(jobs_pb2.SubmitJobRequest(manifest_toml="x"), timeout=5)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        alpha_bundle = mallory.registry.GetKeyBundle(registry_pb2.GetKeyBundleRequest(node="alpha")).bundle
        with pytest.raises(grpc.RpcError) as exc:
            mallory.registry.Register(registry_pb2.RegisterRequest(key_bundle=alpha_bundle), timeout=5)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # and cannot report on, or relay into, a job it is not part of
        with fed.client() as c:
            job = c.submit(manifest([("alpha", ["y"], ""), ("beta", ["x1"], "")]))
            c.wait(job.job_id, timeout=60)
        with pytest.raises(grpc.RpcError) as exc:
            mallory.jobs.Report(jobs_pb2.TaskReport(job_id=job.job_id, ok=True), timeout=5)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        mallory.close()


def test_refusals_reach_the_analyst(fed: LocalFederation) -> None:
    with fed.client() as c:
        # field the policy forbids: refused by beta itself, with its reason
        st = c.wait(c.submit(manifest([("alpha", ["y"], ""), ("beta", ["secret"], "")])).job_id, timeout=60)
        assert st.state == "rejected"
        assert "beta" in st.reason and "secret" in st.reason and "may not be used" in st.reason
        # purpose not allowed
        st = c.wait(c.submit(manifest([("alpha", ["y"], "")], purpose="marketing")).job_id, timeout=60)
        assert st.state == "rejected" and "purpose 'marketing' is not allowed" in st.reason
        # unknown dataset / field: refused at submission, naming the problem
        with pytest.raises(FedgovError, match="publishes no dataset 'nope'"):
            c.submit(manifest([("alpha", ["y"], "")], dataset="nope"))
        with pytest.raises(FedgovError, match="has no field.* zz"):
            c.submit(manifest([("alpha", ["zz"], "")]))
        with pytest.raises(FedgovError, match="node 'omega' is not registered"):
            c.submit(manifest([("omega", ["y"], "")]))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedgov", *args], capture_output=True, text=True, timeout=60)


def test_manual_dual_post_approval(fed: LocalFederation) -> None:
    cfg = str(fed.workdir / "nodes" / "gamma" / "node.toml")
    with fed.client() as c:
        job = c.submit(manifest([("alpha", ["y"], ""), ("gamma", ["x2"], "")]))
        deadline = time.monotonic() + 30
        while not any(
            r["job_id"] == job.job_id
            for r in json.loads(_cli("node", "pending", "--json", "--config", cfg).stdout or "[]")
        ):
            assert time.monotonic() < deadline, "job never reached gamma's approval queue"
            time.sleep(0.3)
        # an approver of another department is refused, with a one-line reason
        r = _cli("node", "approve", job.job_id, "--config", cfg, "--kit", str(fed.kits / "carl"))
        assert r.returncode == 2 and "not an approver of gamma" in r.stderr and "Traceback" not in r.stderr
        assert (
            _cli("node", "approve", job.job_id, "--config", cfg, "--kit", str(fed.kits / "ann")).returncode
            == 0
        )
        assert (
            _cli("node", "approve", job.job_id, "--config", cfg, "--kit", str(fed.kits / "ann")).returncode
            == 0
        )
        # one approver twice is still one approver. Barrier: a second job gamma must approve. Once
        # it has run, gamma's approval loop has evaluated the first job with ann's two approvals
        # recorded (each pass looks at every pending job and reports before gamma polls again)
        barrier = c.submit(manifest([("alpha", ["y"], ""), ("gamma", ["x2"], "")]))
        while not any(
            r["job_id"] == barrier.job_id
            for r in json.loads(_cli("node", "pending", "--json", "--config", cfg).stdout or "[]")
        ):
            assert time.monotonic() < deadline + 30, "barrier job never reached gamma's approval queue"
            time.sleep(0.3)
        for who in ("ann", "bob"):
            assert _cli("node", "approve", barrier.job_id, "--config", cfg, "--kit",
                        str(fed.kits / who)).returncode == 0
        assert c.wait(barrier.job_id, timeout=60).state == "succeeded"
        assert c.status(job.job_id).state == "submitted"
        assert (
            _cli("node", "approve", job.job_id, "--config", cfg, "--kit", str(fed.kits / "bob")).returncode
            == 0
        )
        st = c.wait(job.job_id, timeout=60)
        assert st.state == "succeeded", st.reason
        gamma = next(p for p in st.participants if p.node == "gamma")
        assert sorted(gamma.approvers) == ["ann", "bob"]


def _wait_pending(cfg: str, job_id: str, deadline: float) -> None:
    while not any(r["job_id"] == job_id
                  for r in json.loads(_cli("node", "pending", "--json", "--config", cfg).stdout or "[]")):
        assert time.monotonic() < deadline, f"{job_id} never reached the approval queue"
        time.sleep(0.3)


def test_a_forged_approval_is_not_counted(fed: LocalFederation) -> None:
    """Someone with write access to gamma's approval table adds a second approval in bob's name,
    signed with ann's key: gamma counts ann once (the signature must be bob's, over this manifest)."""
    from fedgov.crypto.signing import sign_approval
    from fedgov.manifest import parse_manifest
    from fedgov.node.store import NodeStore

    cfg = str(fed.workdir / "nodes" / "gamma" / "node.toml")
    deadline = time.monotonic() + 60
    with fed.client() as c:
        job = c.submit(manifest([("alpha", ["y"], ""), ("gamma", ["x2"], "")]))
        _wait_pending(cfg, job.job_id, deadline)
        assert _cli("node", "approve", job.job_id, "--config", cfg, "--kit", str(fed.kits / "ann")).returncode == 0
        store = NodeStore(fed.workdir / "state" / "gamma")
        try:
            pending = store.pending_job(job.job_id)
            assert pending is not None
            digest = parse_manifest(pending.manifest).digest
            bob_cert = (fed.kits / "bob" / "tls.crt").read_bytes()
            ann_key = (fed.kits / "ann" / "tls.key").read_bytes()
            forged = sign_approval(ann_key, job.job_id, digest, True, "")  # ann's key, bob's name
            store.add_approval(job.job_id, "bob", True, "", bob_cert, forged)
        finally:
            store.close()
        # barrier (see test_manual_dual_post_approval): once this job ran, gamma has evaluated
        # the first one with the forged approval in its table
        barrier = c.submit(manifest([("alpha", ["y"], ""), ("gamma", ["x2"], "")]))
        _wait_pending(cfg, barrier.job_id, deadline)
        for who in ("ann", "bob"):
            assert _cli("node", "approve", barrier.job_id, "--config", cfg, "--kit",
                        str(fed.kits / who)).returncode == 0
        assert c.wait(barrier.job_id, timeout=60).state == "succeeded"
        assert c.status(job.job_id).state == "submitted"
        # bob's real approval replaces the forged row and the job runs, approved by both
        assert _cli("node", "approve", job.job_id, "--config", cfg, "--kit", str(fed.kits / "bob")).returncode == 0
        st = c.wait(job.job_id, timeout=60)
    assert st.state == "succeeded", st.reason
    gamma = next(p for p in st.participants if p.node == "gamma")
    assert sorted(gamma.approvers) == ["ann", "bob"]


def _job_with_mallory(fed: LocalFederation, mallory: FakeNode) -> str:
    with fed.client() as c:
        job = c.submit(manifest([("alpha", ["y"], ""), ("mallory", ["x"], "")]))
    deadline = time.monotonic() + 20
    while job.job_id not in mallory.approve_all():
        assert time.monotonic() < deadline
    with fed.client() as c:
        deadline = time.monotonic() + 20
        while c.status(job.job_id).state != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    return job.job_id


@pytest.fixture
def mallory(fed: LocalFederation):
    m = FakeNode(fed.kits / "mallory", fed.address)
    m.register(["x"])
    m.heartbeat()
    yield m
    m.close()


def _final(fed: LocalFederation, job_id: str):
    with fed.client() as c:
        return c.wait(job_id, timeout=60)


STEP = "cohort-count/count"


def test_tampered_envelope_is_rejected(fed: LocalFederation, mallory: FakeNode) -> None:
    job_id = _job_with_mallory(fed, mallory)
    blob = bytearray(mallory.envelope(job_id, STEP, "alpha", 0, b'{"count": 5}'))
    blob[-80] ^= 0x01  # flip one ciphertext bit in transit
    mallory.post(job_id, STEP, "alpha", 0, bytes(blob))
    st = _final(fed, job_id)
    assert st.state == "failed" and "alpha" in st.reason and "tampered" in st.reason


def test_misaddressed_envelope_is_rejected(fed: LocalFederation, mallory: FakeNode) -> None:
    job_id = _job_with_mallory(fed, mallory)
    blob = mallory.envelope(job_id, STEP, "alpha", 0, b'{"count": 5}', sealed_for="beta")
    mallory.post(job_id, STEP, "alpha", 0, blob)
    st = _final(fed, job_id)
    assert st.state == "failed" and "addressed to beta, not to this node (alpha)" in st.reason


def test_replayed_envelope_is_rejected(fed: LocalFederation, mallory: FakeNode) -> None:
    first = _job_with_mallory(fed, mallory)
    old = mallory.envelope(first, STEP, "alpha", 0, b'{"count": 50}')
    mallory.post(first, STEP, "alpha", 0, old)
    mallory.report(first)
    assert _final(fed, first).state == "succeeded"
    second = _job_with_mallory(fed, mallory)
    mallory.post(second, STEP, "alpha", 0, old)  # the same bytes, into another job
    st = _final(fed, second)
    assert st.state == "failed" and "replayed" in st.reason


def test_oversized_payload_gets_a_clear_error(fed: LocalFederation, mallory: FakeNode) -> None:
    job_id = _job_with_mallory(fed, mallory)
    with pytest.raises(grpc.RpcError) as exc:
        mallory.post(job_id, STEP, "alpha", 0, b"\0" * (3 * 1024 * 1024))
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeds the relay limit of 2097152 bytes" in exc.value.details()
    with fed.client() as c:
        c.cancel(job_id)


def test_cli_errors_are_one_line(fed: LocalFederation, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[job]\nkind = "cohort-count"\npurpose = \n')
    common = ["--kit", str(fed.kits / "analyst"), "--coordinator", fed.address]
    r = _cli("job", "submit", str(bad), *common)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (
        r.stderr.startswith(f"fedgov: error: {bad}: invalid TOML") and len(r.stderr.strip().splitlines()) == 1
    )
    bad.write_text(manifest([("alpha", ["y"], "")]).replace("fields", "feilds"))
    r = _cli("job", "submit", str(bad), *common)
    assert r.returncode == 2 and "unknown key 'feilds'" in r.stderr and "did you mean 'fields'" in r.stderr
    r = _cli("job", "status", "job-doesnotexist", *common)
    assert r.returncode == 2 and "no job 'job-doesnotexist'" in r.stderr


def test_node_with_bad_data_fails_at_start_with_a_clear_error(tmp_path: Path) -> None:
    tmp = tmp_path
    a = write_csv(tmp / "a.csv", ["id", "y", "x0"], [[1, 1, 0.5], [2, 0, "abc"]])
    spec = NodeSpec(
        "alpha",
        policy(tmp / "pa.toml", ["y"]),
        [
            DatasetSpec(
                "data", schema(tmp / "sa.toml", "data", {"id": "string", "y": "int", "x0": "float"}), str(a)
            )
        ],
    )
    with pytest.raises(FedgovError) as exc, LocalFederation(tmp / "f", [spec]):
        pass
    assert "node 'alpha' exited at start" in str(exc.value)
    assert "row 2" in str(exc.value) and "x0" in str(exc.value) and "abc" in str(exc.value)


def test_tls12_only_with_forward_secret_aead_suites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """grpcio cannot refuse TLS 1.2, so 1.2 must be limited to ECDHE + AEAD suites,
    whatever the environment says."""
    import socket
    import ssl

    monkeypatch.setenv("GRPC_SSL_CIPHER_SUITES", "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-GCM-SHA256")
    with LocalFederation(tmp_path / "f", []) as fed:
        host, port = fed.address.rsplit(":", 1)
        kit = fed.kits / "analyst"

        def handshake(ciphers: str) -> str | None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_verify_locations(kit / "ca.crt")
            ctx.load_cert_chain(kit / "tls.crt", kit / "tls.key")
            ctx.set_ciphers(ciphers)
            ctx.set_alpn_protocols(["h2"])
            with socket.create_connection((host, int(port)), timeout=5) as raw:
                try:
                    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                        return tls.cipher()[0]
                except (ssl.SSLError, ConnectionResetError):
                    return None

        assert handshake("ECDHE-ECDSA-AES128-GCM-SHA256") == "ECDHE-ECDSA-AES128-GCM-SHA256"
        assert handshake("ECDHE-ECDSA-AES128-SHA") is None  # CBC suite: refused


def test_cancel_withdraws_a_pending_job_everywhere(fed: LocalFederation) -> None:
    cfg = str(fed.workdir / "nodes" / "gamma" / "node.toml")
    common = ["--kit", str(fed.kits / "analyst"), "--coordinator", fed.address]
    with fed.client() as c:
        job = c.submit(manifest([("alpha", ["y"], ""), ("gamma", ["x2"], "")]))
    deadline = time.monotonic() + 30
    while not any(r["job_id"] == job.job_id for r in json.loads(_cli("node", "pending", "--json", "--config", cfg).stdout or "[]")):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    r = _cli("job", "cancel", job.job_id, *common)
    assert r.returncode == 0 and "cancelled" in r.stdout
    listed = json.loads(_cli("job", "list", "--json", "--state", "cancelled", *common).stdout)
    assert job.job_id in {j["job_id"] for j in listed}
    # gamma drops it from its approval queue once told
    deadline = time.monotonic() + 30
    while any(r["job_id"] == job.job_id for r in json.loads(_cli("node", "pending", "--json", "--config", cfg).stdout or "[]")):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    r = _cli("node", "approve", job.job_id, "--config", cfg, "--kit", str(fed.kits / "ann"))
    assert r.returncode == 2 and "already aborted" in r.stderr
    # a cancelled job cannot be cancelled again
    r = _cli("job", "cancel", job.job_id, *common)
    assert r.returncode == 2 and "already cancelled" in r.stderr


def test_a_node_runs_only_the_manifest_it_approved(fed: LocalFederation) -> None:
    """A coordinator that swaps in another (validly signed) manifest after approval is caught.

    Manifest B is signed by the analyst but never shown to alpha (a coordinator
    that withheld a submission), so alpha's replay table does not know it: the
    approved-digest check is what refuses it.
    """
    from fedgov.crypto.keys import ResultKey
    from fedgov.crypto.signing import sign_manifest
    from fedgov.manifest import stamp_manifest

    cfg = str(fed.workdir / "nodes" / "gamma" / "node.toml")
    other = manifest([("alpha", ["y"], '{ field = "y", op = "==", value = 0 }'), ("gamma", ["x2"], "")])
    b_text = stamp_manifest(other, result_key=ResultKey("analyst").public_bytes)
    b_sig = sign_manifest((fed.kits / "analyst" / "tls.key").read_bytes(), b_text)
    with fed.client() as c:
        a = c.submit(manifest([("alpha", ["y"], '{ field = "y", op = "==", value = 1 }'), ("gamma", ["x2"], "")]))
        deadline = time.monotonic() + 30
        while next(p for p in c.status(a.job_id).participants if p.node == "alpha").decision != "approved":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        db = sqlite3.connect(fed.workdir / "state" / "coordinator" / "coordinator.db", timeout=30)
        with db:  # the coordinator rewrites job A with signed manifest B
            db.execute("UPDATE jobs SET manifest=?, signature=? WHERE job_id=?", (b_text, b_sig, a.job_id))
        db.close()
        while not any(r["job_id"] == a.job_id for r in json.loads(_cli("node", "pending", "--json", "--config", cfg).stdout or "[]")):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        for who in ("ann", "bob"):  # gamma's approvers sign what gamma was shown: manifest A
            assert _cli("node", "approve", a.job_id, "--config", cfg, "--kit", str(fed.kits / who)).returncode == 0
        st = c.wait(a.job_id, timeout=60)
    assert st.state == "failed"
    assert "the manifest to run is not the one this node approved" in st.reason
