"""Node side of the ``cohort-count`` kind (see fedgov.protocols.cohort_count)."""

from __future__ import annotations

from typing import Any

from fedgov.node.context import TaskContext
from fedgov.protocols import cohort_count


def run_cohort_count(ctx: TaskContext) -> dict[str, Any]:
    """Count matching rows locally; the aggregator combines released counts."""
    table = ctx.load(list(ctx.participant.fields))
    mine = cohort_count.release(cohort_count.count(table, ctx.participant.where), ctx.decision.min_cohort)
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
