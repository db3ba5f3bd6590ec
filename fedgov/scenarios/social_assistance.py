"""Seeded synthetic city for the social-assistance (minimum-living-allowance) case.

:func:`generate` writes six departments' datasets for one city (districts of
Hohhot, Inner Mongolia) under ``out_dir``::

    civil_affairs/applications.csv      applications + outcome of past verification
    tax/income.csv                      annual taxable income per person
    hrss/insurance.csv                  social insurance: wage base, pension
    housing/property.db                 SQLite, table property_registrations
    vehicles/vehicles.parquet           vehicle registrations
    medical/claims.csv                  medical-insurance claims, out-of-pocket cost
    summary.json                        what :func:`generate` returns

**Ground truth.** A household is eligible iff (1) its countable per-capita
income — formal wages and business income (tax), pensions (HRSS) and informal
income no department sees, minus out-of-pocket medical expenses (medical) —
is below :data:`STANDARD_MONTHLY` CNY per person per month, (2) it owns at most
one property and no more than :data:`MAX_AREA_PER_CAPITA` m² per person
(housing), and (3) it owns no vehicle worth more than :data:`MAX_VEHICLE_VALUE`
CNY and at most one vehicle (vehicles). ``eligible`` in the applications is the
outcome of that verification. Applicants under-declare income (those above
the line far more often and more heavily), so the civil-affairs fields alone
predict eligibility poorly; the other departments' facts about the applicant
predict it well.

Departments hold per-person records keyed by the 18-digit resident ID and
cover different, overlapping subsets of the population (everyone in every
household, applicants or not): only earners appear in tax, only the insured in
HRSS, only owners in housing and vehicles, only claimants in medical. Household
property and vehicles are registered to the head in most cases.

**Defects** (counted in the summary): exact duplicate rows, re-entered
applications (same ID, different date), missing values in optional fields,
IDs with a wrong check digit, IDs with a lower-case ``x``, applicant birth dates
that contradict the ID, negative medical amounts (refund entries), and
under-declared income.

Guarantees: output is a pure function of ``(seed, households)``; every file
reads against the schema in ``nodes/<dept>/schemas/``; all non-defective IDs
are valid and unique per person, and their embedded birth date and sex match
the person.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fedgov import idcard
from fedgov.errors import ConfigError
from fedgov.idcard import check_char

__all__ = [
    "DATASETS",
    "DISTRICTS",
    "MAX_AREA_PER_CAPITA",
    "MAX_VEHICLE_VALUE",
    "STANDARD_MONTHLY",
    "generate",
]

#: Local minimum-living standard, CNY per person per month.
STANDARD_MONTHLY = 1000.0
#: Asset tests.
MAX_AREA_PER_CAPITA = 70.0
MAX_VEHICLE_VALUE = 50_000.0
TAX_YEAR = 2023
REFERENCE_DATE = date(2024, 6, 30)

#: (region code, name, household weight, housing price CNY/m²)
DISTRICTS: tuple[tuple[str, str, float, float], ...] = (
    ("150102", "xincheng", 0.17, 11500.0),
    ("150103", "huimin", 0.15, 10500.0),
    ("150104", "yuquan", 0.13, 9800.0),
    ("150105", "saihan", 0.22, 12500.0),
    ("150121", "tumed_left", 0.08, 5200.0),
    ("150122", "togtoh", 0.06, 4600.0),
    ("150123", "horinger", 0.07, 5000.0),
    ("150124", "qingshuihe", 0.05, 3900.0),
    ("150125", "wuchuan", 0.07, 4200.0),
)
#: Birth places of residents born outside the city.
_OTHER_REGIONS = ("150202", "150203", "150602", "152601", "140105", "130102", "620102")

#: Dataset name → path under the output directory (fixed: other code relies on it).
DATASETS: dict[str, dict[str, str]] = {
    "civil_affairs": {
        "applications": "civil_affairs/applications.csv",
        # this year's applications, verified later: the held-out set for models
        "applications_holdout": "civil_affairs/applications_holdout.csv",
    },
    "tax": {"income": "tax/income.csv"},
    "hrss": {"insurance": "hrss/insurance.csv"},
    "housing": {"property": "housing/property.db"},
    "vehicles": {"vehicles": "vehicles/vehicles.parquet"},
    "medical": {"claims": "medical/claims.csv"},
}
PROPERTY_TABLE = "property_registrations"
_AVG_WAGE_MONTHLY = 7500.0  # social-insurance base floor is 60 %, cap 300 %


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class _People:
    hh: np.ndarray  # household index
    role: np.ndarray  # 0 head, 1 spouse, 2 child, 3 parent
    age: np.ndarray
    male: np.ndarray
    birth: np.ndarray  # date ordinal
    ids: list[str]


def _make_people(rng: np.random.Generator, n_hh: int, district: np.ndarray) -> _People:
    size = rng.choice(np.arange(1, 7), size=n_hh, p=[0.2, 0.27, 0.25, 0.17, 0.08, 0.03])
    head_age = np.clip(rng.normal(50, 15, n_hh), 20, 92).astype(np.int64)
    has_spouse = (size >= 2) & (rng.random(n_hh) < 0.8)
    hh_l: list[np.ndarray] = []
    role_l: list[np.ndarray] = []
    age_l: list[np.ndarray] = []
    idx = np.arange(n_hh)
    hh_l.append(idx)
    role_l.append(np.zeros(n_hh, np.int64))
    age_l.append(head_age)
    sp = idx[has_spouse]
    hh_l.append(sp)
    role_l.append(np.ones(len(sp), np.int64))
    age_l.append(np.clip(head_age[sp] + rng.normal(-2, 3, len(sp)).astype(np.int64), 18, 95))
    others = size - 1 - has_spouse.astype(np.int64)
    o_hh = np.repeat(idx, others)
    o_head = head_age[o_hh]
    is_parent = (o_head < 60) & (rng.random(len(o_hh)) < 0.18)
    child_age = np.where(
        o_head >= 65,
        o_head - rng.integers(22, 38, len(o_hh)),
        rng.integers(0, np.maximum(o_head - 19, 1) + 1, len(o_hh)) + 0,
    )
    child_age = np.clip(np.minimum(child_age, o_head - 18), 0, None)
    parent_age = np.clip(o_head + rng.integers(22, 34, len(o_hh)), 40, 99)
    hh_l.append(o_hh)
    role_l.append(np.where(is_parent, 3, 2))
    age_l.append(np.where(is_parent, parent_age, child_age))
    hh = np.concatenate(hh_l)
    role = np.concatenate(role_l)
    age = np.concatenate(age_l).astype(np.int64)
    order = np.lexsort((role, hh))
    hh, role, age = hh[order], role[order], age[order]
    n = len(hh)
    male = rng.random(n) < 0.5
    head_male = rng.random(n_hh) < 0.65
    male = np.where(role == 0, head_male[hh], male)
    male = np.where(role == 1, ~head_male[hh], male)
    ref = REFERENCE_DATE.toordinal()
    birth = ref - age * 365 - rng.integers(1, 365, n) - (age // 4)
    local = rng.random(n) < 0.8
    codes = np.array([d[0] for d in DISTRICTS])
    region = np.where(
        local, codes[district[hh]], np.array(_OTHER_REGIONS)[rng.integers(0, len(_OTHER_REGIONS), n)]
    )
    seqs = rng.integers(0, 500, n) * 2 + male.astype(np.int64)
    ids: list[str] = []
    seen: set[str] = set()
    for i in range(n):
        b = date.fromordinal(int(birth[i]))
        seq = int(seqs[i])
        while True:
            first17 = f"{region[i]}{b:%Y%m%d}{seq:03d}"
            rid = first17 + check_char(first17)
            if rid not in seen:
                break
            seq = (seq + 2) % 1000
        seen.add(rid)
        ids.append(rid)
    return _People(hh=hh, role=role, age=age, male=male, birth=birth, ids=ids)


def _round(x: np.ndarray, nd: int = 2) -> np.ndarray:
    return np.round(x.astype(np.float64), nd)


def _corrupt_check_digit(rid: str, rng: np.random.Generator) -> str:
    pos = int(rng.integers(0, 17))
    digit = str((int(rid[pos]) + int(rng.integers(1, 10))) % 10)
    bad = rid[:pos] + digit + rid[pos + 1 :]
    if check_char(bad[:17]) == bad[17]:  # typo happened to keep the check valid
        bad = bad[:17] + ("0" if bad[17] != "0" else "1")
    return bad


class _Defects:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.counts: dict[str, dict[str, int]] = {}

    def add(self, dataset: str, kind: str, n: int) -> None:
        self.counts.setdefault(dataset, {})[kind] = self.counts.get(dataset, {}).get(kind, 0) + n

    def ids(self, dataset: str, ids: list[str], *, bad_rate: float, lower_x: float) -> list[str]:
        out = list(ids)
        n_bad = n_low = 0
        for i, r in enumerate(out):
            u = self.rng.random()
            if u < bad_rate:
                out[i] = _corrupt_check_digit(r, self.rng)
                n_bad += 1
            elif r.endswith("X") and u < bad_rate + lower_x:
                out[i] = r[:-1] + "x"
                n_low += 1
        self.add(dataset, "bad_check_digit", n_bad)
        self.add(dataset, "lower_case_x", n_low)
        return out

    def missing(self, dataset: str, table: pa.Table, col: str, rate: float) -> pa.Table:
        mask = self.rng.random(table.num_rows) < rate
        if not mask.any():
            return table
        arr = table.column(col).combine_chunks()
        new = pa.array([None if m else v for m, v in zip(mask, arr.to_pylist(), strict=True)], type=arr.type)
        self.add(dataset, f"missing_{col}", int(mask.sum()))
        return table.set_column(table.schema.get_field_index(col), col, new)

    def duplicates(self, dataset: str, table: pa.Table, rate: float) -> pa.Table:
        n = table.num_rows
        k = int(self.rng.binomial(n, rate)) if n else 0
        if k == 0:
            return table
        extra = self.rng.choice(n, size=k, replace=False)
        idx = np.concatenate([np.arange(n), extra])
        idx = idx[self.rng.permutation(len(idx))]
        self.add(dataset, "duplicate_rows", k)
        return table.take(pa.array(idx))


def _write_csv(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="needed"))


def _dates(ordinals: np.ndarray) -> pa.Array:
    epoch = date(1970, 1, 1).toordinal()
    return pa.array((ordinals - epoch).astype(np.int32), type=pa.date32())


def generate(out_dir: Path, *, seed: int = 7, households: int = 6000) -> dict[str, Any]:
    """Write the synthetic city under ``out_dir``; return a JSON-able summary.

    The summary (also written to ``out_dir/summary.json``) holds the seed, the
    number of households and persons, rows per dataset, applicants, the
    eligible rate among applicants, the rule's parameters and defect counts per
    dataset. Existing files at the output paths are replaced.
    """
    if households < 50:
        raise ConfigError(f"households must be at least 50, got {households}", where="generate")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    H = households
    district = rng.choice(len(DISTRICTS), size=H, p=[d[2] for d in DISTRICTS])
    z = rng.normal(0.3, 1.0, H)  # latent economic standing of the household
    P = _make_people(rng, H, district)
    n = len(P.hh)
    zp = z[P.hh] + rng.normal(0, 0.35, n)
    size = np.bincount(P.hh, minlength=H)
    retire = np.where(P.male, 60, 55)
    disabled = rng.random(n) < np.where(z[P.hh] < -0.8, 0.08, 0.03) + 0.03 * (P.age >= 70)
    working = (P.age >= 18) & (P.age < retire)
    student = (P.age < 23) & (rng.random(n) < 0.6)
    active = working & ~student
    p_formal = np.where(disabled, 0.12, _sigmoid(0.5 + 1.2 * zp))
    u = rng.random(n)
    formal = active & (u < p_formal)
    informal = active & ~formal & (u < p_formal + (1 - p_formal) * 0.5)
    wage = np.where(
        formal,
        np.maximum(np.exp(np.log(52000) + 0.45 * zp + rng.normal(0, 0.3, n)), 22000),
        0.0,
    )
    second = formal & (rng.random(n) < 0.08)
    wage = wage * np.where(second, rng.uniform(1.1, 1.35, n), 1.0)
    inf_income = np.where(informal, np.exp(np.log(11000) + 0.35 * zp + rng.normal(0, 0.4, n)), 0.0)
    business = informal & (rng.random(n) < 0.25)  # registered individual business: tax sees it
    # Pensions
    retired = P.age >= retire
    emp_pension = retired & (rng.random(n) < _sigmoid(0.2 + 1.1 * zp))
    res_pension = retired & ~emp_pension & (rng.random(n) < 0.85)
    pension = np.where(
        emp_pension,
        np.maximum(rng.normal(3300 + 700 * zp, 450), 1800),
        np.where(res_pension, rng.uniform(190, 380, n), 0.0),
    )
    tax_known = wage + np.where(business, inf_income, 0.0)
    income_person = wage + inf_income + pension * 12
    # Medical
    chronic = rng.random(n) < np.clip(0.02 + 0.007 * (P.age - 30), 0.02, 0.55) + 0.25 * disabled
    claims = (rng.random(n) < np.clip(0.3 + 0.006 * P.age, 0, 0.95)) | chronic | disabled
    oop = np.exp(np.log(900) + rng.normal(0, 0.9, n)) * np.where(chronic, 3.5, 1.0)
    oop *= np.where(disabled, 2.0, 1.0)
    serious = claims & (rng.random(n) < 0.035 + 0.02 * chronic)
    oop = np.where(serious, oop + rng.uniform(15000, 90000, n), oop)
    oop = np.where(claims, oop, 0.0)
    claim_count = np.where(claims, 1 + rng.poisson(2 + 6 * chronic + 10 * serious), 0)
    # Household assets (registered to the head, sometimes the spouse)
    owns = rng.random(H) < _sigmoid(0.9 + 1.4 * z)
    n_prop = np.where(owns, 1 + (rng.random(H) < _sigmoid(-2.2 + 1.3 * z)) + (rng.random(H) < 0.04), 0)
    area = np.where(
        owns,
        np.clip(rng.normal(58 + 14 * z + 7 * size, 14, H), 22, 260)
        + (n_prop - 1) * np.clip(rng.normal(70 + 10 * z, 15, H), 30, 200),
        0.0,
    )
    price = np.array([d[3] for d in DISTRICTS])[district]
    value = area * price * rng.uniform(0.75, 1.2, H)
    has_car = rng.random(H) < _sigmoid(-0.5 + 1.4 * z)
    n_car = np.where(has_car, 1 + (rng.random(H) < _sigmoid(-3 + 1.0 * z)), 0)
    car_value = np.where(
        has_car, np.maximum(np.exp(np.log(95000) + 0.4 * z + rng.normal(0, 0.6, H)), 6000), 0.0
    )
    # Truth
    hh_income = np.bincount(P.hh, weights=income_person, minlength=H)
    hh_oop = np.bincount(P.hh, weights=oop, minlength=H)
    pc_monthly = np.maximum(hh_income - hh_oop, 0) / 12 / size
    income_ok = pc_monthly < STANDARD_MONTHLY
    assets_ok = (n_prop <= 1) & (area / size <= MAX_AREA_PER_CAPITA)
    assets_ok &= (n_car <= 1) & (car_value <= MAX_VEHICLE_VALUE)
    eligible = income_ok & assets_ok
    # Declarations and who applies
    under = rng.random(H) < np.where(income_ok, 0.12, 0.6)
    factor = np.where(under, rng.uniform(0.1, 0.55, H), np.clip(rng.normal(0.95, 0.08, H), 0.6, 1.1))
    declared = hh_income * factor
    declared = np.where(under & (rng.random(H) < 0.15), 0.0, declared)
    declared_pc = declared / 12 / size
    hh_elderly = np.bincount(P.hh, weights=(P.age >= 65), minlength=H) > 0
    hh_disabled = np.bincount(P.hh, weights=disabled, minlength=H) > 0
    p_apply = 0.55 * _sigmoid(-(declared_pc - 1150) / 160) + 0.05 * hh_elderly + 0.05 * hh_disabled
    p_apply = p_apply * np.where(owns & (n_prop >= 2), 0.7, 1.0) + 0.005
    applies = rng.random(H) < p_apply
    defects = _Defects(rng)
    head_idx = np.flatnonzero(P.role == 0)  # one per household, in household order
    ids = P.ids
    ids_arr = np.array(ids)

    # ---- civil affairs
    app_hh = np.flatnonzero(applies)
    app_head = head_idx[app_hh]
    start = date(2024, 1, 2).toordinal()
    app_date = start + rng.integers(0, 170, len(app_hh))
    birth = P.birth[app_head].copy()
    wrong_birth = rng.random(len(app_hh)) < 0.01
    birth = np.where(wrong_birth, birth + rng.integers(1, 400, len(app_hh)), birth)
    defects.add("civil_affairs.applications", "birth_date_contradicts_id", int(wrong_birth.sum()))
    defects.add("civil_affairs.applications", "under_declared_income", int(under[app_hh].sum()))
    names = np.array([d[1] for d in DISTRICTS])
    app = pa.table(
        {
            "application_id": [f"SA2024-{i + 1:06d}" for i in range(len(app_hh))],
            "resident_id": defects.ids(
                "civil_affairs.applications",
                list(ids_arr[app_head]),
                bad_rate=0.005,
                lower_x=0.3,
            ),
            "birth_date": _dates(birth),
            "sex": np.where(P.male[app_head], "M", "F"),
            "district": names[district[app_hh]],
            "household_size": size[app_hh].astype(np.int64),
            "declared_monthly_income": _round(declared[app_hh] / 12),
            "has_disabled_member": hh_disabled[app_hh],
            "has_elderly_member": hh_elderly[app_hh],
            "application_date": _dates(app_date),
            "eligible": eligible[app_hh].astype(np.int64),
        }
    )
    ds = "civil_affairs.applications"
    app = defects.missing(ds, app, "declared_monthly_income", 0.015)
    app = defects.missing(ds, app, "district", 0.01)
    # re-entered applications: same person, later date
    k = max(1, int(len(app_hh) * 0.01))
    pick = rng.choice(app.num_rows, size=k, replace=False)
    again = app.take(pa.array(pick))
    later = np.array(again.column("application_date").to_pylist(), dtype=object)
    later = [d + timedelta(days=int(rng.integers(3, 40))) for d in later]
    again = again.set_column(
        again.schema.get_field_index("application_date"),
        "application_date",
        pa.array(later, type=pa.date32()),
    )
    defects.add(ds, "re_entered_application", k)
    app = pa.concat_tables([app, again])
    app = defects.duplicates(ds, app, 0.025)
    # a quarter of the applicants (by a hash of the ID, so re-entries stay
    # together) form the held-out set that models are evaluated on
    norm_ids = [idcard.normalize(str(v)) if v else "" for v in app.column("resident_id").to_pylist()]
    holdout = np.array([hashlib.sha256(v.encode()).digest()[0] % 4 == 0 for v in norm_ids], dtype=bool)
    _write_csv(app.filter(pa.array(~holdout)), out / DATASETS["civil_affairs"]["applications"])
    _write_csv(app.filter(pa.array(holdout)), out / DATASETS["civil_affairs"]["applications_holdout"])

    # ---- tax
    has_tax = tax_known > 0
    t = np.flatnonzero(has_tax)
    ds = "tax.income"
    tax = pa.table(
        {
            "resident_id": defects.ids(ds, list(ids_arr[t]), bad_rate=0.003, lower_x=0.05),
            "tax_year": np.full(len(t), TAX_YEAR, np.int64),
            "annual_income": _round(tax_known[t]),
            "employer_count": (formal[t].astype(np.int64) + second[t]).astype(np.int64),
            "filed_on": _dates(date(2024, 3, 1).toordinal() + rng.integers(0, 120, len(t))),
        }
    )
    tax = defects.missing(ds, tax, "employer_count", 0.005)
    tax = defects.duplicates(ds, tax, 0.01)
    _write_csv(tax, out / DATASETS["tax"]["income"])

    # ---- hrss
    insured_worker = formal & (rng.random(n) < 0.9)
    flexible = informal & (rng.random(n) < 0.25)
    in_hrss = insured_worker | flexible | emp_pension | res_pension
    h = np.flatnonzero(in_hrss)
    status = np.select(
        [insured_worker[h], flexible[h], emp_pension[h]],
        ["employed", "flexible", "retired"],
        default="resident_pension",
    )
    floor, cap = 0.6 * _AVG_WAGE_MONTHLY, 3 * _AVG_WAGE_MONTHLY
    base = np.where(
        insured_worker[h],
        np.clip(wage[h] / 12, floor, cap),
        np.where(flexible[h], floor, np.nan),
    )
    months = np.where(
        emp_pension[h] | insured_worker[h],
        np.clip((np.minimum(P.age[h], retire[h]) - 20) * 12 * rng.uniform(0.5, 1.0, len(h)), 6, 540),
        np.where(res_pension[h], 180, rng.integers(6, 120, len(h))),
    ).astype(np.int64)
    last_month = np.where(
        emp_pension[h] | res_pension[h],
        None,
        "2024-" + np.char.zfill(rng.integers(1, 7, len(h)).astype(str), 2),
    )
    ds = "hrss.insurance"
    hrss = pa.table(
        {
            "resident_id": defects.ids(ds, list(ids_arr[h]), bad_rate=0.002, lower_x=0.8),
            "insured_status": status,
            "wage_base_monthly": pa.array(_round(base), from_pandas=True),
            "pension_monthly": _round(pension[h]),
            "months_contributed": months,
            "last_contribution_month": pa.array(last_month.tolist(), type=pa.string()),
        }
    )
    hrss = defects.missing(ds, hrss, "months_contributed", 0.01)
    hrss = defects.duplicates(ds, hrss, 0.01)
    _write_csv(hrss, out / DATASETS["hrss"]["insurance"])

    # ---- housing (SQLite)
    spouse_of = np.full(H, -1)
    sp = np.flatnonzero(P.role == 1)
    spouse_of[P.hh[sp]] = sp
    holder = np.where((spouse_of >= 0) & (rng.random(H) < 0.12), spouse_of, head_idx)
    o = np.flatnonzero(owns)
    ds = "housing.property"
    reg_on = date(2024, 6, 1).toordinal() - rng.integers(0, 365 * 25, len(o))
    house = pa.table(
        {
            "resident_id": defects.ids(ds, list(ids_arr[holder[o]]), bad_rate=0.002, lower_x=0.0),
            "property_count": n_prop[o].astype(np.int64),
            "total_floor_area_m2": _round(area[o], 1),
            "assessed_value_cny": _round(value[o], 0),
            "registered_on": _dates(reg_on),
        }
    )
    house = defects.missing(ds, house, "assessed_value_cny", 0.02)
    house = defects.duplicates(ds, house, 0.005)
    db = out / DATASETS["housing"]["property"]
    db.parent.mkdir(parents=True, exist_ok=True)
    db.unlink(missing_ok=True)
    con = sqlite3.connect(db)
    try:
        con.execute(
            f"CREATE TABLE {PROPERTY_TABLE} (resident_id TEXT, property_count INTEGER, "
            "total_floor_area_m2 REAL, assessed_value_cny REAL, registered_on DATE)"
        )
        rows = zip(*(house.column(c).to_pylist() for c in house.column_names), strict=True)
        con.executemany(
            f"INSERT INTO {PROPERTY_TABLE} VALUES (?,?,?,?,?)",
            [(r[0], r[1], r[2], r[3], None if r[4] is None else r[4].isoformat()) for r in rows],
        )
        con.commit()
    finally:
        con.close()

    # ---- vehicles (Parquet)
    car_holder = np.where((spouse_of >= 0) & (rng.random(H) < 0.15), spouse_of, head_idx)
    c = np.flatnonzero(has_car)
    ds = "vehicles.vehicles"
    veh = pa.table(
        {
            "resident_id": defects.ids(ds, list(ids_arr[car_holder[c]]), bad_rate=0.005, lower_x=0.1),
            "vehicle_count": n_car[c].astype(np.int64),
            "newest_vehicle_value_cny": _round(car_value[c], 0),
            "newest_registration_date": _dates(
                date(2024, 6, 1).toordinal() - rng.integers(0, 365 * 15, len(c))
            ),
        }
    )
    veh = defects.duplicates(ds, veh, 0.005)
    (out / "vehicles").mkdir(parents=True, exist_ok=True)
    pq.write_table(veh, out / DATASETS["vehicles"]["vehicles"])

    # ---- medical
    m = np.flatnonzero(claims)
    ds = "medical.claims"
    amount = oop[m].copy()
    refund = rng.random(len(m)) < 0.002
    amount = np.where(refund, -rng.uniform(50, 800, len(m)), amount)
    defects.add(ds, "negative_amount", int(refund.sum()))
    med = pa.table(
        {
            "resident_id": defects.ids(ds, list(ids_arr[m]), bad_rate=0.003, lower_x=0.2),
            "claim_year": np.full(len(m), TAX_YEAR, np.int64),
            "claim_count": claim_count[m].astype(np.int64),
            "annual_oop_expense_cny": _round(amount),
            "chronic_illness": chronic[m],
        }
    )
    med = defects.missing(ds, med, "chronic_illness", 0.03)
    med = defects.duplicates(ds, med, 0.02)
    _write_csv(med, out / DATASETS["medical"]["claims"])

    summary: dict[str, Any] = {
        "seed": seed,
        "households": H,
        "persons": n,
        "rows": {
            "civil_affairs.applications": int((~holdout).sum()),
            "civil_affairs.applications_holdout": int(holdout.sum()),
            "tax.income": tax.num_rows,
            "hrss.insurance": hrss.num_rows,
            "housing.property": house.num_rows,
            "vehicles.vehicles": veh.num_rows,
            "medical.claims": med.num_rows,
        },
        "applicants": int(applies.sum()),
        "eligible_rate": round(float(eligible[app_hh].mean()), 4) if len(app_hh) else 0.0,
        "population_eligible_rate": round(float(eligible.mean()), 4),
        "rule": {
            "standard_monthly_per_capita_cny": STANDARD_MONTHLY,
            "max_area_per_capita_m2": MAX_AREA_PER_CAPITA,
            "max_vehicle_value_cny": MAX_VEHICLE_VALUE,
            "max_properties": 1,
            "max_vehicles": 1,
        },
        "defects": defects.counts,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
