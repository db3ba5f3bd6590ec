"""Department-signed facts (fedgov.ledger.facts): a coordinator cannot state what a department did.

Attacks mounted here, each against a log the coordinator fully controls
(it can append any well-formed entry): an unsigned fact, a fact about one
department signed by another, a fact whose signed fields were altered, a
fact signed by a key the CA never certified, and a replay of a genuine fact.
Each is named (index, kind, department) and left out of the points.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgov.cli_ledger import verify_db
from fedgov.crypto import revocation
from fedgov.crypto.keys import NodeKeys
from fedgov.crypto.kits import issue_kit
from fedgov.crypto.pki import create_ca
from fedgov.ledger import entries as le
from fedgov.ledger.facts import accepted_entries, check_facts, department, fact_message, sign_fact
from fedgov.ledger.log import TransparencyLog
from fedgov.ledger.points import compute_points


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> tuple[x509.Certificate, dict[str, NodeKeys]]:
    tmp = tmp_path_factory.mktemp("facts")
    create_ca(tmp / "ca", "facts test")
    keys = {}
    for n in ("tax", "health"):
        issue_kit(tmp / "ca", tmp / n, n, "node")
        keys[n] = NodeKeys.load(tmp / n)
    ca = x509.load_pem_x509_certificate(Path(tmp / "ca" / "ca.crt").read_bytes())
    return ca, keys


def _log(keys: dict[str, NodeKeys]) -> list[le.Entry]:
    """An honest log: bundles, one job, every department fact signed by its department."""
    t, h = keys["tax"], keys["health"]
    return [
        le.node_registered("tax", "d" * 64),
        le.node_registered("health", "e" * 64),
        le.node_key("tax", t.bundle()),
        le.node_key("health", h.bundle()),
        sign_fact(le.dataset_published("tax", "income", "a" * 64, 100, {"overall": 1.0}), "tax", t.sign),
        sign_fact(le.dataset_published("health", "visits", "b" * 64, 80, {"overall": 1.0}), "health", h.sign),
        le.job_submitted(
            "job-1",
            "psi",
            "p",
            "analyst",
            "c" * 64,
            {"tax": ("income", ["id"]), "health": ("visits", ["id"])},
        ),
        sign_fact(le.job_approved("job-1", "tax"), "tax", t.sign),
        sign_fact(le.job_approved("job-1", "health"), "health", h.sign),
        sign_fact(le.contribution("job-1", "tax", "income", 100, ["id"]), "tax", t.sign),
        sign_fact(le.contribution("job-1", "health", "visits", 80, ["id"]), "health", h.sign),
        le.job_completed("job-1", "succeeded"),
    ]


def _roundtrip(entries: list[le.Entry]) -> list[le.Entry]:
    return [le.parse_entry(e.encode()) for e in entries]


def test_honest_facts_are_accepted_and_round_trip(fed) -> None:
    ca, keys = fed
    log = _roundtrip(_log(keys))
    check = check_facts(enumerate(log), ca)
    assert check.ok and check.facts == 6 and len(check.accepted) == 6
    assert log[9].signer == "tax" and len(log[9].sig) == 128
    assert department(log[9]) == "tax" and department(log[6]) is None


@pytest.mark.parametrize(
    "attack",
    ["unsigned", "other-signer", "altered", "uncertified-key", "replay", "no-ca"],
)
def test_coordinator_forged_fact_is_named_and_not_counted(fed, attack: str) -> None:
    ca, keys = fed
    log = _log(keys)
    honest = compute_points(_roundtrip(log), "all")["health"].total
    forged_at = 10
    genuine = log[forged_at]
    if attack == "unsigned":  # the coordinator's word: health brought 80 rows
        log[forged_at] = le.contribution("job-1", "health", "visits", 80, ["id"], ts=genuine.ts)
    elif attack == "other-signer":  # tax's key signing a fact about health
        forged = le.contribution("job-1", "health", "visits", 80, ["id"])
        log[forged_at] = dataclasses.replace(
            forged,
            signer="health",
            sig=keys["tax"].sign(fact_message(dataclasses.replace(forged, signer="health"))).hex(),
        )
    elif attack == "altered":  # the signed fact with more records
        log[forged_at] = dataclasses.replace(genuine, fields={**genuine.fields, "records": 80_000})
    elif attack == "uncertified-key":  # a key of the coordinator's own
        rogue = Ed25519PrivateKey.generate()
        log[forged_at] = sign_fact(
            le.contribution("job-1", "health", "visits", 80, ["id"]), "health", rogue.sign
        )
    elif attack == "replay":  # health's genuine fact appended twice
        log.insert(forged_at + 1, genuine)
        forged_at += 1
    log = _roundtrip(log)
    check = check_facts(enumerate(log), None if attack == "no-ca" else ca)
    if attack == "no-ca":
        assert not check.accepted and all("no certified key" in p for p in check.problems)
        return
    assert not check.ok
    assert len(check.problems) == 1, check.problems
    line = check.problems[0]
    assert line.startswith(f"entry {forged_at}: contribution about health"), line
    assert forged_at not in check.accepted
    kept = accepted_entries(log, ca, check)
    pts = compute_points(kept, "all")["health"].total
    if attack == "replay":
        assert pts == honest  # counted once
    else:
        assert pts == 0.0 < honest  # no contribution counted without health's own word


def test_a_department_cannot_sign_for_another(fed) -> None:
    _, keys = fed
    with pytest.raises(le.EntryError, match="cannot sign"):
        sign_fact(le.job_approved("job-1", "health"), "tax", keys["tax"].sign)
    with pytest.raises(le.EntryError, match="not a department fact"):
        sign_fact(le.job_started("job-1"), "tax", keys["tax"].sign)


def test_signed_fields_are_strict() -> None:
    e = le.job_approved("job-1", "tax", ts=1)
    blob = e.to_dict() | {"signer": "tax"}
    with pytest.raises(le.EntryError, match="needs both"):
        le.parse_entry(le.canonical_json(blob))
    with pytest.raises(le.EntryError, match="unknown field"):
        le.parse_entry(
            le.canonical_json(le.job_started("j", ts=1).to_dict() | {"signer": "x", "sig": "0" * 128})
        )


def test_model_contribution_counts_only_from_a_department_that_approved_the_job(fed) -> None:
    ca, keys = fed
    log = _log(keys)
    model = le.model_contribution(
        "job-1", "auc", "tax/validation", {frozenset(): 0.5, frozenset({"tax"}): 0.8}
    )
    outsider = _roundtrip(
        [*log[:4], sign_fact(model, "health", keys["health"].sign)]
    )  # health approved nothing yet
    check = check_facts(enumerate(outsider), ca)
    assert check.problems == [
        "entry 4: model_contribution about health: health did not approve job job-1, so cannot vouch for its model"
    ]
    honest = _roundtrip([*log, sign_fact(model, "tax", keys["tax"].sign)])
    assert check_facts(enumerate(honest), ca).ok


def _revocation_world(tmp: Path) -> tuple[Path, Path, NodeKeys, NodeKeys, TransparencyLog]:
    """A federation of its own (its CA revokes), and a ledger.db with tax's and health's facts."""
    create_ca(tmp / "ca", "revocation test")
    issue_kit(tmp / "ca", tmp / "tax", "tax", "node")
    issue_kit(tmp / "ca", tmp / "health", "health", "node")
    tax, health = NodeKeys.load(tmp / "tax"), NodeKeys.load(tmp / "health")
    log = TransparencyLog(tmp / "ledger.db", Ed25519PrivateKey.generate())
    log.append_many([le.node_key("tax", tax.bundle()), le.node_key("health", health.bundle())])
    return tmp / "ca", tmp / "ca" / "ca.crt", tax, health, log


def _verify(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from fedgov.cli import main

    try:
        main(["ledger", "verify", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_leaked_key_signing_after_revocation_fails_ledger_verify(tmp_path: Path, capsys) -> None:
    """Attack: tax's node key leaks, the CA revokes tax's certificates (keyCompromise), and
    whoever holds the key keeps signing facts about tax — once with the honest time, once
    backdated to before the revocation. `fedgov ledger verify` with the CA's revocation list
    names both entries and the revoked certificate; tax's fact signed before the revocation
    stays valid and the output says so. Without the list, nothing is noticed (the attack is real)."""
    ca_dir, ca_crt, tax, health, log = _revocation_world(tmp_path)
    time.sleep(1.1)
    early = time.time_ns() // 1_000_000 - 1000  # after the certificates were issued, before the revocation
    before = log.append(sign_fact(le.dataset_published("tax", "income", "a" * 64, 100, {"overall": 1.0}, ts=early),
                                  "tax", tax.sign))
    log.tree_head(fresh=True)
    time.sleep(1.1)  # revocation dates have one-second resolution
    revoked, crl = revocation.revoke(ca_dir, name="tax", reason="keyCompromise")
    serials = {f"{c.serial:x}" for c in revoked}
    time.sleep(1.1)
    log.tree_head(fresh=True)  # the log goes on: a head signed after the revocation
    leaked = log.append(sign_fact(le.dataset_published("tax", "income", "f" * 64, 10**6, {"overall": 1.0}),
                                  "tax", tax.sign))
    backdated = log.append(sign_fact(le.job_approved("job-9", "tax", ts=early + 500), "tax", tax.sign))
    log.append(sign_fact(le.dataset_published("health", "visits", "b" * 64, 80, {"overall": 1.0}),
                         "health", health.sign))
    log.tree_head(fresh=True)
    log.close()
    db = str(tmp_path / "ledger.db")

    # without the revocation list the leaked key's facts pass: the attack works
    code, out, _ = _verify("--db", db, "--ca", str(ca_crt), capsys=capsys)
    assert code == 0 and "revocations not checked" in out, out

    code, out, err = _verify("--db", db, "--ca", str(ca_crt), "--crl", str(crl), capsys=capsys)
    assert code == 2, out
    lines = [ln for ln in out.splitlines() if ln.startswith("  - ")]
    mine = [ln for ln in lines if "revoked on" in ln]
    assert len(mine) == 2, lines
    assert mine[0].startswith(f"  - entry {leaked}: dataset_published about tax: signed at ")
    assert mine[1].startswith(f"  - entry {backdated}: job_approved about tax: claims ")
    assert "backdated" in mine[1]
    for ln in mine:
        assert "keyCompromise" in ln and any(f"certificate {s} of tax" in ln for s in serials), ln
    assert err.startswith(f"fedgov: error: ledger verification failed: entry {leaked}")
    # the fact signed before the revocation is still valid, and the output says so
    (note,) = [ln for ln in out.splitlines() if ln.startswith("  note: ")]
    assert note.startswith(f"  note: entry {before}: dataset_published about tax: signed at ")
    assert "before certificate" in note and "was revoked on" in note and note.endswith("still valid")
    assert not any(f"entry {before}:" in ln for ln in lines)

    # the same through the library entry point, and the points count the honest facts only
    got = verify_db(db, ca_cert=ca_crt, revocations=crl)
    assert not got["verified"] and got["facts"]["rejected"] == [leaked, backdated]
    assert len(got["facts"]["signed_before_revocation"]) == 1
