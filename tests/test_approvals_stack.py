"""Parameters, approvers' briefs and who may approve, attacked through a real federation.

Real coordinator and node processes over mutual TLS (fedgov.runner.LocalFederation).
Findings of issue 12 covered here:

- 4: a manifest parameter typo (PSI ``mdoe``, vertical-LR ``epoch``) is refused
  at submit with a did-you-mean, by the client, by the coordinator when the
  client is bypassed, and by every node before anyone is asked to approve when
  the coordinator is bypassed too (a job forged straight into its store);
- 5: ``fedgov node pending`` / ``fedgov node show`` show the approver the full
  manifest, the parameters, the where filters, recipients, other participants,
  this department's floor, what leaves the node and what each party learns;
- 7: a requester cannot approve their own job, and the two approvers of a
  dual-control dataset are distinct people (names, certificates, keys), at the
  CLI and at the node (approvals written straight into the node's store).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from fedgov.coordinator.store import CoordinatorStore
from fedgov.crypto.keys import ResultKey
from fedgov.crypto.kits import issue_kit
from fedgov.crypto.pki import issue_certificate, load_private_key
from fedgov.crypto.signing import sign_approval, sign_manifest
from fedgov.errors import ConfigError
from fedgov.manifest import stamp_manifest
from fedgov.node.brief import Brief
from fedgov.node.store import NodeStore
from fedgov.runner import DatasetSpec, LocalFederation, NodeSpec
from fedgov.transport.tls import TlsMaterial, secure_channel
from fedgov.v1 import jobs_pb2, jobs_pb2_grpc
from tests.conftest import write_csv

pytestmark = pytest.mark.slow

PURPOSE = "test-approvals"
KINDS = '["cohort-count", "psi", "vertical-lr"]'


def _schema(path: Path, fields: dict[str, str]) -> Path:
    lines = ["[dataset]", 'name = "data"', 'key = "id"']
    for f, t in fields.items():
        lines += ["[[fields]]", f'name = "{f}"', f'type = "{t}"', f"required = {str(f == 'id').lower()}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _policy(path: Path, fields: list[str], approval: str) -> Path:
    path.write_text(
        f'[defaults]\nmin_cohort = 11\nrequesters = ["*"]\n{approval}\n'
        f'[[datasets.data.rules]]\npurposes = ["{PURPOSE}"]\nkinds = {KINDS}\nfields = {json.dumps(fields)}\n'
    )
    return path


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("approvals")
    a = write_csv(tmp / "a.csv", ["id", "y", "x0"], [[i, i % 2, (i * 37 % 100) / 100] for i in range(60)])
    g = write_csv(tmp / "g.csv", ["id", "x2"], [[i, i % 7] for i in range(60)])
    (tmp / "keeper.toml").write_text('[arbiter]\nkinds = ["vertical-lr"]\n')
    nodes = [
        NodeSpec("alpha", _policy(tmp / "pa.toml", ["id", "y", "x0"], 'approval = "auto"'),
                 [DatasetSpec("data", _schema(tmp / "sa.toml", {"id": "string", "y": "int", "x0": "float"}),
                              str(a))]),
        NodeSpec("gamma", _policy(tmp / "pg.toml", ["id", "x2"], 'approval = "manual"\napprovers_required = 2'),
                 [DatasetSpec("data", _schema(tmp / "sg.toml", {"id": "string", "x2": "int"}), str(g))]),
        NodeSpec("keeper", tmp / "keeper.toml", []),
    ]
    f = LocalFederation(tmp / "federation", nodes, approvers={"gamma": ["ann", "bob"]},
                        extra_kits=[("dan", "analyst")], node_timeout=30)
    with f:
        issue_kit(f.workdir / "ca", f.kits / "dan-approver", "dan", "approver", department="gamma")
        _kit_with_key_of(f, "ann", "ann2", "approver", "gamma")  # one person, two approver names
        yield f


def _kit_with_key_of(fed: LocalFederation, src: str, name: str, role: str, dept: str | None) -> Path:
    """A kit for ``name`` whose certificate is over ``src``'s key (a re-used key or CSR)."""
    out = fed.kits / f"{name}-same-key"
    out.mkdir(mode=0o700)
    shutil.copy(fed.kits / src / "ca.crt", out / "ca.crt")
    shutil.copy(fed.kits / src / "tls.key", out / "tls.key")
    key = load_private_key(out / "tls.key")
    cert = issue_certificate(fed.workdir / "ca", key.public_key(), name, role, department=dept)
    (out / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedgov", *args], capture_output=True, text=True, timeout=120)


def _cfg(fed: LocalFederation, node: str = "gamma") -> str:
    return str(fed.workdir / "nodes" / node / "node.toml")


def _pending(fed: LocalFederation, node: str = "gamma") -> list[dict[str, Any]]:
    r = _cli("node", "pending", "--json", "--config", _cfg(fed, node))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout or "[]")


