"""Node side of the ``psi`` kind, and PSI as a step inside other kinds."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from fedgov.errors import ConfigError
from fedgov.node.context import TaskContext, id_column
from fedgov.params.psi import asked_release
from fedgov.protocols import psi


def guest_and_hosts(ctx: TaskContext) -> tuple[str, list[str]]:
    """The guest (role ``guest``, else the first data participant) and the hosts."""
    data = ctx.manifest.data_participants
    guest = next((p.node for p in data if p.role == "guest"), data[0].node)
    return guest, [p.node for p in data if p.node != guest]


def psi_steps(
    ctx: TaskContext,
    ids: Sequence[object],
    *,
    guest: str,
    hosts: Sequence[str],
    prefix: str = "psi",
    mode: str = "align",
    deliver_to: Sequence[str] = (),
) -> psi.PsiResult | None:
    """Run ECDH-PSI as this node's role between ``guest`` and ``hosts``.

    Every listed party calls it with the same arguments (but its own ``ids``).
    The guest learns the (pairwise and global) intersection; hosts in
    ``deliver_to`` receive the aligned order, others learn nothing. Messages
    use steps under ``prefix`` so several PSI runs can share one job.
    Returns this node's result, or ``None`` for a host that is not told.
    """
    if ctx.me == guest:
        with psi.PsiGuest(ctx.job_id, ids, list(hosts), mode=mode, workers=_workers(ctx)) as g:  # type: ignore[arg-type]
            _guest_exchange(ctx, g, hosts, prefix)
            result, messages = g.finish([h for h in deliver_to if h in hosts])
        for h, msg in messages.items():
            ctx.channel.send(h, f"{prefix}/result", msg)
        return result
    return _host_side(ctx, ids, guest=guest, hosts=hosts, prefix=prefix, mode=mode, deliver_to=deliver_to)


def psi_pairwise(
    ctx: TaskContext, ids: Sequence[object], *, guest: str, hosts: Sequence[str], prefix: str
) -> dict[str, psi.PsiResult] | psi.PsiResult:
    """Alignment of the guest with each host separately, in one PSI run.

    The guest gets ``{host: guest ∩ host}`` (its rows, canonical order); each
    host gets its own pairwise intersection in the same order. The guest's set
    is masked once for all hosts, and hosts work in parallel.
    """
    if ctx.me == guest:
        with psi.PsiGuest(ctx.job_id, ids, list(hosts), mode="align", workers=_workers(ctx)) as g:
            _guest_exchange(ctx, g, hosts, prefix)
            results, messages = g.finish_pairwise(hosts)
        for h, msg in messages.items():
            ctx.channel.send(h, f"{prefix}/result", msg)
        return results
    res = _host_side(ctx, ids, guest=guest, hosts=hosts, prefix=prefix, mode="align", deliver_to=[ctx.me])
    assert res is not None
    return res


def _workers(ctx: TaskContext) -> int | None:
    return int(ctx.manifest.parameters.get("psi_workers", 0)) or None


def _guest_exchange(ctx: TaskContext, g: psi.PsiGuest, hosts: Sequence[str], prefix: str) -> None:
    chunks = list(g.masked_set())
    for h in hosts:
        ctx.channel.send_stream(h, f"{prefix}/guest-set", chunks)
    del chunks
    # hosts send their own masked sets first (computed while we computed ours),
    # so both sides' second masking also runs at the same time
    for h in hosts:
        g.absorb_host_set(h, ctx.channel.recv_stream(h, f"{prefix}/host-set"))
        g.absorb_reply(h, ctx.channel.recv_stream(h, f"{prefix}/reply"))


def _host_side(
    ctx: TaskContext,
    ids: Sequence[object],
    *,
    guest: str,
    hosts: Sequence[str],
    prefix: str,
    mode: str,
    deliver_to: Sequence[str],
) -> psi.PsiResult | None:
    workers = _workers(ctx)
    shuffle_key = None
    if mode == "cardinality" and len(hosts) > 1:
        # hosts share one secret permutation key the guest never sees
        first = sorted(hosts)[0]
        if ctx.me == first:
            shuffle_key = os.urandom(32)
            for h in hosts:
                if h != first:
                    ctx.channel.send(h, f"{prefix}/shuffle-key", shuffle_key)
        else:
            shuffle_key = ctx.channel.recv(first, f"{prefix}/shuffle-key")
    with psi.PsiHost(ctx.job_id, ids, mode=mode, workers=workers, shuffle_key=shuffle_key) as host:  # type: ignore[arg-type]
        ctx.channel.send_stream(guest, f"{prefix}/host-set", host.masked_set())
        ctx.channel.send_stream(
            guest, f"{prefix}/reply", host.remask(ctx.channel.recv_stream(guest, f"{prefix}/guest-set"))
        )
        msg = ctx.channel.recv(guest, f"{prefix}/result") if ctx.me in deliver_to else None
        return host.finish(msg)


def _ledger_facts(parameters: Any, released: dict[str, Any]) -> dict[str, Any]:
    """What this node lets the ledger record: the released size only when the manifest
    asked ``size_on_ledger`` (every owner allowed it, ``psi_size_ledger``); else a
    non-numeric marker (never the node's default summary figures)."""
    if parameters.get("size_on_ledger") and released.get("intersection_size") is not None:
        return {"intersection_size": released["intersection_size"]}
    return {"sizes_published": False}


def run_psi(ctx: TaskContext) -> dict[str, Any]:
    """The ``psi`` job kind: align (or just count) the participants' IDs.

    Parameters: ``mode = "align" | "cardinality"``; ``size_release``,
    ``size_rounding``, ``size_min``, ``size_on_ledger`` (docs/protocols/psi.md).
    Hosts named in ``[results] recipients`` receive the aligned order (every
    participant's policy ``psi_id_recipients`` must allow them: checked before
    the job by :func:`fedgov.params.psi.refusals`); each party that learns it
    keeps it in its private output area (never sent to the requester). The
    requester receives sizes only as the manifest asked and every owner allowed
    (nothing by default); the ledger records them only when ``size_on_ledger``
    was asked and allowed.
    """
    p = ctx.manifest.parameters
    mode = str(p.get("mode", "align"))
    if mode not in ("align", "cardinality"):
        raise ConfigError(f"psi mode must be 'align' or 'cardinality', got '{mode}'", where="parameters")
    deliver = [r for r in ctx.manifest.recipients if r in ctx.manifest.nodes]
    id_col = id_column(ctx)
    guest, hosts = guest_and_hosts(ctx)
    ids = ctx.load([id_col]).column(id_col).to_pylist()
    result = psi_steps(ctx, ids, guest=guest, hosts=hosts, mode=mode, deliver_to=deliver)
    if result is None:
        ctx.public = _ledger_facts(p, {})
        return {}
    out: dict[str, Any] = {}
    if result.role == "guest":
        level = asked_release(p)
        out = {"mode": mode, "size_release": level, **psi.release_sizes(
            result.size, result.pairwise_sizes, level=level,
            rounding=int(p.get("size_rounding", 10)), minimum=int(p.get("size_min", 11)))}
    ctx.public = _ledger_facts(p, out)
    if mode == "align" and result.ids is not None:
        ctx.save_output(
            "aligned_ids",
            pa.table({"position": list(range(len(result.ids))), id_col: result.ids, "row": result.rows}),
        )
    return out
