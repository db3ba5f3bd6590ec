"""Node side of ``eligibility-check``: blinded CKKS threshold tests across departments.

Drives :mod:`fedgov.protocols.eligibility` over the sealed relay. Manifest
(format and leakage: ``docs/protocols/eligibility-check.md``)::

    [job]
    kind = "eligibility-check"
    purpose = "social-assistance-eligibility"

    [[participants]]                   # civil affairs: owns the batch, learns the decisions
    node = "civil_affairs"
    role = "guest"
    dataset = "applications_holdout"
    id = "resident_id"
    label = "eligible"                 # optional: count agreement with past verification
    fields = ["resident_id", "district", "household_size", "declared_monthly_income", "eligible"]

    [[participants]]                   # one per department the rules name
    node = "tax"
    role = "host"
    dataset = "income"
    id = "resident_id"
    fields = ["resident_id", "annual_income"]

    [[participants]]                   # the key holder (decrypts blinded values only)
    node = "arbiter"
    role = "arbiter"

    [parameters]
    rules = '''<the rules file, TOML>'''     # see examples/social_assistance/eligibility_rules.toml
    baseline = { field = "declared_monthly_income", threshold = "income_standard" }   # optional
    alignment = "standing"    # optional; default "fresh" (see docs/protocols/psi-standing.md)

Flow: every department aligns with civil affairs by pairwise ECDH-PSI (or the
standing alignment each department's policy may allow) (left
join: the batch is all of civil affairs' distinct applicants, in an order
shuffled by a job key; a department learns only the batch size and the
positions of its own matched records); the arbiter sends its public context;
departments send their encrypted terms and fact bits to civil affairs, which
blinds and sends to the arbiter, which answers with sign bits. Civil affairs
keeps the per-applicant decisions in its private output area
(``decisions.csv``: id, eligible, failed rules) and releases to the requester
only *counts* of decisions (never a figure, never an identity).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from fedgov.errors import ConfigError
from fedgov.manifest import Manifest
from fedgov.node.check_budget import CheckBudget
from fedgov.node.context import TaskContext, id_column, numeric
from fedgov.node.kinds.vertical_lr import align
from fedgov.node.standing import align_standing
from fedgov.protocols import eligibility as el
from fedgov.protocols.psi import normalize_ids

_W = "eligibility-check"
PARAM_KEYS = ("rules", "baseline", "psi_workers", "alignment")
_CMP = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}


def parse_job(manifest: Manifest) -> tuple[el.Rules, str, list[str], str]:
    """Validate the manifest against its rules: (rules, guest, departments, key holder).

    Every node runs the same checks, so a malformed job fails the same way
    everywhere: the rules' departments are exactly the hosts, each host
    declares the fields the rules read from it, the guest declares the region
    and household-size fields.
    """
    w = f"{_W}: parameters"
    p = manifest.parameters
    unknown = sorted(set(p) - set(PARAM_KEYS))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown} (allowed: {', '.join(PARAM_KEYS)})", where=w)
    raw = p.get("rules")
    if isinstance(raw, str | dict):
        rules = el.parse_rules(raw, "parameters.rules")
    else:
        raise ConfigError("parameters.rules must carry the rules file (a TOML string or a table)", where=w)
    arbiter = manifest.arbiter
    if arbiter is None:
        raise ConfigError("eligibility-check needs a participant with role 'arbiter' (the key holder)",
                          where="manifest")
    data = manifest.data_participants
    guest = next((q.node for q in data if q.role == "guest"), data[0].node)
    hosts = [q.node for q in data if q.node != guest]
    need = rules.nodes()
    missing = [n for n in need if n not in hosts]
    extra = [h for h in hosts if h not in need]
    if missing or extra:
        raise ConfigError(f"the rules need departments {need}; the manifest has {hosts}", where="manifest")
    for h in hosts:
        part = manifest.participant(h)
        lacking = [f for f in rules.fields(h) if f not in part.fields]
        if lacking:
            raise ConfigError(f"participant '{h}' must declare field(s) {lacking} the rules read",
                              where="manifest")
    g = manifest.participant(guest)
    lacking = [f for f in (rules.region_field, rules.household_size_field) if f not in g.fields]
    if lacking:
        raise ConfigError(f"participant '{guest}' must declare field(s) {lacking}", where="manifest")
    return rules, guest, hosts, arbiter


def _over_batch(raw: np.ndarray, slot: np.ndarray, n: int) -> np.ndarray:
    """Values over the batch order (first record per position; NaN where none)."""
    out = np.full(n, np.nan)
    for i in np.nonzero(slot >= 0)[0]:
        if np.isnan(out[slot[i]]):
            out[slot[i]] = raw[i]
    return out


def _baseline(ctx: TaskContext, rules: el.Rules, table: pa.Table, slot: np.ndarray, n: int,
              regions: list[str | None], sizes: np.ndarray) -> np.ndarray | None:
    """Civil affairs' own decision on declared income alone (local, plaintext)."""
    spec = ctx.manifest.parameters.get("baseline")
    if spec is None:
        return None
    w = f"{_W}: parameters.baseline"
    if not isinstance(spec, dict) or set(spec) - {"field", "threshold", "per_capita", "compare"}:
        raise ConfigError("must be a table {field, threshold, per_capita, compare}", where=w)
    field = str(spec.get("field", ""))
    thr = str(spec.get("threshold", ""))
    cmp_ = str(spec.get("compare", "<"))
    per_capita = spec.get("per_capita", True)
    if field not in ctx.participant.fields:
        raise ConfigError(f"baseline field '{field}' must be one of civil affairs' declared fields", where=w)
    if thr not in rules.thresholds["default"]:
        raise ConfigError(f"threshold '{thr}' is not in the rules' [thresholds.default]", where=w)
    if cmp_ not in _CMP or not isinstance(per_capita, bool):
        raise ConfigError("compare must be < <= > >= and per_capita true/false", where=w)
    v = _over_batch(numeric(table.column(field).to_pylist()), slot, n)
    t = np.array([rules.threshold(thr, r) for r in regions])
    valid = ~np.isnan(sizes) & (sizes >= 1) & (sizes <= rules.max_household_size)
    x = np.nan_to_num(v) / np.where(valid, sizes, 1.0) if per_capita else np.nan_to_num(v)
    return _CMP[cmp_](x, t) & valid


