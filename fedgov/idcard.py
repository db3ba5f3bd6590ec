"""18-digit PRC resident identity numbers (GB 11643-1999).

Layout: ``RRRRRR YYYYMMDD SSS C`` — a 6-digit administrative region code, the
holder's birth date, a 3-digit sequence number whose last digit is odd for men
and even for women, and an ISO 7064 MOD 11-2 check character (``0-9`` or
``X``).

Guarantees:

* :func:`is_valid` never raises; it is ``True`` only for the *canonical* form
  (exactly 18 characters, upper-case ``X``, a real calendar date, correct check
  character). Call :func:`normalize` first to accept surrounding whitespace and
  a lower-case ``x``.
* :func:`birth_date` and :func:`sex` accept anything :func:`normalize` fixes and
  do not require a correct check character (so data-quality code can still test
  consistency on records with a typo); they raise :class:`SchemaMismatch` with a
  one-line message when the structure or the date is unusable.
* :func:`make_id` always returns a canonical, valid number.
* No function here raises ``ValueError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date

import numpy as np

from fedgov.errors import SchemaMismatch

__all__ = [
    "WEIGHTS",
    "birth_date",
    "check_char",
    "is_valid",
    "make_id",
    "normalize",
    "problem",
    "sex",
    "valid_mask",
]

#: ISO 7064 MOD 11-2 weights for positions 1..17: ``2**(17-i) mod 11``.
WEIGHTS: tuple[int, ...] = tuple(pow(2, 17 - i, 11) for i in range(17))
_CHECK = "10X98765432"  # index = weighted sum mod 11
_SHAPE = re.compile(r"^[0-9]{17}[0-9X]$")


def check_char(first17: str) -> str:
    """The check character (``'0'-'9'`` or ``'X'``) for 17 leading digits.

    Raises :class:`SchemaMismatch` if ``first17`` is not exactly 17 ASCII digits.
    """
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise SchemaMismatch(f"{first17!r} is not 17 digits", where="resident_id")
    total = sum(int(c) * w for c, w in zip(first17, WEIGHTS, strict=True))
    return _CHECK[total % 11]


def normalize(raw: str) -> str:
    """Strip surrounding whitespace and upper-case a trailing ``x``.

    Never raises for a ``str``; does not validate (use :func:`is_valid`).
    """
    s = raw.strip()
    if s.endswith("x"):
        s = s[:-1] + "X"
    return s


def _date_of(s: str) -> date | None:
    try:
        return date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return None


def problem(id_: object) -> str | None:
    """Why ``id_`` is not a canonical valid number, or ``None`` if it is.

    Reasons (stable strings, usable as data-quality categories):
    ``"not a string"``, ``"wrong length"``, ``"lower-case x"``,
    ``"non-digit characters"``, ``"invalid birth date"``, ``"bad check digit"``.
    """
    if not isinstance(id_, str):
        return "not a string"
    if len(id_) != 18:
        return "wrong length"
    if id_[-1] == "x" and _SHAPE.match(id_[:-1] + "X"):
        return "lower-case x"
    if not _SHAPE.match(id_):
        return "non-digit characters"
    if _date_of(id_) is None:
        return "invalid birth date"
    if check_char(id_[:17]) != id_[17]:
        return "bad check digit"
    return None


def is_valid(id_: object) -> bool:
    """``True`` iff ``id_`` is a canonical valid 18-digit number. Never raises."""
    return problem(id_) is None


def _parsed(raw: str) -> str:
    s = normalize(raw) if isinstance(raw, str) else raw
    if not isinstance(s, str) or not _SHAPE.match(s):
        raise SchemaMismatch(f"{raw!r} is not an 18-digit resident ID", where="resident_id")
    return s


def birth_date(id_: str) -> date:
    """The birth date embedded in positions 7-14.

    Accepts whitespace and a lower-case ``x``; ignores the check character.
    Raises :class:`SchemaMismatch` if the shape or the date is invalid.
    """
    s = _parsed(id_)
    d = _date_of(s)
    if d is None:
        raise SchemaMismatch(f"{id_!r} embeds an invalid birth date {s[6:14]!r}", where="resident_id")
    return d


def sex(id_: str) -> str:
    """``"M"`` if the 17th digit is odd, else ``"F"``.

    Accepts whitespace and a lower-case ``x``; ignores the check character.
    Raises :class:`SchemaMismatch` if the shape is invalid.
    """
    s = _parsed(id_)
    return "M" if int(s[16]) % 2 else "F"


def make_id(region6: str, birth: date, seq3: int) -> str:
    """Build a canonical valid number from region code, birth date and sequence.

    ``seq3`` (0-999) is the order code; its last digit fixes the sex (odd = male).
    Raises :class:`SchemaMismatch` if ``region6`` is not 6 digits, ``seq3`` is out
    of range, or the birth year is outside 1000-9999.
    """
    if len(region6) != 6 or not region6.isascii() or not region6.isdigit():
        raise SchemaMismatch(f"region code {region6!r} is not 6 digits", where="resident_id")
    if not 0 <= seq3 <= 999:
        raise SchemaMismatch(f"sequence {seq3} is outside 0-999", where="resident_id")
    if not 1000 <= birth.year <= 9999:
        raise SchemaMismatch(f"birth year {birth.year} is not 4 digits", where="resident_id")
    first17 = f"{region6}{birth:%Y%m%d}{seq3:03d}"
    return first17 + check_char(first17)


def valid_mask(ids: Iterable[str | None]) -> np.ndarray:
    """Vectorised :func:`is_valid` over many values (``None`` → ``False``).

    Returns a boolean numpy array, one entry per input, identical to calling
    :func:`is_valid` on each element; fast enough for millions of rows.
    """
    filler = "?" * 18
    fixed = [v if isinstance(v, str) and len(v) == 18 and v.isascii() else filler for v in ids]
    n = len(fixed)
    if n == 0:
        return np.zeros(0, dtype=bool)
    raw = np.frombuffer("".join(fixed).encode("ascii"), dtype=np.uint8).reshape(n, 18)
    ok = np.ones(n, dtype=bool)
    digits = raw.astype(np.int16) - ord("0")
    is_digit = (digits >= 0) & (digits <= 9)
    ok &= is_digit[:, :17].all(axis=1)
    last_x = raw[:, 17] == ord("X")
    ok &= is_digit[:, 17] | last_x
    d17 = np.where(is_digit[:, :17], digits[:, :17], 0)
    # float matmul (BLAS) is exact here: the sum is at most 9 * 97 = 873.
    total = (d17.astype(np.float64) @ np.array(WEIGHTS, dtype=np.float64)).astype(np.int64)
    expect = np.frombuffer(_CHECK.encode(), dtype=np.uint8)[total % 11]
    ok &= expect == raw[:, 17]
    d17 = d17.astype(np.int64)
    year = d17[:, 6] * 1000 + d17[:, 7] * 100 + d17[:, 8] * 10 + d17[:, 9]
    month = d17[:, 10] * 10 + d17[:, 11]
    day = d17[:, 12] * 10 + d17[:, 13]
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    mdays = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)
    month_ok = (month >= 1) & (month <= 12)
    dim = mdays[np.where(month_ok, month, 0)] + ((month == 2) & leap)
    ok &= month_ok & (day >= 1) & (day <= dim) & (year >= 1)
    return ok
