from __future__ import annotations

import pyarrow as pa
import pytest

from fedgov.errors import ConfigError
from fedgov.manifest import Condition, parse_manifest
from fedgov.policy import parse_policy
from fedgov.protocols import cohort_count
from fedgov.tomlutil import parse_toml

GOOD = """
[job]
kind = "cohort-count"
purpose = "social-assistance-statistics"

[[participants]]
node = "civil_affairs"
dataset = "applications"
fields = ["district", "eligible"]
where = [{ field = "eligible", op = "==", value = 1 }]

[[participants]]
node = "tax"
dataset = "income"
fields = ["annual_income"]
"""


def test_manifest_parses() -> None:
    m = parse_manifest(GOOD)
    assert m.kind == "cohort-count" and m.nodes == ("civil_affairs", "tax")
    assert m.participant("civil_affairs").where == (Condition("eligible", "==", 1),)
    assert m.recipients == ("requester",)
    assert len(m.digest) == 64 and parse_manifest(GOOD + "\n").digest != m.digest


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace('kind = "cohort-count"', 'kind = "mine-bitcoin"'), "unknown job kind 'mine-bitcoin'"),
        (GOOD.replace("purpose", "porpose", 1), "unknown key 'porpose' (did you mean 'purpose'?)"),
        (GOOD.replace('node = "tax"', 'node = "civil_affairs"'), "listed twice"),
        (GOOD.replace('op = "=="', 'op = "~"'), "unknown op '~'"),
        (GOOD.replace('field = "eligible"', 'field = "income"'), "where uses field 'income'"),
        (GOOD + '\n[results]\nrecipients = ["police"]\n', "result recipient 'police'"),
        ("[job\nkind=1", "invalid TOML"),
        ('[job]\nkind = "psi"\npurpose = "x y"\n', "purpose 'x y'"),
    ],
)
def test_manifest_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_manifest(text, "m.toml")
    assert message in str(exc.value) and str(exc.value).startswith("m.toml")


POLICY = """
[defaults]
min_cohort = 11
requesters = ["analyst"]

[datasets.income]
approval = "manual"
approvers_required = 2
[[datasets.income.rules]]
purposes = ["social-assistance-eligibility"]
kinds = ["psi", "vertical-lr"]
fields = ["resident_id", "annual_income"]
"""


def test_policy_decisions() -> None:
    p = parse_policy(parse_toml(POLICY, "p"), "p")
    ok = p.check(
        dataset="income",
        kind="psi",
        purpose="social-assistance-eligibility",
        requester="analyst",
        fields=["resident_id"],
    )
    assert ok.allowed and ok.approval == "manual" and ok.approvers_required == 2 and ok.min_cohort == 11
    bad = p.check(
        dataset="income",
        kind="he-stats",
        purpose="marketing",
        requester="bob",
        fields=["resident_id", "employer"],
    )
    assert not bad.allowed
    assert any("requester 'bob'" in r for r in bad.reasons)
    assert any("purpose 'marketing'" in r for r in bad.reasons)
    field_bad = p.check(
        dataset="income",
        kind="psi",
        purpose="social-assistance-eligibility",
        requester="analyst",
        fields=["resident_id", "employer"],
    )
    assert not field_bad.allowed and "employer" in field_bad.reasons[0]
    assert not p.check(dataset="vehicles", kind="psi", purpose="x", requester="analyst", fields=[]).allowed


def test_policy_is_strict() -> None:
    with pytest.raises(ConfigError, match="did you mean 'kinds'"):
        parse_policy(parse_toml(POLICY.replace("kinds", "kind"), "p"), "p")
    with pytest.raises(ConfigError, match="approval must be"):
        parse_policy(parse_toml(POLICY.replace('"manual"', '"sometimes"'), "p"), "p")


def test_reference_policies_load() -> None:
    from pathlib import Path

    from fedgov.policy import load_policy

    paths = sorted(Path(__file__).resolve().parents[1].glob("nodes/*/policy.toml"))
    assert len(paths) == 7  # six departments and the arbiter
    for path in paths:
        policy = load_policy(path)
        assert policy.datasets or policy.arbiter


