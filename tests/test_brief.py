"""The approver's brief (fedgov.node.brief) and the approval rules (fedgov.node.approvals), without a network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedgov.crypto.kits import issue_kit
from fedgov.crypto.pki import Identity, create_ca, issue_certificate, load_private_key
from fedgov.manifest import KINDS, parse_manifest
from fedgov.node.approvals import duplicate_approver, enough, self_approval
from fedgov.node.brief import Brief, build_brief
from fedgov.params.pages import PAGES
from fedgov.policy import Decision
from tests.helpers_learning import hfl_manifest_text, vlr_manifest_text

ROOT = Path(__file__).resolve().parents[1]

VLR = vlr_manifest_text(
    "epochs = 3\nshapley = true",
    'where = [{ field = "age", op = ">=", value = 18 }]',
    purpose="credit-scoring",
    job_extra='description = "Default risk from income and benefits"',
    guest=("bank", "loans", ("id", "y", "age")),
    label=None,
    host=("tax", "income", ("id", "income")),
    host_role=None,
    host_extra='where = [{ field = "income", op = "<", value = 90000 }]',
    arbiter="arb",
    tail='[results]\nrecipients = ["requester", "bank"]\n',
)


def _brief(node: str = "tax", rows: int | None = 1000) -> Brief:
    m = parse_manifest(VLR)
    d = Decision(True, (), approval="manual", approvers_required=2, approvers=("ann", "bob"), min_cohort=17,
                 disclosure_source="policy.toml: datasets.income.disclosure")
    return build_brief(m, node, d, job_id="job-1", requester="analyst", rows=rows)


def test_brief_shows_the_full_manifest_and_this_departments_floor() -> None:
    d = _brief().to_dict()
    assert (d["kind"], d["purpose"], d["description"]) == ("vertical-lr", "credit-scoring",
                                                          "Default risk from income and benefits")
    assert d["this_node"]["dataset"] == "income" and d["this_node"]["fields"] == ["id", "income"]
    assert d["this_node"]["where"] == ["income < 90000"] and d["this_node"]["role"] == "host"
    params = {p["key"]: p for p in d["parameters"]}
    assert params["shapley"]["value"] is True and params["shapley"]["source"] == "manifest"
    assert params["epochs"]["value"] == 3
    assert params["join"] == {**params["join"], "value": "inner", "source": "default"}
    assert {"key": "min_cohort", "value": 17, "doc": "smallest count this department releases"} in d["floors"]
    others = {o["node"]: o for o in d["others"]}
    assert others["bank"]["where"] == ["age >= 18"] and others["bank"]["role"] == "guest"
    assert others["arb"]["role"] == "arbiter"
    assert d["results"]["named_nodes"] == ["bank"] and d["results"]["requester"] == "analyst"
    assert d["policy"]["approvers_required"] == 2 and d["policy"]["approvers"] == ["ann", "bob"]


def test_what_leaves_names_recipients_and_estimates_sizes_from_rows() -> None:
    sends = _brief(rows=1000).to_dict()["sends"]
    by_step = {(s["step"], tuple(s["to"])): s for s in sends}
    assert by_step[("psi/*", ("bank",))]["estimate_bytes"] == 33 * 1000
    assert ("vlr/grad", ("arb",)) in by_step and ("vlr/score", ("bank",)) in by_step
    assert ("result", ("analyst",)) in by_step
    arb = {(s["step"], tuple(s["to"])) for s in _brief("arb", None).to_dict()["sends"]}
    assert ("vlr/coalition-reply", ("bank",)) in arb and ("vlr/grad-reply", ("tax",)) in arb


def test_text_and_json_carry_the_same_facts_and_the_dict_is_stable() -> None:
    b = _brief().with_approvals(2, ["ann"])
    text = b.text()
    for needle in ("shapley = true", "income < 90000", "age >= 18", "min_cohort = 17", "approvals: 1 of 2 (ann)",
                   "bank (role guest)", "vlr/grad -> arb", "Default risk from income and benefits",
                   "[results] recipients also receive the result: bank"):
        assert needle in text, needle
    assert "approvals 1 of 2" in b.summary() and "shapley=true" in b.summary()
    again = Brief.from_dict(json.loads(json.dumps(b.to_dict())))
    assert again.to_dict() == b.to_dict() and again.digest == b.digest
    # the digest covers the facts, not the changing approval count
    assert b.digest == _brief().digest
    assert _brief("bank").digest != b.digest


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("**", "").replace("* ", " ")).strip()


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_a_page_and_each_learns_excerpt_is_on_it(kind: str) -> None:
    pg = PAGES[kind]
    page = _norm((ROOT / pg.page).read_text(encoding="utf-8"))
    assert pg.learns
    for party, excerpt in pg.learns:
        assert _norm(excerpt) in page, f"{kind} / {party}: excerpt not on {pg.page}: {excerpt!r}"


# -- approval rules -------------------------------------------------------------------


def _certs(tmp: Path) -> dict[str, bytes]:
    ca = tmp / "ca"
    create_ca(ca, "t")
    out = {}
    for name, role, dept in (("dan", "analyst", None), ("ann", "approver", "g"), ("bob", "approver", "g")):
        issue_kit(ca, tmp / name, name, role, department=dept)
        out[name] = (tmp / name / "tls.crt").read_bytes()
    from cryptography.hazmat.primitives import serialization

    def with_key_of(kit: str, name: str, role: str) -> bytes:
        key = load_private_key(tmp / kit / "tls.key")
        c = issue_certificate(ca, key.public_key(), name, role, department="g")
        return c.public_bytes(serialization.Encoding.PEM)

    out["ann2"] = with_key_of("ann", "ann2", "approver")  # a second name over ann's key
    out["dan-approver"] = with_key_of("dan", "dan", "approver")  # the requester, as approver
    out["eve-with-dans-key"] = with_key_of("dan", "eve", "approver")
    return out


def test_requester_is_never_an_approver_and_approvers_are_distinct(tmp_path: Path) -> None:
    c = _certs(tmp_path)
    ann, bob = Identity("ann", "approver", "g"), Identity("bob", "approver", "g")
    assert self_approval("j", "dan", c["dan"], ann, c["ann"]) is None
    why = self_approval("j", "dan", c["dan"], Identity("dan", "approver", "g"), c["dan-approver"])
    assert why and "dan requested job j: a requester may not approve their own job" in why
    why = self_approval("j", "dan", c["dan"], Identity("eve", "approver", "g"), c["eve-with-dans-key"])
    assert why and "same key as the requester dan's" in why
    assert duplicate_approver(bob, c["bob"], [("ann", c["ann"])]) is None
    assert duplicate_approver(ann, c["ann"], [("ann", c["ann"])]) is None  # same vote again
    why = duplicate_approver(Identity("ann2", "approver", "g"), c["ann2"], [("ann", c["ann"])])
    assert why and "must be distinct people (distinct certificates and keys)" in why
    assert not enough(["ann"], 2) and not enough(["ann", "ann"], 2) and enough(["ann", "bob"], 2)


def test_each_parameter_is_shown_next_to_the_settings_that_govern_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kind's disclosure settings appear as floors, and next to the parameter they bound."""
    import dataclasses

    import fedgov.params as params
    from fedgov.params.schema import Setting

    floor = Setting("vlr_epochs_max", "int", 10, "most epochs this department trains", ("vertical-lr",), min=1)
    sch = dataclasses.replace(params.SCHEMAS["vertical-lr"], settings=(floor,))
    monkeypatch.setitem(params.SCHEMAS, "vertical-lr", sch)
    m = parse_manifest(VLR)
    d = Decision(True, (), disclosure={**params.default_disclosure(), "vlr_epochs_max": 4})
    b = build_brief(m, "tax", d, job_id="j", requester="analyst").to_dict()
    epochs = next(p for p in b["parameters"] if p["key"] == "epochs")
    assert epochs["limits"] == [{"key": "vlr_epochs_max", "value": 4}]
    assert {"key": "vlr_epochs_max", "value": 4, "doc": "most epochs this department trains"} in b["floors"]
    assert "epochs = 3  | manifest | vlr_epochs_max = 4" in build_brief(
        m, "tax", d, job_id="j", requester="analyst").text()


