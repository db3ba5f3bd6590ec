"""HE statistics: grouped counts/sums/means/variances/histograms on CKKS.

Protocol and leakage: ``docs/protocols/he-stats.md``. In short (vertical
case: rows already aligned by PSI; the *cohort holder* C has a group id per
aligned row, -1 = not in the cohort; the *data owner* O has the value)::

    O -> C  hello    O's public context + Enc_O(moment vectors) over the aligned rows
    C -> O  counts   per group g: Enc_O(sum_i ind_g[i] * present[i] + zero-sum mask + i*flood)
    O -> C  plan     which cells to compute (owner policy on the NOISY counts)
    C -> O  moments  per planned cell, per moment: Enc_O(sum_i ind[i] * m[i] + zero-sum mask + i*flood)
    O -> R  release  noised numbers (JSON), sealed to the requester

Key: O generates a fresh CKKS key per job and is the only decryptor. C only
ever handles ciphertexts under O's key; every ciphertext it returns carries a
fresh integer Gaussian zero-sum mask of ``2^mask_bits`` times the slot's bound
(no range edge) in the real parts and an independent Gaussian flood in the
imaginary parts, so O's decryption shows only per-cell totals.

Owner-side policy on every number (:class:`Disclosure`, from the owner's
``policy.toml`` ``[...disclosure]``, safe defaults): DP on by default —
discrete Laplace from OpenDP on every released count (empty cells
included) and on sums quantised to a grid of the clip bound; the minimum cell
applied to the *noisy* count; ε charged up front for every query whatever it
returns, to one budget per dataset and period shared by all requesters and
fields (:class:`BudgetAccountant`). With DP switched off by the owner the
older exact rules apply (minimum cell on true counts, complementary
suppression, differencing against earlier answers, :class:`ReleaseHistory`).
The cohort holder's exact differencing auditor is :func:`audit_cohort`.

The horizontal case (same field at several regional nodes) is
:class:`Region` / :func:`combine` / :class:`RegionKeyHolder`.

Pure: no I/O; stores are injected (the node persists them).
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import opendp.prelude as _odp

from fedgov.crypto.ckks import ciphertext_bytes, flood_imaginary
from fedgov.crypto.ckks_stats import (
    SLOTS,
    KeyOwner,
    PublicKey,
    job_tag,
    pack,
    unpack,
)
from fedgov.errors import ConfigError, CryptoError, FedgovError, PolicyDenied

_odp.enable_features("contrib")

__all__ = [
    "STATS",
    "TOTAL",
    "BudgetAccountant",
    "CohortHolder",
    "DPConfig",
    "DataOwner",
    "Disclosure",
    "MemoryBudgetStore",
    "MemoryHistoryStore",
    "Region",
    "RegionKeyHolder",
    "Release",
    "ReleaseHistory",
    "StatsQuery",
    "audit_cohort",
    "combine",
    "group_codes",
    "period_key",
    "plaintext_stats",
    "run_local",
    "run_local_horizontal",
]

STATS = ("count", "sum", "mean", "variance", "histogram")
#: Label of the margin (all cohort rows) cell.
TOTAL = "__total__"
_MAGIC = b"FHST"
_HELLO, _COUNTS, _PLAN, _MOMENTS, _REGION = 1, 2, 3, 4, 5
#: Largest mask standard deviation (log2): 6 sigma stays inside the 2^78 headroom.
_MAX_MASK_LOG2 = 72
#: Hard bounds on the mask size, whatever owner or manifest say: below 32 bits a
#: slot hides too little; above 60 bits no moment fits the CKKS headroom.
MASK_BITS_FLOOR = 32
MASK_BITS_CEILING = 60
#: Default mask: >= 40 bits of statistical hiding over a typical job's decrypted slots
#: (lowered per moment only as far as the CKKS headroom forces).
DEFAULT_MASK_BITS = 56
#: The cohort holder's imaginary flood is the real mask's sigma times 2^-IMAG_FLOOD_BELOW_MASK.
IMAG_FLOOD_BELOW_MASK = 20
#: A region's imaginary flood (log2 of its sigma).
REGION_IMAG_FLOOD_LOG2 = 10
#: Sums are noised on a grid of ``bound / SUM_GRID`` (integer units).
SUM_GRID = 1024
#: Default ε of one query when neither manifest nor owner says (clamped to the owner's range).
DEFAULT_QUERY_EPSILON = 0.5
PERIODS = ("day", "month", "quarter", "year", "forever")


def _rng() -> np.random.Generator:
    """numpy Generator seeded with 256 bits from ``os.urandom``.

    Used for statistical masks and imaginary-part floods, which need Gaussian
    floats in bulk, not key material. DP noise never comes from here: it is
    OpenDP's exact discrete Laplace sampler (:func:`discrete_laplace`).
    """
    return np.random.default_rng(int.from_bytes(os.urandom(32), "little"))


@functools.lru_cache(maxsize=64)
def _laplace(scale: float) -> Any:
    return _odp.m.make_laplace(_odp.vector_domain(_odp.atom_domain(T="i64")), _odp.l1_distance(T="i64"),
                               scale=scale)


def discrete_laplace(values: Sequence[int], scale: float) -> list[int]:
    """``values`` plus i.i.d. discrete Laplace noise of ``scale`` (OpenDP's exact sampler).

    Integer in, integer out: no floating-point sampling (Mironov 2012). For
    L1 sensitivity ``s`` the release is ``s / scale``-DP.
    """
    if not values:
        return []
    return [int(x) for x in _laplace(float(scale))([int(v) for v in values])]


def discrete_laplace_sd(scale: float) -> float:
    """Standard deviation of OpenDP's discrete Laplace of ``scale`` (P(x) ∝ exp(-|x|/scale) on the integers):
    with ``p = exp(-1/scale)`` the variance is ``2p / (1-p)^2`` (≈ ``2 scale^2`` for large scales)."""
    if scale <= 0:
        return 0.0
    p = math.exp(-1.0 / scale)
    return math.sqrt(2.0 * p) / (1.0 - p)


def dp_noise_spec(query: StatsQuery, epsilon: float) -> dict[str, dict[str, float]]:
    """The discrete Laplace each noised quantity gets under ``epsilon``: ``{quantity: {step, scale}}``.

    ``count`` (also every histogram bin: ``hist``) is noised in units of 1 with scale ``1/ε_q``; ``sum`` /
    ``sumsq`` on a grid of ``step = bound / SUM_GRID`` with scale ``sensitivity / ε_q`` grid units
    (:func:`_grid`), ``ε_q`` being the query's share per quantity (:meth:`StatsQuery.dp_split`). The owner
    and the regions draw their noise from exactly these numbers, and :func:`dp_error` reads them back, so a
    shown error is the one the sampler had. Public: a function of the manifest and the owner's ε only.
    """
    names, eps_q = query.dp_split(epsilon)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        step, sens = _grid(query, "bin0" if name == "hist" else name)
        out[name] = {"step": float(step), "scale": float(sens) / eps_q}
    return out


def dp_error(release: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per released cell (and ``TOTAL``), the standard deviation of the DP noise in each statistic.

    The one place the error figure comes from (the console shows it, ``fedgov job result`` prints it as the
    release's ``dp_sd``). Reads the release's ``dp_noise`` (what the releasing owner, or each region, drew:
    :func:`dp_noise_spec` per noising party) — noise of several parties adds up in variance. ``count``,
    ``sum`` and each ``histogram`` bin: exact standard deviations of the added noise; ``mean``: the
    first-order (delta-method) standard deviation ``sqrt(sd_sum² + mean²·sd_count²) / count`` at the
    released figures (None when the released count is 0); ``variance`` is not given. Clamping after the
    noise (counts ≥ 0, a sum within count × clip) only shrinks the error. ``{}`` without DP.
    Leaks nothing: a function of public parameters and released figures.
    """
    spec = release.get("dp_noise")
    if not isinstance(spec, Mapping) or not spec.get("parties"):
        return {}
    parties = [p for p in spec["parties"] if isinstance(p, Mapping)]

    def sd(quantity: str, copies: int = 1) -> float | None:
        var = 0.0
        for p in parties:
            q = p.get(quantity)
            if not isinstance(q, Mapping):
                return None
            var += copies * (float(q["step"]) * discrete_laplace_sd(float(q["scale"]))) ** 2
        return math.sqrt(var)

    total_cells = int(spec.get("total_count_cells") or 0)  # horizontal: a region's total = sum of its cells
    cells = dict(release.get("cells") or {})
    if isinstance(release.get("total"), Mapping):
        cells[TOTAL] = release["total"]
    out: dict[str, dict[str, Any]] = {}
    for label, cell in cells.items():
        if not isinstance(cell, Mapping):
            continue
        sd_n = sd("count", total_cells if label == TOTAL and total_cells else 1)
        sd_sum = sd("sum")
        e: dict[str, Any] = {}
        if "count" in cell:
            e["count"] = sd_n
        if "sum" in cell:
            e["sum"] = sd_sum
        if "mean" in cell:
            n, mean = cell.get("count"), cell.get("mean")
            if sd_n is None or sd_sum is None or not n or mean is None:
                e["mean"] = None
            else:
                e["mean"] = math.sqrt(sd_sum**2 + (float(mean) * sd_n) ** 2) / float(n)
        if isinstance(cell.get("histogram"), list):
            h = sd("hist")
            e["histogram"] = [h] * len(cell["histogram"])
        out[label] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in e.items()}
    return out


