"""Contribution points: a deterministic, versioned function of ledger entries.

Anyone holding the log recomputes the same numbers: :func:`compute_points`
reads only :class:`~fedgov.ledger.entries.Entry` objects, in log order, and a
:class:`PointsRules` whose canonical SHA-256 (:meth:`PointsRules.digest`) is
published in the log (``points_rules`` entry) and named by every
``points_awarded`` entry. See ``docs/points.md`` for the rules and a worked
example.

Per job that **succeeded**, completed inside the period, and is **joint**
(at least ``min_participants`` participants):

* **data term** for each participant's first ``contribution`` entry:
  ``records × len(fields) × quality × points_per_record_field``, where
  ``quality`` is the ``overall`` score of the latest ``dataset_published``
  entry for that node and dataset *before* the contribution
  (``unpublished_quality`` if none), raised to ``quality_exponent``.
  Anti-gaming: the contribution counts only if the node is a participant named
  in the ``job_submitted`` entry, approved the job (``job_approved``), uses the
  dataset the manifest named and a subset of its fields; ``records`` is capped
  at the dataset's published row count.
* **model term** from the job's first ``model_contribution`` entry: the exact
  Shapley value of each participant's features on the held-out metric,
  ``max(round(φ, shapley_decimals), 0) × model_points_per_unit``, when every ``2**n`` coalition of
  participants is present; when the entry holds exactly the **leave-one-out
  family** (the full set and every set missing one participant, as
  horizontal FL measures it — a one-region model would expose that region's
  updates), the leave-one-out drop ``v(N) − v(N∖{i})`` instead,
  ``max(drop, 0) × leave_one_out_points_per_unit``. Counted only if the
  entry's ``validation`` set is the one named in ``job_submitted`` (not
  empty) and the participant also has a counted data contribution to the job
  (points only for data that entered).
* **negative contributions earn nothing**: a participant whose model value
  (Shapley value or leave-one-out drop) in that job is negative gets no model
  points and its data term for that job is multiplied by
  ``negative_model_value_data_factor`` (0 by default: the data made the model
  worse, so it earns nothing for that job).

Floating-point arithmetic is done in a fixed order (log order, sorted names,
:func:`math.fsum`), and totals are rounded to :data:`DECIMALS` places, so the
result is bit-for-bit reproducible on IEEE-754 machines.
"""

from __future__ import annotations

import calendar
import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from decimal import ROUND_FLOOR, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from fedgov.errors import ConfigError, FedgovError
from fedgov.ledger.entries import Entry, canonical_json, parse_coalition_key
from fedgov.ledger.entries import points_awarded as _points_awarded_entry
from fedgov.ledger.entries import points_rules as _points_rules_entry

__all__ = [
    "DECIMALS",
    "MAX_PLAYERS",
    "Period",
    "PointsBreakdown",
    "PointsRow",
    "PointsRules",
    "award_entry",
    "coalition_values",
    "compute_points",
    "points_report",
    "render_csv",
    "render_json",
    "render_png",
    "render_table",
    "rules_entry",
    "shapley_values",
    "verify_awards",
]

DECIMALS = 6
#: Exact Shapley enumerates 2**n coalitions; beyond this it is refused.
MAX_PLAYERS = 12