def test_opt_in_messages_are_listed_only_when_the_manifest_opts_in() -> None:
    arb = {s["step"] for s in _brief("arb", None).to_dict()["sends"]}
    assert "vlr/coalition-reply" in arb  # shapley = true
    m = parse_manifest(VLR.replace("shapley = true", "shapley = false"))
    d = Decision(True, ())
    steps = {s["step"] for s in build_brief(m, "arb", d, job_id="j", requester="a").to_dict()["sends"]}
    assert "vlr/coalition-reply" not in steps and "vlr/grad-reply" in steps


HFL = hfl_manifest_text(extra='eval_dataset = "holdout"', purpose="p-1", dataset="d", fields=("y",))

HE_H = """
[job]
kind = "he-stats"
purpose = "p-1"
[[participants]]
node = "r1"
dataset = "d"
fields = ["v"]
role = "region"
[[participants]]
node = "r2"
dataset = "d"
fields = ["v"]
role = "region"
[[participants]]
node = "kh"
role = "arbiter"
[[participants]]
node = "comb"
role = "arbiter"
[parameters]
field = "v"
key_holder = "kh"
combiner = "comb"
"""


HE_V = HE_H.replace('role = "region"\n[[participants]]\nnode = "r2"', 'role = "cohort"\n[[participants]]\nnode = "r2"'
                   ).replace('role = "region"\n[[participants]]\nnode = "kh"', 'role = "owner"\n[[participants]]\nnode = "kh"'
                             ).split("[[participants]]\nnode = \"kh\"")[0] + '[parameters]\nfield = "v"\n'
COHORT = VLR.replace('kind = "vertical-lr"', 'kind = "cohort-count"').replace("epochs = 3\nshapley = true", "")
ELIG = VLR.replace('kind = "vertical-lr"', 'kind = "eligibility-check"').replace("epochs = 3\nshapley = true", "")


@pytest.mark.parametrize(
    "text",
    [VLR, HFL, HE_H, HE_V, COHORT, ELIG,
     VLR.replace('kind = "vertical-lr"', 'kind = "psi"').replace("epochs = 3\nshapley = true", "")],
    ids=["vlr", "hfl", "he-h", "he-v", "cohort", "elig", "psi"],
)
def test_every_participant_has_a_role_with_messages_and_recipients(text: str) -> None:
    m = parse_manifest(text)
    for p in m.participants:
        if m.kind in ("psi", "cohort-count") and p.role == "arbiter":
            continue
        sends = build_brief(m, p.node, Decision(True, ()), job_id="j", requester="a").to_dict()["sends"]
        assert sends and all(s["to"] for s in sends), (m.kind, p.node, sends)
    north = {s["step"] for s in build_brief(m, m.participants[0].node, Decision(True, ()), job_id="j",
                                            requester="a").to_dict()["sends"]}
    if m.kind == "horizontal-fl":
        assert "hfl/validation" in north
        south = build_brief(m, "south", Decision(True, ()), job_id="j", requester="a").to_dict()["sends"]
        assert "hfl/validation" not in {s["step"] for s in south}
