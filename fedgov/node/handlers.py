"""Node-side job handlers: glue between a task, local data, and a pure protocol.

A handler receives a :class:`TaskContext` and returns the JSON-able result the
node releases to the requester (``{}`` when it releases nothing). Handlers
never touch sockets or files directly: data comes through ``ctx.load`` (which
only yields fields the manifest declared and the policy allowed) and messages
through ``ctx.channel``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from fedgov.manifest import Manifest, Participant
from fedgov.node.channel import JobChannel
from fedgov.policy import Decision
from fedgov.protocols import cohort_count


@dataclass
class TaskContext:
    job_id: str
    me: str
    manifest: Manifest
    participant: Participant
    decision: Decision
    channel: JobChannel
    abort: threading.Event
    load: Callable[[Sequence[str] | None], pa.Table]
    #: peers' policy facts are not known here; each node enforces its own
    notes: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[TaskContext], dict[str, Any]]


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
    return cohort_count.combine(counts)


HANDLERS: dict[str, Handler] = {
    "cohort-count": run_cohort_count,
}


def register(kind: str, handler: Handler) -> None:
    """Add a job kind (used by protocol modules as they land)."""
    HANDLERS[kind] = handler
