"""Node side of ``he-stats``: grouped statistics on CKKS, owner-enforced release rules.

Drives :mod:`fedgov.protocols.he_stats` over the sealed relay. Manifest
(format and leakage: ``docs/protocols/he-stats.md``)::

    [job]
    kind = "he-stats"
    purpose = "social-assistance-statistics"
    requester = "analyst"              # required: budget and history are per requester

    [[participants]]                   # the cohort holder (PSI guest)
    node = "civil_affairs"
    role = "cohort"
    dataset = "applications"
    id = "resident_id"
    fields = ["resident_id", "district", "eligible"]
    where = [{ field = "eligible", op = "==", value = 0 }]

    [[participants]]                   # the data owner (PSI host, key holder, releases)
    node = "hrss"
    role = "owner"
    dataset = "insurance"
    id = "resident_id"
    fields = ["resident_id", "pension_monthly"]

    [parameters]
    field = "pension_monthly"          # the owner's value field
    group_by = "district"              # the cohort holder's categorical field (optional)
    stats = ["count", "sum", "mean"]   # count sum mean variance histogram
    clip = [0.0, 50000.0]
    dp = { mechanism = "laplace", epsilon = 0.5 }   # optional: the ε to spend (DP is on anyway)

Both parties first align their rows by ECDH-PSI (inner join, reusing the
vertical-LR alignment): the owner learns only the intersection size. The
cohort filter and grouping are applied afterwards, locally, by the cohort
holder, so the owner never learns the cohort's size except per released cell.
The owner releases the numbers (its handler's result); the cohort holder
releases nothing.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pyarrow as pa

from fedgov.errors import ConfigError
from fedgov.manifest import Participant
from fedgov.node.context import TaskContext, id_column, numeric
from fedgov.node.kinds.vertical_lr import align
from fedgov.node.privacy_store import PrivacyStore, member_id
from fedgov.protocols import he_stats as hs
from fedgov.protocols.cohort_count import row_mask
from fedgov.protocols.psi import normalize_ids

_W = "he-stats"
PARAM_KEYS = ("field", "group_by", "groups", "stats", "clip", "bins", "include_total", "dp",
              "mask_bits", "min_cell", "psi_workers")


def _roles(ctx: TaskContext) -> tuple[Participant, Participant]:
    """(cohort holder, data owner) from the manifest roles."""
    data = ctx.manifest.data_participants
    holders = [p for p in data if p.role == "cohort"]
    owners = [p for p in data if p.role == "owner"]
    if len(holders) != 1 or len(owners) != 1 or len(data) != 2:
        raise ConfigError("he-stats needs exactly two data participants: one role 'cohort' "
                          "(defines the cohort) and one role 'owner' (holds the values)", where="manifest")
    return holders[0], owners[0]


def _float_list(raw: Any, key: str) -> tuple[float, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in raw):
        raise ConfigError(f"'{key}' must be a list of numbers", where=f"{_W}: parameters")
    return tuple(float(x) for x in raw)


def _query_options(ctx: TaskContext, group_by: str | None) -> dict[str, Any]:
    """The statistic options both modes share, checked: stats, clip, bins, dp, include_total, mask_bits."""
    p = dict(ctx.manifest.parameters)
    w = f"{_W}: parameters"
    stats = p.get("stats", ["count", "sum", "mean"])
    if not isinstance(stats, list) or not all(isinstance(s, str) for s in stats):
        raise ConfigError("'stats' must be a list of names", where=w)
    clip = _float_list(p.get("clip", [0.0, 1e6]), "clip")
    if len(clip) != 2:
        raise ConfigError("'clip' must be [lo, hi]", where=w)
    bins = _float_list(p.get("bins", []), "bins")
    dp = None
    if "dp" in p:
        raw = p["dp"]
        if not isinstance(raw, dict) or set(raw) - {"mechanism", "epsilon", "delta"}:
            raise ConfigError("'dp' must be a table {mechanism, epsilon}", where=w)
        try:
            dp = hs.DPConfig(str(raw.get("mechanism", "laplace")),  # type: ignore[arg-type]
                             float(raw.get("epsilon", hs.DEFAULT_QUERY_EPSILON)),
                             float(raw.get("delta", 0.0)))
        except (TypeError, ValueError):
            raise ConfigError("dp epsilon/delta must be numbers", where=w) from None
    include_total = p.get("include_total", group_by is not None)
    if not isinstance(include_total, bool):
        raise ConfigError("'include_total' must be true or false", where=w)
    mask_bits = p.get("mask_bits", hs.DEFAULT_MASK_BITS)
    if isinstance(mask_bits, bool) or not isinstance(mask_bits, int):
        raise ConfigError("'mask_bits' must be an integer", where=w)
    min_cell = p.get("min_cell", 0)
    if isinstance(min_cell, bool) or not isinstance(min_cell, int):
        raise ConfigError("'min_cell' must be an integer", where=w)
    return {"stats": tuple(stats), "clip": (clip[0], clip[1]), "bins": bins, "dp": dp,
            "include_total": include_total, "mask_bits": mask_bits, "min_cell": min_cell}


def _disclosure(ctx: TaskContext) -> hs.Disclosure:
    """This node's own settings for the dataset (policy.toml ``[...disclosure]``, safe defaults)."""
    return hs.Disclosure.from_settings(ctx.decision.disclosure)


