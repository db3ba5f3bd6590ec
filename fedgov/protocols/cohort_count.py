"""Cohort count with small-cell suppression: the plumbing job kind.

Parties: every participant counts the rows of its own dataset that match its
own filter; non-aggregators send their (possibly suppressed) count, sealed, to
the aggregator, which releases the per-node counts and their total.

Disclosure (docs/protocols/cohort-count.md): with DP on (every owner's
default, ``stats_dp``), each participant charges the query's ε to its
dataset's budget for the period *before counting*, adds OpenDP discrete
Laplace noise to its count (:func:`release_noisy`) and applies its minimum
cell to the *noisy* count — so "nobody matches" and "a few match" come out
alike, at a price in ε every time. With DP off (the owner's explicit choice)
the count is exact and suppressed when ``0 < n < min_cohort``.

What each party learns:
- the aggregator: every other participant's released count (``None`` when
  suppressed);
- the requester: the same released counts and the total *of released counts
  only* — a suppressed count is never added into the total, so it cannot be
  recovered by subtraction (complementary suppression by construction);
- the coordinator: nothing but envelope sizes and timing.

Pure: no I/O; tables are pyarrow tables already restricted to the fields the
policy allowed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fedgov.errors import ConfigError
from fedgov.manifest import Condition, Manifest

_OPS = {
    "==": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}


def _compatible(dtype: pa.DataType, value: Any) -> bool:
    """Whether a filter literal has the kind of the column (no silent casts)."""
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return isinstance(value, str)
    if pa.types.is_boolean(dtype):
        return isinstance(value, bool)
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return True


def row_mask(table: pa.Table, where: Sequence[Condition]) -> pa.ChunkedArray | pa.Array:
    """Boolean mask of rows matching every condition (nulls never match)."""
    mask = pa.array([True] * table.num_rows, type=pa.bool_())
    for cond in where:
        if cond.field not in table.column_names:
            raise ConfigError(f"filter field '{cond.field}' is not in the dataset", where="where")
        col = table.column(cond.field)
        values = cond.value if isinstance(cond.value, list) else [cond.value]
        if not all(_compatible(col.type, v) for v in values):
            raise ConfigError(
                f"cannot compare field '{cond.field}' ({col.type}) with {cond.value!r}", where="where"
            )
        try:
            if cond.op == "in":
                m = pc.is_in(col, value_set=pa.array(cond.value).cast(col.type))
            else:
                m = _OPS[cond.op](col, pa.scalar(cond.value).cast(col.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise ConfigError(
                f"cannot compare field '{cond.field}' ({col.type}) with {cond.value!r}: {exc}", where="where"
            ) from None
        mask = pc.and_kleene(mask, pc.fill_null(m, False))
    return mask


def count(table: pa.Table, where: Sequence[Condition]) -> int:
    """Number of rows matching ``where``."""
    return int(pc.sum(row_mask(table, where)).as_py() or 0)


def release_noisy(n: int, epsilon: float, min_cell: int) -> int | None:
    """The count as an owner with DP releases it: ``n`` plus discrete Laplace noise of
    scale ``1/epsilon`` (OpenDP's exact sampler; a count has sensitivity 1), or ``None``
    when the *noisy* count is below ``min_cell``. Costs ``epsilon`` whatever it returns.
    """
    import opendp.prelude as dp  # lazy: only counting nodes need it

    dp.enable_features("contrib")
    meas = dp.m.make_laplace(dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"), scale=1.0 / epsilon)
    noisy = int(meas(int(n)))
    return noisy if noisy >= min_cell else None


def release(n: int, min_cohort: int) -> int | None:
    """The count as an owner *with DP off* releases it: ``None`` when ``0 < n < min_cohort``.

    Zero is released: "nobody" is not a small cell about anybody. (A policy
    that disagrees sets min_cohort and suppresses zeros by a later rule.)
    """
    return None if 0 < n < min_cohort else n


def aggregator(manifest: Manifest) -> str:
    """The participant that combines counts: role 'aggregator', else the first."""
    for p in manifest.participants:
        if p.role == "aggregator":
            return p.node
    return manifest.participants[0].node


def encode_count(value: int | None) -> bytes:
    return json.dumps({"count": value}).encode()


def decode_count(payload: bytes, sender: str) -> int | None:
    try:
        value = json.loads(payload)["count"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError("malformed count message", where=sender) from None
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ConfigError(f"invalid count {value!r}", where=sender)
    return value


def combine(counts: Mapping[str, int | None], *, one_population: bool = True) -> dict[str, Any]:
    """Result released to the requester.

    ``total_released`` (the sum of the released counts) is included only when
    ``one_population``: every participant counts the same dataset (a
    horizontally partitioned population, e.g. regions). Counts of different
    datasets (applicants, taxpayers, pensioners) are never added up.
    """
    released = {n: c for n, c in counts.items() if c is not None}
    out: dict[str, Any] = {
        "counts": {n: counts[n] for n in counts},
        "suppressed": sorted(n for n, c in counts.items() if c is None),
    }
    if one_population:
        out["total_released"] = sum(released.values())
    return out
