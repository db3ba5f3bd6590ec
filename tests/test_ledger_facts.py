"""Department-signed facts (fedgov.ledger.facts): a coordinator cannot state what a department did.

Attacks mounted here, each against a log the coordinator fully controls
(it can append any well-formed entry): an unsigned fact, a fact about one
department signed by another, a fact whose signed fields were altered, a
fact signed by a key the CA never certified, and a replay of a genuine fact.
Each is named (index, kind, department) and left out of the points.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgov.crypto.keys import NodeKeys
from fedgov.crypto.kits import issue_kit
from fedgov.crypto.pki import create_ca
from fedgov.ledger import entries as le
from fedgov.ledger.facts import accepted_entries, check_facts, department, fact_message, sign_fact
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
