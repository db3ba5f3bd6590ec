"""Evidence bundle of one job: a good bundle verifies offline; each kind of tampering is named."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgov.crypto.keys import NodeKeys
from fedgov.crypto.kits import issue_kit
from fedgov.crypto.pki import create_ca
from fedgov.ledger import bundle as B
from fedgov.ledger import entries as le
from fedgov.ledger.facts import sign_fact
from fedgov.ledger.log import TransparencyLog, cosignature_message, public_key_bytes

DEPTS = ("tax", "health", "civil")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    """A ledger with three jobs, every department's key, heads cosigned by two of three departments."""
    tmp = tmp_path_factory.mktemp("bundle")
    create_ca(tmp / "ca", "bundle test")
    keys = {}
    for n in DEPTS:
        issue_kit(tmp / "ca", tmp / n, n, "node")
        keys[n] = NodeKeys.load(tmp / n)
    ca = x509.load_pem_x509_certificate(Path(tmp / "ca" / "ca.crt").read_bytes())
    log_key = Ed25519PrivateKey.generate()
    log = TransparencyLog(tmp / "ledger.db", log_key)
    log.append_many([le.node_registered(n, "d" * 64) for n in DEPTS])
    log.append_many([le.node_key(n, keys[n].bundle()) for n in DEPTS])
    for job in ("job-1", "job-2", "job-3"):
        t, h = keys["tax"], keys["health"]
        approved_by_health = le.job_approved(job, "health")
        if job != "job-3":  # job-3: the coordinator's own word that health approved
            approved_by_health = sign_fact(approved_by_health, "health", h.sign)
        log.append_many([
            le.job_submitted(job, "psi", "p", "analyst", "c" * 64,
                             {"tax": ("income", ["id"]), "health": ("visits", ["id"])}),
            sign_fact(le.job_approved(job, "tax"), "tax", t.sign),
            approved_by_health,
            le.job_started(job),
            *[le.job_started(f"filler-{job}-{i}") for i in range(5)],
            sign_fact(le.contribution(job, "tax", "income", 100, ["id"]), "tax", t.sign),
            sign_fact(le.contribution(job, "health", "visits", 80, ["id"]), "health", h.sign),
            le.job_completed(job, "succeeded"),
        ])
        head = log.tree_head(fresh=True)
        for n in ("tax", "health"):  # civil's witness is behind: exactly 2 of 3 vouch
            log.add_cosignature(n, head, keys[n].sign(cosignature_message(head)))
    log.append(le.job_started("after-the-heads"))
    head = log.tree_head(fresh=True)
    log.add_cosignature("tax", head, keys["tax"].sign(cosignature_message(head)))  # 1 of 3: no quorum
    return tmp, ca, log, keys


def _cos(log: TransparencyLog):
    return [(c.witness, c.sth, c.signature) for c in log.cosignatures()]


def _check(bundle, ca, log):
    return B.check_bundle(bundle, ca_cert=ca, log_key=log.public_key)


def test_good_bundle_verifies_with_every_check_listed(fed) -> None:
    _, ca, log, _ = fed
    bundle = B.build_bundle(log, "job-1", _cos(log))
    doc = B.loads(B.dumps(bundle))
    rep = B.verify_bundle(doc, ca_cert=ca, log_key=log.public_key)
    job_entries = [e for e in doc["entries"] if json.loads(e["data"]).get("job") == "job-1"]
    assert len(job_entries) == 7 and rep.ok
    kinds = {c.kind for c in rep.checks}
    assert {"log_key", "head", "entry", "consistency", "cosignature", "quorum", "fact"} <= kinds
    assert rep.cosigners == ["health", "tax"] and (rep.k, rep.n) == (2, 3)
    assert sum(c.kind == "fact" for c in rep.checks) == 4
    # the anchor is the largest quorum head, not the later head only tax cosigned
    assert doc["anchor"]["size"] == log.size - 1
    # job-2's bundle reaches the same anchor and shares nothing of job-1's entries
    other = B.build_bundle(log, "job-2", _cos(log))
    assert not {e["index"] for e in other["entries"]} & {e["index"] for e in job_entries}


def test_one_byte_of_one_entry_changed_names_the_entry(fed) -> None:
    _, ca, log, _ = fed
    bundle = B.build_bundle(log, "job-1", _cos(log))
    bad = copy.deepcopy(bundle)
    target = next(e for e in bad["entries"] if '"records":100' in e["data"])
    target["data"] = target["data"].replace('"records":100', '"records":900')
    rep = _check(bad, ca, log)
    assert not rep.ok
    first = rep.problems[0]
    assert isinstance(first, B.EntryProofFailed) and first.subject == f"entry {target['index']}"
    with pytest.raises(B.EntryProofFailed, match=f"entry {target['index']} is not in the log"):
        B.verify_bundle(bad, ca_cert=ca, log_key=log.public_key)


def test_dropped_proof_step_names_the_entry(fed) -> None:
    _, ca, log, _ = fed
    bad = B.build_bundle(log, "job-1", _cos(log))
    target = bad["entries"][-1]
    target["proof"] = target["proof"][:-1]
    rep = _check(bad, ca, log)
    assert [p.subject for p in rep.problems] == [f"entry {target['index']}"]
    assert isinstance(rep.problems[0], B.EntryProofFailed) and "too short" in rep.problems[0].message


