"""HE statistics: grouped counts/sums/means/variances/histograms on CKKS.

Protocol and leakage: ``docs/protocols/he-stats.md``. In short (vertical
case: rows already aligned by PSI; the *cohort holder* C has a group id per
aligned row, -1 = not in the cohort; the *data owner* O has the value)::

    O -> C  hello    O's public context + Enc_O(moment vectors) over the aligned rows
    C -> O  counts   per group g: Enc_O(sum_i ind_g[i] * present[i] + zero-sum mask)
    O -> C  plan     which cells to compute (owner policy on the true counts)
    C -> O  moments  per planned cell, per moment: Enc_O(sum_i ind[i] * m[i] + zero-sum mask)
    O -> R  release  suppressed / noised numbers (JSON), via the relay

Key: O generates a fresh CKKS key per job and is the only decryptor. C only
ever handles ciphertexts under O's key. O decrypts nothing but per-cell
aggregates (slot-wise sums hidden by C's zero-sum masks), and decrypts the
value sums *only* for cells its own policy allowed after seeing the counts;
so O learns per-group counts and the sums it releases, never which rows are
in the cohort. The requester R learns only the released numbers.

Owner-side policy on every number: minimum cell size on true counts,
complementary suppression inside an answer, differencing checks against the
requester's earlier answers (:class:`ReleaseHistory`), optional Laplace or
Gaussian noise with a per-requester budget (:class:`BudgetAccountant`).

The horizontal case (same field at several regional nodes) is
:class:`Region` / :func:`combine` / :class:`RegionKeyHolder`.

Pure: no I/O; stores are injected (the node persists them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from fedgov.crypto.ckks_stats import SLOTS, KeyOwner, PublicKey, job_tag, pack, unpack
from fedgov.errors import ConfigError, CryptoError, FedgovError, PolicyDenied

__all__ = [
    "STATS",
    "TOTAL",
    "BudgetAccountant",
    "CohortHolder",
    "DPConfig",
    "DataOwner",
    "MemoryBudgetStore",
    "MemoryHistoryStore",
    "Region",
    "RegionKeyHolder",
    "Release",
    "ReleaseHistory",
    "StatsQuery",
    "combine",
    "group_codes",
    "plaintext_stats",
    "run_local",
    "run_local_horizontal",
]

STATS = ("count", "sum", "mean", "variance", "histogram")
#: Label of the margin (all cohort rows) cell.
TOTAL = "__total__"
_MAGIC = b"FHST"
_HELLO, _COUNTS, _PLAN, _MOMENTS, _REGION = 1, 2, 3, 4, 5
_MAX_MASK_LOG2 = 62  # keep masks well inside the 2^78 headroom


def _rng() -> np.random.Generator:
    """numpy Generator seeded with 256 bits from ``os.urandom``.

    Used for statistical masks and DP noise, which need uniform/Laplace/normal
    floats in bulk, not key material; see the doc page for the floating-point
    caveat of DP sampling.
    """
    return np.random.default_rng(int.from_bytes(os.urandom(32), "little"))


# --------------------------------------------------------------------------
# query


@dataclass(frozen=True)
class DPConfig:
    """Owner-side differential-privacy noise for one query.

    ``epsilon`` (and ``delta`` for Gaussian) is what one whole answer costs;
    it is split evenly over the noised quantities (see :meth:`StatsQuery.dp_split`).
    """

    mechanism: Literal["laplace", "gaussian"] = "laplace"
    epsilon: float = 1.0
    delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mechanism not in ("laplace", "gaussian"):
            raise ConfigError(f"unknown DP mechanism {self.mechanism!r}", where="he-stats.dp")
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ConfigError("dp epsilon must be a positive number", where="he-stats.dp")
        if self.mechanism == "gaussian" and not (0 < self.delta < 1):
            raise ConfigError("gaussian mechanism needs 0 < delta < 1", where="he-stats.dp")
        if self.mechanism == "laplace" and self.delta != 0:
            raise ConfigError("laplace mechanism takes no delta", where="he-stats.dp")


@dataclass(frozen=True)
class StatsQuery:
    """What is asked, as both parties read it from the signed manifest.

    ``scope`` names the owner's dataset and field (history and budget are kept
    per requester and scope); ``cohort`` is the canonical text of the cohort
    definition (holder, dataset, filter, group-by field) — cell keys in the
    release history are ``(cohort, label)``. ``clip`` bounds every value
    (values are clipped by the owner), which also fixes DP sensitivities and
    mask sizes. ``bins`` are histogram edges (values below the first edge
    fall in the first bin, above the last in the last).
    """

    job_id: str
    requester: str
    scope: str
    cohort: str
    stats: tuple[str, ...] = ("count", "sum", "mean")
    clip: tuple[float, float] = (0.0, 1e6)
    bins: tuple[float, ...] = ()
    include_total: bool = True
    dp: DPConfig | None = None
    mask_bits: int = 20

    def __post_init__(self) -> None:
        w = "he-stats"
        bad = [s for s in self.stats if s not in STATS]
        if bad or not self.stats:
            raise ConfigError(f"unknown statistic(s) {bad} (known: {', '.join(STATS)})", where=w)
        lo, hi = self.clip
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ConfigError(f"clip must be finite with lo < hi, got {self.clip}", where=w)
        if max(abs(lo), abs(hi)) > 2.0**24:
            raise ConfigError("clip bounds above 2^24 are not supported (precision)", where=w)
        if "histogram" in self.stats and (
            len(self.bins) < 2 or any(b >= c for b, c in zip(self.bins, self.bins[1:], strict=False))
        ):
            raise ConfigError("histogram needs at least two increasing bin edges", where=w)
        if not 16 <= self.mask_bits <= 40:
            raise ConfigError("mask_bits must be in [16, 40]", where=w)
        if not self.requester or not self.scope or not self.cohort:
            raise ConfigError("requester, scope and cohort must be non-empty", where=w)

    # derived ---------------------------------------------------------------
    @property
    def moments(self) -> tuple[str, ...]:
        """Encrypted per-row moments: always ``count``; ``sum``/``sumsq``/``bin<k>``
        as the statistics need them."""
        out = ["count"]
        if {"sum", "mean", "variance"} & set(self.stats):
            out.append("sum")
        if "variance" in self.stats:
            out.append("sumsq")
        if "histogram" in self.stats:
            out += [f"bin{k}" for k in range(len(self.bins) - 1)]
        return tuple(out)

    def bound(self, moment: str) -> float:
        """Largest absolute value one row contributes to ``moment`` (public)."""
        m = max(abs(self.clip[0]), abs(self.clip[1]))
        return {"sum": m, "sumsq": m * m}.get(moment, 1.0)

    def dp_split(self) -> tuple[list[str], float, float]:
        """Noised quantities and the (epsilon, delta) each gets.

        Cells are disjoint (parallel composition); the total overlaps them, so
        with a total each quantity is measured twice (sequential composition).
        """
        assert self.dp is not None
        q = ["count"] + [m for m in ("sum", "sumsq") if m in self.moments]
        if "histogram" in self.stats:
            q.append("hist")
        k = len(q) * (2 if self.include_total else 1)
        return q, self.dp.epsilon / k, self.dp.delta / k


def group_codes(values: Iterable[Any], in_cohort: Iterable[bool] | None = None,
                labels: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Turn the cohort holder's group field into codes over the aligned rows.

    ``None`` values and rows with ``in_cohort`` false get -1. ``labels`` fixes
    the label order (values not listed get -1); by default the sorted distinct
    values. Labels are strings (``str(value)``).
    """
    vals = [None if v is None else str(v) for v in values]
    keep = [True] * len(vals) if in_cohort is None else [bool(b) for b in in_cohort]
    if len(keep) != len(vals):
        raise ConfigError("cohort mask and group field differ in length", where="he-stats")
    labs = list(labels) if labels is not None else sorted({v for v in vals if v is not None})
    if TOTAL in labs:
        raise ConfigError(f"group label {TOTAL!r} is reserved", where="he-stats")
    index = {lab: i for i, lab in enumerate(labs)}
    codes = np.array(
        [index.get(v, -1) if (v is not None and k) else -1 for v, k in zip(vals, keep, strict=True)],
        dtype=np.int64,
    )
    return codes, labs


