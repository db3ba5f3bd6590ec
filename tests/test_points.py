"""Points: exact Shapley, anti-gaming rules, determinism, budget split, renderers."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgov.errors import ConfigError, FedgovError
from fedgov.ledger import entries as E
from fedgov.ledger.points import (
    Period,
    PointsRules,
    coalition_values,
    compute_points,
    points_report,
    render_csv,
    render_json,
    render_png,
    render_table,
    rules_entry,
    shapley_values,
)

TS = 1_717_000_000_000  # 2024-05-29T...Z

# Hand-checked 3-party game (metric × 100): see docs/points.md.
GAME = {
    frozenset(): 50,
    frozenset("A"): 60,
    frozenset("B"): 70,
    frozenset("C"): 50,
    frozenset("AB"): 80,
    frozenset("AC"): 65,
    frozenset("BC"): 72,
    frozenset("ABC"): 85,
}


def test_shapley_exact_three_party() -> None:
    phi = shapley_values("ABC", GAME)
    assert phi == {"A": Fraction(71, 6), "B": Fraction(61, 3), "C": Fraction(17, 6)}
    assert sum(phi.values()) == GAME[frozenset("ABC")] - GAME[frozenset()]
    as_float = shapley_values("ABC", lambda c: GAME[c] / 100)
    assert as_float["A"] == pytest.approx(71 / 600, abs=1e-15)


def test_shapley_symmetry_dummy_and_limits() -> None:
    phi = shapley_values(["x", "y", "z"], lambda c: 2 * len(c & {"x", "y"}))
    assert phi == {"x": 2, "y": 2, "z": 0}
    with pytest.raises(FedgovError, match="missing value"):
        shapley_values("AB", {frozenset(): 0, frozenset("A"): 1})
    with pytest.raises(FedgovError, match="limited"):
        shapley_values([str(i) for i in range(13)], lambda c: 0.0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.integers(0, 2**32 - 1))
def test_efficiency_axiom(n: int, seed: int) -> None:
    rng = random.Random(seed)
    players = [f"d{i}" for i in range(n)]
    values = coalition_values(players, lambda c: rng.random())
    phi = shapley_values(players, values)
    total = values[frozenset(players)] - values[frozenset()]
    assert sum(phi.values()) == pytest.approx(total, abs=1e-12)
    exact = shapley_values(players, {c: Fraction(v) for c, v in values.items()})
    assert sum(exact.values()) == Fraction(values[frozenset(players)]) - Fraction(values[frozenset()])


def _ledger(*, validation: str = "holdout-2024") -> list[E.Entry]:
    parts = {
        "civil_affairs": ("applications", ["eligible", "household_size"]),
        "tax": ("income", ["annual_income"]),
        "hrss": ("insurance", ["pension_monthly", "wage_base_monthly"]),
    }
    coal = {frozenset(k): v / 100 for k, v in GAME.items()}
    rename = {"A": "civil_affairs", "B": "tax", "C": "hrss"}
    coal = {frozenset(rename[x] for x in c): v for c, v in coal.items()}
    return [
        rules_entry(PointsRules(), ts=TS),
        *(E.node_registered(n, "0" * 64, ts=TS) for n in ("civil_affairs", "tax", "hrss", "housing")),
        E.dataset_published("civil_affairs", "applications", "1" * 64, 1000, {"overall": 0.9}, ts=TS),
        E.dataset_published("tax", "income", "2" * 64, 500, {"overall": 1.0}, ts=TS),
        E.dataset_published("hrss", "insurance", "3" * 64, 800, {"overall": 0.5}, ts=TS),
        E.job_submitted(
            "vlr-1", "vertical_lr", "dibao", "analyst", "4" * 64, parts, validation="holdout-2024", ts=TS
        ),
        *(E.job_approved("vlr-1", n, ts=TS) for n in parts),
        E.contribution("vlr-1", "civil_affairs", "applications", 400, ["eligible", "household_size"], ts=TS),
        E.contribution("vlr-1", "tax", "income", 9999, ["annual_income"], ts=TS),  # capped at 500
        E.contribution("vlr-1", "hrss", "insurance", 400, ["pension_monthly", "wage_base_monthly"], ts=TS),
        E.model_contribution("vlr-1", "auc", validation, coal, ts=TS),
        E.job_completed("vlr-1", "succeeded", {"auc": 0.85}, ts=TS),
    ]


def test_points_from_a_job() -> None:
    r = PointsRules(shapley_decimals=-1)  # exact Shapley values (the default rounds to 2 decimals)
    pts = compute_points(_ledger(), "2024-Q2", r)
    assert list(pts) == ["civil_affairs", "housing", "hrss", "tax"]
    assert pts["civil_affairs"].data == pytest.approx(400 * 2 * 0.9 * r.points_per_record_field)
    assert pts["tax"].data == pytest.approx(500 * 1 * 1.0 * r.points_per_record_field)
    assert pts["hrss"].data == pytest.approx(400 * 2 * 0.5 * r.points_per_record_field)
    assert pts["civil_affairs"].model == pytest.approx(71 / 600 * r.model_points_per_unit)
    assert pts["tax"].model == pytest.approx(61 / 300 * r.model_points_per_unit)
    assert pts["hrss"].model == pytest.approx(17 / 600 * r.model_points_per_unit)
    assert pts["housing"].total == 0.0
    assert compute_points(_ledger(), "2024-Q3", r)["tax"].total == 0.0


def test_deterministic_and_order_of_blobs_stable() -> None:
    a = compute_points(_ledger(), "all")
    b = compute_points([E.parse_entry(e.encode()) for e in _ledger()], "all")
    assert {n: x.total for n, x in a.items()} == {n: x.total for n, x in b.items()}
    assert render_json(points_report(_ledger(), "all", 1000)) == render_json(
        points_report(_ledger(), "all", 1000)
    )


def test_anti_gaming() -> None:
    notes: list[str] = []
    led = _ledger(validation="a-set-chosen-after-the-fact")
    pts = compute_points(led, "all", notes=notes)
    assert all(p.model == 0 for p in pts.values())
    assert any("validation set" in n for n in notes)
    # a contribution from a node that never approved, extra fields, or a non-participant: no points
    led = _ledger()
    led = [e for e in led if not (e.type == "job_approved" and e["node"] == "hrss")]
    led.insert(-1, E.contribution("vlr-1", "housing", "property", 100, ["x"], ts=TS))
    notes = []
    pts = compute_points(led, "all", notes=notes)
    assert pts["hrss"].total == 0.0 and pts["housing"].total == 0.0
    assert any("never approved" in n for n in notes) and any("not a participant" in n for n in notes)
    # a single-department "joint" job earns nothing
    solo = [
        E.node_registered("tax", "0" * 64, ts=TS),
        E.job_submitted("s", "stats", "p", "a", "5" * 64, {"tax": ("income", ["x"])}, ts=TS),
        E.job_approved("s", "tax", ts=TS),
        E.contribution("s", "tax", "income", 10**6, ["x"], ts=TS),
        E.job_completed("s", "succeeded", ts=TS),
    ]
    assert compute_points(solo, "all")["tax"].total == 0.0
    # failed jobs earn nothing
    failed = [
        e if e.type != "job_completed" else E.job_completed("vlr-1", "failed", ts=TS) for e in _ledger()
    ]
    assert all(p.total == 0 for p in compute_points(failed, "all").values())


def _loo_ledger(coalitions: dict[frozenset[str], float], rules: PointsRules) -> list[E.Entry]:
    """A horizontal-FL job of three regions whose model entry holds ``coalitions``."""
    regions = ("east", "north", "west")
    parts = {r: ("applications", ["eligible", "income"]) for r in regions}
    return [
        rules_entry(rules, ts=TS),
        *(E.node_registered(r, "0" * 64, ts=TS) for r in regions),
        E.job_submitted("hfl-1", "horizontal-fl", "p", "analyst", "6" * 64, parts, validation="east/val", ts=TS),
        *(E.job_approved("hfl-1", r, ts=TS) for r in regions),
        *(E.contribution("hfl-1", r, "applications", 100, ["eligible", "income"], ts=TS) for r in regions),
        E.model_contribution("hfl-1", "auc", "east/val", coalitions, ts=TS),
        E.job_completed("hfl-1", "succeeded", ts=TS),
    ]


def test_leave_one_out_family_earns_the_drop() -> None:
    """Horizontal FL records v(N) and every v(N minus one region): points = max(drop, 0) x unit."""
    full = frozenset({"east", "north", "west"})
    loo = {full: 0.90, full - {"east"}: 0.86, full - {"north"}: 0.91, full - {"west"}: 0.895}
    r = PointsRules()
    pts = compute_points(_loo_ledger(loo, r), "all", r)
    assert pts["east"].model == pytest.approx(0.04 * r.leave_one_out_points_per_unit)
    assert pts["north"].model == 0.0  # a negative drop is no penalty
    assert pts["west"].model == pytest.approx(0.005 * r.leave_one_out_points_per_unit)
    # an incomplete family is ignored, with a note
    notes: list[str] = []
    partial = {k: v for k, v in loo.items() if k != full - {"west"}}
    assert all(p.model == 0 for p in compute_points(_loo_ledger(partial, r), "all", r, notes=notes).values())
    assert any("leave-one-out family" in n for n in notes)
    # a rule set published before this term existed reads as 0 for it: old awards recompute unchanged
    old = {k: v for k, v in r.to_dict().items() if k != "leave_one_out_points_per_unit"}
    assert PointsRules.from_dict(old).leave_one_out_points_per_unit == 0.0
    assert PointsRules.from_dict(r.to_dict()) == r


def test_report_budget_shares_and_ranks() -> None:
    # housing published a dataset but took part in no job: a row at 0 (a data-less node has none)
    led = [*_ledger(), E.dataset_published("housing", "property", "5" * 64, 10, {"overall": 1.0}, ts=TS)]
    rows = points_report(led, "2024", "1000000.00")
    assert [r.rank for r in rows] == [1, 2, 3, 4]
    assert rows[0].dept == "tax" and rows[-1].dept == "housing"
    assert sum(r.budget_amount for r in rows) == Decimal("1000000.00")
    assert sum(r.share for r in rows) == pytest.approx(1.0)
    assert rows[-1].budget_amount == 0
    tie = points_report(
        [*(E.node_registered(n, "0" * 64, ts=TS) for n in "ab"),
         *(E.dataset_published(n, "d", "1" * 64, 5, {"overall": 1.0}, ts=TS) for n in "ab")],
        "all",
        10,
    )
    assert [r.rank for r in tie] == [1, 1] and sum(r.budget_amount for r in tie) == 0
    text = render_table(rows)
    assert "tax" in text and "1,000,000" not in text.splitlines()[0]
    csv_text = render_csv(rows)
    assert csv_text.splitlines()[0].startswith("dept,points,share,budget_amount,rank")
    doc = json.loads(render_json(rows, period="2024"))
    assert len(doc["rows"]) == 4 and doc["rules_digest"] == PointsRules().digest()


def test_periods_and_rules_roundtrip() -> None:
    q = Period.parse("2024-Q2")
    assert TS in q and Period.parse("2024-05").start_ms <= TS < Period.parse("2024-05").end_ms
    assert TS in Period.parse("2024-05-29..2024-05-29")
    with pytest.raises(ConfigError, match="invalid period"):
        Period.parse("last week")
    r = PointsRules(points_per_record_field=0.5)
    assert PointsRules.from_dict(r.to_dict()) == r and r.digest() != PointsRules().digest()
    with pytest.raises(ConfigError, match="unknown key"):
        PointsRules.from_dict({"bonus": 1})


def test_png_needs_matplotlib(tmp_path: Path) -> None:
    rows = points_report(_ledger(), "all", 100)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="matplotlib"):
            render_png(rows, tmp_path / "p.png")
    else:
        assert render_png(rows, tmp_path / "p.png").stat().st_size > 0


def test_only_the_listed_entry_types_move_points() -> None:
    """Readers fetch only ``ENTRY_TYPES`` (the coordinator's award, ``ledger verify``): an entry
    of any other type must never change a figure, and each listed type's removal must be seen."""
    from fedgov.ledger.points import ENTRY_TYPES

    r = PointsRules(shapley_decimals=-1)
    full = _ledger()
    noise = [E.job_started("vlr-1", ts=TS)]
    assert {e.type for e in noise}.isdisjoint(ENTRY_TYPES)
    base = {n: p.total for n, p in compute_points(full, "2024-Q2", r).items()}
    assert {n: p.total for n, p in compute_points(full + noise, "2024-Q2", r).items()} == base
    for i, e in enumerate(full):
        without = full[:i] + full[i + 1 :]
        if {n: p.total for n, p in compute_points(without, "2024-Q2", r).items()} != base:
            assert e.type in ENTRY_TYPES, f"{e.type} moves points but readers do not fetch it"
