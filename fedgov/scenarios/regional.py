"""Regional split of the social-assistance world for horizontal federated learning.

:func:`generate_regional` runs :func:`fedgov.scenarios.social_assistance.generate`
(or reuses its output), builds one *applications-with-features* row per
applicant (the facts the other departments hold about the applicant's
household head, joined by resident ID), and splits the rows by district into
regional civil-affairs bureaus. Each bureau holds the same-schema table::

    <out>/regions/<region>/applications_features.csv
    <out>/validation/applications_features.csv      labelled audit sample
    <out>/regional_summary.json

In the federated setting every bureau holds its own table; the validation
set is a labelled sample the job's manifest names (held by the coordinator)
and is used only for reporting quality and leave-one-out contributions.

Features are fixed transforms (``log1p(x)/10`` for money, ``/100`` for areas,
indicators for "has a record"): no statistic is computed across regions, so
preparing the data leaks nothing between bureaus. Guarantees: output is a
pure function of ``(seed, households)``; every table has the columns of
:data:`FEATURES` followed by ``eligible``; applicants are de-duplicated by
resident ID (first application kept) and rows without a district are
dropped.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fedgov.errors import ConfigError
from fedgov.scenarios import social_assistance as sa

__all__ = ["FEATURES", "REGIONS", "TABLE", "generate_regional"]

#: Region name → districts of :data:`fedgov.scenarios.social_assistance.DISTRICTS`.
REGIONS: dict[str, tuple[str, ...]] = {
    "old_town": ("xincheng", "huimin"),
    "new_town": ("yuquan", "saihan"),
    "counties": ("tumed_left", "togtoh", "horinger", "qingshuihe", "wuchuan"),
}
TABLE = "applications_features.csv"
FEATURES: tuple[str, ...] = (
    "declared_income", "household_size", "has_disabled_member", "has_elderly_member",
    "age", "male", "tax_income", "has_tax_record", "pension", "wage_base", "insured",
    "property_count", "area_per_capita", "property_value", "vehicle_count",
    "vehicle_value", "medical_oop", "chronic_illness",
)


def _money(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(np.nan_to_num(x), 0.0)) / 10.0


def _norm_id(rid: str | None) -> str:
    return (rid or "").upper()


def _read_csv(path: Path) -> dict[str, list[Any]]:
    return pacsv.read_csv(path).to_pydict()


def _max_by_id(ids: list[str], values: list[Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for rid, v in zip(ids, values, strict=True):
        if v is None:
            continue
        k = _norm_id(rid)
        out[k] = max(out.get(k, float("-inf")), float(v))
    return out


def _features(world: Path) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    app = _read_csv(world / sa.DATASETS["civil_affairs"]["applications"])
    tax = _read_csv(world / sa.DATASETS["tax"]["income"])
    hrss = _read_csv(world / sa.DATASETS["hrss"]["insurance"])
    med = _read_csv(world / sa.DATASETS["medical"]["claims"])
    veh = pq.read_table(world / sa.DATASETS["vehicles"]["vehicles"]).to_pydict()
    con = sqlite3.connect(world / sa.DATASETS["housing"]["property"])
    try:
        house_rows = con.execute(
            f"SELECT resident_id, property_count, total_floor_area_m2, assessed_value_cny "
            f"FROM {sa.PROPERTY_TABLE}").fetchall()
    finally:
        con.close()
    tax_inc = _max_by_id(tax["resident_id"], tax["annual_income"])
    pension = _max_by_id(hrss["resident_id"], hrss["pension_monthly"])
    wage = _max_by_id(hrss["resident_id"], hrss["wage_base_monthly"])
    insured = {_norm_id(r) for r in hrss["resident_id"]}
    oop = _max_by_id(med["resident_id"], med["annual_oop_expense_cny"])
    chronic = _max_by_id(med["resident_id"],
                         [None if c is None else float(c) for c in med["chronic_illness"]])
    v_cnt = _max_by_id(veh["resident_id"], veh["vehicle_count"])
    v_val = _max_by_id(veh["resident_id"], veh["newest_vehicle_value_cny"])
    p_cnt = _max_by_id([r[0] for r in house_rows], [r[1] for r in house_rows])
    p_area = _max_by_id([r[0] for r in house_rows], [r[2] for r in house_rows])
    p_val = _max_by_id([r[0] for r in house_rows], [r[3] for r in house_rows])

    seen: set[str] = set()
    rows: list[list[float]] = []
    labels: list[int] = []
    districts: list[str] = []
    ref = sa.REFERENCE_DATE
    for i, rid in enumerate(app["resident_id"]):
        k = _norm_id(rid)
        district = app["district"][i]
        if k in seen or district is None:
            continue
        seen.add(k)
        size = float(app["household_size"][i] or 1)
        birth: date | None = app["birth_date"][i]
        age = (ref - birth).days / 365.25 if birth is not None else 45.0
        rows.append([
            float(_money(np.array([app["declared_monthly_income"][i] or 0.0]))[0]),
            size / 5.0,
            float(bool(app["has_disabled_member"][i])),
            float(bool(app["has_elderly_member"][i])),
            age / 100.0,
            float(app["sex"][i] == "M"),
            float(_money(np.array([tax_inc.get(k, 0.0)]))[0]),
            float(k in tax_inc),
            float(_money(np.array([pension.get(k, 0.0)]))[0]),
            float(_money(np.array([wage.get(k, 0.0)]))[0]),
            float(k in insured),
            p_cnt.get(k, 0.0),
            p_area.get(k, 0.0) / size / 100.0,
            float(_money(np.array([p_val.get(k, 0.0)]))[0]),
            v_cnt.get(k, 0.0),
            float(_money(np.array([v_val.get(k, 0.0)]))[0]),
            float(_money(np.array([oop.get(k, 0.0)]))[0]),
            chronic.get(k, 0.0),
        ])
        labels.append(int(app["eligible"][i]))
        districts.append(str(district))
    X = np.array(rows, dtype=np.float64)
    cols = {name: X[:, j] for j, name in enumerate(FEATURES)}
    return cols, np.array(labels, dtype=np.int64), districts


def _write(path: Path, cols: dict[str, np.ndarray], y: np.ndarray, idx: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {name: np.round(v[idx], 6) for name, v in cols.items()}
    data["eligible"] = y[idx]
    pacsv.write_csv(pa.table(data), path)


def generate_regional(out_dir: Path, *, seed: int = 7, households: int = 6000,
                      validation_fraction: float = 0.2,
                      world_dir: Path | None = None) -> dict[str, Any]:
    """Write the regional tables and the validation set under ``out_dir``; return a summary.

    ``world_dir``: an existing :func:`social_assistance.generate` output to
    reuse; by default one is generated in ``out_dir/world``. From every
    region a seeded ``validation_fraction`` of applicants is held out into the
    pooled validation set, so the validation set follows the union's
    distribution. The summary maps region → ``{"rows", "eligible_rate",
    "path"}`` plus ``validation`` and ``features``.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ConfigError("validation_fraction must be in (0, 1)", where="generate_regional")
    out = Path(out_dir)
    world = Path(world_dir) if world_dir is not None else out / "world"
    if world_dir is None:
        sa.generate(world, seed=seed, households=households)
    cols, y, districts = _features(world)
    rng = np.random.default_rng(seed + 1)
    dist = np.array(districts)
    val_idx: list[np.ndarray] = []
    summary: dict[str, Any] = {"seed": seed, "households": households,
                               "features": list(FEATURES), "regions": {}}
    for region, members in REGIONS.items():
        idx = np.flatnonzero(np.isin(dist, members))
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * validation_fraction))
        val_idx.append(idx[:n_val])
        train = np.sort(idx[n_val:])
        path = out / "regions" / region / TABLE
        _write(path, cols, y, train)
        summary["regions"][region] = {"rows": len(train), "path": str(path),
                                      "eligible_rate": round(float(y[train].mean()), 4)}
    vidx = np.sort(np.concatenate(val_idx))
    vpath = out / "validation" / TABLE
    _write(vpath, cols, y, vidx)
    summary["validation"] = {"rows": len(vidx), "path": str(vpath),
                             "eligible_rate": round(float(y[vidx].mean()), 4)}
    (out / "regional_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