def _audit(fed: LocalFederation, job_id: str, node: str = "gamma") -> list[dict[str, Any]]:
    store = NodeStore(fed.workdir / "state" / node)
    try:
        return store.audit_entries(job_id)
    finally:
        store.close()


def _until(cond: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def _wait_pending(fed: LocalFederation, job_id: str) -> dict[str, Any]:
    return _until(lambda: next((r for r in _pending(fed) if r["job_id"] == job_id), None),
                  f"{job_id} never reached gamma's approval queue")


def _text(fed: LocalFederation, body: str, *, who: str = "analyst") -> tuple[str, bytes]:
    text = stamp_manifest(body, result_key=ResultKey(who).public_bytes)
    return text, sign_manifest((fed.kits / who / "tls.key").read_bytes(), text)


def _cohort(where: str = "") -> str:
    return (f'[job]\nkind = "cohort-count"\npurpose = "{PURPOSE}"\n'
            '[[participants]]\nnode = "alpha"\ndataset = "data"\nfields = ["y"]\nrole = "aggregator"\n'
            f'[[participants]]\nnode = "gamma"\ndataset = "data"\nfields = ["x2"]\n{where}')


PSI_TYPO = (f'[job]\nkind = "psi"\npurpose = "{PURPOSE}"\n'
            '[[participants]]\nnode = "alpha"\ndataset = "data"\nfields = ["id"]\n'
            '[[participants]]\nnode = "gamma"\ndataset = "data"\nfields = ["id"]\n'
            '[parameters]\nmdoe = "cardinality"\n')


def _vlr(params: str) -> str:
    return (f'[job]\nkind = "vertical-lr"\npurpose = "{PURPOSE}"\ndescription = "risk model, approvers read this"\n'
            '[[participants]]\nnode = "alpha"\ndataset = "data"\nfields = ["id", "y"]\nrole = "guest"\n'
            'id = "id"\nlabel = "y"\n'
            '[[participants]]\nnode = "gamma"\ndataset = "data"\nfields = ["id", "x2"]\nid = "id"\n'
            'where = [{ field = "x2", op = ">", value = 1 }]\n'
            '[[participants]]\nnode = "keeper"\nrole = "arbiter"\n'
            f'[parameters]\n{params}\n[results]\nrecipients = ["requester", "alpha"]\n')


def _forge(fed: LocalFederation, body: str, nodes: list[str]) -> str:
    """A job written straight into the coordinator's store: the coordinator's own checks never run."""
    text, sig = _text(fed, body)
    store = CoordinatorStore(fed.workdir / "state" / "coordinator" / "coordinator.db")
    try:
        return store.create_job(kind=text.split('kind = "', 1)[1].split('"', 1)[0], purpose=PURPOSE,
                                requester="analyst", manifest=text, signature=sig,
                                requester_cert=(fed.kits / "analyst" / "tls.crt").read_bytes(), nodes=nodes)
    finally:
        store._db.close()


def _raw_submit(fed: LocalFederation, text: str, sig: bytes) -> grpc.RpcError:
    """Submit a signed manifest without the client's own parameter check; the coordinator's refusal."""
    with secure_channel(TlsMaterial.from_kit(fed.kits / "analyst"), fed.address) as ch:
        try:
            jobs_pb2_grpc.JobsStub(ch).Submit(jobs_pb2.SubmitJobRequest(manifest_toml=text, signature=sig),
                                              timeout=30)
        except grpc.RpcError as exc:
            return exc
    raise AssertionError("the coordinator accepted a manifest with an unknown parameter")


# -- finding 4: one parameter schema, checked at submit and at every node ------------------


def test_psi_mode_typo_is_refused_at_submit_with_did_you_mean(fed: LocalFederation, tmp_path: Path) -> None:
    path = tmp_path / "psi.toml"
    path.write_text(PSI_TYPO)
    r = _cli("job", "submit", str(path), "--kit", str(fed.kits / "analyst"), "--coordinator", fed.address)
    assert r.returncode == 2, r.stdout
    assert "unknown psi parameter 'mdoe' (did you mean 'mode'?)" in r.stderr and "Traceback" not in r.stderr
    # a client that skips its own check: the coordinator refuses the signed manifest at Submit
    text, sig = _text(fed, PSI_TYPO)
    err = _raw_submit(fed, text, sig)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown psi parameter 'mdoe' (did you mean 'mode'?)" in (err.details() or "")


def test_vlr_epoch_typo_is_refused_before_any_approver_is_asked(fed: LocalFederation) -> None:
    with fed.client() as c, pytest.raises(ConfigError, match=r"unknown vertical-lr parameter 'epoch' "
                                                           r"\(did you mean 'epochs'\?\)"):
        c.submit(_vlr("epoch = 3"))
    text, sig = _text(fed, _vlr("epoch = 3"))
    err = _raw_submit(fed, text, sig)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "did you mean 'epochs'?" in (err.details() or "")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (PSI_TYPO, "unknown psi parameter 'mdoe' (did you mean 'mode'?)"),
        (_vlr("epoch = 3"), "unknown vertical-lr parameter 'epoch' (did you mean 'epochs'?)"),
    ],
    ids=["psi-mdoe", "vlr-epoch"],
)
def test_a_coordinator_that_skips_its_check_is_refused_by_the_node_before_approval(
    fed: LocalFederation, body: str, message: str
) -> None:
    """The job is forged for gamma alone (manual approval): gamma must refuse it, not queue it."""
    job_id = _forge(fed, body, ["gamma"])

    def settled() -> Any:
        with fed.client() as c:
            st = c.status(job_id)
        queued = any(r["job_id"] == job_id for r in _pending(fed))
        return (st, queued) if st.state != "submitted" or queued else None

    st, queued = _until(settled, "the forged job was neither refused nor queued")
    assert not queued, "gamma asked its approvers about a manifest with an unknown parameter"
    assert st.state == "rejected", st
    gamma = next(p for p in st.participants if p.node == "gamma")
    assert message in gamma.reason and message in st.reason, st
    assert not any(e["action"] == "awaiting-approval" for e in _audit(fed, job_id))