# --------------------------------------------------------------------------
# the owner's disclosure settings


@dataclass(frozen=True)
class Disclosure:
    """The data owner's (or cohort holder's) disclosure settings for one dataset.

    Defaults are the safe ones that hold when a policy says nothing (the node
    reads them from ``policy.toml`` ``[...disclosure]`` keys ``stats_*``, see
    :mod:`fedgov.params.he_stats`). ``dp=False`` only if the owner says so.
    """

    dp: bool = True
    epsilon_min: float = 0.05
    epsilon_max: float = 1.0
    budget_epsilon: float = 3.0
    budget_period: str = "quarter"
    mask_bits_min: int = 40

    def __post_init__(self) -> None:
        w = "he-stats: disclosure"
        if not (0 < self.epsilon_min <= self.epsilon_max) or not math.isfinite(self.epsilon_max):
            raise ConfigError("need 0 < stats_epsilon_min <= stats_epsilon_max", where=w)
        if not self.budget_epsilon > 0:
            raise ConfigError("stats_budget_epsilon must be > 0", where=w)
        if self.budget_period not in PERIODS:
            raise ConfigError(f"stats_budget_period must be one of {', '.join(PERIODS)}", where=w)
        if not MASK_BITS_FLOOR <= self.mask_bits_min <= MASK_BITS_CEILING:
            raise ConfigError(f"stats_mask_bits_min must be in [{MASK_BITS_FLOOR}, {MASK_BITS_CEILING}]",
                              where=w)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Disclosure:
        """From a node's effective disclosure settings (keys ``stats_*``; missing keys: defaults)."""
        d = cls()
        return cls(
            dp=bool(settings.get("stats_dp", d.dp)),
            epsilon_min=float(settings.get("stats_epsilon_min", d.epsilon_min)),
            epsilon_max=float(settings.get("stats_epsilon_max", d.epsilon_max)),
            budget_epsilon=float(settings.get("stats_budget_epsilon", d.budget_epsilon)),
            budget_period=str(settings.get("stats_budget_period", d.budget_period)),
            mask_bits_min=int(settings.get("stats_mask_bits_min", d.mask_bits_min)),
        )

    def epsilon_for(self, query: StatsQuery) -> float | None:
        """The ε this owner spends on ``query`` (None: no DP, only when the owner says so).

        Raises :class:`PolicyDenied` naming the policy key when the manifest's
        ε is outside the owner's range.
        """
        if query.dp is None:
            if not self.dp:
                return None
            return min(max(DEFAULT_QUERY_EPSILON, self.epsilon_min), self.epsilon_max)
        e = query.dp.epsilon
        if e > self.epsilon_max + 1e-12:
            raise PolicyDenied(f"dp epsilon {e:g} is above this owner's ceiling {self.epsilon_max:g} "
                               "(policy key disclosure.stats_epsilon_max)", where="he-stats")
        if e < self.epsilon_min - 1e-12:
            raise PolicyDenied(f"dp epsilon {e:g} is below this owner's floor {self.epsilon_min:g} "
                               "(policy key disclosure.stats_epsilon_min)", where="he-stats")
        return e


def period_key(period: str, now: _dt.datetime | None = None) -> str:
    """The budget period containing ``now`` (UTC): ``2026-Q4``, ``2026-12``, ``2026``, …"""
    t = now or _dt.datetime.now(_dt.UTC)
    if period == "day":
        return t.strftime("%Y-%m-%d")
    if period == "month":
        return t.strftime("%Y-%m")
    if period == "quarter":
        return f"{t.year}-Q{(t.month - 1) // 3 + 1}"
    if period == "year":
        return str(t.year)
    if period == "forever":
        return "all"
    raise ConfigError(f"unknown budget period {period!r}", where="he-stats")


# --------------------------------------------------------------------------
# query


