"""Node side of ``horizontal-fl``: Flower's deployment engine driven through fedgov jobs.

Participants (see ``examples/horizontal_fl/manifest.toml``):

- **regions** (every participant that is not an arbiter, usually
  ``role = "region"``): bureaus holding same-schema tables. Each exports its
  own rows through ``ctx.load`` (only the declared fields, after its own
  policy check) to a CSV in its private output area, creates a SuperNode
  authentication key pair (the private key never leaves the node) and runs a
  SuperNode whose ClientApp reads that CSV. Exactly one region names
  ``eval_dataset``: the labelled validation table it keeps; after training it
  scores the final model of every track (all regions, and each
  leave-one-out) on it locally and sends the aggregator one AUC per track.
  No held-out row, label or score leaves it (:mod:`fedgov.hfl.evaluate`).
- **aggregator** (``role = "arbiter"``, named by ``parameters.aggregator``;
  a data-less node at the coordinator host): runs the SuperLink (TLS with a
  per-job CA, SuperNode authentication, Control API loopback-only) and the
  ServerApp; registers the regions' public keys; signs the key holder's CSR
  for the decryption broker; reports the result.
- **key holder** (``role = "arbiter"``, named by ``parameters.key_holder``;
  required unless ``encrypted = false``): creates the CKKS keys (the secret
  context never leaves it), sends the public context to the aggregator and its
  fingerprint *directly* to every region (so the aggregator cannot substitute
  a key it holds), and decrypts only sums, in a thread of the node process.

Sealed messages (``ctx.channel``), all JSON:

====================  =================  =======================================
step                  from → to          content
====================  =================  =======================================
``hfl/hello``         region → agg.      SuperNode public key, feature names
``hfl/eval-models``   agg. → val. region final weights per track (or ``ok = false``)
``hfl/eval-metrics``  val. region → agg  one AUC per track, row count
``hfl/kh-hello``      key holder → agg.  CSR (TLS), public CKKS context, sha256
``hfl/pin``           key holder → reg.  sha256 of the public context
``hfl/kh-cert``       agg. → key holder  signed cert, job CA, broker address
``hfl/link``          agg. → region      SuperLink address, job CA certificate
``hfl/stop``          agg. → all         job over (``ok`` + reason)
====================  =================  =======================================

Every process Flower spawns belongs to a :class:`~fedgov.hfl.deployment.Deployment`
(one per node) whose ``stop`` runs in ``finally`` and also as soon as the
coordinator aborts the job (``ctx.abort``).

Addresses: the aggregator's SuperLink and decryption broker bind the
aggregator node's ``[hfl] listen`` (default 127.0.0.1: everything on one host,
as in :class:`~fedgov.runner.LocalFederation`); with ``listen = "0.0.0.0"``
regions and the key holder on other hosts dial ``[hfl] advertise``, which the
job's SuperLink certificate names. Control and Runtime APIs still answer only
loopback peers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fedgov.crypto import kits, pki
from fedgov.errors import ConfigError, FedgovError, JobFailed
from fedgov.hfl import secure_agg
from fedgov.hfl.deployment import (
    DEFAULT_PARAMS,
    Deployment,
    _free_port,
    generate_supernode_keys,
    hostport,
)
from fedgov.hfl.evaluate import contribution, track_aucs
from fedgov.hfl.logreg import LABEL
from fedgov.node.context import TaskContext
from fedgov.node.kinds.vertical_lr import feature_matrix
from fedgov.params.horizontal_fl import MIN_CLIENTS_FLOOR

log = logging.getLogger(__name__)

#: manifest parameters consumed here rather than passed to the Flower app
NODE_PARAMS = ("aggregator", "key_holder", "encrypted")


def _flower_params(ctx: TaskContext) -> dict[str, Any]:
    """Manifest parameters (``local_steps`` or ``local-steps``) → the app's run config."""
    out = dict(DEFAULT_PARAMS)
    for k, v in ctx.manifest.parameters.items():
        if k in NODE_PARAMS:
            continue
        key = k.replace("_", "-")
        if key not in DEFAULT_PARAMS:
            raise ConfigError(
                f"unknown horizontal-fl parameter '{k}' (known: {', '.join(sorted(DEFAULT_PARAMS))}, "
                f"{', '.join(NODE_PARAMS)})",
                where="parameters",
            )
        out[key] = type(DEFAULT_PARAMS[key])(v)
    if int(out["min-clients"]) < MIN_CLIENTS_FLOOR:
        raise ConfigError(f"min_clients must be >= {MIN_CLIENTS_FLOOR}", where="parameters")
    return out