# -------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class PointsRules:
    """A versioned rule set; its canonical JSON hash is recorded in the log."""

    version: str = "1"
    points_per_record_field: float = 0.01
    min_participants: int = 2
    unpublished_quality: float = 0.0
    quality_exponent: float = 1.0
    model_points_per_unit: float = 10_000.0
    #: 0 in rule sets published before the leave-one-out term existed (see from_dict)
    leave_one_out_points_per_unit: float = 10_000.0
    #: factor on a participant's data term in a job whose counted model
    #: contribution gives it a negative value (it made the model worse): 0, a
    #: negative contribution earns nothing for that job. 1 in rule sets
    #: published before this rule existed (see from_dict).
    negative_model_value_data_factor: float = 0.0
    #: Shapley values are rounded to this many decimals (the held-out metric's
    #: published resolution) before they earn points or count as negative:
    #: differences below it are CKKS / flooding noise, not contribution. -1 (no
    #: rounding) in rule sets published before this rule existed.
    shapley_decimals: int = 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (every field, stable key set)."""
        return asdict(self)

    def digest(self) -> str:
        """SHA-256 hex of the canonical JSON of :meth:`to_dict`."""
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PointsRules:
        """Strict inverse of :meth:`to_dict`: unknown or mistyped keys raise :class:`ConfigError`.

        A rule set published before ``leave_one_out_points_per_unit`` existed
        reads as 0 for it, one before ``negative_model_value_data_factor`` as 1
        and one before ``shapley_decimals`` as -1, so its old awards recompute unchanged.
        """
        known = {f.name: f for f in fields(cls)}
        d = {"leave_one_out_points_per_unit": 0.0, "negative_model_value_data_factor": 1.0,
             "shapley_decimals": -1, **d}
        for key in d:
            if key not in known:
                raise ConfigError(f"unknown key {key!r}", where="points rules")
        kwargs: dict[str, Any] = {}
        for name, value in d.items():
            default = getattr(cls(), name)
            ok = (
                isinstance(value, str)
                if isinstance(default, str)
                else isinstance(value, int) and not isinstance(value, bool)
                if isinstance(default, int)
                else isinstance(value, int | float) and not isinstance(value, bool)
            )
            if not ok:
                raise ConfigError(f"{name}: wrong type {type(value).__name__}", where="points rules")
            kwargs[name] = value
        return cls(**kwargs)


def rules_entry(rules: PointsRules, *, ts: int | None = None) -> Entry:
    """The ``points_rules`` entry that publishes ``rules`` (its digest = :meth:`PointsRules.digest`)."""
    return _points_rules_entry(rules.version, rules.to_dict(), ts=ts)


# ------------------------------------------------------------------------- period

_MS_DAY = 86_400_000


def _ms(d: date) -> int:
    return calendar.timegm(d.timetuple()) * 1000


@dataclass(frozen=True)
class Period:
    """A half-open UTC time window ``[start_ms, end_ms)`` with its label."""

    label: str
    start_ms: int
    end_ms: int

    def __contains__(self, ts: int) -> bool:
        return self.start_ms <= ts < self.end_ms

    @classmethod
    def parse(cls, text: str) -> Period:
        """Parse ``all``, ``2024``, ``2024-Q2``, ``2024-06`` or ``2024-01-01..2024-03-31`` (inclusive).

        Raises :class:`ConfigError` naming the accepted forms.
        """
        t = text.strip()
        try:
            if t == "all":
                return cls(t, 0, 2**63 - 1)
            if m := re.fullmatch(r"(\d{4})", t):
                y = int(m[1])
                return cls(t, _ms(date(y, 1, 1)), _ms(date(y + 1, 1, 1)))
            if m := re.fullmatch(r"(\d{4})-Q([1-4])", t):
                y, q = int(m[1]), int(m[2])
                end = date(y + 1, 1, 1) if q == 4 else date(y, 3 * q + 1, 1)
                return cls(t, _ms(date(y, 3 * q - 2, 1)), _ms(end))
            if m := re.fullmatch(r"(\d{4})-(\d{2})", t):
                y, mo = int(m[1]), int(m[2])
                end = date(y + 1, 1, 1) if mo == 12 else date(y, mo + 1, 1)
                return cls(t, _ms(date(y, mo, 1)), _ms(end))
            if m := re.fullmatch(r"(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})", t):
                a, b = date.fromisoformat(m[1]), date.fromisoformat(m[2])
                if b < a:
                    raise ValueError("end before start")
                return cls(t, _ms(a), _ms(b) + _MS_DAY)
        except ValueError as exc:
            raise ConfigError(f"invalid period {text!r}: {exc}", where="period") from None
        raise ConfigError(
            f"invalid period {text!r}; expected all, YYYY, YYYY-Qn, YYYY-MM or YYYY-MM-DD..YYYY-MM-DD",
            where="period",
        )


def _period(p: Period | str) -> Period:
    return p if isinstance(p, Period) else Period.parse(p)


# ------------------------------------------------------------------------ Shapley

Value = float | int | Fraction


def coalition_values(
    players: Iterable[str], coalition_metric: Callable[[frozenset[str]], float]
) -> dict[frozenset[str], float]:
    """Evaluate ``coalition_metric`` once on each of the ``2**n`` coalitions."""
    ps = sorted(set(players))
    if len(ps) > MAX_PLAYERS:
        raise FedgovError(f"{len(ps)} players: exact Shapley is limited to {MAX_PLAYERS}", where="shapley")
    out: dict[frozenset[str], float] = {}
    for mask in range(1 << len(ps)):
        c = frozenset(p for i, p in enumerate(ps) if mask >> i & 1)
        out[c] = coalition_metric(c)
    return out


def shapley_values(
    players: Iterable[str],
    value: Callable[[frozenset[str]], Value] | Mapping[frozenset[str], Value],
) -> dict[str, Value]:
    """Exact Shapley value of each player for the game ``value``.

    ``φ_i = Σ_{S ⊆ N∖{i}} |S|! (n-|S|-1)! / n! · (v(S ∪ {i}) − v(S))``, enumerating
    all ``2**n`` coalitions (``n ≤`` :data:`MAX_PLAYERS`). ``value`` is either a
    callable (called once per coalition) or a mapping that must hold every
    coalition (:class:`FedgovError` names a missing one). With int/Fraction
    values the result is exact Fractions; with floats every sum is
    :func:`math.fsum` (correctly rounded), so ``Σ φ_i = v(N) − v(∅)`` holds up to
    one rounding per player.
    """
    ps = sorted(set(players))
    n = len(ps)
    if n > MAX_PLAYERS:
        raise FedgovError(f"{n} players: exact Shapley is limited to {MAX_PLAYERS}", where="shapley")
    v: dict[int, Value] = {}
    for mask in range(1 << n):
        c = frozenset(p for i, p in enumerate(ps) if mask >> i & 1)
        if callable(value):
            v[mask] = value(c)
        else:
            if c not in value:
                raise FedgovError(f"missing value of coalition {sorted(c)}", where="shapley")
            v[mask] = value[c]
    exact = all(isinstance(x, int | Fraction) and not isinstance(x, bool) for x in v.values())
    nfact = math.factorial(n)
    weights = [math.factorial(s) * math.factorial(n - s - 1) for s in range(n)]
    out: dict[str, Value] = {}
    for i, p in enumerate(ps):
        bit = 1 << i
        terms: list[Value] = []
        for mask in range(1 << n):
            if mask & bit:
                continue
            w = weights[mask.bit_count()]
            terms.append(
                w * (Fraction(v[mask | bit]) - Fraction(v[mask])) if exact else w * (v[mask | bit] - v[mask])
            )
        out[p] = sum(terms, Fraction(0)) / nfact if exact else math.fsum(terms) / nfact  # type: ignore[arg-type]
    return out


# ------------------------------------------------------------------------- points


@dataclass
class PointsBreakdown:
    """One department's points: data term, model term and their total."""

    data: float = 0.0
    model: float = 0.0
    records: int = 0
    jobs: list[str] = field(default_factory=list)
    #: job -> {"data": term, "model": term} (before rounding of the totals)
    terms: dict[str, dict[str, float]] = field(default_factory=dict)
    #: job -> the log indices of the entries each term rests on (with ``indices``)
    sources: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total(self) -> float:
        """``round(data + model, DECIMALS)``."""
        return round(self.data + self.model, DECIMALS)