@dataclass(frozen=True)
class DPConfig:
    """The manifest's DP ask for one query: the ε one whole answer costs.

    Only the (discrete) Laplace mechanism exists; ``delta`` must be 0. ε is
    split evenly over the noised quantities (see :meth:`StatsQuery.dp_split`).
    The owner's :class:`Disclosure` bounds it (and applies DP when absent).
    """

    mechanism: Literal["laplace"] = "laplace"
    epsilon: float = DEFAULT_QUERY_EPSILON
    delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mechanism != "laplace":
            raise ConfigError(f"unknown DP mechanism {self.mechanism!r} (only 'laplace': OpenDP's "
                              "discrete Laplace)", where="he-stats.dp")
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ConfigError("dp epsilon must be a positive number", where="he-stats.dp")
        if self.delta != 0:
            raise ConfigError("laplace mechanism takes no delta", where="he-stats.dp")


@dataclass(frozen=True)
class StatsQuery:
    """What is asked, as both parties read it from the signed manifest.

    ``scope`` names the owner's dataset and field; ``cohort`` is the
    canonical text of the cohort definition (holder, dataset, filter,
    group-by field). ``clip`` bounds every value (values are clipped by the
    owner), which also fixes DP sensitivities and mask sizes. ``bins`` are
    histogram edges (values below the first edge fall in the first bin, above
    the last in the last). ``min_cell`` may only raise the owner's minimum.
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
    mask_bits: int = DEFAULT_MASK_BITS
    min_cell: int = 0

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
        if not MASK_BITS_FLOOR <= self.mask_bits <= MASK_BITS_CEILING:
            raise ConfigError(f"mask_bits must be in [{MASK_BITS_FLOOR}, {MASK_BITS_CEILING}]", where=w)
        if self.min_cell < 0:
            raise ConfigError("min_cell must be >= 0", where=w)
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

    def dp_split(self, epsilon: float) -> tuple[list[str], float]:
        """Noised quantities and the ε each gets out of ``epsilon``.

        Cells are disjoint (parallel composition); the total overlaps them, so
        with a total each quantity is measured twice (sequential composition).
        """
        q = ["count"] + [m for m in ("sum", "sumsq") if m in self.moments]
        if "histogram" in self.stats:
            q.append("hist")
        k = len(q) * (2 if self.include_total else 1)
        return q, epsilon / k


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
# the cohort holder's exact differencing auditor


def audit_cohort(codes: np.ndarray, ids: Sequence[str], released: Sequence[Iterable[str]],
                 min_cell: int) -> tuple[np.ndarray, list[list[str]]]:
    """Drop rows so that no linear combination of released cohorts isolates fewer than ``min_cell``.

    ``codes`` are the holder's group codes over the aligned rows, ``ids`` the
    row identities (stable across jobs, e.g. hashed normalised IDs),
    ``released`` the identity sets of every cohort vector released earlier on
    the same owner dataset. Returns the codes to use (rows dropped = -1) and
    the identity sets this answer releases if all its cells are released
    (one per cell, plus the union when there are several cells).

    Guarantee (sound, not exact): let the *atoms* be the classes of rows with
    the same membership pattern over all released vectors and this answer's
    cells. Every vector in the span of those indicator vectors is constant on
    atoms, so its support is a union of atoms; the function drops rows until
    every atom that any released vector touches has at least ``min_cell``
    rows. Hence no combination of answers (the tracker of Denning 1979, any
    difference or sum) has a support of 1..min_cell-1 rows. Dropping is
    silent: a dropped row is computed as if absent, so the release does not
    say whether it happened (it depends on the holder's own cohorts and the
    alignment, never on a refusal an analyst can see). Invariant kept: every
    earlier atom already has ``>= min_cell`` rows.
    """
    codes = np.array(codes, dtype=np.int64, copy=True)
    if len(ids) != len(codes):
        raise ConfigError("audit: ids and codes differ in length", where="he-stats")
    sets = [set(r) for r in released]
    universe = set(ids).union(*sets) if sets else set(ids)

    def pat(i: str) -> tuple[int, ...]:
        return tuple(k for k, s in enumerate(sets) if i in s)

    # atoms of the history over every identity ever released (not only this job's rows)
    hist_size: dict[tuple[int, ...], int] = {}
    for i in universe:
        p = pat(i)
        if p:
            hist_size[p] = hist_size.get(p, 0) + 1
    pattern = [pat(i) for i in ids]
    while True:
        by: dict[tuple[tuple[int, ...], int], list[int]] = {}
        for r, c in enumerate(codes):
            if c >= 0:
                by.setdefault((pattern[r], int(c)), []).append(r)
        changed = False
        for rows in by.values():
            if len(rows) < min_cell:
                codes[rows] = -1
                changed = True
        # the rows of an earlier atom this query leaves out form an atom too
        inside: dict[tuple[int, ...], int] = {}
        for r, c in enumerate(codes):
            if c >= 0 and pattern[r]:
                inside[pattern[r]] = inside.get(pattern[r], 0) + 1
        for p, k in inside.items():
            if 0 < hist_size[p] - k < min_cell:
                codes[[r for r in range(len(codes)) if pattern[r] == p]] = -1
                changed = True
        if not changed:
            break
    labels = sorted({int(c) for c in codes if c >= 0})
    vectors = [[ids[r] for r in np.flatnonzero(codes == g)] for g in labels]
    if len(vectors) > 1:
        vectors.append([ids[r] for r in np.flatnonzero(codes >= 0)])
    return codes, vectors


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
    """Every aggregate released about one owner scope (used when the owner has DP off).

    A record is a JSON-able dict ``{"job", "cohort", "cell", "count",
    "values"}``; ``cell`` is a group label, :data:`TOTAL`, or
    ``"+released"`` — the sum of the cells released in that answer, which a
    requester can always form itself. Suppressed cells are not recorded.
    The node keys it by dataset scope only (requester ``"*"``): answers to one
    analyst are checked against answers to every other.
    """

    def __init__(self, store: HistoryStore | None = None) -> None:
        self.store: HistoryStore = store if store is not None else MemoryHistoryStore()

    def records(self, requester: str, scope: str) -> list[dict[str, Any]]:
        return self.store.load(requester, scope)

    def add(self, requester: str, scope: str, records: list[dict[str, Any]]) -> None:
        self.store.append(requester, scope, records)


class BudgetStore(Protocol):
    """Persistence hook for :class:`BudgetAccountant`: one ledger per (dataset, period)."""

    def spent(self, dataset: str, period: str) -> float: ...

    def add(self, dataset: str, period: str, epsilon: float, job_id: str, requester: str,
            limit: float) -> None:
        """Record a spend; raise :class:`PolicyDenied` (recording nothing) if it would exceed ``limit``."""


class MemoryBudgetStore:
    """In-memory :class:`BudgetStore`."""

    def __init__(self) -> None:
        self.ledger: dict[tuple[str, str], list[tuple[str, str, float]]] = {}

    def spent(self, dataset: str, period: str) -> float:
        return sum(r[2] for r in self.ledger.get((dataset, period), []))

    def add(self, dataset: str, period: str, epsilon: float, job_id: str, requester: str,
            limit: float) -> None:
        e = self.spent(dataset, period)
        if e + epsilon > limit + 1e-12:
            raise PolicyDenied(budget_message(dataset, period, e, limit, epsilon), where="he-stats")
        self.ledger.setdefault((dataset, period), []).append((job_id, requester, epsilon))


def budget_message(dataset: str, period: str, spent: float, limit: float, epsilon: float) -> str:
    return (f"privacy budget exhausted: {dataset} has spent ε={spent:g} of ε={limit:g} in period "
            f"{period} (all requesters and fields together); this query needs ε={epsilon:g} "
            "(policy key disclosure.stats_budget_epsilon)")


class BudgetAccountant:
    """One ε budget per owner dataset and period, shared by every requester and field.

    :meth:`charge` records the spend atomically (the store re-checks the
    limit) and raises :class:`PolicyDenied` when the query would exceed it.
    Callers charge *before* computing anything, for every query, whatever it
    ends up returning (suppressed, empty or failed later): the ε is spent by
    asking. Basic composition (sums of ε) over-counts, which is safe.
    """

    def __init__(self, epsilon_limit: float, period: str = "quarter",
                 store: BudgetStore | None = None) -> None:
        if not epsilon_limit > 0:
            raise ConfigError("DP budget limit must be epsilon > 0", where="dp budget")
        period_key(period)
        self.epsilon_limit = epsilon_limit
        self.period = period
        self.store: BudgetStore = store if store is not None else MemoryBudgetStore()

    def remaining(self, dataset: str) -> float:
        return max(0.0, self.epsilon_limit - self.store.spent(dataset, period_key(self.period)))

    def charge(self, dataset: str, epsilon: float, job_id: str, requester: str) -> None:
        self.store.add(dataset, period_key(self.period), epsilon, job_id, requester, self.epsilon_limit)


# --------------------------------------------------------------------------
# owner-side release rules


@dataclass
class Plan:
    """Which cells get computed/released, and why the others do not."""

    compute: list[str]
    suppressed: dict[str, str]
    #: the counts the release will show (noisy with DP, true without)
    counts: dict[str, int] = field(default_factory=dict)


def plan_noisy(noisy: Mapping[str, int], *, query: StatsQuery, min_cell: int) -> Plan:
    """DP rules: a cell (or the total, key :data:`TOTAL`) is computed iff its
    *noisy* count reaches ``min_cell``; every decision is a function of noisy
    counts only (post-processing), so it costs no ε and says nothing exact —
    empty cells and the cells of one person are treated alike."""
    compute, suppressed = [], {}
    for c, n in noisy.items():
        if c == TOTAL and not query.include_total:
            continue
        if n >= min_cell:
            compute.append(c)
        else:
            suppressed[c] = f"noisy count below the minimum cell {min_cell}"
    return Plan(compute, suppressed, {c: max(0, int(n)) for c, n in noisy.items()})


def plan_cells(
    counts: Mapping[str, int],
    *,
    query: StatsQuery,
    min_cohort: int,
    history: Sequence[Mapping[str, Any]],
) -> Plan:
    """Exact rules on the true per-cell counts — only when the owner has switched DP off.

    1. *Minimum cell size*: a cell with ``0 < n < min_cohort`` is suppressed;
       so is the total. Empty cells are released (count 0, no values).
    2. *Complementary suppression*: when a total is released and some
       non-empty cell is suppressed, further cells (smallest first) are
       suppressed until at least two are and their combined count is at least
       ``min_cohort``; if that is impossible the total is suppressed.
    3. *Earlier answers*: any aggregate of this answer — a cell, the total, or
       the sum of released cells — whose count is within ``min_cohort - 1``
       of an earlier released aggregate of the same scope is suppressed. This
       is pairwise only; the cohort holder's :func:`audit_cohort` covers any
       linear combination. No answer is ever replayed.
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

    def conflict(key: tuple[str, str], n: int) -> str | None:
        if n == 0:
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
            if c in suppressed:
                continue
            why = conflict((query.cohort, c), counts[c])
            if why:
                suppressed[c] = why
                changed = True
        if want_total and TOTAL not in suppressed:
            why = conflict((query.cohort, TOTAL), total_n)
            if why:
                suppressed[TOTAL] = why
                changed = True
        released = [c for c in cells if c not in suppressed and counts[c] > 0]
        if len(released) >= 2:
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
    compute = [c for c in cells if c not in suppressed and counts[c] > 0]
    if want_total and TOTAL not in suppressed and total_n > 0:
        compute.append(TOTAL)
    return Plan(compute, suppressed, {**dict(counts), TOTAL: total_n})


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
    min_cohort: int = 11
    noise: str | None = None
    #: statistical hiding of the cohort holder's masks over the whole job (bits)
    mask_security_bits: float | None = None
    #: the DP noise drawn: ``{"parties": [dp_noise_spec(...) per noising party], "total_count_cells": G}``
    dp_noise: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "job_id": self.job_id, "scope": self.scope, "cohort": self.cohort,
            "cells": self.cells, "total": self.total, "suppressed": self.suppressed,
            "epsilon_spent": self.epsilon_spent, "min_cohort": self.min_cohort, "noise": self.noise,
            "mask_security_bits": self.mask_security_bits,
        }
        if self.dp_noise is not None:
            out["dp_noise"] = self.dp_noise
            out["dp_sd"] = dp_error(out)  # per cell and statistic: the noise's standard deviation
        return out