def _roles(ctx: TaskContext) -> tuple[str, str | None, list[str], str]:
    """(aggregator, key holder or None, regions, validation region)."""
    params = ctx.manifest.parameters
    arbiters = [p.node for p in ctx.manifest.participants if p.role == "arbiter"]
    agg = str(params.get("aggregator", ""))
    if agg not in arbiters:
        raise ConfigError(
            "parameters.aggregator must name a participant with role 'arbiter' (a data-less node)",
            where="parameters",
        )
    encrypted = bool(params.get("encrypted", True))
    kh: str | None = str(params.get("key_holder", "")) or None
    if encrypted:
        if kh not in arbiters:
            raise ConfigError(
                "an encrypted horizontal-fl job needs parameters.key_holder naming a participant "
                "with role 'arbiter'",
                where="parameters",
            )
        if kh == agg:
            raise ConfigError("the key holder must not be the aggregator", where="parameters")
    else:
        kh = None
    regions = [p.node for p in ctx.manifest.data_participants]
    if not regions:
        raise ConfigError(
            "horizontal-fl needs at least one region (a participant with data)", where="manifest"
        )
    vals = [p.node for p in ctx.manifest.data_participants if p.extra.get("eval_dataset")]
    if len(vals) != 1:
        raise ConfigError(
            "exactly one region must name eval_dataset (the labelled validation set)", where="manifest"
        )
    return agg, kh, regions, vals[0]


def _workdir(ctx: TaskContext) -> Path:
    return Path(str(ctx.notes["state_dir"])) / "hfl" / ctx.job_id


def _send(ctx: TaskContext, to: str, step: str, obj: Any) -> None:
    ctx.channel.send(to, step, json.dumps(obj).encode())


def _recv(ctx: TaskContext, frm: str, step: str, timeout: float = 600.0) -> Any:
    return json.loads(ctx.channel.recv(frm, step, timeout=timeout))


@contextlib.contextmanager
def _stop_on_abort(ctx: TaskContext, dep: Deployment) -> Iterator[None]:
    """Stop ``dep`` as soon as the coordinator aborts the job (and always on exit)."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.3):
            if ctx.abort.is_set():
                log.info("job %s aborted: stopping its Flower processes", ctx.job_id)
                dep.stop()
                return

    th = threading.Thread(target=watch, daemon=True, name=f"hfl-abort-{ctx.job_id}")
    th.start()
    try:
        yield
    finally:
        done.set()
        dep.stop()
        th.join(timeout=5)


def _job_timeout(p: dict[str, Any]) -> float:
    return float(p["node-wait-timeout"]) + int(p["rounds"]) * float(p["round-timeout"]) * 2 + 300.0


# --------------------------------------------------------------------------- regions


def _feature_table(ctx: TaskContext, dataset: str) -> tuple[pa.Table, list[str]]:
    """The participant's rows as numeric features + ``eligible`` (computed locally)."""
    me = ctx.participant
    label = str(me.extra.get("label") or LABEL)
    if label not in me.fields:
        raise ConfigError(f"label column '{label}' must be listed in fields", where=ctx.me)
    id_col = me.extra.get("id")
    feats = [f for f in me.fields if f not in (label, id_col)]
    table = ctx.load([*feats, label], dataset=dataset)
    x, names = feature_matrix(table, feats, ctx.notes["schema_types"])
    y = np.array([np.nan if v is None else float(v) for v in table.column(label).to_pylist()])
    if not np.isin(y, (0.0, 1.0)).all():
        raise ConfigError(f"label '{label}' must be 0/1 on every row", where=f"{ctx.me}/{dataset}")
    cols = {n: x[:, j] for j, n in enumerate(names)}
    cols[LABEL] = y.astype(np.int64)
    return pa.table(cols), names


