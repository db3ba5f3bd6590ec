"""Node-side job handlers: glue between a task, local data, and a pure protocol.

A handler receives a :class:`TaskContext` and returns the JSON-able result the
node releases to the requester (``{}`` when it releases nothing). Handlers
never touch sockets or files directly: data comes through ``ctx.load`` (which
only yields fields the manifest declared and the policy allowed) and messages
through ``ctx.channel``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from fedgov.errors import ConfigError, FedgovError
from fedgov.manifest import Manifest, Participant
from fedgov.node.channel import JobChannel
from fedgov.policy import Decision
from fedgov.protocols import cohort_count, psi


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
    #: writes a table to this node's private output area for this job; returns its path
    save_output: Callable[[str, pa.Table], str]
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


def _id_column(ctx: TaskContext) -> str:
    col = ctx.participant.extra.get("id") or (ctx.participant.fields[0] if ctx.participant.fields else "")
    if col not in ctx.participant.fields:
        raise FedgovError(f"id column '{col}' must be listed in this participant's fields", where=ctx.job_id)
    return str(col)


def psi_align(
    ctx: TaskContext, *, mode: str = "align", deliver_to: Sequence[str] = ()
) -> psi.PsiResult | None:
    """Run ECDH-PSI as this node's role; every node calls it in the same job.

    The guest (role ``guest``, else the first participant) aligns with every
    other participant. ``deliver_to`` names the hosts that receive the aligned
    order; the guest always learns it. Returns this node's result, or ``None``
    for a host that is not told.
    """
    id_col = _id_column(ctx)
    ids = ctx.load([id_col]).column(id_col).to_pylist()
    guest = next(
        (p.node for p in ctx.manifest.participants if p.role == "guest"), ctx.manifest.participants[0].node
    )
    hosts = [p.node for p in ctx.manifest.participants if p.node != guest]
    workers = int(ctx.manifest.parameters.get("psi_workers", 0)) or None
    if ctx.me == guest:
        with psi.PsiGuest(ctx.job_id, ids, hosts, mode=mode, workers=workers) as g:  # type: ignore[arg-type]
            chunks = list(g.masked_set())
            for h in hosts:
                ctx.channel.send_stream(h, "psi/guest-set", chunks)
            del chunks
            for h in hosts:
                g.absorb_reply(h, ctx.channel.recv_stream(h, "psi/reply"))
                g.absorb_host_set(h, ctx.channel.recv_stream(h, "psi/host-set"))
            result, messages = g.finish([h for h in deliver_to if h in hosts])
        for h, msg in messages.items():
            ctx.channel.send(h, "psi/result", msg)
        return result
    shuffle_key = None
    if mode == "cardinality" and len(hosts) > 1:
        # hosts share one secret permutation key the guest never sees
        first = sorted(hosts)[0]
        if ctx.me == first:
            shuffle_key = os.urandom(32)
            for h in hosts:
                if h != first:
                    ctx.channel.send(h, "psi/shuffle-key", shuffle_key)
        else:
            shuffle_key = ctx.channel.recv(first, "psi/shuffle-key")
    with psi.PsiHost(ctx.job_id, ids, mode=mode, workers=workers, shuffle_key=shuffle_key) as host:  # type: ignore[arg-type]
        ctx.channel.send_stream(
            guest, "psi/reply", host.remask(ctx.channel.recv_stream(guest, "psi/guest-set"))
        )
        ctx.channel.send_stream(guest, "psi/host-set", host.masked_set())
        msg = ctx.channel.recv(guest, "psi/result") if ctx.me in deliver_to else None
        return host.finish(msg)


def run_psi(ctx: TaskContext) -> dict[str, Any]:
    """The ``psi`` job kind: align (or just count) the participants' IDs.

    Parameters: ``mode = "align" | "cardinality"``. Hosts named in
    ``[results] recipients`` receive the aligned order; each party that learns
    it keeps it in its private output area (never sent to the requester).
    The requester receives only the intersection size.
    """
    mode = str(ctx.manifest.parameters.get("mode", "align"))
    if mode not in ("align", "cardinality"):
        raise ConfigError(f"psi mode must be 'align' or 'cardinality', got '{mode}'", where="parameters")
    deliver = [r for r in ctx.manifest.recipients if r in ctx.manifest.nodes]
    result = psi_align(ctx, mode=mode, deliver_to=deliver)
    if result is None:
        return {}
    out: dict[str, Any] = {}
    if result.role == "guest":
        out = {"intersection_size": result.size, "mode": mode, "pairwise_sizes": dict(result.pairwise_sizes)}
    if mode == "align" and result.ids is not None:
        id_col = _id_column(ctx)
        ctx.save_output(
            "aligned_ids",
            pa.table({"position": list(range(len(result.ids))), id_col: result.ids, "row": result.rows}),
        )
    return out


HANDLERS: dict[str, Handler] = {
    "cohort-count": run_cohort_count,
    "psi": run_psi,
}


def register(kind: str, handler: Handler) -> None:
    """Add a job kind (used by protocol modules as they land)."""
    HANDLERS[kind] = handler