# --------------------------------------------------------------------------
# release history and budget (pure; the node persists through the stores)


class HistoryStore(Protocol):
    """Persistence hook for :class:`ReleaseHistory` (the node implements it on SQLite)."""

    def load(self, requester: str, scope: str) -> list[dict[str, Any]]: ...

    def append(self, requester: str, scope: str, records: list[dict[str, Any]]) -> None: ...


class MemoryHistoryStore:
    """In-memory :class:`HistoryStore` (tests, single runs)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def load(self, requester: str, scope: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.data.get((requester, scope), [])]

    def append(self, requester: str, scope: str, records: list[dict[str, Any]]) -> None:
        self.data.setdefault((requester, scope), []).extend(dict(r) for r in records)


class ReleaseHistory:
    """Every aggregate released to a requester about one owner scope.

    A record is a JSON-able dict ``{"job", "cohort", "cell", "count",
    "values"}``; ``cell`` is a group label, :data:`TOTAL`, or
    ``"+released"`` — the sum of the cells released in that answer, which a
    requester can always form itself. ``values`` holds the released numbers
    (``None`` for derived records). Suppressed cells are not recorded.
    """

    def __init__(self, store: HistoryStore | None = None) -> None:
        self.store: HistoryStore = store if store is not None else MemoryHistoryStore()

    def records(self, requester: str, scope: str) -> list[dict[str, Any]]:
        return self.store.load(requester, scope)

    def add(self, requester: str, scope: str, records: list[dict[str, Any]]) -> None:
        self.store.append(requester, scope, records)


class BudgetStore(Protocol):
    """Persistence hook for :class:`BudgetAccountant`."""

    def spent(self, requester: str, scope: str) -> tuple[float, float]: ...

    def add(self, requester: str, scope: str, epsilon: float, delta: float, job_id: str) -> None: ...


class MemoryBudgetStore:
    """In-memory :class:`BudgetStore`."""

    def __init__(self) -> None:
        self.ledger: dict[tuple[str, str], list[tuple[str, float, float]]] = {}

    def spent(self, requester: str, scope: str) -> tuple[float, float]:
        rows = self.ledger.get((requester, scope), [])
        return sum(r[1] for r in rows), sum(r[2] for r in rows)

    def add(self, requester: str, scope: str, epsilon: float, delta: float, job_id: str) -> None:
        self.ledger.setdefault((requester, scope), []).append((job_id, epsilon, delta))


class BudgetAccountant:
    """Per-requester, per-scope (ε, δ) budget under basic composition.

    :meth:`check` raises :class:`PolicyDenied` with the amounts when a query
    would exceed the limit; :meth:`charge` re-checks and records. Basic
    composition over-counts (safe); a tighter accountant can replace it
    behind the same interface.
    """

    def __init__(self, epsilon_limit: float, delta_limit: float = 0.0,
                 store: BudgetStore | None = None) -> None:
        if not epsilon_limit > 0 or delta_limit < 0:
            raise ConfigError("DP budget limits must be epsilon > 0 and delta >= 0", where="dp budget")
        self.epsilon_limit = epsilon_limit
        self.delta_limit = delta_limit
        self.store: BudgetStore = store if store is not None else MemoryBudgetStore()

    def remaining(self, requester: str, scope: str) -> tuple[float, float]:
        e, d = self.store.spent(requester, scope)
        return max(0.0, self.epsilon_limit - e), max(0.0, self.delta_limit - d)

    def check(self, requester: str, scope: str, epsilon: float, delta: float) -> None:
        e, d = self.store.spent(requester, scope)
        tol = 1e-12
        if e + epsilon > self.epsilon_limit + tol:
            raise PolicyDenied(
                f"privacy budget exhausted: requester '{requester}' has spent ε={e:g} of "
                f"ε={self.epsilon_limit:g} on {scope}; this query needs ε={epsilon:g}",
                where="he-stats",
            )
        if d + delta > self.delta_limit + tol:
            raise PolicyDenied(
                f"privacy budget exhausted: requester '{requester}' has spent δ={d:g} of "
                f"δ={self.delta_limit:g} on {scope}; this query needs δ={delta:g}",
                where="he-stats",
            )

    def charge(self, requester: str, scope: str, epsilon: float, delta: float, job_id: str) -> None:
        self.check(requester, scope, epsilon, delta)
        self.store.add(requester, scope, epsilon, delta, job_id)


# --------------------------------------------------------------------------
# owner-side release rules


@dataclass
class Plan:
    """Which cells get computed/released, and why the others do not."""

    compute: list[str]
    replay: dict[str, dict[str, Any]]
    suppressed: dict[str, str]


def plan_cells(
    counts: Mapping[str, int],
    *,
    query: StatsQuery,
    min_cohort: int,
    history: Sequence[Mapping[str, Any]],
) -> Plan:
    """Apply the owner's cell rules to the true per-cell counts.

    Guarantees (see the doc page for the argument):

    1. *Minimum cell size*: a cell with ``0 < n < min_cohort`` is suppressed;
       so is the total. Empty cells are released (count 0, no values).
    2. *Complementary suppression*: when a total is released and some
       non-empty cell is suppressed, further cells (smallest first) are
       suppressed until at least two are and their combined count is at least
       ``min_cohort``; if that is impossible the total is suppressed.
    3. *Earlier answers* (no DP): any aggregate of this answer — a cell, the
       total, or the sum of released cells — whose count is within
       ``min_cohort - 1`` of an earlier released aggregate of the same scope
       with a different key (or the same key and a different count) is
       suppressed, so no difference of two answers isolates fewer than
       ``min_cohort`` rows. A cell with the same key and count as an earlier
       release is *replayed* (same numbers, no new noise, no budget).
       With DP on, rule 3 is replaced by the ε budget (replay still applies).
    """
    suppressed: dict[str, str] = {}
    cells = [c for c in counts if c != TOTAL]
    total_n = sum(counts[c] for c in cells)
    for c in cells:
        if 0 < counts[c] < min_cohort:
            suppressed[c] = f"fewer than {min_cohort} rows"
    want_total = query.include_total
    if want_total and 0 < total_n < min_cohort:
        suppressed[TOTAL] = f"fewer than {min_cohort} rows"
    prev = [r for r in history if r.get("count") is not None]
    replay: dict[str, dict[str, Any]] = {}
    for c in [*cells, TOTAL] if want_total else cells:
        n = total_n if c == TOTAL else counts[c]
        for r in prev:
            if r["cohort"] == query.cohort and r["cell"] == c and r["count"] == n and r.get("values"):
                replay[c] = r["values"]
    dp = query.dp is not None

    def conflict(key: tuple[str, str], n: int) -> str | None:
        if dp or n == 0:
            return None
        for r in prev:
            same = (r["cohort"], r["cell"]) == key
            diff = abs(int(r["count"]) - n)
            if (same and 0 < diff < min_cohort) or (not same and diff < min_cohort):
                return (f"differs by {diff} row(s) from an earlier answer "
                        f"(job {r['job']}, cell {r['cell']!r}); below min cell {min_cohort}")
        return None

    for _ in range(len(cells) + 2):
        changed = False
        for c in cells:
            if c in suppressed or c in replay:
                continue
            why = conflict((query.cohort, c), counts[c])
            if why:
                suppressed[c] = why
                changed = True
        if want_total and TOTAL not in suppressed and TOTAL not in replay:
            why = conflict((query.cohort, TOTAL), total_n)
            if why:
                suppressed[TOTAL] = why
                changed = True
        released = [c for c in cells if c not in suppressed and counts[c] > 0]
        if len(released) >= 2 and not all(c in replay for c in released):
            why = conflict((query.cohort, "+released"), sum(counts[c] for c in released))
            if why:
                smallest = min(released, key=lambda c: counts[c])
                suppressed[smallest] = "complementary: " + why
                changed = True
        if want_total and TOTAL not in suppressed:
            hidden = [c for c in cells if c in suppressed and counts[c] > 0]
            if hidden:
                avail = sorted((c for c in cells if c not in suppressed and counts[c] > 0),
                               key=lambda c: counts[c])
                while (len(hidden) < 2 or sum(counts[c] for c in hidden) < min_cohort) and avail:
                    c = avail.pop(0)
                    suppressed[c] = "complementary suppression (protects a small cell)"
                    hidden.append(c)
                    changed = True
                if len(hidden) < 2 or sum(counts[c] for c in hidden) < min_cohort:
                    suppressed[TOTAL] = "complementary suppression (would reveal a small cell)"
                    changed = True
        if not changed:
            break
    compute = [c for c in cells if c not in suppressed and c not in replay and counts[c] > 0]
    if want_total and TOTAL not in suppressed and TOTAL not in replay and total_n > 0:
        compute.append(TOTAL)
    for c in list(replay):
        if c in suppressed:
            del replay[c]
    return Plan(compute, replay, suppressed)


@dataclass
class Release:
    """What the requester receives. ``cells[label]`` maps statistic -> value;
    ``suppressed[label]`` gives the reason a cell is withheld."""

    job_id: str
    scope: str
    cohort: str
    cells: dict[str, dict[str, Any]]
    total: dict[str, Any] | None
    suppressed: dict[str, str]
    epsilon_spent: float = 0.0
    delta_spent: float = 0.0
    min_cohort: int = 11
    noise: str | None = None
    replayed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "scope": self.scope, "cohort": self.cohort,
            "cells": self.cells, "total": self.total, "suppressed": self.suppressed,
            "epsilon_spent": self.epsilon_spent, "delta_spent": self.delta_spent,
            "min_cohort": self.min_cohort, "noise": self.noise, "replayed": self.replayed,
        }


def _finish_stats(query: StatsQuery, m: Mapping[str, float]) -> dict[str, Any]:
    """Statistics from (possibly noised) moment totals."""
    n = max(0, int(round(m["count"])))
    out: dict[str, Any] = {}
    if "count" in query.stats:
        out["count"] = n
    if "sum" in query.stats:
        out["sum"] = round(float(m["sum"]), 6)
    if "mean" in query.stats:
        out["mean"] = round(float(m["sum"]) / n, 6) if n > 0 else None
    if "variance" in query.stats:
        if n > 1:
            mean = float(m["sum"]) / n
            out["variance"] = round(max(0.0, float(m["sumsq"]) / n - mean * mean), 6)
        else:
            out["variance"] = None
    if "histogram" in query.stats:
        out["histogram"] = [max(0, int(round(m[f"bin{k}"]))) for k in range(len(query.bins) - 1)]
    return out


def _noise(query: StatsQuery, moments: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    """Add owner-side DP noise to one cell's moment totals (counts kept >= 0)."""
    dp = query.dp
    assert dp is not None
    _, eps, delta = query.dp_split()
    out = dict(moments)
    for name in list(moments):
        sens = query.bound(name) if name in ("sum", "sumsq") else 1.0
        if dp.mechanism == "laplace":
            out[name] = moments[name] + rng.laplace(0.0, sens / eps)
        else:
            sigma = sens * math.sqrt(2.0 * math.log(1.25 / delta)) / eps
            out[name] = moments[name] + rng.normal(0.0, sigma)
    return out