def _min_cell(ctx: TaskContext, query: hs.StatsQuery) -> int:
    """The largest of the policy's min_cohort, its stats_min_cell and the manifest's min_cell."""
    return max(ctx.decision.min_cohort, int(ctx.decision.disclosure.get("stats_min_cell", 11)),
               query.min_cell)


def _accountant(ctx: TaskContext, store: PrivacyStore) -> hs.BudgetAccountant:
    d = _disclosure(ctx)
    return hs.BudgetAccountant(d.budget_epsilon, d.budget_period, store=store.budget())


def _requester(ctx: TaskContext) -> str:
    requester = ctx.manifest.requester
    if not requester:
        raise ConfigError("he-stats needs [job] requester = <your certificate name>: the data owner "
                          "keeps the privacy budget and release history per requester", where="manifest")
    return requester


def _check_param_keys(ctx: TaskContext, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(ctx.manifest.parameters) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown} (allowed: {', '.join(allowed)})",
                          where=f"{_W}: parameters")


def build_query(ctx: TaskContext) -> tuple[hs.StatsQuery, str, str | None]:
    """The query both parties derive from the signed manifest: (query, value field, group-by)."""
    p = dict(ctx.manifest.parameters)
    w = f"{_W}: parameters"
    _check_param_keys(ctx, PARAM_KEYS)
    requester = _requester(ctx)
    holder, owner = _roles(ctx)
    oid = owner.extra.get("id") or owner.fields[0]
    value_fields = [f for f in owner.fields if f != oid]
    field = str(p.get("field") or (value_fields[0] if len(value_fields) == 1 else ""))
    if field not in value_fields:
        raise ConfigError(f"parameters.field must name one of the owner's fields {value_fields}", where=w)
    group_by = p.get("group_by")
    if group_by is not None and (not isinstance(group_by, str) or group_by not in holder.fields):
        raise ConfigError(f"group_by '{group_by}' must be one of the cohort holder's fields", where=w)
    cohort = json.dumps({
        "holder": holder.node, "dataset": holder.dataset, "group_by": group_by,
        "groups": p.get("groups"),
        "where": [[c.field, c.op, c.value] for c in holder.where],
    }, sort_keys=True, default=str)
    query = hs.StatsQuery(
        job_id=ctx.job_id, requester=requester, scope=f"{owner.node}.{owner.dataset}.{field}",
        cohort=cohort, **_query_options(ctx, group_by),
    )
    return query, field, group_by


def _labels(ctx: TaskContext, table: pa.Table, group_by: str | None) -> list[str]:
    """Group labels: ``parameters.groups``, else the schema's category values,
    else the distinct values of the whole column (all rows, not only the cohort)."""
    if group_by is None:
        return ["all"]
    raw = ctx.manifest.parameters.get("groups")
    if raw is not None:
        if not isinstance(raw, list) or not raw:
            raise ConfigError("'groups' must be a non-empty list", where=f"{_W}: parameters")
        return [str(g) for g in raw]
    ftype, values = ctx.notes.get("schema_types", {}).get(group_by, ("", ()))
    if ftype == "category" and values:
        return [str(v) for v in values]
    return sorted({str(v) for v in table.column(group_by).to_pylist() if v is not None})