def _region(ctx: TaskContext, agg: str, kh: str | None, val_region: str, p: dict[str, Any]) -> dict[str, Any]:
    work = _workdir(ctx)
    table, names = _feature_table(ctx, ctx.participant.dataset)
    data_path = ctx.save_output("hfl_train", table)
    dep_dir = work / "deployment"
    _, pub = generate_supernode_keys(dep_dir / "nodes" / ctx.me)
    _send(ctx, agg, "hfl/hello", {"auth_key": pub.read_text().strip(), "features": names})
    held_out = None
    if ctx.me == val_region:
        # the held-out rows stay here: this region evaluates the final models itself
        vt, vnames = _feature_table(ctx, str(ctx.participant.extra["eval_dataset"]))
        if vnames != names:
            raise FedgovError("the validation set's features differ from the training set's", where=ctx.me)
        held_out = (
            np.column_stack([vt.column(n).to_numpy() for n in vnames]) if vnames else np.zeros((vt.num_rows, 0)),
            vt.column(LABEL).to_numpy().astype(np.float64),
        )
    pin = _recv(ctx, kh, "hfl/pin")["sha256"] if kh else ""
    link = _recv(ctx, agg, "hfl/link")
    ca = work / "superlink-ca.crt"
    ca.write_text(link["ca"])
    dep = Deployment(dep_dir, port=int(link["port"]), superlink_ca=ca, advertise=str(link["host"]))
    with _stop_on_abort(ctx, dep):
        conf: dict[str, Any] = {"region": ctx.me, "data-path": str(Path(data_path).resolve())}
        if pin:
            conf["he-context-sha256"] = pin
        dep.start_supernode(ctx.me, conf)
        if held_out is not None:
            ask = _recv(ctx, agg, "hfl/eval-models", timeout=_job_timeout(p))
            if ask.get("ok"):
                regions = [q.node for q in ctx.manifest.data_participants]
                aucs = track_aucs(ask["tracks"], held_out[0], held_out[1], regions)
                _send(ctx, agg, "hfl/eval-metrics", {"aucs": aucs})
        stop = _recv(ctx, agg, "hfl/stop", timeout=_job_timeout(p))
    if not stop.get("ok"):
        raise JobFailed(f"aggregator ended the job: {stop.get('reason', '')}", where=ctx.job_id)
    return {}


# --------------------------------------------------------------------------- key holder


def _key_holder(ctx: TaskContext, agg: str, regions: list[str], p: dict[str, Any]) -> dict[str, Any]:
    work = _workdir(ctx)
    km = secure_agg.create_key_material(work / "keys")
    kit = work / "kit"
    (csr,) = [c for c in kits.make_csr(kit, ctx.me, "node") if c.name == "tls.csr"]
    public = km.public_context.read_bytes()
    _send(
        ctx,
        agg,
        "hfl/kh-hello",
        {"csr": csr.read_text(), "sha256": km.sha256, "public_context": base64.b64encode(public).decode()},
    )
    for r in regions:
        _send(ctx, r, "hfl/pin", {"sha256": km.sha256})
    reply = _recv(ctx, agg, "hfl/kh-cert")
    (kit / "tls.crt").write_text(reply["cert"])
    (kit / "ca.crt").write_text(reply["ca"])
    stop = threading.Event()
    errors: list[str] = []

    def serve() -> None:
        try:
            secure_agg.run_key_holder(
                kit,
                km.secret_context,
                str(reply["broker"]),
                min_contributors=secure_agg.MIN_SUM_CONTRIBUTORS,
                audit_log=work / "decryptions.jsonl",
                stop=stop,
            )
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{type(exc).__name__}: {exc}")

    th = threading.Thread(target=serve, daemon=True, name=f"hfl-keyholder-{ctx.job_id}")
    th.start()
    try:
        msg = _recv(ctx, agg, "hfl/stop", timeout=_job_timeout(p))
    finally:
        stop.set()
        th.join(timeout=20)
    if errors:
        raise JobFailed(f"key holder failed: {errors[0]}", where=ctx.job_id)
    if not msg.get("ok"):
        raise JobFailed(f"aggregator ended the job: {msg.get('reason', '')}", where=ctx.job_id)
    decryptions = 0
    with contextlib.suppress(OSError):
        decryptions = len((work / "decryptions.jsonl").read_text().splitlines())
    ctx.save_json("decryptions", {"requests": decryptions})
    return {}


# --------------------------------------------------------------------------- aggregator


