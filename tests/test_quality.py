"""Data quality: hand-computed scores on a small fixture, and the synthetic city's injected defects."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fedgov.datasources import read_dataset
from fedgov.idcard import make_id
from fedgov.quality import ConsistencyRule, assess
from fedgov.scenarios.social_assistance import DATASETS, PROPERTY_TABLE, generate
from fedgov.schema import load_schema, schema_from_dict

ROOT = Path(__file__).resolve().parents[1]
TODAY = date(2024, 6, 30)

SCHEMA = schema_from_dict(
    {
        "dataset": {"name": "people", "key": "rid", "update_frequency": "monthly"},
        "fields": [
            {"name": "rid", "type": "resident_id", "required": True},
            {"name": "birth_date", "type": "date", "required": True},
            {"name": "sex", "type": "category", "values": ["M", "F"], "required": True},
            {"name": "age", "type": "int", "min": 0, "max": 120, "required": True},
            {"name": "code", "type": "string", "pattern": "^[A-Z]{2}$", "required": False},
            {"name": "updated", "type": "date", "required": True},
        ],
    },
    "fixture",
)


def _fixture() -> pa.Table:
    b = [date(1980, 1, 1 + i) for i in range(10)]
    ids = [make_id("150102", d, 10 + 2 * i + (i % 2)) for i, d in enumerate(b)]  # odd seq → M
    sexes = ["M" if i % 2 else "F" for i in range(10)]
    ids[1] = ids[1][:17] + ("0" if ids[1][17] != "0" else "1")  # bad check digit
    ids[9] = ids[3]  # duplicate key (row 10 repeats row 4 exactly below)
    births = list(b)
    births[2] = date(1981, 1, 3)  # contradicts ID
    births[9] = b[3]
    sexes[9] = sexes[3]
    sexes[4] = "M"  # row 5 has even seq (F) → contradiction
    ages = [44, 44, 44, 44, 130, 44, None, 44, 44, 44]  # one out of range, one missing
    codes = ["AB", "ab", None, "CD", "EF", "GH", "IJ", "KL", "MN", "CD"]  # one bad pattern, one optional null
    updated = [date(2024, 6, 1)] * 9 + [date(2024, 6, 1)]
    return pa.table(
        {
            "rid": ids,
            "birth_date": pa.array(births, pa.date32()),
            "sex": sexes,
            "age": pa.array(ages, pa.int64()),
            "code": codes,
            "updated": pa.array(updated, pa.date32()),
        }
    )


def test_hand_computed_scores() -> None:
    r = assess(SCHEMA, _fixture(), today=TODAY)
    assert r.rows == 10
    # completeness: 5 required fields x 10 rows, 1 missing (age)
    assert r.scores["completeness"] == pytest.approx(1 - 1 / 50)
    assert r.count("age", "missing") == 1
    assert r.count("code", "missing (optional field)") == 1
    # validity: checked = rid 10 + birth 10 + sex 10 + age 9 + code 9 + updated 10 = 58; bad = 1 + 1 + 1
    assert r.count("rid", "bad check digit") == 1
    assert r.count("age", "above maximum 120") == 1
    assert r.count("code", "does not match pattern") == 1
    assert r.scores["validity"] == pytest.approx(round(1 - 3 / 58, 4))
    # consistency: 9 valid IDs x 2 rules = 18 checks; 1 birth + 1 sex contradiction
    assert r.count("birth_date~rid", "birth date contradicts resident ID") == 1
    assert r.count("sex~rid", "sex contradicts resident ID") == 1
    assert r.scores["consistency"] == pytest.approx(round(1 - 2 / 18, 4))
    # uniqueness: one duplicate key (which is also an exact duplicate row)
    assert r.count("rid", "duplicate key value") == 1
    assert r.count("(all fields)", "exact duplicate row") == 1
    assert r.scores["uniqueness"] == pytest.approx(0.9)
    # timeliness: newest 2024-06-01 is 29 days old, monthly allows 31
    assert r.scores["timeliness"] == 1.0
    w = {"completeness": 0.3, "validity": 0.3, "consistency": 0.15, "uniqueness": 0.15, "timeliness": 0.1}
    expect = sum(w[d] * r.scores[d] for d in w)  # type: ignore[operator]
    assert r.overall == pytest.approx(round(expect, 4))
    pub = r.public_scores()
    assert set(pub) == {
        "version",
        "completeness",
        "validity",
        "consistency",
        "uniqueness",
        "timeliness",
        "overall",
    }
    assert all(isinstance(v, int | float) for v in pub.values())
    lines = r.worst(3)
    assert lines[0].startswith("birth_date~rid") or lines[0].startswith("sex~rid") or "age" in lines[0]
    assert all("[" in line for line in lines)


def test_timeliness_decay_lowercase_x_and_extra_rule() -> None:
    t = _fixture()
    stale = t.set_column(5, "updated", pa.array([date(2024, 3, 1)] * 10, pa.date32()))
    r = assess(SCHEMA, stale, today=TODAY)
    age = (TODAY - date(2024, 3, 1)).days  # 121 days, monthly = 31
    assert r.scores["timeliness"] == pytest.approx(round(1 - (age - 31) / 93, 4))
    rid_x = make_id("150102", date(1990, 1, 1), 5)
    seq = 5
    while not rid_x.endswith("X"):
        seq += 2
        rid_x = make_id("150102", date(1990, 1, 1), seq)
    ids = t.column("rid").to_pylist()
    ids[0] = rid_x.lower()
    t2 = t.set_column(0, "rid", pa.array(ids))
    r2 = assess(SCHEMA, t2, today=TODAY)
    assert r2.count("rid", "lower-case x") == 1
    rule = ConsistencyRule(
        "age~birth_date", lambda tb: (np.ones(tb.num_rows, bool), np.zeros(tb.num_rows, bool))
    )
    r3 = assess(SCHEMA, t, today=TODAY, rules=[rule])
    assert r3.count("age~birth_date", "rule violated") == 10


def _load(tmp: Path, dept: str, name: str) -> tuple:
    schema = load_schema(ROOT / "nodes" / dept / "schemas" / f"{name}.toml")
    rel = DATASETS[dept][name]
    if rel.endswith(".db"):
        table = read_dataset(f"sqlite:///{tmp / rel}", schema, base_dir=tmp, table=PROPERTY_TABLE)
    else:
        table = read_dataset(rel, schema, base_dir=tmp)
    return schema, table


def _first_per_key(table: pa.Table, key: str) -> pa.Table:
    """One row per normalised key (the first): undoes duplicated and re-entered rows."""
    norm = pc.utf8_upper(table.column(key)).to_pylist()
    seen: set[str] = set()
    keep = []
    for i, k in enumerate(norm):
        if k not in seen:
            seen.add(k)
            keep.append(i)
    return table.take(pa.array(keep))


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("city")
    return tmp, generate(tmp, households=500)


def test_synthetic_city_defects_found(city: tuple[Path, dict]) -> None:
    tmp, summary = city
    for dept, datasets in DATASETS.items():
        for name in datasets:
            ds = f"{dept}.{name}"
            expected = summary["defects"].get(ds, {})
            schema, table = _load(tmp, dept, name)
            full = assess(schema, table, today=TODAY)
            assert full.rows == summary["rows"][ds]
            dup = expected.get("duplicate_rows", 0) + expected.get("re_entered_application", 0)
            assert full.count("resident_id", "duplicate key value") == dup, ds
            assert full.count("(all fields)", "exact duplicate row") >= expected.get("duplicate_rows", 0), ds
            # The generator injects ID/missing defects before duplicating rows: count on first occurrences.
            base = assess(schema, _first_per_key(table, "resident_id"), today=TODAY)
            assert base.count("resident_id", "bad check digit") == expected.get("bad_check_digit", 0), ds
            assert base.count("resident_id", "lower-case x") == expected.get("lower_case_x", 0), ds
            for kind, n in expected.items():
                if kind.startswith("missing_"):
                    field = kind.removeprefix("missing_")
                    req = schema.field(field).required
                    got = base.count(field, "missing" if req else "missing (optional field)")
                    assert got == n, (ds, kind)
            if "negative_amount" in expected:
                assert (
                    base.count("annual_oop_expense_cny", "below minimum 0.0") == expected["negative_amount"]
                )
            if "birth_date_contradicts_id" in expected:
                got = base.count("birth_date~resident_id", "birth date contradicts resident ID")
                assert got == expected["birth_date_contradicts_id"]
            assert 0.0 <= full.overall <= 1.0
            assert full.worst(3)