def test_a_value_only_the_protocol_can_judge_is_refused_before_approval(fed: LocalFederation) -> None:
    """batch_size passes the schema (an integer >= 1) but not CKKS (4096 slots): gamma refuses, never queues."""
    with fed.client() as c:
        job = c.submit(_vlr("batch_size = 100000"))

        def settled() -> Any:
            st = c.status(job.job_id)
            queued = any(r["job_id"] == job.job_id for r in _pending(fed))
            return (st, queued) if st.state != "submitted" or queued else None

        st, queued = _until(settled, "the job was neither refused nor queued")
    assert not queued, "gamma asked its approvers about a batch size CKKS cannot hold"
    assert st.state == "rejected" and "batch_size must be 1..4096 (CKKS slots)" in st.reason, st
    assert not any(e["action"] == "awaiting-approval" for e in _audit(fed, job.job_id))


# -- finding 5: what approvers see ---------------------------------------------------------


def test_node_show_gives_the_approver_the_whole_job(fed: LocalFederation) -> None:
    with fed.client() as c:
        job = c.submit(_vlr("epochs = 2\nshapley = true"))
        row = _wait_pending(fed, job.job_id)
        assert row["approvals"] == "0 of 2" and row["parameters"]["shapley"] is True
        r = _cli("node", "pending", "--config", _cfg(fed))
        assert job.job_id in r.stdout and "shapley=true" in r.stdout and "approvals 0 of 2" in r.stdout
        assert "where=x2 > 1" in r.stdout and "others=alpha,keeper" in r.stdout
        r = _cli("node", "show", job.job_id, "--config", _cfg(fed))
        assert r.returncode == 0, r.stderr
        out = r.stdout
        for needle in (
            "vertical-lr for purpose 'test-approvals'",
            "risk model, approvers read this",  # the description
            "shapley = true  | manifest",  # the Shapley opt-in (vertical-lr.md: approvers see it)
            "epochs = 2  | manifest",
            "join = inner  | default",  # a default the manifest did not set
            "where: x2 > 1",  # this node's filter
            "min_cohort = 11",  # this department's floor
            "alpha (role guest): dataset=data fields=id,y",  # the other participants
            "keeper (role arbiter)",
            "vlr/score -> alpha",  # what leaves, to whom
            "result -> analyst",
            "[results] recipients also receive the result: alpha",
            "host: its own batch gradients",  # what the page says each party learns
            "approvals: 0 of 2",
        ):
            assert needle in out, f"{needle!r} not in:\n{out}"
        brief = json.loads(_cli("node", "show", job.job_id, "--json", "--config", _cfg(fed)).stdout)
        assert brief["manifest_sha256"] in out and brief["others"][0]["node"] == "alpha"
        assert {p["key"]: p["value"] for p in brief["parameters"]}["shapley"] is True
        c.cancel(job.job_id)


# -- finding 7: requester != approver, distinct approvers ------------------------------------