def _align(ctx: TaskContext, *, dataset: str, guest: str, hosts: list[str]) -> tuple[Any, np.ndarray, int]:
    """Left-join alignment with civil affairs' batch: fresh PSI, or the standing alignment
    (``parameters.alignment = "standing"``; every department's policy must allow it)."""
    mode = str(ctx.manifest.parameters.get("alignment", "fresh"))
    if mode == "standing":
        return align_standing(ctx, tag="batch", dataset=dataset, guest=guest, hosts=hosts)
    if mode != "fresh":
        raise ConfigError(f"alignment must be 'fresh' or 'standing', got '{mode}'", where=f"{_W}: parameters")
    return align(ctx, tag="batch", dataset=dataset, guest=guest, hosts=hosts, join="left")


def _key_holder(ctx: TaskContext, guest: str, hosts: list[str]) -> dict[str, Any]:
    kh = el.KeyHolder(ctx.job_id)
    hello = kh.hello()
    for p in [guest, *hosts]:
        ctx.channel.send(p, "elig/hello", hello)
    ctx.channel.send(guest, "elig/signs", kh.signs(ctx.channel.recv(guest, "elig/blinded")))
    return {}


def _spend_check_budget(ctx: TaskContext, rules: el.Rules, table: pa.Table, slot: np.ndarray) -> None:
    """Charge one check per field the rules read, for each of this department's records
    in the batch (it knows which they are from the alignment); refuse the job once some
    record's budget for the period is spent (policy key ``elig_checks_per_applicant``)."""
    settings = ctx.decision.disclosure
    id_col = id_column(ctx)
    ids = table.column(id_col).to_pylist()
    matched = set(normalize_ids([ids[i] for i in np.nonzero(slot >= 0)[0]]))
    CheckBudget(ctx.notes["state_dir"]).spend(
        ctx.participant.dataset, rules.fields(ctx.me), sorted(matched),
        limit=int(settings["elig_checks_per_applicant"]), period=str(settings["elig_check_period"]),
        job_id=ctx.job_id, source=ctx.decision.disclosure_source,
    )


