"""The synthetic city: shape, defects, schemas, and the ground-truth claim.

The claim (DESIGN §7): civil affairs alone predicts eligibility poorly, the
joint data of all six departments predicts it well. Checked here in plaintext
with a tiny numpy logistic regression over three seeds.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fedgov import idcard
from fedgov.scenarios.social_assistance import DATASETS, generate
from tests.conftest import load_world_dataset as load

ROOT = Path(__file__).resolve().parents[1]
NODES = ROOT / "nodes"
DEPTS = ("civil_affairs", "tax", "hrss", "housing", "vehicles", "medical")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sa") / "social_assistance"
    return out, generate(out, seed=7, households=6000)


def test_summary(world: tuple[Path, dict]) -> None:
    out, s = world
    assert s["households"] == 6000 and s["persons"] > 12000
    assert 800 < s["applicants"] < 3000
    assert 0.2 < s["eligible_rate"] < 0.6
    for dataset, n in s["rows"].items():
        assert n > 500 or (dataset.endswith("_holdout") and n > 300), dataset
    rows = s["rows"]
    assert 0.15 < rows["civil_affairs.applications_holdout"] / (rows["civil_affairs.applications"] + rows["civil_affairs.applications_holdout"]) < 0.35
    for dataset, counts in s["defects"].items():
        assert counts.get("duplicate_rows", 0) > 0, dataset
    assert s["defects"]["civil_affairs.applications"]["under_declared_income"] > 100
    assert (out / "summary.json").is_file()


def test_node_configs_point_at_generated_files(world: tuple[Path, dict]) -> None:
    out, s = world
    for dept in DEPTS:
        t = load(out, dept)
        assert t.num_rows == s["rows"][f"{dept}.{next(iter(DATASETS[dept]))}"]
        assert t.schema.field("resident_id").type == pa.string()
    assert (NODES / "housing" / "node.toml").read_text().count("sqlite:///") == 1


def test_ids_and_defects(world: tuple[Path, dict]) -> None:
    out, s = world
    app = load(out, "civil_affairs").to_pydict()
    ids = app["resident_id"]
    problems = [idcard.problem(r) for r in ids]
    assert problems.count("lower-case x") > 0
    assert problems.count("bad check digit") > 0
    assert sum(p is None for p in problems) > 0.95 * len(ids)
    # Sex on the form always matches the ID; birth dates contradict it only for the injected defects.
    wrong = 0
    for rid, sex, born in zip(ids, app["sex"], app["birth_date"], strict=True):
        if idcard.problem(idcard.normalize(rid)) is None:
            assert idcard.sex(rid) == sex
            wrong += idcard.birth_date(rid) != born
    assert 0 < wrong <= 2 * s["defects"]["civil_affairs.applications"]["birth_date_contradicts_id"]
    # Departments cover different, overlapping parts of the population, beyond applicants.
    keys = {
        d: {idcard.normalize(r) for r in load(out, d, ["resident_id"]).column(0).to_pylist() if r}
        for d in DEPTS
    }
    applicants = keys["civil_affairs"]
    for d in DEPTS[1:]:
        assert 0 < len(keys[d] & applicants) < len(applicants), d
        assert len(keys[d] - applicants) > len(keys[d] & applicants), d
    assert len(set.union(*keys.values())) > 10000
    assert app["declared_monthly_income"].count(None) > 0


def test_deterministic(tmp_path: Path, world: tuple[Path, dict]) -> None:
    out, s = world
    again = generate(tmp_path / "again", seed=7, households=6000)
    assert again == s
    for dept in DEPTS:
        assert load(tmp_path / "again", dept).equals(load(out, dept)), dept
    other = generate(tmp_path / "other", seed=8, households=6000)
    assert other != s


# ---------------------------------------------------------------- ground truth


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Rank-based AUC (Mann-Whitney U) with average ranks for ties."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    _, inv, counts = np.unique(score[order], return_inverse=True, return_counts=True)
    avg = np.bincount(inv, weights=np.arange(1, len(score) + 1)) / counts
    ranks[order] = avg[inv]
    n1 = float(y.sum())
    n0 = len(y) - n1
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def fit_lr(x: np.ndarray, y: np.ndarray, iters: int = 2000, step: float = 0.5) -> np.ndarray:
    """Plain batch gradient descent, L2 1e-3; returns weights with the bias last."""
    xb = np.column_stack([x, np.ones(len(x))])
    w = np.zeros(xb.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) / len(y)
        grad[:-1] += 1e-3 * w[:-1]
        w -= step * grad
    return w


def holdout_auc(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    perm = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.7 * len(y))
    tr, te = perm[:cut], perm[cut:]
    mu, sd = x[tr].mean(axis=0), x[tr].std(axis=0) + 1e-9
    xs = (x - mu) / sd
    w = fit_lr(xs[tr], y[tr])
    return auc(y[te], np.column_stack([xs[te], np.ones(len(te))]) @ w)


def first_by_id(t: pa.Table) -> dict[str, int]:
    """Row index of the first record per normalised ID (duplicates dropped)."""
    out: dict[str, int] = {}
    for i, r in enumerate(t.column("resident_id").to_pylist()):
        if r is not None:
            out.setdefault(idcard.normalize(r), i)
    return out


def features(out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    app = load(out, "civil_affairs")
    rows = list(first_by_id(app).items())
    ids = [k for k, _ in rows]
    take = pa.array([i for _, i in rows])
    a = app.take(take).to_pydict()
    y = np.array(a["eligible"], dtype=float)

    def num(values: list, log: bool = False) -> np.ndarray:
        v = np.array([0.0 if x is None else float(x) for x in values])
        return np.log1p(np.maximum(v, 0)) if log else v

    size = num(a["household_size"])
    declared = num(a["declared_monthly_income"])
    civil = [
        np.log1p(declared),
        np.log1p(declared / size),
        np.array([x is None for x in a["declared_monthly_income"]], dtype=float),
        size,
        num(a["has_disabled_member"]),
        num(a["has_elderly_member"]),
        np.array([(date(2024, 6, 30) - b).days / 365.25 for b in a["birth_date"]]),
    ]
    civil += [
        np.array([d == name for d in a["district"]], dtype=float)
        for name in sorted({d for d in a["district"] if d})
    ]
    joint = list(civil)
    wanted = {
        "tax": ["annual_income", "employer_count"],
        "hrss": ["wage_base_monthly", "pension_monthly", "months_contributed"],
        "housing": ["property_count", "total_floor_area_m2", "assessed_value_cny"],
        "vehicles": ["vehicle_count", "newest_vehicle_value_cny"],
        "medical": ["annual_oop_expense_cny", "claim_count", "chronic_illness"],
    }
    for dept, cols in wanted.items():
        t = load(out, dept, ["resident_id", *cols])
        index = first_by_id(t)
        hit = [index.get(k) for k in ids]
        joint.append(np.array([h is not None for h in hit], dtype=float))  # known to dept
        d = t.to_pydict()
        for c in cols:
            vals = [None if h is None else d[c][h] for h in hit]
            joint.append(num(vals, log=c.endswith(("income", "monthly", "cny", "m2"))))
    return y, np.column_stack(civil), np.column_stack(joint)


@pytest.mark.parametrize("seed", [7, 11, 23])
def test_joint_data_predicts_eligibility_civil_alone_does_not(tmp_path: Path, seed: int) -> None:
    generate(tmp_path, seed=seed, households=6000)
    y, civil, joint = features(tmp_path)
    assert 0.2 < y.mean() < 0.6
    auc_civil = holdout_auc(civil, y, seed)
    auc_joint = holdout_auc(joint, y, seed)
    print(f"seed {seed}: civil-only AUC {auc_civil:.3f}, joint AUC {auc_joint:.3f}")
    assert auc_civil <= 0.75
    assert auc_joint >= 0.85
    assert auc_joint - auc_civil >= 0.10