def test_cohort_count_and_suppression() -> None:
    t = pa.table({"d": ["a", "b", "a", None], "v": [1, 5, 7, 9]})
    assert cohort_count.count(t, [Condition("d", "==", "a")]) == 2
    assert cohort_count.count(t, [Condition("v", ">", 4), Condition("d", "in", ["a", "b"])]) == 2
    assert cohort_count.count(t, []) == 4
    assert cohort_count.release(5, 11) is None and cohort_count.release(0, 11) == 0
    assert cohort_count.release(11, 11) == 11
    out = cohort_count.combine({"x": 20, "y": None})
    assert out == {"counts": {"x": 20, "y": None}, "suppressed": ["y"], "total_released": 20}
    with pytest.raises(ConfigError, match="cannot compare field 'd'"):
        cohort_count.count(t, [Condition("d", ">", 3)])


def test_arbiter_participant_and_policy() -> None:
    text = GOOD + '\n[[participants]]\nnode = "arbiter"\nrole = "arbiter"\n'
    m = parse_manifest(text)
    assert m.arbiter == "arbiter" and [p.node for p in m.data_participants] == ["civil_affairs", "tax"]
    with pytest.raises(ConfigError, match="arbiter holds no data"):
        parse_manifest(text.replace('role = "arbiter"', 'role = "arbiter"\ndataset = "x"'))
    p = parse_policy(parse_toml('[arbiter]\nkinds = ["vertical-lr"]\n', "p"), "p")
    assert p.check_arbiter(kind="vertical-lr", purpose="any", requester="li").allowed
    refused = p.check_arbiter(kind="psi", purpose="any", requester="li")
    assert not refused.allowed and "does not serve job kind 'psi'" in refused.reasons[0]
    assert not parse_policy(parse_toml(POLICY, "p"), "p").check_arbiter(kind="vertical-lr", purpose="x", requester="a").allowed


def test_standing_alignment_is_opt_in_per_dataset() -> None:
    rules = '[[datasets.{d}.rules]]\npurposes = ["p"]\nkinds = ["eligibility-check"]\nfields = ["id"]\n'
    base = "[datasets.a]\n" + rules.format(d="a") + "[datasets.b]\nstanding_alignment = true\n" + rules.format(d="b")
    p = parse_policy(parse_toml(base, "p"), "p")
    dec = {d: p.check(dataset=d, kind="eligibility-check", purpose="p", requester="x", fields=["id"]) for d in "ab"}
    assert dec["a"].allowed and not dec["a"].standing_alignment  # off unless the department says so
    assert dec["b"].allowed and dec["b"].standing_alignment
    on = parse_policy(parse_toml("[defaults]\nstanding_alignment = true\n" + base, "p"), "p")
    assert on.datasets["a"].standing_alignment
    with pytest.raises(ConfigError, match="true or false"):
        parse_policy(parse_toml(base.replace("standing_alignment = true", 'standing_alignment = "yes"'), "p"), "p")


def test_allowed_purposes_are_what_the_rules_say_with_their_kinds() -> None:
    p = parse_policy(parse_toml("""
[defaults]
requesters = ["*"]
[[datasets.income.rules]]
purposes = ["social-assistance-eligibility", "audit"]
kinds = ["psi", "vertical-lr"]
fields = ["id", "annual_income"]
[[datasets.income.rules]]
purposes = ["social-assistance-eligibility"]
kinds = ["he-stats"]
fields = ["annual_income"]
[datasets.empty]
approval = "manual"
""", "p"), "p")
    assert p.datasets["income"].allowed_purposes() == {
        "audit": ("psi", "vertical-lr"),
        "social-assistance-eligibility": ("he-stats", "psi", "vertical-lr"),
    }
    assert p.datasets["empty"].allowed_purposes() == {}
