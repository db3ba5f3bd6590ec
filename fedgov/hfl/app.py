"""The Flower App of a ``horizontal-fl`` job: ServerApp and ClientApp (Message API).

Model: L2-regularised logistic regression (:mod:`fedgov.hfl.logreg`), FedAvg
weighted by sample count. Each round the ServerApp sends every region the
global model of each *track* (``all`` plus, when contributions are requested,
``-<region>`` for leave-one-out); a region trains locally on its own table
and answers, per track it belongs to, ``[n_k * w_k, n_k]`` either in the
clear (``mode=plain``) or CKKS-encrypted to the job's key holder
(``mode=encrypted``) as a raw-bytes :class:`~flwr.app.Array` in an
:class:`~flwr.app.ArrayRecord`. The ServerApp sums per track (ciphertexts in
encrypted mode; it loads only a public context and asserts it has no secret
key), gets the sums decrypted by the key holder and divides.

Reply checking (Flower does not fail ``flwr run`` when a ClientApp fails):
every reply is validated; error replies, malformed content and regions that
do not answer within ``round-timeout`` are dropped from the round and
reported. If fewer than ``min-clients`` regions remain, the ServerApp writes
``{"status": "failed", "reason": ...}`` to ``result-path`` and raises, so the
run ends failed and fedgov can report the reason.

Run config keys are declared in the app's ``pyproject.toml`` (see
:func:`fedgov.hfl.deployment.write_flower_app`). Node config keys read by
the ClientApp: ``region`` (name), ``data-path`` (feature CSV),
``he-context-sha256`` (pin of the key holder's public context).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedgov.errors import CryptoError, FedgovError, JobFailed
from fedgov.hfl import logreg
from fedgov.hfl import secure_agg as sa
from fedgov.hfl.evaluate import ALL

__all__ = ["client_app", "server_app"]

server_app = ServerApp()
client_app = ClientApp()

#: Fewest contributors a leave-one-out track needs to be aggregated in a round.
MIN_TRACK_CONTRIBUTORS = 2


def _bytes_array(data: bytes) -> Array:
    return Array(dtype="bytes", shape=(len(data),), stype="raw", data=data)


# --------------------------------------------------------------------------- client


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    """Train each track locally; reply with (optionally encrypted) weighted updates.

    Leaks to the aggregator: in plain mode the weighted weights and sample
    count; in encrypted mode only ciphertexts under the pinned key holder
    context. Raises (→ Flower error reply) on bad input.
    """
    region = str(context.node_config["region"])
    X, y, _ = logreg.load_table(str(context.node_config["data-path"]))
    cfg = msg.content.config_records["config"]
    models = msg.content.array_records["models"]
    mode = str(cfg["mode"])
    ctx = None
    if mode == "encrypted":
        pin = str(context.node_config.get("he-context-sha256", ""))
        if not pin:
            raise CryptoError("node has no pinned key holder fingerprint (he-context-sha256)")
        ctx = sa.load_public_context(msg.content.array_records["he"]["context"].data, pin)
    n = float(len(y))
    out: dict[str, Array] = {}
    for track in models:
        if track != ALL and track == f"-{region}":
            continue
        w = models[track].numpy().astype(np.float64)
        w = logreg.local_train(w, X, y, steps=int(cfg["local-steps"]), lr=float(cfg["lr"]),
                               l2=float(cfg["l2"]))
        clip = float(cfg.get("dp-clip", 0.0))
        if clip > 0.0:
            w = _local_dp(models[track].numpy().astype(np.float64), w, clip,
                          float(cfg.get("dp-noise", 0.0)))
        vec = np.concatenate([w * n, [n]])
        out[track] = _bytes_array(sa.encrypt_vector(ctx, vec)) if ctx is not None \
            else Array(vec)
    content = RecordDict({"updates": ArrayRecord(out),
                          "info": ConfigRecord({"region": region})})
    return Message(content, reply_to=msg)


def _local_dp(w0: np.ndarray, w: np.ndarray, clip: float, noise: float) -> np.ndarray:
    """Clip the model update to L2 norm ``clip`` and add N(0, (noise*clip)^2), using Flower's DP helpers."""
    from flwr.supercore.differential_privacy import (
        add_gaussian_noise_inplace,
        clip_inputs_inplace,
    )

    delta = [w - w0]
    clip_inputs_inplace(delta, clip)
    if noise > 0.0:
        add_gaussian_noise_inplace(delta, noise * clip)
    return w0 + delta[0]


