"""he-stats through the real stack: civil affairs (cohort) and HRSS (owner) as node processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedgov.datasources import read_dataset
from fedgov.protocols.psi import normalize_ids
from fedgov.runner import LocalFederation, run_job
from fedgov.scenarios.profiles import node_specs
from fedgov.scenarios.social_assistance import generate
from fedgov.scenarios.social_assistance_jobs import stats_manifest
from fedgov.schema import load_schema

pytestmark = pytest.mark.slow

NODES = ("civil_affairs", "hrss")
EPSILON_LIMIT = 1.0


def read(data_dir: Path, node: str, dataset: str) -> Any:
    spec = next(s for s in node_specs(data_dir) if s.name == node)
    d = next(d for d in spec.datasets if d.name == dataset)
    return read_dataset(d.source, load_schema(d.schema), base_dir=data_dir, table=d.table, query=d.query)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFederation, Path]]:
    root = tmp_path_factory.mktemp("hs-stack")
    data = root / "data"
    generate(data, households=600)
    fed = LocalFederation(root / "fed", [s for s in node_specs(data) if s.name in NODES])
    # the owner's own budget limit (its state dir, not the manifest)
    (root / "fed" / "state" / "hrss").mkdir(parents=True)
    (root / "fed" / "state" / "hrss" / "privacy.toml").write_text(f"[dp]\nepsilon_limit = {EPSILON_LIMIT}\n")
    with fed:
        yield fed, data


def plaintext(data: Path, field: str, where_eligible: int) -> dict[str, tuple[int, float]]:
    """Per district: (rows with a value, sum) — applicants with any matching row, first row's district."""
    app = read(data, "civil_affairs", "applications")
    ins = read(data, "hrss", "insurance")
    ids = normalize_ids(app.column("resident_id").to_pylist())
    group: dict[str, str] = {}
    for i, (d, e) in enumerate(zip(app.column("district").to_pylist(), app.column("eligible").to_pylist(),
                                   strict=True)):
        if e == where_eligible and ids[i] not in group and d is not None:
            group[ids[i]] = d
    value: dict[str, float] = {}
    for rid, v in zip(normalize_ids(ins.column("resident_id").to_pylist()), ins.column(field).to_pylist(),
                      strict=True):
        value.setdefault(rid, v)
    out: dict[str, tuple[int, float]] = {}
    for rid, d in group.items():
        v = value.get(rid)
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        n, s = out.get(d, (0, 0.0))
        out[d] = (n + 1, s + min(max(float(v), 0.0), 50000.0))
    return out


def test_grouped_mean_equals_plaintext_and_small_cells_stay_suppressed(world: tuple[LocalFederation, Path]) -> None:
    fed, data = world
    out = run_job(fed, stats_manifest(), timeout=180)
    assert out["job"]["state"] == "succeeded", out["job"]
    assert set(out["result"]) == {"hrss"}  # only the owner releases; the cohort holder releases nothing
    rel = out["result"]["hrss"]
    want = plaintext(data, "pension_monthly", 0)
    assert rel["cells"] or rel["suppressed"]
    for d, cell in rel["cells"].items():
        n, s = want.get(d, (0, 0.0))
        assert cell["count"] == n, d
        if n:
            assert abs(cell["sum"] - s) <= 1e-6 * max(1.0, abs(s)) + 1e-3, (d, cell, s)
            assert abs(cell["mean"] - s / n) <= 1e-6 * max(1.0, s / n) + 1e-4
    small = {d for d, (n, _) in want.items() if 0 < n < 11}
    assert small, "the 600-household world should have small district cells"
    assert small <= set(rel["suppressed"])
    for d in rel["suppressed"]:
        assert d not in rel["cells"]
    if rel["total"] is not None:
        # complementary suppression: the total minus released cells is never a small cell
        hidden = sum(want.get(d, (0, 0.0))[0] for d in rel["suppressed"] if d != "__total__")
        assert hidden == 0 or hidden >= 11
        assert rel["total"]["count"] == sum(n for n, _ in want.values())

    # the same question again: released cells replay exactly, suppressed ones stay suppressed
    again = run_job(fed, stats_manifest(), timeout=180)
    assert again["job"]["state"] == "succeeded", again["job"]
    rel2 = again["result"]["hrss"]
    assert set(rel2["suppressed"]) >= set(rel["suppressed"])
    for d, cell in rel2["cells"].items():
        assert cell == rel["cells"][d]

    # a near-identical cohort (drop households above 6 people) cannot isolate the few it removes
    near = stats_manifest(where=[{"field": "eligible", "op": "==", "value": 0},
                                 {"field": "household_size", "op": "<=", "value": 6}])
    third = run_job(fed, near, timeout=180)
    assert third["job"]["state"] == "succeeded", third["job"]
    rel3 = third["result"]["hrss"]
    for d, cell in rel3["cells"].items():
        if d in rel["cells"] and cell["count"]:
            assert abs(cell["count"] - rel["cells"][d]["count"]) >= 11


def test_spent_budget_refuses_the_next_query_with_the_reason(world: tuple[LocalFederation, Path]) -> None:
    fed, _ = world
    first = run_job(fed, stats_manifest(field="wage_base_monthly", clip=(0.0, 100000.0), dp_epsilon=0.6,
                                        group_by=None), timeout=180)
    assert first["job"]["state"] == "succeeded", first["job"]
    rel = first["result"]["hrss"]
    assert rel["epsilon_spent"] == pytest.approx(0.6) and rel["noise"] == "laplace"
    assert rel["epsilon_remaining"] == pytest.approx(0.4)
    second = run_job(fed, stats_manifest(field="wage_base_monthly", clip=(0.0, 100000.0), dp_epsilon=0.6,
                                         group_by=None, where=[{"field": "eligible", "op": "==", "value": 1}]),
                     timeout=180)
    assert second["job"]["state"] == "failed"
    reason = second["job"]["reason"]
    assert "privacy budget exhausted" in reason and "hrss" in reason, reason
    assert "ε=0.6 of ε=1" in reason
