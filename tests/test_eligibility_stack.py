"""eligibility-check through the real stack: civil affairs, four departments and the arbiter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedgov.protocols import eligibility as el
from fedgov.protocols.psi import normalize_ids
from fedgov.runner import LocalFederation
from fedgov.scenarios.profiles import node_specs
from fedgov.scenarios.social_assistance import generate
from fedgov.scenarios.social_assistance_jobs import (
    RULES_WITHOUT_MEDICAL,
    decisions_changed,
    eligibility_manifest,
    plaintext_eligibility,
    read_decisions,
    read_reference,
    with_disclosure,
)

pytestmark = pytest.mark.slow

NODES = ("civil_affairs", "tax", "hrss", "housing", "vehicles", "arbiter")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFederation, Path]]:
    """The departments of this module re-check the same applicants in five jobs; their
    owners allow 12 checks per applicant per quarter (the default, 2, would refuse the
    third: tests/test_disclosure_stack.py)."""
    root = tmp_path_factory.mktemp("el-stack")
    data = root / "data"
    generate(data, households=600)
    specs = with_disclosure([s for s in node_specs(data) if s.name in NODES], root / "policies",
                            ("tax", "hrss", "housing", "vehicles"), elig_checks_per_applicant=12)
    with LocalFederation(root / "fed", specs) as fed:
        yield fed, data


def test_decisions_equal_the_plaintext_rules_and_only_counts_are_released(
    world: tuple[LocalFederation, Path],
) -> None:
    fed, data = world
    rules = el.parse_rules(RULES_WITHOUT_MEDICAL)
    with fed.client("analyst") as c:
        job = c.submit(eligibility_manifest(RULES_WITHOUT_MEDICAL, dataset="applications"))
        st = c.wait(job.job_id, timeout=180)
        assert st.state == "succeeded", st.to_dict()
        result = c.result(job.job_id)
    assert set(result) == {"civil_affairs"}  # departments and the key holder release nothing
    rel = result["civil_affairs"]
    # counts of decisions only: no figure, no identity
    assert set(rel) == {"rules", "applicants", "eligible", "not_eligible", "failed_by_rule",
                        "decisions_kept_at", "compared_with_baseline", "agreement_with_label", "seconds"}
    assert all(isinstance(v, int) for v in rel["failed_by_rule"].values())

    path = fed.workdir / "state" / "civil_affairs" / "outputs" / job.job_id / "decisions.csv"
    batch, got = read_decisions(path)
    assert len(batch) == len(set(batch)) == rel["applicants"]
    assert len(batch) == len(set(normalize_ids(read_reference(data, "civil_affairs", "applications")
                                               .column("resident_id").to_pylist())))
    want, base = plaintext_eligibility(data, rules, batch)
    assert got == want
    eligible = np.array([g.eligible for g in got])
    assert rel["eligible"] == int(eligible.sum()) > 0
    assert rel["not_eligible"] == len(got) - rel["eligible"] > 0
    cmp_ = rel["compared_with_baseline"]
    assert cmp_["eligible_on_baseline"] == int(base.sum())
    assert decisions_changed(result) == int((base != eligible).sum()) > 0
    assert cmp_["now_not_eligible"] + cmp_["now_eligible"] == cmp_["changed"]
    # the joint check agrees with past verification more often than declared income alone
    agree = rel["agreement_with_label"]
    assert agree["check_agrees"] > agree["baseline_agrees"]


def test_standing_alignment_gives_the_same_decisions_and_reuses_the_registers(
    world: tuple[LocalFederation, Path],
) -> None:
    """Two checks with alignment = "standing": the first builds every department's cache
    (masks the whole register), the second masks no register entry; both decide exactly
    as the plaintext rules."""
    fed, data = world
    rules = el.parse_rules(RULES_WITHOUT_MEDICAL)
    runs = []
    for _ in range(2):
        with fed.client("analyst") as c:
            job = c.submit(eligibility_manifest(RULES_WITHOUT_MEDICAL, dataset="applications", alignment="standing"))
            st = c.wait(job.job_id, timeout=180)
            assert st.state == "succeeded", st.reason
            rel = c.result(job.job_id)["civil_affairs"]
        batch, got = read_decisions(fed.workdir / "state" / "civil_affairs" / "outputs" / job.job_id
                                    / "decisions.csv")
        want, _ = plaintext_eligibility(data, rules, batch)
        assert got == want
        runs.append(rel)
    first, second = (r["alignment"]["new_register_entries"] for r in runs)
    assert set(first) == set(second) == set(rules.nodes())
    assert all(n > 0 for n in first.values()) and all(n == 0 for n in second.values()), (first, second)
    assert runs[0]["eligible"] == runs[1]["eligible"]


def test_concurrent_standing_checks_do_not_block_each_other(world: tuple[LocalFederation, Path]) -> None:
    """Two standing-alignment checks submitted together both finish with correct decisions
    while sharing the departments' caches."""
    fed, data = world
    rules = el.parse_rules(RULES_WITHOUT_MEDICAL)
    manifest = eligibility_manifest(RULES_WITHOUT_MEDICAL, dataset="applications", alignment="standing")
    with fed.client("analyst") as c:
        jobs = [c.submit(manifest).job_id for _ in range(2)]
        states = [c.wait(j, timeout=240) for j in jobs]
    assert [s.state for s in states] == ["succeeded", "succeeded"], [s.reason for s in states]
    for j in jobs:
        batch, got = read_decisions(fed.workdir / "state" / "civil_affairs" / "outputs" / j / "decisions.csv")
        assert got == plaintext_eligibility(data, rules, batch)[0]


def test_a_department_missing_from_the_manifest_fails_with_a_clear_reason(
    world: tuple[LocalFederation, Path],
) -> None:
    fed, _ = world
    text = eligibility_manifest(RULES_WITHOUT_MEDICAL, dataset="applications")
    # drop the vehicles participant, keep the rules that need it
    start = text.index('[[participants]]\nnode = "vehicles"')
    end = text.index("[[participants]]", start + 10)
    with fed.client("analyst") as c:
        job = c.submit(text[:start] + text[end:])
        st = c.wait(job.job_id, timeout=120)
    assert st.state in ("failed", "rejected")
    assert "the rules need departments" in st.reason and "vehicles" in st.reason, st.reason