def small_cohort_as_empty(codes: np.ndarray, min_cell: int) -> np.ndarray:
    """Civil affairs' own minimum cohort, applied silently: a cohort of 1..min_cell-1 aligned
    rows is computed as empty — never a refusal, which would tell an analyst "1 to 10 align"
    apart from "none do" at no ε (the owner's answer is then the same as for nobody)."""
    in_cohort = int((codes >= 0).sum())
    if 0 < in_cohort < min_cell:
        return np.full_like(codes, -1)
    return codes


def budget_scope(ctx: TaskContext) -> str:
    """The owner's ε budget key: its dataset — one budget for every requester and field."""
    return f"{ctx.me}.{ctx.participant.dataset}"


def _holder(ctx: TaskContext, query: hs.StatsQuery, group_by: str | None, owner: str) -> dict[str, Any]:
    me = ctx.participant
    table, slot, n = align(ctx, tag="stats", dataset=me.dataset, guest=ctx.me, hosts=[owner], join="inner")
    id_col = id_column(ctx)
    ids = normalize_ids(table.column(id_col).to_pylist(), where=f"{ctx.me}/{me.dataset}")
    id_slot = {ids[i]: int(slot[i]) for i in np.nonzero(slot >= 0)[0]}
    labels = _labels(ctx, table, group_by)
    index = {lab: k for k, lab in enumerate(labels)}
    mask = row_mask(table, me.where).to_pylist()
    groups = table.column(group_by).to_pylist() if group_by else [None] * table.num_rows
    codes = np.full(n, -1, dtype=np.int64)
    for i, inside in enumerate(mask):
        # a person is in the cohort if any of their rows matches; the first matching row's group counts
        s = id_slot.get(ids[i])
        if not inside or s is None or codes[s] >= 0:
            continue
        lab = "all" if group_by is None else (None if groups[i] is None else str(groups[i]))
        if lab in index:
            codes[s] = index[lab]
    min_cell = _min_cell(ctx, query)
    codes = small_cohort_as_empty(codes, min_cell)
    state_dir = ctx.notes.get("state_dir")
    if not state_dir:
        raise ConfigError("node gave the handler no state_dir (needed for the auditor)", where=_W)
    store = PrivacyStore(state_dir)
    # the auditor's history: every cohort released on the owner's dataset, whatever the field
    scope = f"{owner}.{ctx.manifest.participant(owner).dataset}"
    slot_ids = [""] * n
    for rid, s_ in id_slot.items():
        slot_ids[s_] = member_id(rid)
    missing = [k for k, v in enumerate(slot_ids) if not v]
    for k in missing:
        slot_ids[k] = f"unaligned-{k}"
    codes, _ = hs.audit_cohort(codes, slot_ids, store.released_cohorts(scope), min_cell)
    h = hs.CohortHolder(query, codes, labels, mask_bits_min=_disclosure(ctx).mask_bits_min)
    ctx.channel.send(owner, "he-stats/counts", h.counts(ctx.channel.recv(owner, "he-stats/hello")))
    ctx.channel.send(owner, "he-stats/moments", h.moments(ctx.channel.recv(owner, "he-stats/plan")))
    released = []
    for c in h.planned:
        sel = codes >= 0 if c == hs.TOTAL else codes == labels.index(c)
        released.append([slot_ids[k] for k in np.flatnonzero(sel)])
    if released:
        store.add_released_cohorts(scope, ctx.job_id, released)
    return {}