def test_head_with_a_missing_cosignature_fails_naming_the_head(fed) -> None:
    _, ca, log, _ = fed
    bad = B.build_bundle(log, "job-1", _cos(log))
    anchor = bad["anchor"]["size"]
    head = next(h for h in bad["heads"] if h["head"]["size"] == anchor)
    head["cosignatures"] = [c for c in head["cosignatures"] if c["witness"] != "health"]  # 1 of 3 left
    rep = _check(bad, ca, log)
    assert [type(p) for p in rep.problems] == [B.QuorumNotMet]
    assert rep.problems[0].subject == f"head {anchor}" and "needs 2" in rep.problems[0].message


def test_forged_cosignature_and_head_signature_and_foreign_key_are_named(fed) -> None:
    _, ca, log, _ = fed
    good = B.build_bundle(log, "job-1", _cos(log))
    bad = copy.deepcopy(good)
    bad["heads"][0]["cosignatures"][0]["signature"] = Ed25519PrivateKey.generate().sign(b"x").hex()
    rep = _check(bad, ca, log)
    assert any(isinstance(p, B.CosignatureFailed) for p in rep.problems) and rep.ok is False
    bad = copy.deepcopy(good)
    bad["anchor"]["signature"] = "00" * 64
    rep = _check(bad, ca, log)
    assert isinstance(rep.problems[0], B.HeadSignatureFailed) and rep.problems[0].subject.startswith("head ")
    rep = B.check_bundle(good, ca_cert=ca, log_key=Ed25519PrivateKey.generate().public_key())
    assert isinstance(rep.problems[0], B.LogKeyFailed)
    # a fact in the log in the coordinator's words only: proofs hold, the fact is named
    rep = _check(B.build_bundle(log, "job-3", _cos(log)), ca, log)
    (only,) = rep.problems
    assert isinstance(only, B.FactFailed) and "unsigned" in only.message
    index = next(i for i, b in log.query_all(job="job-3") if b'"job_approved"' in b and b'"health"' in b)
    assert only.subject == f"entry {index}"


def test_bundle_without_quorum_is_refused_at_build(fed, tmp_path: Path) -> None:
    _, _, log, _ = fed
    with pytest.raises(B.FedgovError, match="wait for the witnesses"):
        B.build_bundle(log, "after-the-heads", _cos(log))
    with pytest.raises(B.FedgovError, match="no ledger entries"):
        B.build_bundle(log, "no-such-job", _cos(log))


def test_cli_bundle_and_offline_verify(fed, tmp_path: Path) -> None:
    tmp, ca, log, _ = fed
    out = tmp_path / "job-1.bundle.json"
    pub = tmp_path / "ledger.pub"
    pub.write_text(public_key_bytes(log.public_key).hex())
    run = [sys.executable, "-m", "fedgov", "ledger"]
    subprocess.run([*run, "bundle", "job-1", "--db", str(log.path), "--out", str(out)], check=True,
                   capture_output=True, text=True)
    ok = subprocess.run([*run, "verify", "--bundle", str(out), "--trusted-key", str(pub),
                         "--ca", str(tmp / "ca" / "ca.crt"), "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["verified"] is True
    doc = json.loads(out.read_text())
    doc["entries"][-1]["proof"].pop()
    out.write_text(json.dumps(doc))
    bad = subprocess.run([*run, "verify", "--bundle", str(out), "--trusted-key", str(pub),
                          "--ca", str(tmp / "ca" / "ca.crt")], capture_output=True, text=True)
    assert bad.returncode != 0 and f"entry {doc['entries'][-1]['index']}" in bad.stdout + bad.stderr


def test_query_filters_and_keyset_pages_match_a_full_scan(fed, tmp_path: Path) -> None:
    _, _, log, _ = fed
    from fedgov.cli_ledger import open_readonly
    from fedgov.ledger.entries import parse_entry
    from fedgov.ledger.log import entry_meta

    every = list(log.iter_entries())
    for filters in ({"types": ["contribution"]}, {"node": "tax"}, {"job": "job-2"},
                    {"node": "health", "types": ["job_approved", "contribution"]}, {}):
        want = [i for i, b in every if (m := entry_meta(parse_entry(b)))
                and (not filters.get("types") or m[0] in filters["types"])
                and (not filters.get("node") or m[1] == filters["node"])
                and (not filters.get("job") or m[2] == filters["job"])]
        got, cursor = [], None
        while True:  # newest first, three at a time
            page, cursor = log.query(**filters, before=cursor, limit=3)
            got += [i for i, _ in page]
            if cursor is None:
                break
        assert got == want[::-1] and [i for i, _ in log.query_all(**filters)] == want
    ts = parse_entry(log.entry(20)).ts
    assert all(parse_entry(b).ts >= ts for _, b in log.query(since_ms=ts, limit=1000)[0])
    # time ranges (served as an index range first) equal a scan, bounds and pages included
    stamps = sorted({parse_entry(b).ts for _, b in every})
    for since, until in ((ts, None), (None, ts), (stamps[1], stamps[-1]), (stamps[-1] + 1, None)):
        want = [i for i, b in every if (since is None or parse_entry(b).ts >= since)
                and (until is None or parse_entry(b).ts < until)]
        got, cursor = [], None
        while True:
            page, cursor = log.query(since_ms=since, until_ms=until, before=cursor, limit=2)
            got += [i for i, _ in page]
            if cursor is None:
                break
        assert got == want[::-1], (since, until)
    # an older ledger.db without the index: the read-only reader builds one in memory
    old = tmp_path / "old.db"
    import sqlite3

    src, db = sqlite3.connect(log.path), sqlite3.connect(old)
    src.backup(db)  # the WAL's content too
    src.close()
    db.execute("DROP TABLE entry_meta")
    db.commit()
    db.close()
    ro = open_readonly(old)
    assert ro.query_all(job="job-1") == log.query_all(job="job-1")
    ro.close()