def _aggregator(
    ctx: TaskContext, kh: str | None, regions: list[str], val_region: str, p: dict[str, Any]
) -> dict[str, Any]:
    work = _workdir(ctx)
    dep = Deployment(work / "deployment", listen=str(ctx.notes.get("hfl_listen", "127.0.0.1")),
                     advertise=ctx.notes.get("hfl_advertise"))
    ok, reason = False, "the aggregator failed"
    asked_eval = False
    try:
        with _stop_on_abort(ctx, dep):
            dep.start_superlink()
            hellos = {r: _recv(ctx, r, "hfl/hello") for r in regions}
            features = hellos[regions[0]]["features"]
            for r, h in hellos.items():
                if h["features"] != features:
                    raise FedgovError(f"region {r}'s features differ from {regions[0]}'s", where=ctx.job_id)
            with futures.ThreadPoolExecutor(max_workers=len(regions)) as pool:  # one flwr CLI call each
                found = pool.map(
                    lambda r: dep.register_public_key(r, str(hellos[r]["auth_key"]).encode()), regions
                )
                ids = dict(zip(regions, found, strict=True))
            run_cfg: dict[str, Any] = {
                **{k: p[k] for k in DEFAULT_PARAMS},
                "mode": "encrypted" if kh else "plain",
                "expected-clients": len(regions),
                "job-id": ctx.job_id,
                "result-path": str(dep.workdir / "result.json"),
                "dim": len(features) + 1,
                "region-nodes": ",".join(f"{n}={i}" for n, i in ids.items()),
            }
            if kh:
                khello = _recv(ctx, kh, "hfl/kh-hello")
                csr = work / "keyholder.csr"
                csr.write_text(khello["csr"])
                ident, _hosts = pki.describe_csr(csr)
                if ident.name != kh:
                    raise FedgovError(f"key holder's CSR names '{ident.name}', not '{kh}'", where=ctx.job_id)
                cert = pki.sign_csr(dep.pki_dir / "ca", csr, work / "keyholder.crt")
                public = base64.b64decode(khello["public_context"])
                # refuses a context carrying a secret key or not matching its fingerprint
                secure_agg.load_public_context(public, str(khello["sha256"]))
                pub_path = work / "public.ctx"
                pub_path.write_bytes(public)
                broker_port = _free_port()
                _send(
                    ctx,
                    kh,
                    "hfl/kh-cert",
                    {
                        "cert": cert.read_text(),
                        "ca": dep.ca_cert.read_text(),
                        "broker": hostport(dep.advertise, broker_port),
                    },
                )
                run_cfg.update(
                    {
                        "he-context-path": str(pub_path),
                        "he-context-sha256": str(khello["sha256"]),
                        "coordinator-kit": str(dep.pki_dir / "superlink"),
                        "key-holder": kh,
                        "broker-port": broker_port,
                        "broker-host": dep.listen,
                    }
                )
            for r in regions:
                _send(ctx, r, "hfl/link",
                      {"host": dep.advertise, "port": dep.port, "ca": dep.ca_cert.read_text()})
            res = dep.run_app(run_cfg, timeout=_job_timeout(p))
            # validation where the held-out data is: models out, one AUC per track back
            _send(ctx, val_region, "hfl/eval-models", {"ok": True, "tracks": res.get("track_weights", {})})
            asked_eval = True
            got = _recv(ctx, val_region, "hfl/eval-metrics")
            res.update(contribution({str(k): float(v) for k, v in dict(got["aucs"]).items()}, regions))
            ok, reason = True, ""
    except FedgovError as exc:
        reason = str(exc)
        raise
    finally:
        if not asked_eval:
            with contextlib.suppress(Exception):
                _send(ctx, val_region, "hfl/eval-models", {"ok": False, "reason": reason})
        for t in [*regions, *([kh] if kh else [])]:
            with contextlib.suppress(Exception):
                _send(ctx, t, "hfl/stop", {"ok": ok, "reason": reason})
    rounds = res.get("rounds", [])
    # the ledger's job_completed entry records these numbers (coordinator: result_metrics)
    evaluation = dict(res.get("eval", {}))
    for r in regions:
        evaluation[f"rounds_joined.{r}"] = sum(r in e.get("participants", []) for e in rounds)
    return {
        "auc": res.get("auc_validation"),
        "rounds": len(rounds),
        "participation": [
            {k: e[k] for k in ("round", "participants", "missing", "errors") if k in e} for e in rounds
        ],
        "contribution": res.get("contribution", {}),
        "contribution_method": res.get("contribution_method", ""),
        # coalition AUCs → the coordinator records them as a model_contribution ledger entry
        "eval": evaluation,
        "dp": {"clip": p["dp-clip"], "noise": p["dp-noise"]},
        "mode": run_cfg["mode"],
        "features": features,
        "weights": res.get("weights"),
        "seconds_per_round": res.get("seconds_per_round"),
        "aggregator_context_is_private": res.get("aggregator_context_is_private", False),
        "regions": regions,
        "flower_run_id": res.get("flower_run_id"),
    }


def run_horizontal_fl(ctx: TaskContext) -> dict[str, Any]:
    """Train one logistic-regression model across regions; the aggregator releases the result."""
    agg, kh, regions, val_region = _roles(ctx)
    p = _flower_params(ctx)
    if ctx.me == agg:
        return _aggregator(ctx, kh, regions, val_region, p)
    if ctx.me == kh:
        return _key_holder(ctx, agg, regions, p)
    if ctx.me in regions:
        return _region(ctx, agg, kh, val_region, p)
    raise ConfigError(f"node '{ctx.me}' has no role in this horizontal-fl job", where="manifest")