# --------------------------------------------------------------------------- server


class _Result:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"status": "running", "rounds": []}

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)

    def fail(self, reason: str) -> None:
        self.data["status"] = "failed"
        self.data["reason"] = reason
        self.write()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    result = _Result(Path(str(cfg["result-path"])))
    try:
        _run(grid, cfg, result)
    except FedgovError as exc:
        result.fail(str(exc))
        raise
    except Exception as exc:
        result.fail(f"ServerApp crashed: {type(exc).__name__}: {exc}")
        result.data["traceback"] = traceback.format_exc()
        result.write()
        raise


def _run(grid: Grid, cfg: dict[str, Any], result: _Result) -> None:
    mode = str(cfg["mode"])
    rounds = int(cfg["rounds"])
    min_clients = int(cfg["min-clients"])
    expected = int(cfg["expected-clients"])
    timeout = float(cfg["round-timeout"])
    job = str(cfg["job-id"])
    res = result.data
    res.update({"mode": mode, "job_id": job, "min_clients": min_clients})

    # 1. the regions' SuperNodes, as registered by the coordinator
    regions: dict[int, str] = {}
    for item in str(cfg["region-nodes"]).split(","):
        name, _, nid = item.partition("=")
        if name and nid:
            regions[int(nid)] = name
    deadline = time.monotonic() + float(cfg["node-wait-timeout"])
    online: set[int] = set()
    while time.monotonic() < deadline:
        online = set(grid.get_node_ids()) & set(regions)
        if len(online) >= min(expected, len(regions)):
            break
        time.sleep(0.3)
    if len(online) < min_clients:
        raise JobFailed(f"only {len(online)} region SuperNode(s) came online "
                        f"({', '.join(sorted(regions[n] for n in online)) or 'none'}); the "
                        f"job needs at least min-clients={min_clients}")
    res["regions"] = sorted(regions.values())

    # 2. crypto set-up: a public context only
    ctx = None
    broker = None
    ctx_bytes = b""
    if mode == "encrypted":
        ctx_bytes = Path(str(cfg["he-context-path"])).read_bytes()
        ctx = sa.load_public_context(ctx_bytes, str(cfg["he-context-sha256"]))
        res["aggregator_context_is_private"] = bool(ctx.is_private())
        broker = sa.DecryptBroker(Path(str(cfg["coordinator-kit"])), str(cfg["key-holder"]),
                                  int(cfg["broker-port"]), host=str(cfg["broker-host"]))
    elif mode != "plain":
        raise JobFailed(f"unknown mode {mode!r} (plain or encrypted)")

    try:
        dim = int(cfg["dim"])  # features + intercept; no validation data here
        if dim < 2:
            raise JobFailed(f"run config dim = {dim}: the model needs at least one feature")
        tracks = [ALL]
        if bool(cfg["contribution"]):
            tracks += [f"-{r}" for r in sorted(regions.values())]
        rng = np.random.default_rng(int(cfg["seed"]))
        weights = {t: np.zeros(dim) if t == ALL else rng.normal(0.0, 0.01, dim)
                   for t in tracks}
        round_secs: list[float] = []
        for rnd in range(1, rounds + 1):
            t0 = time.monotonic()
            content = RecordDict({
                "models": ArrayRecord({t: Array(w) for t, w in weights.items()}),
                "config": ConfigRecord({
                    "mode": mode, "local-steps": int(cfg["local-steps"]),
                    "lr": float(cfg["lr"]), "l2": float(cfg["l2"]),
                    "dp-clip": float(cfg["dp-clip"]), "dp-noise": float(cfg["dp-noise"]),
                }),
            })
            if mode == "encrypted":
                content["he"] = ArrayRecord({"context": _bytes_array(ctx_bytes)})
            ex = _exchange(grid, list(regions), "train", content, rnd, timeout)
            ok: dict[str, ArrayRecord] = {}
            errors = dict(ex["errors"])
            for nid, reply in ex["ok"].items():
                region = regions[nid]
                rec = reply.content.array_records.get("updates")
                info = reply.content.config_records.get("info")
                if info is None or str(info.get("region")) != region:
                    errors[region] = "reply names a different region than its SuperNode"
                    continue
                want = [t for t in tracks if t != f"-{region}"]
                if rec is None or sorted(rec) != sorted(want):
                    errors[region] = "reply lacks the expected update tracks"
                    continue
                ok[region] = rec
            missing = sorted(regions[n] for n in ex["missing"])
            entry = {"round": rnd, "participants": sorted(ok), "missing": missing,
                     "errors": {regions.get(k, str(k)) if isinstance(k, int) else k: v
                                for k, v in errors.items()}}
            res["rounds"].append(entry)
            if len(ok) < min_clients:
                raise JobFailed(
                    f"round {rnd}: only {len(ok)} of {len(regions)} regions returned a valid "
                    f"update (missing: {', '.join(missing) or 'none'}; errors: "
                    f"{entry['errors'] or 'none'}); the strategy needs min-clients="
                    f"{min_clients}")
            t1 = time.monotonic()
            sums = _aggregate(ok, tracks, mode, ctx, broker, job, rnd)
            entry["aggregate_seconds"] = round(time.monotonic() - t1, 4)
            entry["exchange_seconds"] = round(t1 - t0, 4)
            skipped = [t[1:] for t in tracks if t != ALL and t not in sums]
            if skipped:
                entry["loo_tracks_skipped"] = skipped
            for t, s in sums.items():
                if s[-1] <= 0:
                    raise JobFailed(f"round {rnd}: track {t} has no samples")
                weights[t] = s[:-1] / s[-1]
            round_secs.append(time.monotonic() - t0)
            entry["seconds"] = round(round_secs[-1], 4)
            result.write()
            _round_barrier(str(cfg.get("test-round-barrier", "")), rnd, timeout)

        # no validation here: the region holding the held-out set evaluates these models where
        # its data is and returns only the metrics (fedgov.hfl.evaluate)
        res["weights"] = weights[ALL].tolist()
        res["track_weights"] = {t: w.tolist() for t, w in weights.items()}
        res["seconds_per_round"] = float(np.mean(round_secs)) if round_secs else 0.0
        res["status"] = "completed"
        result.write()
    finally:
        if broker is not None:
            broker.stop()