def _department(ctx: TaskContext, rules: el.Rules, guest: str, hosts: list[str], arbiter: str) -> dict[str, Any]:
    me = ctx.participant
    # the owner's ladder limit, checked again by the protocol module before anything is aligned
    limit = int(ctx.decision.disclosure["elig_max_rules_per_figure"])
    el.check_figure_uses(rules, ctx.me, limit)
    table, slot, n = _align(ctx, dataset=me.dataset, guest=guest, hosts=hosts)
    _spend_check_budget(ctx, rules, table, slot)
    values = {f: _over_batch(numeric(table.column(f).to_pylist()), slot, n) for f in rules.fields(ctx.me)}
    dept = el.Department(ctx.job_id, ctx.me, rules, values, max_rules_per_figure=limit)
    ctx.channel.send(guest, "elig/contribution", dept.contribute(ctx.channel.recv(arbiter, "elig/hello")))
    return {}


def _civil_affairs(ctx: TaskContext, rules: el.Rules, hosts: list[str], arbiter: str) -> dict[str, Any]:
    me = ctx.participant
    t0 = time.monotonic()
    table, slot, n = _align(ctx, dataset=me.dataset, guest=ctx.me, hosts=hosts)
    t1 = time.monotonic()
    regions: list[str | None] = [None] * n
    reg_col = table.column(rules.region_field).to_pylist()
    for i in np.nonzero(slot >= 0)[0]:
        regions[slot[i]] = None if reg_col[i] is None else str(reg_col[i])
    sizes = _over_batch(numeric(table.column(rules.household_size_field).to_pylist()), slot, n)
    ca = el.CivilAffairs(ctx.job_id, rules, regions, sizes)
    hello = ctx.channel.recv(arbiter, "elig/hello")
    contributions = [ctx.channel.recv(h, "elig/contribution") for h in rules.nodes()]
    ctx.channel.send(arbiter, "elig/blinded", ca.blind(hello, contributions))
    results = ca.decide(ctx.channel.recv(arbiter, "elig/signs"))
    t2 = time.monotonic()

    id_col = id_column(ctx)
    rows = np.nonzero(slot >= 0)[0]
    ids: list[Any] = [None] * n
    id_vals = table.column(id_col).to_pylist()
    for i in rows:
        ids[slot[i]] = id_vals[i]
    eligible = np.array([r.eligible for r in results], dtype=bool)
    ctx.save_output("decisions", pa.table({
        id_col: ids,
        "eligible": eligible.tolist(),
        "failed": [";".join(r.failed) for r in results],
    }))
    failed_by: dict[str, int] = {r.name: 0 for r in rules.rules}
    for r in results:
        for name in r.failed:
            failed_by[name] = failed_by.get(name, 0) + 1
    out: dict[str, Any] = {
        "rules": rules.name,
        "applicants": n,
        "eligible": int(eligible.sum()),
        "not_eligible": int(n - eligible.sum()),
        "failed_by_rule": failed_by,
        "decisions_kept_at": ctx.me,
        "seconds": {"alignment": round(t1 - t0, 3), "check": round(t2 - t1, 3)},
    }
    if "standing_delta" in ctx.notes:
        # register entries each department had to mask for this job (0 = its cache was current)
        out["alignment"] = {"mode": "standing", "new_register_entries": dict(ctx.notes["standing_delta"])}
    base = _baseline(ctx, rules, table, slot, n, regions, sizes)
    if base is not None:
        out["compared_with_baseline"] = {
            "field": str(ctx.manifest.parameters["baseline"]["field"]),
            "eligible_on_baseline": int(base.sum()),
            "changed": int((base != eligible).sum()),
            "now_not_eligible": int((base & ~eligible).sum()),
            "now_eligible": int((~base & eligible).sum()),
        }
    label = me.extra.get("label")
    if label:
        if label not in me.fields:
            raise ConfigError(f"label '{label}' must be one of {ctx.me}'s declared fields", where=_W)
        y = _over_batch(numeric(table.column(str(label)).to_pylist()), slot, n)
        known = ~np.isnan(y)
        agree: dict[str, int] = {"labelled": int(known.sum()),
                                 "check_agrees": int((known & ((y == 1) == eligible)).sum())}
        if base is not None:
            agree["baseline_agrees"] = int((known & ((y == 1) == base)).sum())
        out["agreement_with_label"] = agree
    return out


def run_eligibility_check(ctx: TaskContext) -> dict[str, Any]:
    """The ``eligibility-check`` job kind; only civil affairs releases (counts of decisions)."""
    rules, guest, hosts, arbiter = parse_job(ctx.manifest)
    if ctx.me == arbiter:
        return _key_holder(ctx, guest, hosts)
    if ctx.me == guest:
        return _civil_affairs(ctx, rules, hosts, arbiter)
    return _department(ctx, rules, guest, hosts, arbiter)
