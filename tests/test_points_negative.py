"""Negative model contributions earn nothing; data-less nodes get no report row (issue 14, finding 10)."""

from __future__ import annotations

import pytest

from fedgov.ledger import entries as E
from fedgov.ledger.points import PointsRules, compute_points, points_report, rules_entry, verify_awards

TS = 1_717_200_000_000  # 2024-06-01


def _ledger(rules: PointsRules) -> list[E.Entry]:
    parts = {
        "civil_affairs": ("applications", ["eligible"]),
        "tax": ("income", ["annual_income"]),
        "medical": ("claims", ["oop"]),
    }
    # medical's features make the model worse: v({medical}) < v({}) and so on
    coal = {
        frozenset(): 0.60, frozenset({"tax"}): 0.70, frozenset({"medical"}): 0.59,
        frozenset({"tax", "medical"}): 0.69,
    }
    return [
        rules_entry(rules, ts=TS),
        *(E.node_registered(n, "0" * 64, ts=TS) for n in (*parts, "arbiter")),
        E.dataset_published("civil_affairs", "applications", "1" * 64, 1000, {"overall": 1.0}, ts=TS),
        E.dataset_published("tax", "income", "2" * 64, 1000, {"overall": 1.0}, ts=TS),
        E.dataset_published("medical", "claims", "3" * 64, 1000, {"overall": 1.0}, ts=TS),
        E.job_submitted("vlr-1", "vertical_lr", "dibao", "analyst", "4" * 64,
                        parts, validation="holdout", ts=TS),
        *(E.job_approved("vlr-1", n, ts=TS) for n in parts),
        E.contribution("vlr-1", "civil_affairs", "applications", 500, ["eligible"], ts=TS),
        E.contribution("vlr-1", "tax", "income", 500, ["annual_income"], ts=TS),
        E.contribution("vlr-1", "medical", "claims", 500, ["oop"], ts=TS),
        E.model_contribution("vlr-1", "auc", "holdout", coal, ts=TS),
        E.job_completed("vlr-1", "succeeded", {"auc": 0.69}, ts=TS),
    ]


def test_negative_shapley_value_earns_nothing_for_that_job() -> None:
    notes: list[str] = []
    pts = compute_points(_ledger(PointsRules()), "all", notes=notes)
    assert pts["medical"].total == 0.0  # its data made the model worse: no data term, no model term
    assert pts["medical"].records == 500  # the records are still on record
    assert pts["tax"].model == pytest.approx(0.1 * 10_000) and pts["tax"].data > 0
    assert any("medical made the model worse" in n for n in notes)
    rows = {r.dept: r for r in points_report(_ledger(PointsRules()), "all", 1000)}
    assert rows["medical"].share == 0.0 and str(rows["medical"].budget_amount) == "0"


def test_old_rule_sets_recompute_unchanged() -> None:
    # a rule set published before the rule existed reads factor 1: its awards stay valid
    legacy = {k: v for k, v in PointsRules().to_dict().items() if k != "negative_model_value_data_factor"}
    rules = PointsRules.from_dict(legacy)
    assert rules.negative_model_value_data_factor == 1.0
    pts = compute_points(_ledger(rules), "all", rules)
    assert pts["medical"].data == pytest.approx(500 * 0.01) and pts["medical"].model == 0.0
    from fedgov.ledger.points import award_entry

    led = _ledger(rules)
    assert verify_awards([*led, award_entry(led, "all", rules, ts=TS)]) == []


def test_no_row_for_a_data_less_node_with_no_points() -> None:
    rows = points_report(_ledger(PointsRules()), "all", 1000)
    depts = [r.dept for r in rows]
    assert "arbiter" not in depts
    assert sorted(depts) == ["civil_affairs", "medical", "tax"]  # medical keeps its row at 0
