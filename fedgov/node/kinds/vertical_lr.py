"""Node side of ``vertical-lr`` (training) and ``vertical-lr-score`` (scoring).

Drives the pure role objects of :mod:`fedgov.protocols.vertical_lr` over the
sealed relay. Every data party first aligns its rows with the guest by
pairwise ECDH-PSI (one run per host, so the guest knows, per host, which of
its rows that host has). Two joins:

- ``join = "inner"`` (default; FATE's behaviour): train on the rows every
  party holds;
- ``join = "left"``: train on all the guest's rows; a host that does not know
  a person contributes zeros plus a ``has_record`` indicator (for the
  social-assistance case, "no car registered" is itself a fact).

Besides what the training protocol reveals (docs/protocols/vertical-lr.md),
alignment tells each host the size N of the training set and, for each of its
matched people, only an index into a guest-side order that the guest shuffles
with a job-specific key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from fedgov.errors import ConfigError, FedgovError
from fedgov.node.context import TaskContext, id_column, numeric
from fedgov.node.kinds.psi import guest_and_hosts, psi_pairwise
from fedgov.params.vertical_lr import check_model_id, mask_refusals
from fedgov.protocols import vertical_lr as vlr
from fedgov.protocols.psi import normalize_ids

if TYPE_CHECKING:  # pragma: no cover
    from fedgov.manifest import Manifest

#: manifest parameters consumed here rather than by VlrParams
NODE_PARAMS = ("join", "psi_workers", "model", "shapley")


def _params(ctx: TaskContext) -> tuple[vlr.VlrParams, str]:
    raw = dict(ctx.manifest.parameters)
    join = str(raw.get("join", "inner"))
    if join not in ("inner", "left"):
        raise ConfigError(f"join must be 'inner' or 'left', got '{join}'", where="parameters")
    return vlr.VlrParams.from_json({k: v for k, v in raw.items() if k not in NODE_PARAMS}), join


def _roles(ctx: TaskContext) -> tuple[str, list[str], str]:
    arbiter = ctx.manifest.arbiter
    if arbiter is None:
        raise ConfigError(
            "vertical-lr needs a participant with role 'arbiter' (the key holder)", where="manifest"
        )
    guest, hosts = guest_and_hosts(ctx)
    if not hosts:
        raise ConfigError("vertical-lr needs at least one host", where="manifest")
    return guest, hosts, arbiter


def feature_matrix(
    table: pa.Table, fields: Sequence[str], schema_types: dict[str, tuple[str, tuple]]
) -> tuple[np.ndarray, list[str]]:
    """Numeric model features from a party's own columns, computed locally.

    int/float as is, bool as 0/1, category one-hot over the schema's values;
    missing values take the column mean (of this party's rows). Text, dates
    and IDs cannot be features.
    """
    cols: list[np.ndarray] = []
    names: list[str] = []
    for f in fields:
        ftype, values = schema_types[f]
        col = table.column(f)
        if ftype in ("int", "float", "bool"):
            a = numeric(col.to_pylist())
            mean = np.nanmean(a) if np.isfinite(a).any() else 0.0
            a[~np.isfinite(a)] = mean
            cols.append(a)
            names.append(f)
        elif ftype == "category":
            vals = col.to_pylist()
            for v in values:
                cols.append(np.array([1.0 if x == v else 0.0 for x in vals]))
                names.append(f"{f}={v}")
        else:
            raise ConfigError(f"field '{f}' of type {ftype} cannot be a model feature", where="vertical-lr")
    if not cols:
        return np.zeros((table.num_rows, 0)), names
    return np.column_stack(cols), names


def _order_key(job_id: str, tag: str) -> bytes:
    return hashlib.sha256(f"fedgov/v1 vlr-order\0{job_id}\0{tag}".encode()).digest()


def align(
    ctx: TaskContext, *, tag: str, dataset: str, guest: str, hosts: list[str], join: str
) -> tuple[pa.Table, np.ndarray, int]:
    """Align this party's rows with the guest; returns (table, slot per row or -1, N).

    The guest's training order is its matched (inner) or all distinct (left)
    rows, shuffled by a job-specific key. For a host, ``slot[i]`` is the
    training position of its row ``i`` (``-1``: not used).
    """
    me = ctx.participant
    id_col = id_column(ctx)
    fields = [f for f in me.fields if f != id_col]
    table = ctx.load([id_col, *fields], dataset=dataset)
    ids = normalize_ids(table.column(id_col).to_pylist(), where=f"{ctx.me}/{dataset}")
    if ctx.me == guest:
        results = psi_pairwise(ctx, ids, guest=guest, hosts=hosts, prefix=f"vlr/{tag}/psi")
        assert isinstance(results, dict)
        pair_rows = {h: r.rows for h, r in results.items() if r.rows is not None}
        first = {}
        for i, x in enumerate(ids):
            first.setdefault(x, i)
        if join == "inner":
            keep = set(first.values())
            for rows in pair_rows.values():
                keep &= set(rows.tolist())
        else:
            keep = set(first.values())
        key = _order_key(ctx.job_id, tag)
        order = sorted(keep, key=lambda r: hashlib.sha256(key + ids[r].encode()).digest())
        slot = np.full(len(ids), -1, dtype=np.int64)
        slot[np.array(order, dtype=np.int64)] = np.arange(len(order))
        for h, rows in pair_rows.items():
            ctx.channel.send(
                h, f"vlr/{tag}/slots", struct.pack("<q", len(order)) + slot[rows].astype("<i8").tobytes()
            )
        return table, slot, len(order)
    res = psi_pairwise(ctx, ids, guest=guest, hosts=hosts, prefix=f"vlr/{tag}/psi")
    assert not isinstance(res, dict) and res.rows is not None
    msg = ctx.channel.recv(guest, f"vlr/{tag}/slots")
    (n,) = struct.unpack_from("<q", msg)
    pos = np.frombuffer(msg, dtype="<i8", offset=8)
    if len(pos) != len(res.rows) or (pos >= n).any():
        raise FedgovError("guest sent an alignment that does not match the intersection", where=ctx.job_id)
    slot = np.full(table.num_rows, -1, dtype=np.int64)
    slot[res.rows] = pos
    return table, slot, int(n)


def _party_matrix(
    ctx: TaskContext, table: pa.Table, slot: np.ndarray, n: int, *, join: str, is_guest: bool
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(X in training order, y for the guest, feature names)."""
    me = ctx.participant
    id_col = id_column(ctx)
    label = me.extra.get("label") if is_guest else None
    if is_guest and not label:
        raise ConfigError("the guest must name its label column (label = ...)", where=ctx.job_id)
    feats = [f for f in me.fields if f not in (id_col, label)]
    x_rows, names = feature_matrix(table, feats, ctx.notes["schema_types"])
    used = slot >= 0
    x = np.zeros((n, x_rows.shape[1]))
    x[slot[used]] = x_rows[used]
    y = None
    if is_guest:
        labels = numeric(table.column(str(label)).to_pylist())
        y = np.zeros(n)
        y[slot[used]] = labels[used]
        if not np.isfinite(y).all() or not np.isin(y, (0.0, 1.0)).all():
            raise ConfigError(f"label '{label}' must be 0/1 on every training row", where=ctx.job_id)
    elif join == "left":
        present = np.zeros((n, 1))
        present[slot[used]] = 1.0
        x = np.hstack([x, present])
        names = [*names, "has_record"]
    return x, y, names


def _hello(ctx: TaskContext, arbiter: str, info: dict[str, Any]) -> bytes:
    ctx.channel.send(arbiter, "vlr/hello", json.dumps(info).encode())
    return ctx.channel.recv(arbiter, "vlr/context")


@dataclass(frozen=True)
class ArbiterPlan:
    """Every decryption the arbiter will serve in one job, read from the signed manifest alone.

    Never from a party's message: a guest cannot ask for an evaluation the
    manifest did not name, nor for more coalition re-scorings than its
    ``shapley`` flag implies.
    """

    training: bool
    validation_per_epoch: bool  # total validation scores once per epoch (patience > 0)
    eval_scores: bool  # one per-row score decryption of the evaluation (or scoring) rows
    coalitions: int  # per-row coalition score decryptions (Shapley re-scoring)


def arbiter_plan(manifest: Manifest, params: vlr.VlrParams, guest: str, hosts: list[str], *, training: bool) -> ArbiterPlan:
    """The arbiter's schedule for ``manifest`` (see :class:`ArbiterPlan`)."""
    if not training:
        return ArbiterPlan(False, False, True, 0)
    has_eval = bool(manifest.participant(guest).extra.get("eval_dataset"))
    shapley = bool(manifest.parameters.get("shapley", False)) and has_eval
    return ArbiterPlan(
        True, params.patience > 0, has_eval, (2 ** len(hosts) - 2) if shapley else 0
    )


def _agreed(hello: dict[str, dict[str, Any]], key: str) -> Any:
    values = {json.dumps(h.get(key), sort_keys=True) for h in hello.values()}
    if len(values) != 1:
        raise FedgovError(f"the parties disagree on '{key}'", where="vertical-lr arbiter")
    return next(iter(hello.values())).get(key)


def _arbiter(
    ctx: TaskContext, params: vlr.VlrParams, guest: str, hosts: list[str], *, training: bool
) -> dict[str, Any]:
    plan = arbiter_plan(ctx.manifest, params, guest, hosts, training=training)
    hello = {p: json.loads(ctx.channel.recv(p, "vlr/hello")) for p in [guest, *hosts]}
    if training:
        counts = {p: int(h["features"]) for p, h in hello.items()}
        arb = vlr.Arbiter(params, counts)
        # every party derives the batch count from N it learned in alignment: all must agree
        n_batches = int(_agreed(hello, "batches"))
    else:
        # scoring: the model's parameters, which every party holds in its own stored part
        arb = vlr.Arbiter(vlr.VlrParams.from_json(_agreed(hello, "params")), {})
        n_batches = 0
    public = arb.public_context()
    for p in [guest, *hosts]:
        ctx.channel.send(p, "vlr/context", public)
    if training:
        for _epoch in range(params.epochs):
            for _b in range(n_batches):
                for h in hosts:
                    ctx.channel.send(
                        h, "vlr/grad-reply", arb.decrypt_masked(h, ctx.channel.recv(h, "vlr/grad"))
                    )
                ctx.channel.send(
                    guest, "vlr/grad-reply", arb.decrypt_masked(guest, ctx.channel.recv(guest, "vlr/grad"))
                )
            if plan.validation_per_epoch:
                blob = ctx.channel.recv(guest, "vlr/val")
                ctx.channel.send(guest, "vlr/val-reply", arb.decrypt_masked(guest, blob, expect="scores"))
            if ctx.channel.recv(guest, "vlr/epoch") != b"\x01":
                break
    if plan.eval_scores:
        blob = ctx.channel.recv(guest, "vlr/score-total")
        ctx.channel.send(guest, "vlr/score-reply", arb.decrypt_masked(guest, blob, expect="scores"))
    for _ in range(plan.coalitions):
        blob = ctx.channel.recv(guest, "vlr/coalition")
        ctx.channel.send(guest, "vlr/coalition-reply", arb.decrypt_masked(guest, blob, expect="scores"))
    # what this process decrypted, kept locally for its operator's audit (and tests)
    ctx.save_json("arbiter-decryptions", dict(arb.decrypted))
    return {}


def _score_rows(
    ctx: TaskContext,
    model: vlr.ModelPart,
    x: np.ndarray,
    public: bytes,
    guest: str,
    hosts: list[str],
    arbiter: str,
    *,
    labels: np.ndarray | None = None,
    coalitions: dict[str, float] | None = None,
) -> np.ndarray | None:
    """The scoring flow: hosts send encrypted partial scores; the guest learns only totals."""
    if ctx.me != guest:
        ctx.channel.send(guest, "vlr/score", vlr.HostScorer(model, x, public).partial_scores())
        return None
    scorer = vlr.GuestScorer(model, x, public, hosts)
    host_scores = {h: ctx.channel.recv(h, "vlr/score") for h in hosts}
    ctx.channel.send(arbiter, "vlr/score-total", scorer.masked_total(host_scores))
    scores = scorer.scores(ctx.channel.recv(arbiter, "vlr/score-reply"))
    if labels is not None and coalitions is not None:
        # model contribution: re-score with each coalition of hosts' partial
        # scores (no retraining); the guest alone is the empty coalition
        coalitions[""] = vlr.auc(labels, scorer.u)
        coalitions["+".join(sorted(hosts))] = vlr.auc(labels, scores)
        for size in range(1, len(hosts)):
            for subset in itertools.combinations(sorted(hosts), size):
                blob = scorer.masked_coalition_total({h: host_scores[h] for h in subset})
                ctx.channel.send(arbiter, "vlr/coalition", blob)
                reply = ctx.channel.recv(arbiter, "vlr/coalition-reply")
                coalitions["+".join(subset)] = vlr.auc(labels, scorer.scores(reply))
    return scores


def run_vertical_lr(ctx: TaskContext) -> dict[str, Any]:
    """Train; the guest releases evaluation metrics, every party keeps its model part."""
    params, join = _params(ctx)
    guest, hosts, arbiter = _roles(ctx)
    has_eval = bool(ctx.manifest.participant(guest).extra.get("eval_dataset"))
    if ctx.me == arbiter:
        return _arbiter(ctx, params, guest, hosts, training=True)
    is_guest = ctx.me == guest
    me = ctx.participant
    table, slot, n = align(ctx, tag="train", dataset=me.dataset, guest=guest, hosts=hosts, join=join)
    x, y, names = _party_matrix(ctx, table, slot, n, join=join, is_guest=is_guest)
    train_rows, _ = vlr.split_rows(n, params)
    n_batches = len(vlr.batches_for(len(train_rows), params))
    info: dict[str, Any] = {"features": x.shape[1] + (1 if is_guest else 0), "batches": n_batches}
    shapley = bool(ctx.manifest.parameters.get("shapley", False)) and has_eval
    public = _hello(ctx, arbiter, info)
    started = time.monotonic()
    epochs = 0
    if is_guest:
        g = vlr.Guest(ctx.me, params, x, y, public, hosts)
        party: vlr.Guest | vlr.Host = g
        g.prepare()
        for e in range(params.epochs):
            for b in range(n_batches):
                resid = g.residual_for_hosts(e, b, {h: ctx.channel.recv(h, "vlr/score") for h in hosts})
                for h in hosts:
                    ctx.channel.send(h, "vlr/resid", resid)
                ctx.channel.send(arbiter, "vlr/grad", g.masked_gradient(e, b))
                g.apply_unmasked(ctx.channel.recv(arbiter, "vlr/grad-reply"))
            epochs += 1
            reply = None
            if params.patience:
                vs = {h: ctx.channel.recv(h, "vlr/val") for h in hosts}
                ctx.channel.send(arbiter, "vlr/val", g.masked_validation_total(vs))
                reply = ctx.channel.recv(arbiter, "vlr/val-reply")
            go = g.end_epoch(reply) and e + 1 < params.epochs
            for p in [*hosts, arbiter]:
                ctx.channel.send(p, "vlr/epoch", b"\x01" if go else b"\x00")
            if not go:
                break
        best = g.best_epoch if params.patience else None
        for h in hosts:
            ctx.channel.send(h, "vlr/best", struct.pack("<i", -1 if best is None else best))
        g.finish(best)
    else:
        hp = vlr.Host(ctx.me, params, x, public)
        party = hp
        hp.prepare()
        for e in range(params.epochs):
            for b in range(n_batches):
                ctx.channel.send(guest, "vlr/score", hp.partial_scores(e, b))
                hp.precompute()  # while the guest works on the residual
                hp.prefetch(e, b)  # a wide host's uncached diagonals, also while it waits
                ctx.channel.send(
                    arbiter, "vlr/grad", hp.masked_gradient(ctx.channel.recv(guest, "vlr/resid"))
                )
                hp.apply_unmasked(ctx.channel.recv(arbiter, "vlr/grad-reply"))
            epochs += 1
            if params.patience:
                ctx.channel.send(guest, "vlr/val", hp.validation_scores())
            hp.snapshot()
            if ctx.channel.recv(guest, "vlr/epoch") != b"\x01":
                break
        (best,) = struct.unpack("<i", ctx.channel.recv(guest, "vlr/best"))
        hp.finish(None if best < 0 else best)
    seconds_per_epoch = (time.monotonic() - started) / max(epochs, 1)
    model = party.model(model_id=ctx.job_id)
    ctx.save_json("model", {"features": names, "join": join, "part": model.to_json()})
    out: dict[str, Any] = {}
    if has_eval:
        eval_ds = str(me.extra.get("eval_dataset") or "")
        if not eval_ds:
            raise ConfigError("the guest names eval_dataset, so every data party must", where=ctx.job_id)
        et, eslot, en = align(ctx, tag="eval", dataset=eval_ds, guest=guest, hosts=hosts, join=join)
        ex, ey, _ = _party_matrix(ctx, et, eslot, en, join=join, is_guest=is_guest)
        coalitions: dict[str, float] | None = {} if shapley and is_guest else None
        scores = _score_rows(ctx, model, ex, public, guest, hosts, arbiter, labels=ey, coalitions=coalitions)
        if is_guest and scores is not None and ey is not None:
            out["eval"] = {**vlr.metrics(ey, scores), "rows": en, "roc": vlr.roc_points(ey, scores)}
            if coalitions is not None:
                out["eval"].update(coalitions=coalitions, coalition_metric="auc")
    if is_guest:
        out.update(
            intersection_size=n,
            join=join,
            epochs=epochs,
            best_epoch=best,
            seconds_per_epoch=round(seconds_per_epoch, 3),
            bytes_sent_by_guest=ctx.channel.bytes_sent,
            model_version=ctx.job_id,
        )
    return out


def run_vertical_lr_score(ctx: TaskContext) -> dict[str, Any]:
    """Score new rows with a stored model; only the guest learns the scores (kept locally)."""
    model_job = check_model_id(ctx.manifest.parameters.get("model"))
    guest, hosts, arbiter = _roles(ctx)
    if ctx.me == arbiter:
        return _arbiter(ctx, vlr.VlrParams(), guest, hosts, training=False)
    stored = ctx.load_json(model_job, "model")
    model = vlr.ModelPart.from_bytes(json.dumps(stored["part"]))
    # the stored part's masks and precision must still meet this department's floors
    # (they were checked when the model was trained; the owner may have raised them since)
    late = mask_refusals(model.params, ctx.decision.disclosure, source=ctx.decision.disclosure_source)
    if late:
        raise ConfigError("; ".join(str(r) for r in late), where=f"model {model_job}")
    join = str(stored.get("join", "inner"))
    is_guest = ctx.me == guest
    me = ctx.participant
    table, slot, n = align(ctx, tag="score", dataset=me.dataset, guest=guest, hosts=hosts, join=join)
    if is_guest:
        # the guest's label column may be absent for new applicants
        me_fields = [f for f in me.fields if f != me.extra.get("label")]
        x_rows, _ = feature_matrix(
            table, [f for f in me_fields if f != id_column(ctx)], ctx.notes["schema_types"]
        )
        used = slot >= 0
        x = np.zeros((n, x_rows.shape[1]))
        x[slot[used]] = x_rows[used]
    else:
        x, _, _ = _party_matrix(ctx, table, slot, n, join=join, is_guest=False)
    public = _hello(ctx, arbiter, {"params": model.params})
    scores = _score_rows(ctx, model, x, public, guest, hosts, arbiter)
    if not is_guest or scores is None:
        return {}
    id_col = id_column(ctx)
    order = np.argsort(slot[slot >= 0])
    rows = np.nonzero(slot >= 0)[0][order]
    ids = table.column(id_col).take(pa.array(rows)).to_pylist()
    prob = 1 / (1 + np.exp(-scores))
    ctx.save_output("scores", pa.table({id_col: ids, "score": scores, "probability": prob}))
    return {"scored": n, "model_version": model_job}