@dataclass
class _Job:
    submitted: Entry
    approvals: set[str] = field(default_factory=set)
    contributions: dict[str, tuple[Entry, float, int | None]] = field(default_factory=dict)
    model: Entry | None = None
    completed: Entry | None = None



#: every entry type :func:`compute_points` and :func:`verify_awards` read; the
#: others (job_started, key statements, ...) never change a figure, so a
#: reader may fetch only these through the log's type index
#: (tests/test_points.py::test_only_the_listed_entry_types_move_points).
ENTRY_TYPES = frozenset(
    {
        "node_registered",
        "dataset_published",
        "job_submitted",
        "job_approved",
        "contribution",
        "model_contribution",
        "job_completed",
        "points_rules",
        "points_awarded",
    }
)

def compute_points(
    entries: Iterable[Entry],
    period: Period | str,
    rules: PointsRules | None = None,
    *,
    notes: list[str] | None = None,
    indices: Sequence[int] | None = None,
) -> dict[str, PointsBreakdown]:
    """Points per department for jobs completed inside ``period`` (see the module docstring).

    Every registered node and every node that earned points has a row (sorted by
    name). Entries that were ignored and why are appended to ``notes`` when given.
    Each row's ``terms`` give every job's data and model term; with ``indices``
    (the log index of each entry) its ``sources`` name the entries behind them:
    the job's submission and completion, the contribution, the dataset
    publication whose quality it used and the model contribution.
    """
    rules = rules or PointsRules()
    per = _period(period)
    say = notes.append if notes is not None else (lambda _s: None)
    nodes: set[str] = set()
    published: dict[tuple[str, str], tuple[float, int]] = {}
    published_at: dict[tuple[str, str], int] = {}
    where: dict[int, int] = {}
    jobs: dict[str, _Job] = {}
    for k, e in enumerate(entries):
        if indices is not None:
            where[id(e)] = indices[k]
        t = e.type
        if t == "node_registered":
            nodes.add(e["node"])
        elif t == "dataset_published":
            q = e["quality"].get("overall", rules.unpublished_quality)
            published[(e["node"], e["dataset"])] = (min(max(float(q), 0.0), 1.0), e["rows"])
            if indices is not None:
                published_at[(e["node"], e["dataset"])] = indices[k]
        elif t == "job_submitted":
            if e["job"] in jobs:
                say(f"job {e['job']}: submitted twice; the first submission counts")
                continue
            jobs[e["job"]] = _Job(submitted=e)
        elif t in ("job_approved", "contribution", "model_contribution", "job_completed"):
            job = jobs.get(e["job"])
            if job is None:
                say(f"job {e['job']}: {t} before job_submitted; ignored")
                continue
            if job.completed is not None:
                say(f"job {e['job']}: {t} after completion; ignored")
                continue
            if t == "job_approved":
                job.approvals.add(e["node"])
            elif t == "contribution":
                if e["node"] in job.contributions:
                    say(f"job {e['job']}: second contribution from {e['node']} ignored")
                    continue
                q, rows = published.get((e["node"], e["dataset"]), (rules.unpublished_quality, None))
                job.contributions[e["node"]] = (e, q, rows)
                if (e["node"], e["dataset"]) in published_at:
                    where[-id(e)] = published_at[(e["node"], e["dataset"])]
            elif t == "model_contribution":
                if job.model is None:
                    job.model = e
                else:
                    say(f"job {e['job']}: second model_contribution ignored")
            else:
                job.completed = e
    result: dict[str, PointsBreakdown] = {n: PointsBreakdown() for n in sorted(nodes)}
    data_terms: dict[str, list[float]] = {}
    model_terms: dict[str, list[float]] = {}
    for name in sorted(jobs):
        job = jobs[name]
        done = job.completed
        if done is None or done["outcome"] != "succeeded" or done.ts not in per:
            continue
        parts: Mapping[str, Any] = job.submitted["participants"]
        if len(parts) < rules.min_participants:
            say(f"job {name}: {len(parts)} participant(s), fewer than {rules.min_participants}; no points")
            continue
        job_data: dict[str, float] = {}
        for node in sorted(job.contributions):
            c, q, rows = job.contributions[node]
            why = _contribution_problem(c, parts, job.approvals)
            if why:
                say(f"job {name}: contribution from {node} not counted: {why}")
                continue
            records = c["records"] if rows is None else min(c["records"], rows)
            if rows is not None and c["records"] > rows:
                say(f"job {name}: {node} claimed {c['records']} records, capped at {rows} published rows")
            job_data[node] = (
                records * len(c["fields"]) * (q**rules.quality_exponent) * rules.points_per_record_field
            )
            bd = result.setdefault(node, PointsBreakdown())
            bd.records += records
            bd.jobs.append(name)
            if indices is not None:
                bd.sources[name] = sorted(
                    where[x] for x in (id(job.submitted), id(done), id(c), -id(c)) if x in where
                )
        if job.model is not None:
            values = _model_values(name, job, parts, set(job_data), rules, say)
            for node, (value, unit) in sorted(values.items()):
                model_terms.setdefault(node, []).append(max(value, 0.0) * unit)
                result[node].terms.setdefault(name, {})["model"] = max(value, 0.0) * unit
                if indices is not None and id(job.model) in where:
                    result[node].sources[name] = sorted({*result[node].sources.get(name, []), where[id(job.model)]})
                if value < 0 and rules.negative_model_value_data_factor != 1.0:
                    say(f"job {name}: {node} made the model worse ({value:+.6f}); data term "
                        f"x {rules.negative_model_value_data_factor}")
                    job_data[node] *= rules.negative_model_value_data_factor
        for node, pts in job_data.items():
            data_terms.setdefault(node, []).append(pts)
            result[node].terms.setdefault(name, {})["data"] = pts
    for node, terms in data_terms.items():
        result[node].data = round(math.fsum(terms), DECIMALS)
    for node, terms in model_terms.items():
        result.setdefault(node, PointsBreakdown()).model = round(math.fsum(terms), DECIMALS)
    return dict(sorted(result.items()))


