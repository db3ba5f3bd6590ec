"""Node side of the ``cohort-count`` kind (see fedgov.protocols.cohort_count).

With DP on (the owner's default) every participant charges ε to its own
dataset's budget for the period before it counts, then releases a noisy count
thresholded on the noisy value; see docs/protocols/cohort-count.md.
"""

from __future__ import annotations

from typing import Any

from fedgov.errors import ConfigError
from fedgov.node.context import TaskContext
from fedgov.node.privacy_store import PrivacyStore
from fedgov.protocols import cohort_count
from fedgov.protocols import he_stats as hs


def _epsilon(ctx: TaskContext, disclosure: hs.Disclosure) -> float | None:
    raw = ctx.manifest.parameters.get("dp")
    ask = None
    if raw is not None:
        if not isinstance(raw, dict) or set(raw) - {"epsilon", "mechanism"}:
            raise ConfigError("'dp' must be a table {epsilon}", where="cohort-count: parameters")
        ask = hs.DPConfig("laplace", float(raw.get("epsilon", hs.DEFAULT_QUERY_EPSILON)))
    probe = hs.StatsQuery(job_id=ctx.job_id, requester=ctx.manifest.requester or "?", scope="count",
                          cohort="count", stats=("count",), dp=ask)
    return disclosure.epsilon_for(probe)


def my_count(ctx: TaskContext) -> int | None:
    """This participant's released count: charged and noised with DP on, exact with DP off."""
    settings = ctx.decision.disclosure
    disclosure = hs.Disclosure.from_settings(settings)
    min_cell = max(ctx.decision.min_cohort, int(settings.get("stats_min_cell", 11)))
    epsilon = _epsilon(ctx, disclosure)
    if epsilon is not None:
        state_dir = ctx.notes.get("state_dir")
        if not state_dir:
            raise ConfigError("node gave the handler no state_dir (needed for the privacy budget)",
                              where="cohort-count")
        acc = hs.BudgetAccountant(disclosure.budget_epsilon, disclosure.budget_period,
                                  store=PrivacyStore(state_dir).budget())
        # charged before counting, whatever the count turns out to be
        acc.charge(f"{ctx.me}.{ctx.participant.dataset}", epsilon, ctx.job_id, ctx.manifest.requester or "")
    table = ctx.load(list(ctx.participant.fields))
    n = cohort_count.count(table, ctx.participant.where)
    if epsilon is None:
        return cohort_count.release(n, min_cell)
    return cohort_count.release_noisy(n, epsilon, min_cell)


def run_cohort_count(ctx: TaskContext) -> dict[str, Any]:
    """Count matching rows locally; the aggregator combines released counts."""
    mine = my_count(ctx)
    agg = cohort_count.aggregator(ctx.manifest)
    if ctx.me != agg:
        ctx.channel.send(agg, "cohort-count/count", cohort_count.encode_count(mine))
        return {}
    counts: dict[str, int | None] = {}
    for p in ctx.manifest.participants:
        if p.node == ctx.me:
            counts[p.node] = mine
        else:
            counts[p.node] = cohort_count.decode_count(ctx.channel.recv(p.node, "cohort-count/count"), p.node)
    # a total only across partitions of one dataset, never across different populations
    same = len({p.dataset for p in ctx.manifest.participants}) == 1
    return cohort_count.combine(counts, one_population=same)
