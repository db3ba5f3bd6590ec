"""Data-quality scoring, computed at the node from a dataset schema and its data.

:func:`assess` scores five dimensions in ``[0, 1]`` (``None`` when a dimension
does not apply to the dataset) and a weighted overall score:

* **completeness** — share of non-missing values in *required* fields (null,
  or empty / whitespace-only text). Missing values in optional fields are
  counted and shown but not penalised (they are often legitimately empty).
* **validity** — share of non-missing values that satisfy their field's
  declared constraints: ``min``/``max`` for numbers (and not NaN), the
  enumeration for categories, the ``pattern`` (full match) for strings, a
  canonical GB 11643 number for resident IDs (reasons from
  :func:`fedgov.idcard.problem`: bad check digit, lower-case x, ...), and no
  date after ``today``. Fields without constraints (bool, free text) are not
  counted.
* **consistency** — share of cross-field checks that hold. Built in: a date
  field whose name contains ``birth`` must equal the birth date embedded in the
  record's resident ID, and a ``sex``/``gender`` category must match the ID's
  sex digit; checked only where the ID is valid after
  :func:`fedgov.idcard.normalize` and the other field is present. Extra
  :class:`ConsistencyRule` s may be passed.
* **uniqueness** — ``1 − duplicate key values / rows`` where key values are
  compared after normalisation (resident IDs via :func:`~fedgov.idcard.normalize`,
  text trimmed); without a key, exact duplicate rows are used instead.
* **timeliness** — age in days of the newest value of the non-birth date
  fields (values after ``today`` ignored) against the schema's
  ``update_frequency`` (:data:`FREQUENCY_DAYS`): 1 up to one period, falling
  linearly to 0 at four periods; not applicable for ``adhoc`` or without dates.

``overall`` is the weighted mean of the applicable dimensions
(:data:`DEFAULT_WEIGHTS`, renormalised). Every score is rounded to 4 decimals.

Guarantees: :func:`assess` is a pure function of ``(schema, table, today,
weights, rules)``; findings carry counts (and local row numbers for the
operator) but :meth:`QualityReport.public_scores` holds only numbers that are
safe to publish — the scores, never values or row numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedgov import idcard
from fedgov.errors import ConfigError, SchemaMismatch
from fedgov.schema import DatasetSchema, FieldSpec

__all__ = [
    "DEFAULT_WEIGHTS",
    "DIMENSIONS",
    "FREQUENCY_DAYS",
    "QUALITY_VERSION",
    "ConsistencyRule",
    "Finding",
    "QualityReport",
    "assess",
]

QUALITY_VERSION = 1
DIMENSIONS: tuple[str, ...] = ("completeness", "validity", "consistency", "uniqueness", "timeliness")
DEFAULT_WEIGHTS: dict[str, float] = {
    "completeness": 0.3,
    "validity": 0.3,
    "consistency": 0.15,
    "uniqueness": 0.15,
    "timeliness": 0.1,
}
#: Expected maximum age, in days, of the newest record for each update frequency.
FREQUENCY_DAYS: dict[str, int] = {"daily": 1, "weekly": 7, "monthly": 31, "quarterly": 92, "yearly": 366}
_MAX_ROWS_SHOWN = 5
_SEX_CODES = {"m": "M", "male": "M", "男": "M", "f": "F", "female": "F", "女": "F"}


@dataclass(frozen=True)
class Finding:
    """A counted defect (or, if not ``penalised``, an observation) in one field.

    ``count`` of ``total`` values are affected; ``rows`` are the first few
    1-based data-row numbers (local only, never published).
    """

    field: str
    dimension: str
    kind: str
    count: int
    total: int
    penalised: bool = True
    rows: tuple[int, ...] = ()
    loss: float | None = None

    @property
    def rate(self) -> float:
        """Share of the dimension lost: ``loss`` if set (timeliness), else ``count / total``."""
        if self.loss is not None:
            return self.loss
        return self.count / self.total if self.total else 0.0

    def line(self) -> str:
        """One human-readable line, e.g. ``resident_id: 3 of 512 (0.59%) bad check digit [validity]``."""
        if self.dimension == "timeliness":
            return (
                f"{self.field}: newest value is {self.count} days old, expected at most {self.total} "
                f"({self.kind}) [timeliness]"
            )
        where = f" (e.g. rows {', '.join(map(str, self.rows))})" if self.rows else ""
        return (
            f"{self.field}: {self.count} of {self.total} ({self.rate:.2%}) {self.kind} "
            f"[{self.dimension}]{where}"
        )


@dataclass(frozen=True)
class ConsistencyRule:
    """A cross-field rule: ``check(table)`` returns ``(applicable, holds)`` boolean arrays."""

    name: str
    check: Callable[[pa.Table], tuple[np.ndarray, np.ndarray]]


@dataclass
class QualityReport:
    """Scores and findings for one dataset (see the module docstring)."""

    dataset: str
    schema_digest: str
    rows: int
    today: date
    scores: dict[str, float | None]
    overall: float
    findings: list[Finding] = field(default_factory=list)

    def count(self, field_name: str, kind: str) -> int:
        """Total ``count`` of findings of ``kind`` on ``field_name`` (0 if none)."""
        return sum(f.count for f in self.findings if f.field == field_name and f.kind == kind)

    def worst(self, n: int = 5) -> list[str]:
        """Explanation lines for the ``n`` penalised findings with the highest rate."""
        ranked = sorted(
            (f for f in self.findings if f.penalised and f.count),
            key=lambda f: (-f.rate, -f.count, f.field, f.kind),
        )
        return [f.line() for f in ranked[:n]]

    def public_scores(self) -> dict[str, float]:
        """What may leave the node: ``version``, applicable dimension scores and ``overall``."""
        out: dict[str, float] = {"version": QUALITY_VERSION}
        for d in DIMENSIONS:
            s = self.scores.get(d)
            if s is not None:
                out[d] = s
        out["overall"] = self.overall
        return out

    def to_dict(self) -> dict[str, Any]:
        """Full local report (findings included), JSON-able."""
        return {
            "dataset": self.dataset,
            "schema_digest": self.schema_digest,
            "rows": self.rows,
            "today": self.today.isoformat(),
            "scores": dict(self.scores),
            "overall": self.overall,
            "findings": [
                {
                    "field": f.field,
                    "dimension": f.dimension,
                    "kind": f.kind,
                    "count": f.count,
                    "total": f.total,
                    "penalised": f.penalised,
                    "rows": list(f.rows),
                }
                for f in self.findings
            ],
        }


def _first_rows(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) + 1 for i in np.flatnonzero(mask)[:_MAX_ROWS_SHOWN])


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _missing_mask(arr: pa.Array, spec: FieldSpec) -> np.ndarray:
    miss = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if spec.type in ("string", "category", "resident_id"):
        blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(arr), ""), False)
        miss |= np.asarray(blank.to_numpy(zero_copy_only=False), dtype=bool)
    return miss


def _bool(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _validity(
    spec: FieldSpec, arr: pa.Array, present: np.ndarray, today: date
) -> list[tuple[str, np.ndarray]]:
    """``(kind, bad mask)`` pairs for one field; masks are False where the value is missing."""
    out: list[tuple[str, np.ndarray]] = []
    t = spec.type
    if t in ("int", "float"):
        if t == "float":
            out.append(("not a number", _bool(pc.is_nan(arr)) & present))
        if spec.min is not None:
            out.append((f"below minimum {spec.min}", _bool(pc.less(arr, spec.min)) & present))
        if spec.max is not None:
            out.append((f"above maximum {spec.max}", _bool(pc.greater(arr, spec.max)) & present))
    elif t == "category":
        allowed = pa.array(list(spec.values or ()), type=pa.string())
        ok = _bool(pc.is_in(arr, value_set=allowed))
        out.append(("not an allowed value", present & ~ok))
    elif t == "string" and spec.pattern is not None:
        rx = re.compile(spec.pattern)
        vals = arr.to_pylist()
        bad = np.array(
            [p and rx.fullmatch(v) is None for v, p in zip(vals, present, strict=True)], dtype=bool
        )
        out.append(("does not match pattern", bad))
    elif t == "resident_id":
        vals = arr.to_pylist()
        ok = idcard.valid_mask(vals)
        by_reason: dict[str, np.ndarray] = {}
        for i in np.flatnonzero(present & ~ok):
            reason = idcard.problem(vals[i]) or "invalid"
            by_reason.setdefault(reason, np.zeros(len(vals), dtype=bool))[i] = True
        out.extend(sorted(by_reason.items()))
    elif t == "date":
        future = _bool(pc.greater(arr, pa.scalar(today, pa.date32())))
        out.append(("date in the future", future & present))
    return out


def _id_field(schema: DatasetSchema) -> FieldSpec | None:
    if schema.key is not None and schema.field(schema.key).type == "resident_id":
        return schema.field(schema.key)
    return next((f for f in schema.fields if f.type == "resident_id"), None)


def _builtin_rules(
    schema: DatasetSchema,
) -> list[tuple[str, str, Callable[[pa.Table], tuple[np.ndarray, np.ndarray]]]]:
    """(finding field, kind, check) for birth date and sex against the resident ID."""
    idf = _id_field(schema)
    if idf is None:
        return []
    rules: list[tuple[str, str, Callable[[pa.Table], tuple[np.ndarray, np.ndarray]]]] = []

    def ids_of(table: pa.Table) -> tuple[list[str | None], np.ndarray]:
        raw = _column(table, idf.name).to_pylist()
        norm = [idcard.normalize(v) if isinstance(v, str) else None for v in raw]
        return norm, idcard.valid_mask(norm)

    for f in schema.fields:
        if f.type == "date" and "birth" in f.name:

            def birth_check(table: pa.Table, f: FieldSpec = f) -> tuple[np.ndarray, np.ndarray]:
                norm, ok = ids_of(table)
                vals = _column(table, f.name).to_pylist()
                app = ok & np.array([v is not None for v in vals], dtype=bool)
                holds = np.ones(len(vals), dtype=bool)
                for i in np.flatnonzero(app):
                    holds[i] = idcard.birth_date(norm[i]) == vals[i]  # type: ignore[arg-type]
                return app, holds

            rules.append((f"{f.name}~{idf.name}", "birth date contradicts resident ID", birth_check))
        elif f.type == "category" and f.name in ("sex", "gender"):

            def sex_check(table: pa.Table, f: FieldSpec = f) -> tuple[np.ndarray, np.ndarray]:
                norm, ok = ids_of(table)
                vals = [
                    _SEX_CODES.get(str(v).strip().lower()) if v is not None else None
                    for v in _column(table, f.name).to_pylist()
                ]
                app = ok & np.array([v is not None for v in vals], dtype=bool)
                holds = np.ones(len(vals), dtype=bool)
                for i in np.flatnonzero(app):
                    holds[i] = idcard.sex(norm[i]) == vals[i]  # type: ignore[arg-type]
                return app, holds

            rules.append((f"{f.name}~{idf.name}", "sex contradicts resident ID", sex_check))
    return rules


def _normalized_key(arr: pa.Array, spec: FieldSpec) -> pa.Array:
    if spec.type == "resident_id":
        return pa.array(
            [idcard.normalize(v) if isinstance(v, str) else None for v in arr.to_pylist()], pa.string()
        )
    if pa.types.is_string(arr.type):
        return pc.utf8_trim_whitespace(arr)
    return arr


def _dup_mask(arr: pa.Array) -> np.ndarray:
    """True for every non-null value that already appeared earlier."""
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=bool)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    codes = np.asarray(pc.fill_null(pc.cast(arr.dictionary_encode().indices, pa.int64()), -1).to_numpy())
    _, first = np.unique(codes, return_index=True)
    dup = np.ones(n, dtype=bool)
    dup[first] = False
    return dup & valid


def _dup_rows_mask(table: pa.Table) -> np.ndarray:
    n = table.num_rows
    if n == 0:
        return np.zeros(0, dtype=bool)
    idx = pa.array(np.arange(n, dtype=np.int64))
    t = table.append_column("__row__", idx)
    firsts = t.group_by(table.column_names, use_threads=False).aggregate([("__row__", "min")])
    dup = np.ones(n, dtype=bool)
    dup[np.asarray(firsts.column("__row___min").to_numpy())] = False
    return dup


def _timeliness(schema: DatasetSchema, table: pa.Table, today: date) -> tuple[float | None, Finding | None]:
    period = FREQUENCY_DAYS.get(schema.update_frequency)
    if period is None:
        return None, None
    newest: tuple[date, str] | None = None
    for f in schema.fields:
        if f.type != "date" or "birth" in f.name:
            continue
        arr = _column(table, f.name)
        past = pc.filter(arr, pc.fill_null(pc.less_equal(arr, pa.scalar(today, pa.date32())), False))
        m = pc.max(past).as_py()
        if m is not None and (newest is None or m > newest[0]):
            newest = (m, f.name)
    if newest is None:
        return None, None
    age = (today - newest[0]).days
    score = 1.0 if age <= period else max(0.0, 1.0 - (age - period) / (3 * period))
    kind = f"newest {newest[0].isoformat()}, update frequency {schema.update_frequency}"
    return score, Finding(newest[1], "timeliness", kind, age, period, penalised=score < 1.0, loss=1.0 - score)


def assess(
    schema: DatasetSchema,
    table: pa.Table,
    *,
    today: date,
    weights: Mapping[str, float] | None = None,
    rules: Sequence[ConsistencyRule] = (),
) -> QualityReport:
    """Score ``table`` (columns as :func:`fedgov.datasources.read_dataset` returns) against ``schema``.

    Raises :class:`SchemaMismatch` if a schema field is missing from the table
    and :class:`ConfigError` for unknown or negative weights.
    """
    w = dict(DEFAULT_WEIGHTS if weights is None else weights)
    for k, v in w.items():
        if k not in DIMENSIONS or v < 0:
            raise ConfigError(f"weight {k}={v}: expected non-negative weights of {', '.join(DIMENSIONS)}")
    missing_cols = [f.name for f in schema.fields if f.name not in table.column_names]
    if missing_cols:
        raise SchemaMismatch(f"column {missing_cols[0]} is missing", where=f"dataset {schema.name}")
    table = table.select(list(schema.field_names))
    n = table.num_rows
    findings: list[Finding] = []
    scores: dict[str, float | None] = dict.fromkeys(DIMENSIONS)

    # completeness + validity
    req_missing = req_total = 0
    bad_total = checked_total = 0
    for spec in schema.fields:
        arr = _column(table, spec.name)
        miss = _missing_mask(arr, spec)
        k = int(miss.sum())
        if spec.required:
            req_missing += k
            req_total += n
        if k:
            kind = "missing" if spec.required else "missing (optional field)"
            findings.append(Finding(spec.name, "completeness", kind, k, n, spec.required, _first_rows(miss)))
        present = ~miss
        checks = _validity(spec, arr, present, today)
        if checks:
            checked_total += int(present.sum())
            any_bad = np.zeros(n, dtype=bool)
            for kind, bad in checks:
                any_bad |= bad
                if bad.any():
                    findings.append(
                        Finding(
                            spec.name,
                            "validity",
                            kind,
                            int(bad.sum()),
                            int(present.sum()),
                            True,
                            _first_rows(bad),
                        )
                    )
            bad_total += int(any_bad.sum())
    if req_total:
        scores["completeness"] = 1.0 - req_missing / req_total
    if checked_total:
        scores["validity"] = 1.0 - bad_total / checked_total

    # consistency
    all_rules = [(name, kind, chk) for name, kind, chk in _builtin_rules(schema)]
    all_rules += [(r.name, "rule violated", r.check) for r in rules]
    applied = violated = 0
    for name, kind, chk in all_rules:
        app, holds = chk(table)
        bad = app & ~holds
        applied += int(app.sum())
        violated += int(bad.sum())
        if bad.any():
            findings.append(
                Finding(name, "consistency", kind, int(bad.sum()), int(app.sum()), True, _first_rows(bad))
            )
    if applied:
        scores["consistency"] = 1.0 - violated / applied

    # uniqueness
    if n:
        dup_rows = _dup_rows_mask(table)
        if schema.key is not None:
            spec = schema.field(schema.key)
            dup_key = _dup_mask(_normalized_key(_column(table, spec.name), spec))
            if dup_key.any():
                findings.append(
                    Finding(
                        spec.name,
                        "uniqueness",
                        "duplicate key value",
                        int(dup_key.sum()),
                        n,
                        True,
                        _first_rows(dup_key),
                    )
                )
            scores["uniqueness"] = 1.0 - dup_key.sum() / n
        else:
            scores["uniqueness"] = 1.0 - dup_rows.sum() / n
        if dup_rows.any():
            findings.append(
                Finding(
                    "(all fields)",
                    "uniqueness",
                    "exact duplicate row",
                    int(dup_rows.sum()),
                    n,
                    schema.key is None,
                    _first_rows(dup_rows),
                )
            )

    # timeliness
    t_score, t_finding = _timeliness(schema, table, today)
    scores["timeliness"] = t_score
    if t_finding is not None:
        findings.append(t_finding)

    rounded = {d: (None if s is None else round(float(s), 4)) for d, s in scores.items()}
    applicable = [(d, s) for d, s in rounded.items() if s is not None and w.get(d, 0.0) > 0]
    wsum = sum(w[d] for d, _ in applicable)
    overall = round(sum(w[d] * s for d, s in applicable) / wsum, 4) if wsum else 0.0
    return QualityReport(
        dataset=schema.name,
        schema_digest=schema.digest(),
        rows=n,
        today=today,
        scores=rounded,
        overall=overall,
        findings=findings,
    )