def _forge_approval(
    fed: LocalFederation, job_id: str, kit: Path, name: str, *, manifest: str = "", brief: str | None = None
) -> None:
    """An approval written straight into gamma's store (an approver who skips `fedgov node approve`).

    Signed over the job's manifest and brief digests unless ``manifest`` / ``brief`` say otherwise.
    """
    show = json.loads(_cli("node", "show", job_id, "--json", "--config", _cfg(fed)).stdout)
    sig = sign_approval((kit / "tls.key").read_bytes(), job_id, manifest or show["manifest_sha256"], True, "",
                        brief_digest=Brief.from_dict(show).digest if brief is None else brief)
    store = NodeStore(fed.workdir / "state" / "gamma")
    try:
        store.add_approval(job_id, name, True, "", (kit / "tls.crt").read_bytes(), sig)
    finally:
        store.close()


def _processed(fed: LocalFederation, job_id: str, name: str) -> Callable[[], Any]:
    """The node has either ignored ``name``'s approval or counted it."""

    def check() -> Any:
        for e in _audit(fed, job_id):
            if e["action"] == "approval-ignored" and e["detail"]["approver"] == name:
                return ("ignored", e["detail"]["reason"])
            if e["action"] == "approvals-counted" and name in e["detail"]["approvers"]:
                return ("counted", e["detail"]["count"])
        return None

    return check


def _approve(fed: LocalFederation, job_id: str, kit: Path) -> subprocess.CompletedProcess[str]:
    return _cli("node", "approve", job_id, "--config", _cfg(fed), "--kit", str(kit))


def test_a_requester_cannot_approve_their_own_job(fed: LocalFederation) -> None:
    with fed.client("dan") as c:
        job = c.submit(_cohort())
        _wait_pending(fed, job.job_id)
        # at the node: dan's approval, written into the store, is not counted
        _forge_approval(fed, job.job_id, fed.kits / "dan-approver", "dan")
        got = _until(_processed(fed, job.job_id, "dan"), "gamma never looked at dan's approval")
        assert got[0] == "ignored" and "a requester may not approve their own job" in got[1], got
        # at the CLI: the same person, as approver, reads why
        r = _approve(fed, job.job_id, fed.kits / "dan-approver")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert f"dan requested job {job.job_id}: a requester may not approve their own job" in r.stderr
        for who in ("ann", "bob"):
            assert _approve(fed, job.job_id, fed.kits / who).returncode == 0
        st = c.wait(job.job_id, timeout=120)
    assert st.state == "succeeded", st.reason
    assert sorted(next(p for p in st.participants if p.node == "gamma").approvers) == ["ann", "bob"]


def test_an_approval_of_another_manifest_or_brief_is_not_counted(fed: LocalFederation) -> None:
    """The approval signature covers the manifest digest and the brief the approver was shown."""
    with fed.client() as c:
        job = c.submit(_cohort())
        _wait_pending(fed, job.job_id)
        _forge_approval(fed, job.job_id, fed.kits / "ann", "ann", manifest="0" * 64)
        got = _until(_processed(fed, job.job_id, "ann"), "gamma never looked at ann's approval")
        assert got[0] == "ignored" and "does not verify" in got[1], got
        _forge_approval(fed, job.job_id, fed.kits / "bob", "bob", brief="")  # not over the brief shown
        got = _until(_processed(fed, job.job_id, "bob"), "gamma never looked at bob's approval")
        assert got[0] == "ignored" and "does not verify" in got[1], got
        r = _cli("node", "show", "job-nope", "--config", _cfg(fed))
        assert r.returncode == 2 and "no job 'job-nope' awaits approval at gamma" in r.stderr
        c.cancel(job.job_id)


def test_dual_control_needs_two_distinct_people(fed: LocalFederation) -> None:
    ann2 = fed.kits / "ann2-same-key"
    with fed.client() as c:
        job = c.submit(_cohort())
        _wait_pending(fed, job.job_id)
        assert _approve(fed, job.job_id, fed.kits / "ann").returncode == 0
        _until(_processed(fed, job.job_id, "ann"), "gamma never counted ann")
        # one approval is not two: the node counted it and did not proceed
        row = next(r for r in _pending(fed) if r["job_id"] == job.job_id)
        assert row["approvals"] == "1 of 2" and c.status(job.job_id).state == "submitted"
        # a second certificate over ann's key does not make a second person, at the node ...
        _forge_approval(fed, job.job_id, ann2, "ann2")
        got = _until(_processed(fed, job.job_id, "ann2"), "gamma never looked at ann2's approval")
        assert got[0] == "ignored" and "must be distinct people (distinct certificates and keys)" in got[1], got
        assert any(r["job_id"] == job.job_id for r in _pending(fed))
        # ... nor at the CLI
        r = _approve(fed, job.job_id, ann2)
        assert r.returncode == 2 and "ann2's key is also ann's, who already approved" in r.stderr
        assert _approve(fed, job.job_id, fed.kits / "bob").returncode == 0
        st = c.wait(job.job_id, timeout=120)
    assert st.state == "succeeded", st.reason
    assert sorted(next(p for p in st.participants if p.node == "gamma").approvers) == ["ann", "bob"]