def _contribution_problem(c: Entry, parts: Mapping[str, Any], approvals: set[str]) -> str | None:
    node = c["node"]
    if node not in parts:
        return "not a participant named in the submitted job"
    if node not in approvals:
        return "the node never approved the job"
    want = parts[node]
    if c["dataset"] != want["dataset"]:
        return f"dataset {c['dataset']!r} is not the one the job named ({want['dataset']!r})"
    extra = sorted(set(c["fields"]) - set(want["fields"]))
    if extra:
        return f"fields {extra} were not requested by the job"
    return None


def _model_values(
    name: str,
    job: _Job,
    parts: Mapping[str, Any],
    counted: set[str],
    rules: PointsRules,
    say: Callable[[str], Any],
) -> dict[str, tuple[float, float]]:
    """Per counted participant ``(value, points per unit)``: its Shapley value or
    leave-one-out drop (may be negative) and the rule's unit for that method."""
    m = job.model
    assert m is not None
    named = job.submitted["validation"]
    if not named or m["validation"] != named:
        say(
            f"job {name}: model contribution on validation set {m['validation']!r}, job named {named!r}; ignored"
        )
        return {}
    coalitions = {parse_coalition_key(k): float(v) for k, v in m["coalitions"].items()}
    players = sorted(set().union(*coalitions) if coalitions else set())
    if not players or not set(players) <= set(parts):
        say(
            f"job {name}: model contribution names non-participants {sorted(set(players) - set(parts))}; ignored"
        )
        return {}
    full = frozenset(players)
    loo = {full, *(full - {p} for p in players)}
    if len(players) <= MAX_PLAYERS and len(coalitions) == 1 << len(players):
        phi = shapley_values(players, coalitions)
        method, unit = "Shapley value", rules.model_points_per_unit
    elif len(players) >= 2 and set(coalitions) == loo:
        phi = {p: coalitions[full] - coalitions[full - {p}] for p in players}
        method, unit = "leave-one-out value", rules.leave_one_out_points_per_unit
    else:
        say(
            f"job {name}: model contribution holds neither all {2 ** len(players)} coalitions nor "
            "the leave-one-out family; ignored"
        )
        return {}
    out: dict[str, tuple[float, float]] = {}
    for p in players:
        if p not in counted:
            say(f"job {name}: {p} has a {method} but no counted data contribution; no model points")
            continue
        value = float(phi[p])
        if method == "Shapley value" and rules.shapley_decimals >= 0:
            value = round(value, rules.shapley_decimals) + 0.0  # + 0.0: no -0.0
        out[p] = (value, unit)
    return out