NOISE_LABEL = "discrete-laplace (opendp)"


def _finish_stats(query: StatsQuery, m: Mapping[str, float]) -> dict[str, Any]:
    """Statistics from (possibly noised) moment totals."""
    n = max(0, int(round(m["count"])))
    out: dict[str, Any] = {}
    # post-processing (free under DP): a sum of n clipped values lies in [n*lo, n*hi]
    total = min(max(float(m["sum"]), n * query.clip[0]), n * query.clip[1]) if "sum" in m else 0.0
    if "count" in query.stats:
        out["count"] = n
    if "sum" in query.stats:
        out["sum"] = round(total, 6)
    if "mean" in query.stats:
        out["mean"] = round(total / n, 6) if n > 0 else None
    if "variance" in query.stats:
        if n > 1:
            mean = total / n
            out["variance"] = round(max(0.0, float(m["sumsq"]) / n - mean * mean), 6)
        else:
            out["variance"] = None
    if "histogram" in query.stats:
        out["histogram"] = [max(0, int(round(m[f"bin{k}"]))) for k in range(len(query.bins) - 1)]
    return out


def _grid(query: StatsQuery, moment: str) -> tuple[float, int]:
    """(grid step, L1 sensitivity in grid units) of a value moment's DP noise.

    Sums are rounded to ``bound / SUM_GRID``; one row moves the rounded sum by
    at most ``SUM_GRID + 1`` units; ``SUM_GRID // 8`` more units cover CKKS
    noise in the exactly decoded totals (measured ~1e-7 relative) with a wide
    margin — all counted in the sensitivity.
    """
    b = query.bound(moment)
    if moment in ("sum", "sumsq"):
        return b / SUM_GRID, SUM_GRID + 1 + SUM_GRID // 8
    return 1.0, 1  # counts and histogram bins: a row is in at most one