def _owner(ctx: TaskContext, query: hs.StatsQuery, field: str, holder: str) -> dict[str, Any]:
    state_dir = ctx.notes.get("state_dir")
    if not state_dir:
        raise ConfigError("node gave the handler no state_dir (needed for the privacy budget)", where=_W)
    store = PrivacyStore(state_dir)
    disclosure = _disclosure(ctx)
    accountant = _accountant(ctx, store)
    scope = budget_scope(ctx)
    epsilon = disclosure.epsilon_for(query)
    if epsilon is not None:
        # charged before any alignment work, whatever the answer turns out to be
        accountant.charge(scope, epsilon, query.job_id, query.requester)
    me = ctx.participant
    table, slot, n = align(ctx, tag="stats", dataset=me.dataset, guest=holder, hosts=[ctx.me], join="inner")
    raw = numeric(table.column(field).to_pylist())
    values = np.full(n, np.nan)
    for i in np.nonzero(slot >= 0)[0]:
        if np.isnan(values[slot[i]]):
            values[slot[i]] = raw[i]
    owner = hs.DataOwner(query, values, min_cohort=_min_cell(ctx, query), disclosure=disclosure,
                         history=hs.ReleaseHistory(store.history()), accountant=accountant,
                         budget_scope=scope, prepaid=True)
    ctx.channel.send(holder, "he-stats/hello", owner.hello())
    ctx.channel.send(holder, "he-stats/plan", owner.plan(ctx.channel.recv(holder, "he-stats/counts")))
    release = owner.release(ctx.channel.recv(holder, "he-stats/moments"))
    out = release.to_json()
    out["field"] = field
    out["cohort"] = json.loads(query.cohort)
    if epsilon is not None:
        out["epsilon_remaining"] = round(accountant.remaining(scope), 9)
    return out


# --------------------------------------------------------------------------- horizontal

H_PARAM_KEYS = ("field", "group_by", "groups", "stats", "clip", "bins", "include_total", "dp",
                "mask_bits", "min_cell", "key_holder", "combiner")


def _h_roles(ctx: TaskContext) -> tuple[list[Participant], str, str]:
    """(regions, key holder, combiner) of a horizontal he-stats job."""
    data = ctx.manifest.data_participants
    regions = [p for p in data if p.role == "region"]
    if len(regions) != len(data) or len(regions) < 2:
        raise ConfigError("horizontal he-stats needs at least two data participants, all with role "
                          "'region'", where="manifest")
    arbiters = {p.node for p in ctx.manifest.participants if p.role == "arbiter"}
    params = ctx.manifest.parameters
    kh, comb = str(params.get("key_holder", "")), str(params.get("combiner", ""))
    if kh not in arbiters or comb not in arbiters:
        raise ConfigError("parameters.key_holder and parameters.combiner must name participants with "
                          "role 'arbiter' (data-less nodes)", where=f"{_W}: parameters")
    if kh == comb:
        raise ConfigError("the key holder must not be the combiner: it would see each region's part",
                          where=f"{_W}: parameters")
    return regions, kh, comb


def build_horizontal_query(ctx: TaskContext) -> tuple[hs.StatsQuery, str, str | None, list[str]]:
    """(query, value field, group-by, group labels) every party of a horizontal job derives.

    The key holder's release history is scoped to the field, across region
    sets (the cohort key names the regions, so answers over {A, B, C} and
    {A, B} are checked against each other); each region's privacy budget to
    its own dataset and field (the same scope as when it is a vertical owner,
    so the two modes share one budget).
    """
    _check_param_keys(ctx, H_PARAM_KEYS)
    p = dict(ctx.manifest.parameters)
    w = f"{_W}: parameters"
    regions, _, _ = _h_roles(ctx)
    field = p.get("field")
    group_by = p.get("group_by")
    for r in regions:
        if not isinstance(field, str) or field not in r.fields:
            raise ConfigError(f"parameters.field must name a field every region lists ({r.node} lists "
                              f"{list(r.fields)})", where=w)
        if group_by is not None and (not isinstance(group_by, str) or group_by not in r.fields):
            raise ConfigError(f"group_by '{group_by}' must be a field every region lists", where=w)
    labels = ["all"]
    if group_by is not None:
        raw = p.get("groups")
        if not isinstance(raw, list) or not raw:
            raise ConfigError("a grouped horizontal query needs parameters.groups (the labels every "
                              "region uses)", where=w)
        labels = [str(g) for g in raw]
    names = sorted(r.node for r in regions)
    cohort = json.dumps({
        "regions": names, "group_by": group_by, "groups": labels,
        "where": {r.node: [[c.field, c.op, c.value] for c in r.where] for r in regions},
    }, sort_keys=True, default=str)
    query = hs.StatsQuery(job_id=ctx.job_id, requester=_requester(ctx),
                          scope=f"horizontal:{field}", cohort=cohort,
                          **_query_options(ctx, group_by))
    return query, str(field), group_by, labels