# ------------------------------------------------------------- awards and checks


def award_entry(
    entries: Sequence[Entry], period: Period | str, rules: PointsRules, *, ts: int | None = None
) -> Entry:
    """The ``points_awarded`` entry for ``period`` computed from ``entries`` (the log so far)."""
    per = _period(period)
    pts = compute_points(entries, per, rules)
    return _points_awarded_entry(per.label, rules.digest(), {n: b.total for n, b in pts.items()}, ts=ts)


def verify_awards(entries: Sequence[Entry], indices: Sequence[int] | None = None) -> list[str]:
    """Recompute every ``points_awarded`` entry from the entries before it.

    Returns one line per problem (empty list: every award recomputes exactly),
    each naming the entry's log index (``indices[k]`` for ``entries[k]`` when
    given, else ``k``): unknown rules digest, or a department whose recorded
    points differ from the recomputation.
    """
    problems: list[str] = []
    rules_by_digest: dict[str, PointsRules] = {}
    for k, e in enumerate(entries):
        i = indices[k] if indices is not None else k
        if e.type == "points_rules":
            try:
                rules_by_digest[e["digest"]] = PointsRules.from_dict(e["rules"])
            except ConfigError as exc:
                problems.append(f"entry {i}: points rules cannot be loaded: {exc}")
        elif e.type == "points_awarded":
            rules = rules_by_digest.get(e["rules_digest"])
            if rules is None:
                problems.append(
                    f"entry {i}: points awarded under rules {e['rules_digest'][:12]}… never published"
                )
                continue
            try:
                recomputed = {n: b.total for n, b in compute_points(entries[:k], e["period"], rules).items()}
            except ConfigError as exc:
                problems.append(f"entry {i}: {exc}")
                continue
            recorded = dict(e["points"])
            for dept in sorted(set(recomputed) | set(recorded)):
                a, b = recorded.get(dept), recomputed.get(dept)
                if a != b:
                    problems.append(
                        f"entry {i}: points for {dept} in period {e['period']} recorded {a}, recomputed {b}"
                    )
    return problems


