"""GB 11643-1999 resident IDs: check digit, parsing, construction."""

from __future__ import annotations

import random
from datetime import date

import numpy as np
import pytest

from fedgov import idcard
from fedgov.errors import SchemaMismatch

# The worked example from the standard.
STD = "11010519491231002X"


def test_standard_example_is_valid() -> None:
    assert idcard.check_char(STD[:17]) == "X"
    assert idcard.is_valid(STD)
    assert idcard.birth_date(STD) == date(1949, 12, 31)
    assert idcard.sex(STD) == "F"  # 17th digit 2 is even


def test_weights() -> None:
    assert idcard.WEIGHTS == (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def test_normalize() -> None:
    assert idcard.normalize("  11010519491231002x \n") == STD
    assert idcard.normalize("110105194912310021") == "110105194912310021"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (STD, None),
        ("11010519491231002x", "lower-case x"),
        ("11010519491231002", "wrong length"),
        (" 11010519491231002X", "wrong length"),
        ("1101051949123100AX", "non-digit characters"),
        ("110105194913310021", "invalid birth date"),
        ("110105194902300025", "invalid birth date"),
        ("110105194912310021", "bad check digit"),
        (None, "not a string"),
        (110105194912310021, "not a string"),
    ],
)
def test_problem_and_is_valid(value: object, reason: str | None) -> None:
    assert idcard.problem(value) == reason
    assert idcard.is_valid(value) is (reason is None)


def test_make_id_roundtrip() -> None:
    rng = random.Random(3)
    for _ in range(500):
        birth = date.fromordinal(rng.randint(date(1900, 1, 1).toordinal(), date(2024, 1, 1).toordinal()))
        seq = rng.randint(0, 999)
        rid = idcard.make_id("150102", birth, seq)
        assert idcard.is_valid(rid)
        assert rid.startswith("150102")
        assert idcard.birth_date(rid) == birth
        assert idcard.sex(rid) == ("M" if seq % 2 else "F")


def test_parse_accepts_lowercase_and_ignores_check_digit() -> None:
    assert idcard.birth_date("11010519491231002x") == date(1949, 12, 31)
    assert idcard.sex("110105194912310011") == "M"  # bad check digit, still parsable


@pytest.mark.parametrize("bad", ["", "abc", "110105194913310021", "1101051949123100"])
def test_parse_errors_are_one_line_schema_mismatch(bad: str) -> None:
    with pytest.raises(SchemaMismatch) as exc:
        idcard.birth_date(bad)
    msg = str(exc.value)
    assert "\n" not in msg and "resident_id" in msg and repr(bad) in msg


def test_sex_error() -> None:
    with pytest.raises(SchemaMismatch, match="not an 18-digit resident ID"):
        idcard.sex("12345")


@pytest.mark.parametrize(
    ("region", "birth", "seq"),
    [
        ("15010", date(1990, 1, 1), 1),
        ("15010a", date(1990, 1, 1), 1),
        ("150102", date(1990, 1, 1), 1000),
        ("150102", date(1990, 1, 1), -1),
        ("150102", date(999, 1, 1), 1),
    ],
)
def test_make_id_rejects_bad_input(region: str, birth: date, seq: int) -> None:
    with pytest.raises(SchemaMismatch):
        idcard.make_id(region, birth, seq)


def test_valid_mask_matches_is_valid() -> None:
    rng = random.Random(11)
    values: list[str | None] = [None, "", "x" * 18, "中" * 18, STD, STD.lower()]
    for _ in range(3000):
        rid = idcard.make_id(
            f"{rng.randint(110000, 659999)}",
            date.fromordinal(rng.randint(693596, 739000)),
            rng.randint(0, 999),
        )
        r = rng.random()
        if r < 0.3:
            pos = rng.randint(0, 17)
            rid = rid[:pos] + rng.choice("0123456789X") + rid[pos + 1 :]
        elif r < 0.35:
            rid = rid[:10] + "1332" + rid[14:]  # month 13
        elif r < 0.4:
            rid = rid[:6] + "20230229" + rid[14:17] + idcard.check_char(rid[:6] + "20230229" + rid[14:17])
        values.append(rid)
    mask = idcard.valid_mask(values)
    assert mask.dtype == np.bool_
    assert mask.tolist() == [idcard.is_valid(v) for v in values]
    assert idcard.valid_mask([]).shape == (0,)


def test_leap_day() -> None:
    leap = idcard.make_id("150102", date(2000, 2, 29), 7)
    assert idcard.is_valid(leap)
    assert idcard.valid_mask([leap]).tolist() == [True]
