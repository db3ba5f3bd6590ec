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
    dp = { mechanism = "laplace", epsilon = 0.5 }   # optional, owner-side noise

Both parties first align their rows by ECDH-PSI (inner join, reusing the
vertical-LR alignment): the owner learns only the intersection size. The
cohort filter and grouping are applied afterwards, locally, by the cohort
holder, so the owner never learns the cohort's size except per released cell.
The owner releases the numbers (its handler's result); the cohort holder
releases nothing.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from fedgov.errors import ConfigError, PolicyDenied
from fedgov.manifest import Participant
from fedgov.node.context import TaskContext, id_column, numeric
from fedgov.node.kinds.vertical_lr import align
from fedgov.node.privacy_store import PrivacyStore
from fedgov.protocols import he_stats as hs
from fedgov.protocols.cohort_count import row_mask
from fedgov.protocols.psi import normalize_ids

_W = "he-stats"
PARAM_KEYS = ("field", "group_by", "groups", "stats", "clip", "bins", "include_total", "dp",
              "mask_bits", "psi_workers")


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


def build_query(ctx: TaskContext) -> tuple[hs.StatsQuery, str, str | None]:
    """The query both parties derive from the signed manifest: (query, value field, group-by)."""
    p = dict(ctx.manifest.parameters)
    w = f"{_W}: parameters"
    unknown = sorted(set(p) - set(PARAM_KEYS))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown} (allowed: {', '.join(PARAM_KEYS)})", where=w)
    requester = ctx.manifest.requester
    if not requester:
        raise ConfigError("he-stats needs [job] requester = <your certificate name>: the data owner "
                          "keeps the privacy budget and release history per requester", where="manifest")
    holder, owner = _roles(ctx)
    oid = owner.extra.get("id") or owner.fields[0]
    value_fields = [f for f in owner.fields if f != oid]
    field = str(p.get("field") or (value_fields[0] if len(value_fields) == 1 else ""))
    if field not in value_fields:
        raise ConfigError(f"parameters.field must name one of the owner's fields {value_fields}", where=w)
    group_by = p.get("group_by")
    if group_by is not None and (not isinstance(group_by, str) or group_by not in holder.fields):
        raise ConfigError(f"group_by '{group_by}' must be one of the cohort holder's fields", where=w)
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
            raise ConfigError("'dp' must be a table {mechanism, epsilon, delta}", where=w)
        try:
            dp = hs.DPConfig(str(raw.get("mechanism", "laplace")), float(raw.get("epsilon", 1.0)),
                             float(raw.get("delta", 0.0)))
        except (TypeError, ValueError):
            raise ConfigError("dp epsilon/delta must be numbers", where=w) from None
    include_total = p.get("include_total", group_by is not None)
    if not isinstance(include_total, bool):
        raise ConfigError("'include_total' must be true or false", where=w)
    mask_bits = p.get("mask_bits", 20)
    if isinstance(mask_bits, bool) or not isinstance(mask_bits, int):
        raise ConfigError("'mask_bits' must be an integer", where=w)
    cohort = json.dumps({
        "holder": holder.node, "dataset": holder.dataset, "group_by": group_by,
        "groups": p.get("groups"),
        "where": [[c.field, c.op, c.value] for c in holder.where],
    }, sort_keys=True, default=str)
    query = hs.StatsQuery(
        job_id=ctx.job_id, requester=requester, scope=f"{owner.node}.{owner.dataset}.{field}",
        cohort=cohort, stats=tuple(stats), clip=(clip[0], clip[1]), bins=bins,
        include_total=include_total, dp=dp, mask_bits=mask_bits,
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
    in_cohort = int((codes >= 0).sum())
    if 0 < in_cohort < ctx.decision.min_cohort:
        raise PolicyDenied(f"the cohort has fewer than {ctx.decision.min_cohort} of {ctx.me}'s rows "
                           "(its own minimum cohort)", where=_W)
    h = hs.CohortHolder(query, codes, labels)
    ctx.channel.send(owner, "he-stats/counts", h.counts(ctx.channel.recv(owner, "he-stats/hello")))
    ctx.channel.send(owner, "he-stats/moments", h.moments(ctx.channel.recv(owner, "he-stats/plan")))
    return {}


def _owner(ctx: TaskContext, query: hs.StatsQuery, field: str, holder: str) -> dict[str, Any]:
    state_dir = ctx.notes.get("state_dir")
    if not state_dir:
        raise ConfigError("node gave the handler no state_dir (needed for the privacy budget)", where=_W)
    store = PrivacyStore(state_dir)
    accountant = None
    if query.dp is not None:
        e_lim, d_lim = store.limits()
        accountant = hs.BudgetAccountant(e_lim, d_lim, store=store.budget(e_lim, d_lim))
        # refuse before any alignment work; charged (atomically, re-checked) at release
        accountant.check(query.requester, query.scope, query.dp.epsilon, query.dp.delta)
    me = ctx.participant
    table, slot, n = align(ctx, tag="stats", dataset=me.dataset, guest=holder, hosts=[ctx.me], join="inner")
    raw = numeric(table.column(field).to_pylist())
    values = np.full(n, np.nan)
    for i in np.nonzero(slot >= 0)[0]:
        if np.isnan(values[slot[i]]):
            values[slot[i]] = raw[i]
    owner = hs.DataOwner(query, values, min_cohort=ctx.decision.min_cohort,
                         history=hs.ReleaseHistory(store.history()), accountant=accountant)
    ctx.channel.send(holder, "he-stats/hello", owner.hello())
    ctx.channel.send(holder, "he-stats/plan", owner.plan(ctx.channel.recv(holder, "he-stats/counts")))
    release = owner.release(ctx.channel.recv(holder, "he-stats/moments"))
    out = release.to_json()
    out["field"] = field
    out["cohort"] = json.loads(query.cohort)
    if query.dp is not None and accountant is not None:
        out["epsilon_remaining"] = round(accountant.remaining(query.requester, query.scope)[0], 9)
    return out


def run_he_stats(ctx: TaskContext) -> dict[str, Any]:
    """The ``he-stats`` job kind (vertical): the owner releases policy-checked statistics."""
    query, field, group_by = build_query(ctx)
    holder, owner = _roles(ctx)
    if ctx.me == holder.node:
        return _holder(ctx, query, group_by, owner.node)
    return _owner(ctx, query, field, holder.node)