# ------------------------------------------------------------------------- report


@dataclass(frozen=True)
class PointsRow:
    """One line of the points report."""

    dept: str
    points: float
    share: float
    budget_amount: Decimal
    rank: int
    data_points: float
    model_points: float
    records: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; ``budget_amount`` as a decimal string (exact cents)."""
        d = asdict(self)
        d["budget_amount"] = str(self.budget_amount)
        return d


def points_report(
    entries: Iterable[Entry],
    period: Period | str,
    budget: Decimal | float | int | str,
    rules: PointsRules | None = None,
) -> list[PointsRow]:
    """Rows ``(dept, points, share, budget_amount, rank)`` ordered by rank, then name.

    Every node that published a dataset or earned points has a row (so a
    data-less arbiter with 0 points has none).

    ``share = points / Σ points`` (0 when nobody earned points). The budget is
    split in exact cents by the largest-remainder method, so the amounts add up
    to the budget exactly (ties broken by name). Ranks are competition ranks
    (equal points share a rank; 1, 1, 3).
    """
    pool = Decimal(str(budget))
    if pool < 0:
        raise ConfigError(f"budget must not be negative, got {pool}", where="points report")
    entries = list(entries)
    pts = compute_points(entries, period, rules)
    # a node that never published a dataset (an arbiter, a key holder) and
    # earned nothing is not a contributor: no row
    publishers = {e["node"] for e in entries if e.type == "dataset_published"}
    pts = {n: b for n, b in pts.items() if n in publishers or b.total != 0 or b.records}
    total = math.fsum(b.total for b in pts.values())
    order = sorted(pts, key=lambda n: (-pts[n].total, n))
    cents = int((pool * 100).to_integral_value(rounding=ROUND_FLOOR))
    alloc: dict[str, int] = {n: 0 for n in pts}
    if total > 0:
        exact = {n: Fraction(pts[n].total) / Fraction(total) * cents for n in pts}
        alloc = {n: math.floor(x) for n, x in exact.items()}
        left = cents - sum(alloc.values())
        for n in sorted(pts, key=lambda n: (-(exact[n] - alloc[n]), n))[:left]:
            alloc[n] += 1
    rows: list[PointsRow] = []
    rank = 0
    prev: float | None = None
    for pos, n in enumerate(order, start=1):
        b = pts[n]
        if b.total != prev:
            rank, prev = pos, b.total
        rows.append(
            PointsRow(
                dept=n,
                points=b.total,
                share=round(b.total / total, DECIMALS) if total > 0 else 0.0,
                budget_amount=Decimal(alloc[n]) / 100,
                rank=rank,
                data_points=b.data,
                model_points=b.model,
                records=b.records,
            )
        )
    return rows


def render_table(rows: Sequence[PointsRow]) -> str:
    """A fixed-width text table (one header line, one line per department)."""
    head = ("rank", "department", "points", "data", "model", "records", "share", "budget")
    body = [
        (
            str(r.rank),
            r.dept,
            f"{r.points:,.2f}",
            f"{r.data_points:,.2f}",
            f"{r.model_points:,.2f}",
            f"{r.records:,}",
            f"{r.share:.2%}",
            f"{r.budget_amount:,.2f}",
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = []
    for k, row in enumerate([head, *body]):
        cells = [
            c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def render_csv(rows: Sequence[PointsRow]) -> str:
    """CSV with a header: dept, points, share, budget_amount, rank, data_points, model_points, records."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ["dept", "points", "share", "budget_amount", "rank", "data_points", "model_points", "records"]
    w.writerow(cols)
    for r in rows:
        d = r.to_dict()
        w.writerow([d[c] for c in cols])
    return buf.getvalue()