def _h_region(ctx: TaskContext, query: hs.StatsQuery, field: str, group_by: str | None,
              labels: list[str], kh: str, comb: str) -> dict[str, Any]:
    me = ctx.participant
    store = PrivacyStore(str(ctx.notes["state_dir"]))
    query = dataclasses.replace(query, scope=f"{ctx.me}.{me.dataset}.{field}")
    accountant = _accountant(ctx, store)
    cols = sorted({field, *([group_by] if group_by else []), *(c.field for c in me.where)})
    table = ctx.load(cols)
    inside = row_mask(table, me.where).to_pylist()
    groups = table.column(group_by).to_pylist() if group_by else ["all"] * table.num_rows
    index = {lab: k for k, lab in enumerate(labels)}
    codes = np.array(
        [index.get(str(g), -1) if ok and g is not None else -1 for ok, g in zip(inside, groups, strict=True)],
        dtype=np.int64,
    )
    region = hs.Region(ctx.me, query, codes, labels, numeric(table.column(field).to_pylist()),
                       min_cohort=_min_cell(ctx, query), disclosure=_disclosure(ctx), accountant=accountant,
                       budget_scope=budget_scope(ctx))
    ctx.channel.send(comb, "he-stats-h/counts", region.counts(ctx.channel.recv(kh, "he-stats-h/hello")))
    ctx.channel.send(comb, "he-stats-h/moments", region.moments(ctx.channel.recv(kh, "he-stats-h/plan")))
    return {}


def _h_combiner(ctx: TaskContext, query: hs.StatsQuery, regions: list[str], kh: str) -> dict[str, Any]:
    hello = ctx.channel.recv(kh, "he-stats-h/hello")
    for step in ("counts", "moments"):
        parts = [ctx.channel.recv(r, f"he-stats-h/{step}") for r in regions]
        ctx.channel.send(kh, f"he-stats-h/{step}", hs.combine(query.job_id, hello, parts))
    return {}


def _h_key_holder(ctx: TaskContext, query: hs.StatsQuery, field: str, labels: list[str],
                  regions: list[str], comb: str) -> dict[str, Any]:
    store = PrivacyStore(str(ctx.notes["state_dir"]))
    kh = hs.RegionKeyHolder(query, labels, min_cohort=_min_cell(ctx, query),
                            history=hs.ReleaseHistory(store.history()))
    hello = kh.hello()
    for t in [*regions, comb]:
        ctx.channel.send(t, "he-stats-h/hello", hello)
    plan = kh.plan(ctx.channel.recv(comb, "he-stats-h/counts"))
    for r in regions:
        ctx.channel.send(r, "he-stats-h/plan", plan)
    release = kh.release(ctx.channel.recv(comb, "he-stats-h/moments"))
    out = release.to_json()
    out.update(field=field, cohort=json.loads(query.cohort), mode="horizontal")
    return out


def run_he_stats_horizontal(ctx: TaskContext) -> dict[str, Any]:
    """Horizontal ``he-stats``: several regions hold the field; only totals are ever decrypted.

    Regions encrypt per-cell counts and moments under the key holder's fresh
    key; the combiner (another data-less node) adds them; the key holder
    applies the release rules to the totals and releases. The largest
    ``min_cohort`` of the regions applies; DP noise is added by each region
    to its own part, charged to its own budget.
    """
    query, field, group_by, labels = build_horizontal_query(ctx)
    regions, kh, comb = _h_roles(ctx)
    names = [r.node for r in regions]
    if ctx.me == kh:
        return _h_key_holder(ctx, query, field, labels, names, comb)
    if ctx.me == comb:
        return _h_combiner(ctx, query, names, kh)
    if ctx.me in names:
        return _h_region(ctx, query, field, group_by, labels, kh, comb)
    raise ConfigError(f"node '{ctx.me}' has no role in this he-stats job", where="manifest")


def run_he_stats(ctx: TaskContext) -> dict[str, Any]:
    """The ``he-stats`` job kind: vertical (cohort holder + owner) or, with role "region"
    participants, horizontal (:func:`run_he_stats_horizontal`)."""
    if any(p.role == "region" for p in ctx.manifest.data_participants):
        return run_he_stats_horizontal(ctx)
    query, field, group_by = build_query(ctx)
    holder, owner = _roles(ctx)
    if ctx.me == holder.node:
        return _holder(ctx, query, group_by, owner.node)
    return _owner(ctx, query, field, holder.node)