def _moments_of(values: np.ndarray, query: StatsQuery) -> dict[str, np.ndarray]:
    """Per-row moment vectors of the owner's values (NaN = missing -> all zero)."""
    v = np.asarray(values, dtype=np.float64)
    present = ~np.isnan(v)
    x = np.where(present, np.clip(np.nan_to_num(v), *query.clip), 0.0)
    out: dict[str, np.ndarray] = {}
    for name in query.moments:
        if name == "count":
            out[name] = present.astype(np.float64)
        elif name == "sum":
            out[name] = x
        elif name == "sumsq":
            out[name] = x * x
        else:
            k = int(name[3:])
            edges = np.asarray(query.bins)
            b = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
            out[name] = (present & (b == k)).astype(np.float64)
    return out


def plaintext_stats(query: StatsQuery, codes: np.ndarray, values: np.ndarray,
                    labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Reference: the same statistics in plaintext, no policy (tests, bench)."""
    mom = _moments_of(values, query)
    res = {}
    for g, lab in enumerate([*labels, TOTAL]):
        sel = codes >= 0 if lab == TOTAL else codes == g
        res[lab] = _finish_stats(query, {k: float(v[sel].sum()) for k, v in mom.items()})
    return res


# --------------------------------------------------------------------------
# vertical roles


def _zero_sum_mask(rng: np.random.Generator, bound: float) -> np.ndarray:
    m = rng.uniform(-bound, bound, SLOTS)
    m[-1] = -float(m[:-1].sum())
    return m


def _mask_bound(query: StatsQuery, moment: str, n_rows: int) -> float:
    per_slot = max(1, -(-n_rows // SLOTS))
    return min(2.0**_MAX_MASK_LOG2, 2.0**query.mask_bits * per_slot * query.bound(moment))


class DataOwner:
    """The department that holds the values; key holder, decryptor, policy enforcer.

    ``values`` are over the PSI-aligned order (NaN = no value). ``min_cohort``
    comes from the owner's own policy decision; ``history`` and
    ``accountant`` are the owner's persistent stores. Raises
    :class:`PolicyDenied` from :meth:`hello` if DP is requested and the
    requester's budget cannot pay for it (nothing is sent then).
    """

    def __init__(self, query: StatsQuery, values: np.ndarray, *, min_cohort: int,
                 history: ReleaseHistory | None = None,
                 accountant: BudgetAccountant | None = None) -> None:
        if min_cohort < 1:
            raise ConfigError("min_cohort must be >= 1", where="he-stats")
        if query.dp is not None and accountant is None:
            raise ConfigError("DP noise needs a budget accountant at the owner", where="he-stats")
        self.query = query
        self.values = np.asarray(values, dtype=np.float64)
        self.min_cohort = min_cohort
        self.history = history if history is not None else ReleaseHistory()
        self.accountant = accountant
        self._key = KeyOwner()
        self._tag = job_tag("he-stats", query.job_id)
        self.counts: dict[str, int] | None = None
        self._plan: Plan | None = None

    @property
    def key_id(self) -> bytes:
        return self._key.key_id

    def hello(self) -> bytes:
        """Message 1: public context and Enc(moment vectors) over the aligned rows.

        Size: ~0.48 MB context + ``len(moments) * ceil(n/4096)`` ciphertexts of
        ~366 KB. Reveals to C: n (it knows it), the moments asked, the clip
        bounds (public in the manifest).
        """
        q = self.query
        if q.dp is not None:
            assert self.accountant is not None
            self.accountant.check(q.requester, q.scope, q.dp.epsilon, q.dp.delta)
        mom = _moments_of(self.values, q)
        blobs = [self._key.public_bytes()]
        for name in q.moments:
            blobs += self._key.encrypt(mom[name])
        meta = {"n": len(self.values), "moments": list(q.moments),
                "chunks": max(1, -(-len(self.values) // SLOTS))}
        return pack(_MAGIC, _HELLO, self._key.key_id, self._tag, meta, blobs)

    def _decrypt_total(self, blob: bytes, where: str) -> float:
        return float(self._key.decrypt(blob, where).sum())

    def plan(self, counts_msg: bytes) -> bytes:
        """Message 3: decrypt per-cell counts, apply the cell rules, say what to compute.

        Learns: the count of cohort rows with a value, per group. Reveals to C:
        which cells are computed (so whether each cell passed the owner's rules).
        """
        w = "he-stats: counts from cohort holder"
        msg = unpack(counts_msg, magic=_MAGIC, kind=_COUNTS, tag=self._tag,
                     key_id=self._key.key_id, where=w)
        labels = msg.meta.get("labels")
        if not isinstance(labels, list) or len(labels) != len(msg.blobs) or TOTAL in labels:
            raise CryptoError("malformed counts message", where=w)
        counts: dict[str, int] = {}
        for lab, blob in zip(labels, msg.blobs, strict=True):
            x = self._decrypt_total(blob, w)
            n = round(x)
            if abs(x - n) > 0.25 or n < 0:
                raise CryptoError(f"count for {lab!r} decrypts to {x!r}, not a count "
                                  "(wrong key or corrupted ciphertext)", where=w)
            counts[str(lab)] = int(n)
        self.counts = counts
        q = self.query
        self._plan = plan_cells(counts, query=q, min_cohort=self.min_cohort,
                                history=self.history.records(q.requester, q.scope))
        return pack(_MAGIC, _PLAN, self._key.key_id, self._tag, {"compute": self._plan.compute}, [])

    def release(self, moments_msg: bytes) -> Release:
        """Decrypt the planned cells, add DP noise, record history, build the release.

        Guarantees: every released number passed :func:`plan_cells`; DP noise
        (if configured) is drawn here, by the owner, after the budget is
        charged; replayed cells repeat earlier numbers exactly.
        """
        if self._plan is None or self.counts is None:
            raise FedgovError("release() before plan()", where="he-stats")
        q, plan = self.query, self._plan
        w = "he-stats: moments from cohort holder"
        msg = unpack(moments_msg, magic=_MAGIC, kind=_MOMENTS, tag=self._tag,
                     key_id=self._key.key_id, where=w)
        value_moments = [m for m in q.moments if m != "count"]
        if msg.meta.get("cells") != plan.compute or len(msg.blobs) != len(plan.compute) * len(value_moments):
            raise CryptoError("moments message does not match the plan", where=w)
        total_n = sum(self.counts.values())
        it = iter(msg.blobs)
        raw: dict[str, dict[str, float]] = {}
        for c in plan.compute:
            mom = {"count": float(total_n if c == TOTAL else self.counts[c])}
            for m in value_moments:
                mom[m] = self._decrypt_total(next(it), w)
            raw[c] = mom
        eps = delta = 0.0
        if q.dp is not None and raw:
            assert self.accountant is not None
            self.accountant.charge(q.requester, q.scope, q.dp.epsilon, q.dp.delta, q.job_id)
            eps, delta = q.dp.epsilon, q.dp.delta
            rng = _rng()
            raw = {c: _noise(q, m, rng) for c, m in raw.items()}
        out = {c: _finish_stats(q, m) for c, m in raw.items()}
        out.update(plan.replay)
        cells: dict[str, dict[str, Any]] = {}
        for c, n in self.counts.items():
            if c in plan.suppressed:
                continue
            cells[c] = out[c] if c in out else _finish_stats(q, _empty(q, n))
        total = out.get(TOTAL) if q.include_total else None
        records = [{"job": q.job_id, "cohort": q.cohort, "cell": c, "count": self.counts[c],
                    "values": cells[c]} for c in cells if self.counts[c] > 0]
        if total is not None:
            records.append({"job": q.job_id, "cohort": q.cohort, "cell": TOTAL,
                            "count": total_n, "values": total})
        rel = [c for c in cells if self.counts[c] > 0]
        if len(rel) >= 2:
            records.append({"job": q.job_id, "cohort": q.cohort, "cell": "+released",
                            "count": sum(self.counts[c] for c in rel), "values": None})
        new = [r for r in records if r["cell"] not in plan.replay]
        if new:
            self.history.add(q.requester, q.scope, new)
        return Release(q.job_id, q.scope, q.cohort, cells, total, dict(plan.suppressed), eps, delta,
                       self.min_cohort, q.dp.mechanism if q.dp else None, sorted(plan.replay))


def _empty(query: StatsQuery, n: int) -> dict[str, float]:
    return {m: 0.0 for m in query.moments} | {"count": float(n)}


class CohortHolder:
    """The department that defines the cohort (group id per aligned row, -1 = out).

    Never decrypts anything; holds only ciphertexts under the owner's key.
    Its indicator vectors enter only as plaintext multipliers, and every
    ciphertext it returns is a sum over all aligned rows plus a fresh
    encryption of a zero-sum random mask, so the owner's decryption shows
    only per-cell totals.
    """

    def __init__(self, query: StatsQuery, codes: np.ndarray, labels: Sequence[str]) -> None:
        self.query = query
        self.codes = np.asarray(codes, dtype=np.int64)
        self.labels = [str(x) for x in labels]
        if self.codes.size and (self.codes.max() >= len(self.labels) or self.codes.min() < -1):
            raise ConfigError("group codes out of range for the labels", where="he-stats")
        self._tag = job_tag("he-stats", query.job_id)
        self._pk: PublicKey | None = None
        self._cts: dict[str, list[Any]] = {}
        self._rng = _rng()

    def _ind(self, cell: str) -> np.ndarray:
        if cell == TOTAL:
            return self.codes >= 0
        return self.codes == self.labels.index(cell)

    def _masked_sum(self, moment: str, cell: str) -> bytes:
        assert self._pk is not None
        pk = self._pk
        ind = np.zeros(max(1, -(-len(self.codes) // SLOTS)) * SLOTS)
        ind[: len(self.codes)] = self._ind(cell)
        acc = None
        for k, blob in enumerate(self._cts[moment]):
            part = ind[k * SLOTS : (k + 1) * SLOTS]
            if not part.any():
                continue
            if isinstance(blob, bytes):
                blob = self._cts[moment][k] = pk.load(blob, "he-stats: owner hello")
            prod = blob * part
            acc = prod if acc is None else acc + prod
        mask = _zero_sum_mask(self._rng, _mask_bound(self.query, moment, len(self.codes)))
        enc_mask = pk.load(pk.encrypt(mask)[0], "he-stats")
        out = enc_mask if acc is None else acc + enc_mask
        return out.serialize()

    def counts(self, hello: bytes) -> bytes:
        """Message 2: per group, masked Enc(count of cohort rows with a value)."""
        w = "he-stats: hello from data owner"
        msg = unpack(hello, magic=_MAGIC, kind=_HELLO, tag=self._tag, key_id=None, where=w)
        if not msg.blobs:
            raise CryptoError("hello carries no public context", where=w)
        pk = PublicKey(msg.blobs[0], where=w)
        if pk.key_id != msg.key_id:
            raise CryptoError("hello's key id does not match its public context", where=w)
        moments = msg.meta.get("moments")
        n = msg.meta.get("n")
        if moments != list(self.query.moments):
            raise CryptoError(f"owner sent moments {moments}, query needs {list(self.query.moments)}",
                              where=w)
        if n != len(self.codes):
            raise CryptoError(f"owner has {n} aligned rows, cohort holder {len(self.codes)}", where=w)
        chunks = max(1, -(-len(self.codes) // SLOTS))
        if len(msg.blobs) != 1 + chunks * len(moments):
            raise CryptoError("hello has the wrong number of ciphertexts", where=w)
        self._pk = pk
        for i, m in enumerate(moments):
            self._cts[m] = list(msg.blobs[1 + i * chunks : 1 + (i + 1) * chunks])
        blobs = [self._masked_sum("count", lab) for lab in self.labels]
        return pack(_MAGIC, _COUNTS, pk.key_id, self._tag, {"labels": self.labels}, blobs)

    def moments(self, plan: bytes) -> bytes:
        """Message 4: for each cell the owner planned, masked Enc(sum of each value moment)."""
        if self._pk is None:
            raise FedgovError("moments() before counts()", where="he-stats")
        w = "he-stats: plan from data owner"
        msg = unpack(plan, magic=_MAGIC, kind=_PLAN, tag=self._tag, key_id=self._pk.key_id, where=w)
        cells = msg.meta.get("compute")
        if not isinstance(cells, list) or any(c != TOTAL and c not in self.labels for c in cells):
            raise CryptoError("plan names unknown cells", where=w)
        if TOTAL in cells and not self.query.include_total:
            raise CryptoError("plan asks for a total the query did not include", where=w)
        blobs = [self._masked_sum(m, c) for c in cells for m in self.query.moments if m != "count"]
        return pack(_MAGIC, _MOMENTS, self._pk.key_id, self._tag, {"cells": cells}, blobs)


def run_local(query: StatsQuery, codes: np.ndarray, labels: Sequence[str], values: np.ndarray, *,
              min_cohort: int = 11, history: ReleaseHistory | None = None,
              accountant: BudgetAccountant | None = None,
              transcript: list[tuple[str, str, str, bytes]] | None = None) -> Release:
    """Run the vertical protocol in this process (tests, bench)."""
    owner = DataOwner(query, values, min_cohort=min_cohort, history=history, accountant=accountant)
    holder = CohortHolder(query, codes, labels)

    def log(src: str, dst: str, step: str, b: bytes) -> bytes:
        if transcript is not None:
            transcript.append((src, dst, step, b))
        return b

    m1 = log("owner", "holder", "hello", owner.hello())
    m2 = log("holder", "owner", "counts", holder.counts(m1))
    m3 = log("owner", "holder", "plan", owner.plan(m2))
    m4 = log("holder", "owner", "moments", holder.moments(m3))
    return owner.release(m4)


# --------------------------------------------------------------------------
# horizontal: same field at several regional nodes


class RegionKeyHolder:
    """Key holder and release-policy enforcer for a horizontal (regional) sum.

    Hosted by a node the regions trust not to collude with the combiner
    (the coordinator, see :func:`combine`). Sees total counts per cell, and
    value totals only of cells that pass the rules; never a region's part.
    ``min_cohort`` should be the largest of the regions' (they send theirs;
    the larger wins).
    """

    def __init__(self, query: StatsQuery, labels: Sequence[str], *, min_cohort: int,
                 history: ReleaseHistory | None = None) -> None:
        self.query = query
        self.labels = [str(x) for x in labels]
        self.min_cohort = min_cohort
        self.history = history if history is not None else ReleaseHistory()
        self._key = KeyOwner()
        self._tag = job_tag("he-stats-h", query.job_id)
        self.counts: dict[str, int] | None = None
        self._plan: Plan | None = None

    def hello(self) -> bytes:
        """Public context for the regions (~0.48 MB)."""
        return pack(_MAGIC, _HELLO, self._key.key_id, self._tag, {"labels": self.labels},
                    [self._key.public_bytes()])

    def _vector(self, msg_bytes: bytes, phase: int, where: str) -> tuple[np.ndarray, dict[str, Any]]:
        msg = unpack(msg_bytes, magic=_MAGIC, kind=_REGION, tag=self._tag,
                     key_id=self._key.key_id, where=where)
        if msg.meta.get("phase") != phase or len(msg.blobs) != 1:
            raise CryptoError("unexpected combined message", where=where)
        return self._key.decrypt(msg.blobs[0], where), msg.meta

    def plan(self, combined_counts: bytes) -> bytes:
        w = "he-stats-h: combined counts"
        vec, meta = self._vector(combined_counts, 1, w)
        self.min_cohort = max(self.min_cohort, int(meta.get("min_cohort", 0)))
        counts = {}
        for g, lab in enumerate(self.labels):
            n = round(vec[g])
            if abs(vec[g] - n) > 0.25 or n < 0:
                raise CryptoError(f"count for {lab!r} is not a count (wrong key?)", where=w)
            counts[lab] = int(n)
        self.counts = counts
        q = self.query
        self._plan = plan_cells(counts, query=q, min_cohort=self.min_cohort,
                                history=self.history.records(q.requester, q.scope))
        return pack(_MAGIC, _PLAN, self._key.key_id, self._tag, {"compute": self._plan.compute}, [])

    def release(self, combined_moments: bytes) -> Release:
        if self._plan is None or self.counts is None:
            raise FedgovError("release() before plan()", where="he-stats-h")
        q, plan = self.query, self._plan
        vec, meta = self._vector(combined_moments, 2, "he-stats-h: combined moments")
        mom_names = list(q.moments)
        raw: dict[str, dict[str, float]] = {}
        for i, c in enumerate(plan.compute):
            raw[c] = {m: float(vec[i * len(mom_names) + j]) for j, m in enumerate(mom_names)}
        out = {c: _finish_stats(q, m) for c, m in raw.items()}
        out.update(plan.replay)
        cells = {c: (out[c] if c in out else _finish_stats(q, _empty(q, n)))
                 for c, n in self.counts.items() if c not in plan.suppressed}
        total = out.get(TOTAL) if q.include_total else None
        records = [{"job": q.job_id, "cohort": q.cohort, "cell": c, "count": self.counts[c],
                    "values": cells[c]} for c in cells if self.counts[c] > 0 and c not in plan.replay]
        if total is not None and TOTAL not in plan.replay:
            records.append({"job": q.job_id, "cohort": q.cohort, "cell": TOTAL,
                            "count": sum(self.counts.values()), "values": total})
        if records:
            self.history.add(q.requester, q.scope, records)
        eps = float(meta.get("epsilon", 0.0))
        return Release(q.job_id, q.scope, q.cohort, cells, total, dict(plan.suppressed), eps,
                       float(meta.get("delta", 0.0)), self.min_cohort,
                       q.dp.mechanism if q.dp else None, sorted(plan.replay))


class Region:
    """A regional node holding the field for its own residents.

    ``codes`` are local group ids (-1 = not in the cohort by the manifest's
    filter), ``values`` the field (NaN = missing). Sends only encrypted
    per-cell vectors: true counts (phase 1, for the rules) and, for planned
    cells, value moments plus — with DP — its own noise, charged to its own
    accountant (each region noises its own part: the total carries the sum of
    the regions' noises). Refuses with PolicyDenied when its budget is spent.
    """

    def __init__(self, name: str, query: StatsQuery, codes: np.ndarray, labels: Sequence[str],
                 values: np.ndarray, *, min_cohort: int,
                 accountant: BudgetAccountant | None = None) -> None:
        if query.dp is not None and accountant is None:
            raise ConfigError("DP noise needs a budget accountant at the region", where=name)
        self.name = name
        self.query = query
        self.codes = np.asarray(codes, dtype=np.int64)
        self.labels = [str(x) for x in labels]
        self.values = np.asarray(values, dtype=np.float64)
        self.min_cohort = min_cohort
        self.accountant = accountant
        self._tag = job_tag("he-stats-h", query.job_id)
        self._pk: PublicKey | None = None

    def _cell_moments(self, cells: Sequence[str]) -> list[float]:
        mom = _moments_of(self.values, self.query)
        out: list[float] = []
        rng = _rng() if self.query.dp is not None else None
        for c in cells:
            sel = self.codes >= 0 if c == TOTAL else self.codes == self.labels.index(c)
            m = {k: float(v[sel].sum()) for k, v in mom.items()}
            if rng is not None:
                m = _noise(self.query, m, rng)
            out += [m[k] for k in self.query.moments]
        return out

    def counts(self, hello: bytes) -> bytes:
        w = f"he-stats-h: hello at {self.name}"
        msg = unpack(hello, magic=_MAGIC, kind=_HELLO, tag=self._tag, key_id=None, where=w)
        pk = PublicKey(msg.blobs[0], where=w)
        if pk.key_id != msg.key_id or msg.meta.get("labels") != self.labels:
            raise CryptoError("hello does not match this job", where=w)
        q = self.query
        if q.dp is not None:
            assert self.accountant is not None
            self.accountant.check(q.requester, q.scope, q.dp.epsilon, q.dp.delta)
        self._pk = pk
        mom = _moments_of(self.values, q)["count"]
        vec = [float(mom[self.codes == g].sum()) for g in range(len(self.labels))]
        (blob,) = pk.encrypt(np.asarray(vec))
        meta = {"phase": 1, "min_cohort": self.min_cohort, "regions": [self.name]}
        return pack(_MAGIC, _REGION, pk.key_id, self._tag, meta, [blob])

    def moments(self, plan: bytes) -> bytes:
        if self._pk is None:
            raise FedgovError("moments() before counts()", where=self.name)
        w = f"he-stats-h: plan at {self.name}"
        msg = unpack(plan, magic=_MAGIC, kind=_PLAN, tag=self._tag, key_id=self._pk.key_id, where=w)
        cells = msg.meta.get("compute")
        if not isinstance(cells, list) or any(c != TOTAL and c not in self.labels for c in cells):
            raise CryptoError("plan names unknown cells", where=w)
        q = self.query
        if len(cells) * len(q.moments) > SLOTS:
            raise ConfigError("too many cells x moments for one ciphertext", where=self.name)
        eps = delta = 0.0
        if q.dp is not None and cells:
            assert self.accountant is not None
            self.accountant.charge(q.requester, q.scope, q.dp.epsilon, q.dp.delta, q.job_id)
            eps, delta = q.dp.epsilon, q.dp.delta
        (blob,) = self._pk.encrypt(np.asarray(self._cell_moments(cells)))
        meta = {"phase": 2, "epsilon": eps, "delta": delta, "regions": [self.name]}
        return pack(_MAGIC, _REGION, self._pk.key_id, self._tag, meta, [blob])


def combine(job_id: str, hello: bytes, parts: Sequence[bytes]) -> bytes:
    """Add the regions' ciphertexts (run by a party other than the key holder).

    Checks that every part is for this job and under the hello's key; outputs
    one ciphertext. The combiner learns nothing (it holds no secret key);
    ``min_cohort`` in the output is the largest any region asked for, ``epsilon``
    the largest any region spent (each region accounts its own).
    """
    tag = job_tag("he-stats-h", job_id)
    h = unpack(hello, magic=_MAGIC, kind=_HELLO, tag=tag, key_id=None, where="combiner")
    pk = PublicKey(h.blobs[0], where="combiner")
    if not parts:
        raise FedgovError("nothing to combine", where="combiner")
    acc = None
    phase = None
    regions: list[str] = []
    mc, eps, delta = 0, 0.0, 0.0
    for i, p in enumerate(parts):
        msg = unpack(p, magic=_MAGIC, kind=_REGION, tag=tag, key_id=pk.key_id,
                     where=f"combiner: part {i}")
        if phase is None:
            phase = msg.meta.get("phase")
        elif msg.meta.get("phase") != phase:
            raise CryptoError("parts from different phases", where="combiner")
        ct = pk.load(msg.blobs[0], f"combiner: part {i}")
        acc = ct if acc is None else acc + ct
        regions += list(msg.meta.get("regions", []))
        mc = max(mc, int(msg.meta.get("min_cohort", 0)))
        eps = max(eps, float(msg.meta.get("epsilon", 0.0)))
        delta = max(delta, float(msg.meta.get("delta", 0.0)))
    if len(set(regions)) != len(regions):
        raise CryptoError("a region contributed twice", where="combiner")
    assert acc is not None
    meta = {"phase": phase, "min_cohort": mc, "epsilon": eps, "delta": delta, "regions": regions}
    return pack(_MAGIC, _REGION, pk.key_id, tag, meta, [acc.serialize()])


def run_local_horizontal(query: StatsQuery, labels: Sequence[str],
                         regions: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                         min_cohort: int = 11, history: ReleaseHistory | None = None,
                         accountants: Mapping[str, BudgetAccountant] | None = None) -> Release:
    """Run the horizontal protocol in this process; ``regions[name] = (codes, values)``."""
    kh = RegionKeyHolder(query, labels, min_cohort=min_cohort, history=history)
    rs = [Region(n, query, c, labels, v, min_cohort=min_cohort,
                 accountant=(accountants or {}).get(n)) for n, (c, v) in regions.items()]
    hello = kh.hello()
    plan = kh.plan(combine(query.job_id, hello, [r.counts(hello) for r in rs]))
    return kh.release(combine(query.job_id, hello, [r.moments(plan) for r in rs]))