def render_json(
    rows: Sequence[PointsRow], *, period: str | None = None, rules: PointsRules | None = None
) -> str:
    """One JSON object: ``{"period", "rules_digest", "rows": [...]}`` (sorted keys)."""
    doc: dict[str, Any] = {"rows": [r.to_dict() for r in rows]}
    if period is not None:
        doc["period"] = period
    doc["rules_digest"] = (rules or PointsRules()).digest()
    return json.dumps(doc, sort_keys=True, ensure_ascii=False)


def render_png(rows: Sequence[PointsRow], path: Path, *, title: str = "Contribution points") -> Path:
    """Bar chart of points per department (data and model stacked) written to ``path``.

    Needs matplotlib, imported only here; without it raises :class:`ConfigError`
    saying how to install it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "the PNG chart needs matplotlib (pip install matplotlib); use table, CSV or JSON output instead",
            where="points chart",
        ) from None
    names = [r.dept for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.0))
    ax.bar(names, [r.data_points for r in rows], label="data")
    ax.bar(names, [r.model_points for r in rows], bottom=[r.data_points for r in rows], label="model")
    for i, r in enumerate(rows):
        ax.annotate(f"{r.share:.1%}", (i, r.points), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("points")
    ax.set_title(title)
    ax.legend()
    fig.autofmt_xdate(rotation=30)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