def _noise_moments(query: StatsQuery, cells: Mapping[str, Mapping[str, float]], epsilon: float,
                   noisy_counts: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """OpenDP discrete Laplace on every value moment of every cell (counts come noised already)."""
    spec = dp_noise_spec(query, epsilon)
    out: dict[str, dict[str, float]] = {c: {"count": float(noisy_counts[c])} for c in cells}
    names = [m for m in query.moments if m != "count"]
    for name in names:
        # histogram bins share one budget slice: a row is in one bin (L1 sensitivity 1)
        q = spec["hist" if name.startswith("bin") else name]
        step, scale = q["step"], q["scale"]
        order = list(cells)
        noised = discrete_laplace([round(cells[c][name] / step) for c in order], scale)
        for c, v in zip(order, noised, strict=True):
            out[c][name] = v * step
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
# masks


def _zero_sum_mask(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Integer-valued Gaussian mask of standard deviation ``sigma`` whose slots sum to 0.

    Gaussian, not uniform: there is no range edge for a value to land on, and
    the statistical distance between masks shifted by ``v`` grows like
    ``sqrt(sum v_i^2) / sigma`` (Pinsker on the Gaussian KL divergence)
    rather than adding up slot by slot. Multiples of a power-of-two quantum
    (integers below 2^50 times it) so every slot and the zero sum are exact in
    double precision; the owner decodes the slot sum exactly
    (:meth:`KeyOwner.decrypt_raw_sum`), so the mask costs no precision.
    """
    # integers times a power-of-two quantum, so that every value and the zero sum are exact
    quantum = 2.0 ** max(0, math.ceil(math.log2(max(sigma, 1.0))) + 3 - 50)
    k = np.round(rng.normal(0.0, sigma / quantum, SLOTS)).astype(np.int64)
    q, r = divmod(int(k.sum()), SLOTS)
    k -= q
    k[:r] -= 1
    return k.astype(np.float64) * quantum


def effective_mask_bits(query: StatsQuery, moment: str, n_rows: int) -> int:
    """The mask size used on ``moment``: the query's, lowered only as far as the CKKS headroom
    forces (``2^bits * rows per slot * bound <= 2^72``)."""
    per_slot = max(1, -(-n_rows // SLOTS))
    room = int(math.floor(_MAX_MASK_LOG2 - math.log2(per_slot * query.bound(moment))))
    return min(query.mask_bits, room)


def _mask_sigma(query: StatsQuery, moment: str, n_rows: int, floor: int = MASK_BITS_FLOOR) -> float:
    bits = effective_mask_bits(query, moment, n_rows)
    if bits < max(floor, MASK_BITS_FLOOR):
        raise PolicyDenied(f"clip {query.clip} leaves only a {bits}-bit mask on '{moment}' within the "
                           f"CKKS headroom, below the cohort holder's floor {floor} (policy key "
                           "disclosure.stats_mask_bits_min); narrow the clip", where="he-stats")
    return 2.0**bits * max(1, -(-n_rows // SLOTS)) * query.bound(moment)


def mask_security_bits(query: StatsQuery, decrypted_slots: int, n_rows: int = 1) -> float:
    """Statistical hiding (bits) of the cohort holder's masks over a whole job.

    With Gaussian masks of ``sigma = 2^b * bound`` the owner's view of all
    ``S`` decrypted slots is within statistical distance
    ``sqrt(S) * 2^-(b+1)`` of a view that does not depend on the cohort
    (Pinsker: ``SD <= sqrt(KL / 2)``, ``KL = sum v_i^2 / (2 sigma^2)``); ``b``
    is the smallest effective mask over the job's moments.
    """
    b = min(effective_mask_bits(query, m, n_rows) for m in query.moments)
    return b + 1 - 0.5 * math.log2(max(1, decrypted_slots))


def _decrypt_total(key: KeyOwner, blob: bytes, where: str) -> float:
    return key.decrypt_raw_sum(blob, where)


# --------------------------------------------------------------------------
# vertical roles


class DataOwner:
    """The department that holds the values; key holder, decryptor, policy enforcer.

    ``values`` are over the PSI-aligned order (NaN = no value). ``min_cohort``
    (raised by ``query.min_cell``) and ``disclosure`` come from the owner's
    own policy; ``accountant`` is its persistent budget for ``budget_scope``
    (its dataset; default the query scope). With DP on (the default) the
    query's ε is charged in :meth:`hello`, before anything is computed, and
    :class:`PolicyDenied` is raised when the budget cannot pay (nothing is
    sent then). ``history`` is used only when the owner has DP off.
    """

    def __init__(self, query: StatsQuery, values: np.ndarray, *, min_cohort: int = 11,
                 disclosure: Disclosure | None = None, history: ReleaseHistory | None = None,
                 accountant: BudgetAccountant | None = None, budget_scope: str | None = None,
                 prepaid: bool = False) -> None:
        if min_cohort < 1:
            raise ConfigError("min_cohort must be >= 1", where="he-stats")
        self.query = query
        self.values = np.asarray(values, dtype=np.float64)
        self.min_cohort = max(min_cohort, query.min_cell)
        self.disclosure = disclosure if disclosure is not None else Disclosure()
        self.epsilon = self.disclosure.epsilon_for(query)
        if self.epsilon is not None and accountant is None:
            accountant = BudgetAccountant(self.disclosure.budget_epsilon, self.disclosure.budget_period)
        self.history = history if history is not None else ReleaseHistory()
        self.accountant = accountant
        self.budget_scope = budget_scope or query.scope
        self._key = KeyOwner()
        self._tag = job_tag("he-stats", query.job_id)
        self.counts: dict[str, int] | None = None
        self._plan: Plan | None = None
        self._slots = 0
        self._paid = prepaid

    def charge(self) -> float | None:
        """Charge this query's ε to the dataset's budget (once; PolicyDenied when it cannot pay).

        The node calls it before alignment; :meth:`hello` calls it otherwise.
        """
        if self.epsilon is not None and not self._paid:
            assert self.accountant is not None
            self.accountant.charge(self.budget_scope, self.epsilon, self.query.job_id, self.query.requester)
        self._paid = True
        return self.epsilon

    @property
    def key_id(self) -> bytes:
        return self._key.key_id

    def hello(self) -> bytes:
        """Message 1: public context and Enc(moment vectors) over the aligned rows.

        Charges the query's ε first (refused with :class:`PolicyDenied`, having
        computed nothing, when the dataset's budget for the period cannot pay).
        Size: ~0.48 MB context + ``len(moments) * ceil(n/4096)`` ciphertexts of
        ~366 KB. Reveals to C: n (it knows it), the moments asked, the clip
        bounds (public in the manifest).
        """
        q = self.query
        self.charge()
        mom = _moments_of(self.values, q)
        blobs = [self._key.public_bytes()]
        for name in q.moments:
            blobs += self._key.encrypt(mom[name])
        meta = {"n": len(self.values), "moments": list(q.moments),
                "chunks": max(1, -(-len(self.values) // SLOTS))}
        return pack(_MAGIC, _HELLO, self._key.key_id, self._tag, meta, blobs)

    def plan(self, counts_msg: bytes) -> bytes:
        """Message 3: decrypt per-cell counts, apply the cell rules, say what to compute.

        Learns: the count of cohort rows with a value, per group. Reveals to C:
        which cells are computed — with DP a function of noisy counts only.
        """
        w = "he-stats: counts from cohort holder"
        msg = unpack(counts_msg, magic=_MAGIC, kind=_COUNTS, tag=self._tag,
                     key_id=self._key.key_id, where=w)
        labels = msg.meta.get("labels")
        if not isinstance(labels, list) or len(labels) != len(msg.blobs) or TOTAL in labels:
            raise CryptoError("malformed counts message", where=w)
        counts: dict[str, int] = {}
        for lab, blob in zip(labels, msg.blobs, strict=True):
            x = _decrypt_total(self._key, blob, w)
            n = round(x)
            if abs(x - n) > 0.25 or n < 0:
                raise CryptoError(f"count for {lab!r} decrypts to {x!r}, not a count "
                                  "(wrong key or corrupted ciphertext)", where=w)
            counts[str(lab)] = int(n)
        self._slots += len(msg.blobs) * SLOTS
        self.counts = counts
        q = self.query
        if self.epsilon is not None:
            keys = [*counts, TOTAL]
            true = [*counts.values(), sum(counts.values())]
            scale = dp_noise_spec(q, self.epsilon)["count"]["scale"]
            noisy = dict(zip(keys, discrete_laplace(true, scale), strict=True))
            self._plan = plan_noisy(noisy, query=q, min_cell=self.min_cohort)
        else:
            self._plan = plan_cells(counts, query=q, min_cohort=self.min_cohort,
                                    history=self.history.records("*", q.scope))
        return pack(_MAGIC, _PLAN, self._key.key_id, self._tag, {"compute": self._plan.compute}, [])

    def release(self, moments_msg: bytes) -> Release:
        """Decrypt the planned cells, add DP noise, build the release.

        Guarantees: every released number passed the owner's rules; with DP
        every released count and value carries OpenDP discrete Laplace noise
        drawn here, by the owner, under the ε charged in :meth:`hello`.
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
        self._slots += len(msg.blobs) * SLOTS
        total_n = sum(self.counts.values())
        it = iter(msg.blobs)
        raw: dict[str, dict[str, float]] = {}
        for c in plan.compute:
            mom = {"count": float(total_n if c == TOTAL else self.counts[c])}
            for m in value_moments:
                mom[m] = _decrypt_total(self._key, next(it), w)
            raw[c] = mom
        if self.epsilon is not None:
            raw = _noise_moments(q, raw, self.epsilon, plan.counts)
        out = {c: _finish_stats(q, m) for c, m in raw.items()}
        cells: dict[str, dict[str, Any]] = {}
        for c, n in self.counts.items():
            if c in plan.suppressed:
                continue
            cells[c] = out[c] if c in out else _finish_stats(q, _empty(q, n))
        total = out.get(TOTAL) if q.include_total else None
        if self.epsilon is None:
            records = [{"job": q.job_id, "cohort": q.cohort, "cell": c, "count": self.counts[c],
                        "values": cells[c]} for c in cells if self.counts[c] > 0]
            if total is not None:
                records.append({"job": q.job_id, "cohort": q.cohort, "cell": TOTAL,
                                "count": total_n, "values": total})
            rel = [c for c in cells if self.counts[c] > 0]
            if len(rel) >= 2:
                records.append({"job": q.job_id, "cohort": q.cohort, "cell": "+released",
                                "count": sum(self.counts[c] for c in rel), "values": None})
            if records:
                self.history.add("*", q.scope, records)
        return Release(q.job_id, q.scope, q.cohort, cells, total, dict(plan.suppressed),
                       self.epsilon or 0.0, self.min_cohort,
                       NOISE_LABEL if self.epsilon is not None else None,
                       round(mask_security_bits(q, self._slots, len(self.values)), 2),
                       {"parties": [dp_noise_spec(q, self.epsilon)]} if self.epsilon is not None else None)


def _empty(query: StatsQuery, n: int) -> dict[str, float]:
    return {m: 0.0 for m in query.moments} | {"count": float(n)}


def check_mask_floor(query: StatsQuery, mask_bits_min: int) -> None:
    """Refuse (:class:`PolicyDenied`, naming the policy key) masks below the holder's floor."""
    if query.mask_bits < max(mask_bits_min, MASK_BITS_FLOOR):
        raise PolicyDenied(f"mask_bits {query.mask_bits} is below the cohort holder's floor "
                           f"{mask_bits_min} (policy key disclosure.stats_mask_bits_min)", where="he-stats")


class CohortHolder:
    """The department that defines the cohort (group id per aligned row, -1 = out).

    Never decrypts anything; holds only ciphertexts under the owner's key.
    Its indicator vectors enter only as plaintext multipliers, and every
    ciphertext it returns is a sum over all aligned rows plus a fresh
    encryption of an integer Gaussian zero-sum mask (``2^mask_bits`` times
    the slot's bound) and a Gaussian flood of the same size in the imaginary
    parts, so the owner's decryption shows only per-cell totals. Refuses
    (:class:`PolicyDenied`) a query whose masks are below its own floor
    ``mask_bits_min`` (policy key ``stats_mask_bits_min``).
    """

    def __init__(self, query: StatsQuery, codes: np.ndarray, labels: Sequence[str], *,
                 mask_bits_min: int = 40) -> None:
        check_mask_floor(query, mask_bits_min)
        self.mask_bits_min = mask_bits_min
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
            if isinstance(blob, bytes):
                blob = self._cts[moment][k] = pk.load(blob, "he-stats: owner hello")
            # multiply every chunk, even an all-zero one: the noise shape must not depend on the cohort
            prod = blob * part
            acc = prod if acc is None else acc + prod
        sigma = _mask_sigma(self.query, moment, len(self.codes), self.mask_bits_min)
        # a fresh encryption of zero re-randomises the product; the mask rides on a plaintext
        # whose slot sum is checked to be exactly zero
        fresh = pk.load(pk.encrypt(np.zeros(SLOTS))[0], "he-stats")
        out = fresh if acc is None else acc + fresh
        # the imaginary channel carries noise x multipliers of size <= 2^-30 * bound: 2^-20 of the
        # mask is > 2^50 times that
        (ct,) = flood_imaginary(out, sigma * 2.0**-IMAG_FLOOD_BELOW_MASK, self._rng, distribution="gaussian",
                                real=lambda: _zero_sum_mask(self._rng, sigma), exact_real_sum=True,
                                where="he-stats")
        return ciphertext_bytes(ct)

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
        self.planned = list(cells)
        blobs = [self._masked_sum(m, c) for c in cells for m in self.query.moments if m != "count"]
        return pack(_MAGIC, _MOMENTS, self._pk.key_id, self._tag, {"cells": cells}, blobs)


def run_local(query: StatsQuery, codes: np.ndarray, labels: Sequence[str], values: np.ndarray, *,
              min_cohort: int = 11, disclosure: Disclosure | None = None,
              history: ReleaseHistory | None = None, accountant: BudgetAccountant | None = None,
              transcript: list[tuple[str, str, str, bytes]] | None = None,
              owner: DataOwner | None = None) -> Release:
    """Run the vertical protocol in this process (tests, bench), with the owner's defaults
    unless ``disclosure`` says otherwise."""
    disclosure = disclosure if disclosure is not None else Disclosure()
    if owner is None:
        owner = DataOwner(query, values, min_cohort=min_cohort, disclosure=disclosure, history=history,
                          accountant=accountant)
    holder = CohortHolder(query, codes, labels, mask_bits_min=disclosure.mask_bits_min)

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
    (the coordinator, see :func:`combine`). Sees total counts per cell —
    noisy when every region has DP on (the default) — and value totals only
    of cells that pass the rules; never a region's part. ``min_cohort``
    should be the largest of the regions' (they send theirs; the larger wins).
    """

    def __init__(self, query: StatsQuery, labels: Sequence[str], *, min_cohort: int,
                 history: ReleaseHistory | None = None) -> None:
        self.query = query
        self.labels = [str(x) for x in labels]
        self.min_cohort = max(min_cohort, query.min_cell)
        self.history = history if history is not None else ReleaseHistory()
        self._key = KeyOwner()
        self._tag = job_tag("he-stats-h", query.job_id)
        self.counts: dict[str, int] | None = None
        self._plan: Plan | None = None
        self._dp = False

    def hello(self) -> bytes:
        """Public context for the regions (~0.48 MB)."""
        return pack(_MAGIC, _HELLO, self._key.key_id, self._tag, {"labels": self.labels},
                    [self._key.public_bytes()])

    def _vector(self, msg_bytes: bytes, phase: int, where: str) -> tuple[np.ndarray, dict[str, Any]]:
        msg = unpack(msg_bytes, magic=_MAGIC, kind=_REGION, tag=self._tag,
                     key_id=self._key.key_id, where=where)
        if msg.meta.get("phase") != phase or len(msg.blobs) != 1:
            raise CryptoError("unexpected combined message", where=where)
        return self._key.decrypt_raw(msg.blobs[0], where), msg.meta

    def plan(self, combined_counts: bytes) -> bytes:
        w = "he-stats-h: combined counts"
        vec, meta = self._vector(combined_counts, 1, w)
        self.min_cohort = max(self.min_cohort, int(meta.get("min_cohort", 0)))
        self._dp = bool(meta.get("dp_all", False))
        counts = {}
        for g, lab in enumerate(self.labels):
            n = round(vec[g])
            if abs(vec[g] - n) > 0.25 or (n < 0 and not self._dp):
                raise CryptoError(f"count for {lab!r} is not a count (wrong key?)", where=w)
            counts[lab] = int(n)
        self.counts = counts
        q = self.query
        if self._dp:
            # noisy per-region counts summed: the total count is their sum (post-processing)
            self._plan = plan_noisy({**counts, TOTAL: sum(counts.values())}, query=q,
                                    min_cell=self.min_cohort)
        else:
            self._plan = plan_cells({k: max(0, v) for k, v in counts.items()}, query=q,
                                    min_cohort=self.min_cohort, history=self.history.records("*", q.scope))
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
            if self._dp:
                raw[c]["count"] = float(plan.counts[c])
        out = {c: _finish_stats(q, m) for c, m in raw.items()}
        cells = {c: (out[c] if c in out else _finish_stats(q, _empty(q, n)))
                 for c, n in self.counts.items() if c not in plan.suppressed}
        total = out.get(TOTAL) if q.include_total else None
        if not self._dp:
            records = [{"job": q.job_id, "cohort": q.cohort, "cell": c, "count": self.counts[c],
                        "values": cells[c]} for c in cells if self.counts[c] > 0]
            if total is not None:
                records.append({"job": q.job_id, "cohort": q.cohort, "cell": TOTAL,
                                "count": sum(self.counts.values()), "values": total})
            if records:
                self.history.add("*", q.scope, records)
        eps = float(meta.get("epsilon", 0.0))
        dp_noise = None
        epsilons = [float(e) for e in meta.get("epsilons", []) if float(e) > 0]
        if self._dp and epsilons:  # each region noised its own part with its own ε
            dp_noise = {"parties": [dp_noise_spec(q, e) for e in epsilons], "total_count_cells": len(self.labels)}
        return Release(q.job_id, q.scope, q.cohort, cells, total, dict(plan.suppressed), eps,
                       self.min_cohort, NOISE_LABEL if self._dp else None, dp_noise=dp_noise)


class Region:
    """A regional node holding the field for its own residents.

    ``codes`` are local group ids (-1 = not in the cohort by the manifest's
    filter), ``values`` the field (NaN = missing). Sends only encrypted
    per-cell vectors with an imaginary-part flood. With DP on (its own
    ``disclosure``, default on) it charges the query's ε to its own dataset
    budget (``budget_scope``) *before* computing anything — refused with
    :class:`PolicyDenied` when spent — and noises its own counts (phase 1)
    and moments (phase 2) with OpenDP discrete Laplace: the key holder only
    ever sees sums of noisy parts.
    """

    def __init__(self, name: str, query: StatsQuery, codes: np.ndarray, labels: Sequence[str],
                 values: np.ndarray, *, min_cohort: int, disclosure: Disclosure | None = None,
                 accountant: BudgetAccountant | None = None, budget_scope: str | None = None) -> None:
        self.name = name
        self.query = query
        self.codes = np.asarray(codes, dtype=np.int64)
        self.labels = [str(x) for x in labels]
        self.values = np.asarray(values, dtype=np.float64)
        self.min_cohort = min_cohort
        self.disclosure = disclosure if disclosure is not None else Disclosure()
        self.epsilon = self.disclosure.epsilon_for(query)
        if self.epsilon is not None and accountant is None:
            accountant = BudgetAccountant(self.disclosure.budget_epsilon, self.disclosure.budget_period)
        self.accountant = accountant
        self.budget_scope = budget_scope or query.scope
        self._tag = job_tag("he-stats-h", query.job_id)
        self._pk: PublicKey | None = None
        self._rng = _rng()
        self._noisy_counts: dict[str, int] = {}

    def _send(self, vec: list[float], meta: dict[str, Any]) -> bytes:
        assert self._pk is not None
        ct = self._pk.load(self._pk.encrypt(np.asarray(vec))[0], self.name)
        # a fresh encryption's imaginary part is noise of ~2^-30, independent of vec: flood at 2^10
        (raw,) = flood_imaginary(ct, 2.0**REGION_IMAG_FLOOD_LOG2, self._rng, distribution="gaussian",
                                 exact_real_sum=True, where="he-stats-h")
        return pack(_MAGIC, _REGION, self._pk.key_id, self._tag, meta, [ciphertext_bytes(raw)])

    def counts(self, hello: bytes) -> bytes:
        w = f"he-stats-h: hello at {self.name}"
        msg = unpack(hello, magic=_MAGIC, kind=_HELLO, tag=self._tag, key_id=None, where=w)
        pk = PublicKey(msg.blobs[0], where=w)
        if pk.key_id != msg.key_id or msg.meta.get("labels") != self.labels:
            raise CryptoError("hello does not match this job", where=w)
        q = self.query
        if self.epsilon is not None:
            assert self.accountant is not None
            self.accountant.charge(self.budget_scope, self.epsilon, q.job_id, q.requester)
        self._pk = pk
        mom = _moments_of(self.values, q)["count"]
        vec = [int(mom[self.codes == g].sum()) for g in range(len(self.labels))]
        if self.epsilon is not None:
            vec = discrete_laplace(vec, dp_noise_spec(q, self.epsilon)["count"]["scale"])
        self._noisy_counts = dict(zip(self.labels, vec, strict=True))
        meta = {"phase": 1, "min_cohort": self.min_cohort, "regions": [self.name],
                "dp": self.epsilon is not None}
        return self._send([float(v) for v in vec], meta)

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
        mom = _moments_of(self.values, q)
        raw: dict[str, dict[str, float]] = {}
        for c in cells:
            sel = self.codes >= 0 if c == TOTAL else self.codes == self.labels.index(c)
            raw[c] = {k: float(v[sel].sum()) for k, v in mom.items()}
        if self.epsilon is not None:
            noisy = {**self._noisy_counts, TOTAL: sum(self._noisy_counts.values())}
            raw = _noise_moments(q, raw, self.epsilon, noisy)
        out: list[float] = []
        for c in cells:
            out += [raw[c][k] for k in q.moments]
        meta = {"phase": 2, "epsilon": self.epsilon or 0.0, "regions": [self.name]}
        return self._send(out, meta)


def combine(job_id: str, hello: bytes, parts: Sequence[bytes]) -> bytes:
    """Add the regions' ciphertexts (run by a party other than the key holder).

    Checks that every part is for this job and under the hello's key; outputs
    one ciphertext. The combiner learns nothing (it holds no secret key);
    ``min_cohort`` in the output is the largest any region asked for, ``epsilon``
    the largest any region spent (each region accounts its own; ``epsilons`` each
    region's, for the release's DP error), ``dp_all``
    whether every region noised its part.
    """
    tag = job_tag("he-stats-h", job_id)
    h = unpack(hello, magic=_MAGIC, kind=_HELLO, tag=tag, key_id=None, where="combiner")
    pk = PublicKey(h.blobs[0], where="combiner")
    if not parts:
        raise FedgovError("nothing to combine", where="combiner")
    phase = None
    regions: list[str] = []
    blobs: list[bytes] = []
    mc, eps, dp_all = 0, 0.0, True
    epsilons: list[float] = []
    for i, p in enumerate(parts):
        msg = unpack(p, magic=_MAGIC, kind=_REGION, tag=tag, key_id=pk.key_id,
                     where=f"combiner: part {i}")
        if phase is None:
            phase = msg.meta.get("phase")
        elif msg.meta.get("phase") != phase:
            raise CryptoError("parts from different phases", where="combiner")
        if len(msg.blobs) != 1:
            raise CryptoError("a part must carry one ciphertext", where=f"combiner: part {i}")
        blobs.append(msg.blobs[0])
        regions += list(msg.meta.get("regions", []))
        mc = max(mc, int(msg.meta.get("min_cohort", 0)))
        eps = max(eps, float(msg.meta.get("epsilon", 0.0)))
        epsilons += [float(msg.meta.get("epsilon", 0.0))] * len(msg.meta.get("regions", []))
        dp_all = dp_all and bool(msg.meta.get("dp", phase != 1))
    if len(set(regions)) != len(regions):
        raise CryptoError("a region contributed twice", where="combiner")
    meta = {"phase": phase, "min_cohort": mc, "epsilon": eps, "epsilons": epsilons, "regions": regions,
            "dp_all": dp_all}
    return pack(_MAGIC, _REGION, pk.key_id, tag, meta, [pk.add_raw(blobs, "combiner")])


def run_local_horizontal(query: StatsQuery, labels: Sequence[str],
                         regions: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                         min_cohort: int = 11, history: ReleaseHistory | None = None,
                         disclosure: Disclosure | None = None,
                         accountants: Mapping[str, BudgetAccountant] | None = None) -> Release:
    """Run the horizontal protocol in this process; ``regions[name] = (codes, values)``."""
    kh = RegionKeyHolder(query, labels, min_cohort=min_cohort, history=history)
    rs = [Region(n, query, c, labels, v, min_cohort=min_cohort, disclosure=disclosure,
                 accountant=(accountants or {}).get(n)) for n, (c, v) in regions.items()]
    hello = kh.hello()
    plan = kh.plan(combine(query.job_id, hello, [r.counts(hello) for r in rs]))
    return kh.release(combine(query.job_id, hello, [r.moments(plan) for r in rs]))