def _round_barrier(prefix: str, rnd: int, timeout: float) -> None:
    """Tests only (empty ``prefix`` in every real run): wait for ``<prefix>.<rnd>`` before the next round.

    Lets a test act between two rounds (drop a region) without racing the
    next round's messages. Waits at most ``timeout``.
    """
    if not prefix:
        return
    end = time.monotonic() + timeout
    flag = Path(f"{prefix}.{rnd}")
    while not flag.exists() and time.monotonic() < end:
        time.sleep(0.05)


def _exchange(grid: Grid, nodes: list[int], mtype: str, content: RecordDict, rnd: int,
              timeout: float) -> dict[str, Any]:
    msgs = [Message(content, dst_node_id=n, message_type=mtype, group_id=str(rnd))
            for n in nodes]
    # Own pull loop: Grid.send_and_receive sleeps 3 s between pulls.
    pending = set(grid.push_messages(msgs))
    replies: list[Message] = []
    end = time.monotonic() + timeout
    while pending and time.monotonic() < end:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(r.metadata.reply_to_message_id for r in got)
        if pending:
            time.sleep(0.1)
    ok: dict[int, Message] = {}
    errors: dict[int, str] = {}
    for r in replies:
        src = r.metadata.src_node_id
        if r.has_error():
            errors[src] = f"ClientApp error {r.error.code}: {r.error.reason}"[:500]
        else:
            ok[src] = r
    missing = [n for n in nodes if n not in ok and n not in errors]
    return {"ok": ok, "errors": errors, "missing": missing}


def _aggregate(ok: dict[str, ArrayRecord], tracks: list[str], mode: str, ctx: Any,
               broker: sa.DecryptBroker | None, job: str, rnd: int) -> dict[str, np.ndarray]:
    per_track: dict[str, list[Array]] = {t: [] for t in tracks}
    for rec in ok.values():
        for t in rec:
            per_track[t].append(rec[t])
    # A leave-one-out track with a single contributor would reveal that
    # region's update (and the key holder refuses it): skip it this round.
    per_track = {t: a for t, a in per_track.items()
                 if a and (t == ALL or len(a) >= MIN_TRACK_CONTRIBUTORS)}
    if mode == "plain":
        return {t: np.sum([a.numpy().astype(np.float64) for a in arrs], axis=0)
                for t, arrs in per_track.items()}
    assert broker is not None
    summed = {t: (sa.sum_ciphertexts(ctx, [a.data for a in arrs]), len(arrs))
              for t, arrs in per_track.items()}
    return broker.decrypt(job, rnd, summed)
