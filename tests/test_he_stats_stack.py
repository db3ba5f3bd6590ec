"""he-stats through the real stack: civil affairs (cohort) and HRSS (owner) as node processes,
with the owners' default disclosure settings (DP on) — honest statistics still answer; the
tracker (attack 1) and single-target membership (attack 2) fail through real federation jobs;
one ε budget per dataset is shared by every requester and field (attack 3)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedgov.datasources import read_dataset
from fedgov.protocols.psi import normalize_ids
from fedgov.runner import LocalFederation, NodeSpec
from fedgov.scenarios.profiles import node_specs
from fedgov.scenarios.social_assistance import generate
from fedgov.scenarios.social_assistance_jobs import stats_manifest
from fedgov.schema import load_schema

pytestmark = pytest.mark.slow

NODES = ("civil_affairs", "hrss")
#: HRSS's budget for this world (policy.toml stats_budget_epsilon); every other setting is the default
BUDGET = 4.0


def read(data_dir: Path, node: str, dataset: str) -> Any:
    spec = next(s for s in node_specs(data_dir) if s.name == node)
    d = next(d for d in spec.datasets if d.name == dataset)
    return read_dataset(d.source, load_schema(d.schema), base_dir=data_dir, table=d.table, query=d.query)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFederation, Path]]:
    root = tmp_path_factory.mktemp("hs-stack")
    data = root / "data"
    generate(data, households=2000)
    specs = []
    for s in node_specs(data):
        if s.name not in NODES:
            continue
        if s.name == "hrss":  # the owner's own budget, in its policy (not the manifest)
            policy = root / "hrss-policy.toml"
            policy.write_text(s.policy.read_text() + f"\n[defaults.disclosure]\nstats_budget_epsilon = {BUDGET}\n")
            s = NodeSpec(s.name, policy, s.datasets)
        specs.append(s)
    fed = LocalFederation(root / "fed", specs, extra_kits=[("analyst2", "analyst")])
    with fed:
        yield fed, data


def run_as(fed: LocalFederation, who: str, manifest: str, timeout: float = 240) -> dict[str, Any]:
    with fed.client(who) as c:
        job = c.submit(manifest)
        status = c.wait(job.job_id, timeout=timeout)
        out: dict[str, Any] = {"job": status.to_dict()}
        if status.state == "succeeded":
            out["result"] = c.result(job.job_id)
        return out


FIELD = "wage_base_monthly"
CLIP = (0.0, 50000.0)


def people(data: Path) -> tuple[list[str], dict[str, float], list[str]]:
    """Civil affairs' raw applicant IDs whose person has a wage base at HRSS (first row per
    person, as alignment uses), those values by raw ID, and raw IDs of applicants HRSS does
    not know."""
    app = read(data, "civil_affairs", "applications")
    ins = read(data, "hrss", "insurance")
    value: dict[str, float] = {}
    for rid, v in zip(normalize_ids(ins.column("resident_id").to_pylist()), ins.column(FIELD).to_pylist(),
                      strict=True):
        value.setdefault(rid, v)
    raw = app.column("resident_id").to_pylist()
    norm = normalize_ids(raw)
    seen: set[str] = set()
    known, absent, pension = [], [], {}
    for r, n in zip(raw, norm, strict=True):
        if n in seen:
            continue
        seen.add(n)
        v = value.get(n)
        if n not in value:
            absent.append(r)
        elif v is not None and not (isinstance(v, float) and np.isnan(v)) and v > 500:
            known.append(r)
            pension[r] = float(v)
    return known, pension, absent


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


def in_cohort(ids: list[str]) -> list[dict[str, Any]]:
    return [{"field": "resident_id", "op": "in", "value": sorted(ids)}]


def test_grouped_statistics_answer_with_dp_by_default(world: tuple[LocalFederation, Path]) -> None:
    fed, data = world
    out = run_as(fed, "analyst", stats_manifest())
    assert out["job"]["state"] == "succeeded", out["job"]
    assert set(out["result"]) == {"hrss"}  # only the owner releases; the cohort holder releases nothing
    rel = out["result"]["hrss"]
    assert rel["noise"] == "discrete-laplace (opendp)" and rel["epsilon_spent"] == pytest.approx(0.5)
    assert rel["epsilon_remaining"] == pytest.approx(BUDGET - 0.5)
    assert "replayed" not in rel
    want = plaintext(data, "pension_monthly", 0)
    # honest work still answers: a small world: few rejected applicants per district,
    # so the margin is released and most districts fall below the noisy minimum
    assert rel["total"] is not None, rel
    assert abs(rel["total"]["count"] - sum(n for n, _ in want.values())) <= 120  # noise scale 8
    for d, cell in rel["cells"].items():
        n, _ = want.get(d, (0, 0.0))
        assert cell["count"] >= 11  # threshold on the noisy count
        assert abs(cell["count"] - n) <= 120
    for d, why in rel["suppressed"].items():
        assert d not in rel["cells"] and "noisy count below the minimum cell" in why
    assert rel["mask_security_bits"] >= 40  # statistical distance <= 2^-40 over the whole job


def test_tracker_through_real_jobs_fails(world: tuple[LocalFederation, Path]) -> None:
    """Attack 1: U (12), S ∪ {t} (100), S ∪ U (111) as three jobs; sum(S∪{t}) − sum(S∪U) +
    sum(U) would be t's pension. With DP and civil affairs' auditor it is off by >= 20%
    (or an answer is withheld)."""
    fed, data = world
    known, pension, _ = people(data)
    t, u, s = known[0], known[1:13], known[13:112]
    assert len(u) == 12 and len(s) == 99
    sums = []
    for members in (u, s + [t], s + u):
        out = run_as(fed, "analyst", stats_manifest(where=in_cohort(members), group_by=None, field=FIELD,
                                                    clip=CLIP))
        assert out["job"]["state"] == "succeeded", out["job"]
        cells = out["result"]["hrss"]["cells"]
        sums.append(cells["all"]["sum"] if "all" in cells else None)
    assert len(sums) == 3
    if None not in sums:
        est = sums[1] - sums[2] + sums[0]
        assert abs(est - pension[t]) >= 0.2 * pension[t], (est, pension[t])


def test_single_target_membership_is_not_separable(world: tuple[LocalFederation, Path]) -> None:
    """Attack 2: a cohort of one applicant HRSS knows and one it does not. Both jobs run (civil
    affairs' own minimum cohort empties a small cohort silently, never refuses), answer in the
    same shape with no exact count, and each costs the same ε."""
    fed, data = world
    known, _, absent = people(data)
    assert absent, "the synthetic world has applicants HRSS does not know"
    shapes, spent, remaining = [], [], []
    assert len(known) > 112
    for who in (known[-1], absent[0]):
        out = run_as(fed, "analyst", stats_manifest(where=in_cohort([who]), group_by=None, field=FIELD,
                                                    clip=CLIP))
        assert out["job"]["state"] == "succeeded", out["job"]
        assert set(out["result"]) == {"hrss"}
        rel = out["result"]["hrss"]
        assert "replayed" not in rel
        for cell in rel["cells"].values():
            assert cell["count"] >= 11
        shapes.append(sorted(rel))
        spent.append(rel["epsilon_spent"])
        remaining.append(rel["epsilon_remaining"])
    assert shapes[0] == shapes[1]
    assert spent == [0.5, 0.5] and remaining[0] - remaining[1] == pytest.approx(0.5)


def test_one_budget_for_every_requester_and_field(world: tuple[LocalFederation, Path]) -> None:
    """Attack 3: a second analyst certificate asking about another field starts no fresh ε."""
    fed, _ = world
    last = None
    for _ in range(8):
        out = run_as(fed, "analyst", stats_manifest(field="wage_base_monthly", clip=(0.0, 100000.0),
                                                    dp_epsilon=1.0, group_by=None))
        if out["job"]["state"] != "succeeded":
            break
        last = out["result"]["hrss"]["epsilon_remaining"]
        if last < 1.0:
            break
    assert last is not None and last < 1.0
    other = stats_manifest(field="pension_monthly", dp_epsilon=1.0, group_by=None, requester="analyst2",
                           where=[{"field": "eligible", "op": "==", "value": 1}])
    second = run_as(fed, "analyst2", other)
    assert second["job"]["state"] == "failed", second["job"]
    reason = json.dumps(second["job"], ensure_ascii=False)
    assert "privacy budget exhausted" in reason and "hrss.insurance" in reason, reason
    assert "all requesters and fields" in reason and "stats_budget_epsilon" in reason
