"""The ``horizontal-fl`` job kind through the real stack: coordinator, region, aggregator and
key-holder node processes, with Flower's deployment engine started by the nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from fedgov.hfl import logreg
from fedgov.hfl.deployment import DEFAULT_PARAMS, MARKER_ENV
from fedgov.runner import LocalFederation, run_job
from tests.helpers_learning import hfl_manifest, hfl_nodes, node_audit

pytestmark = pytest.mark.slow

#: docs/protocols/horizontal-fl.md: CKKS error ~1e-9 on the weights (2 rounds); 10x margin
WEIGHT_TOL = 1e-8
PARAMS = {"rounds": 2, "local-steps": 20, "min-clients": 2, "round-timeout": 40.0, "node-wait-timeout": 40.0}


def _fedavg(paths: list[str], params: dict) -> np.ndarray:
    p = {**DEFAULT_PARAMS, **params}
    data = [logreg.load_table(path)[:2] for path in paths]
    w = np.zeros(data[0][0].shape[1] + 1)
    for _ in range(int(p["rounds"])):
        ws = [
            logreg.local_train(w, x, y, steps=int(p["local-steps"]), lr=float(p["lr"]), l2=float(p["l2"]))
            * len(y)
            for x, y in data
        ]
        w = np.sum(ws, axis=0) / sum(len(y) for _, y in data)
    return w


def _flower_pids(under: Path) -> list[int]:
    """Live processes of a fedgov Flower deployment whose FLWR_HOME lies under ``under``
    (other sessions' Flower processes on this machine are not ours)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                env = (d / "environ").read_bytes().split(b"\0")
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ours = any(e.startswith(b"FLWR_HOME=" + str(under).encode()) for e in env)
            if ours and any(e.startswith(MARKER_ENV.encode() + b"=") for e in env) and ") Z" not in stat:
                out.append(int(d.name))
    return out


def test_horizontal_fl_job_through_the_coordinator(tmp_path: Path) -> None:
    nodes, regions, val_region, regional = hfl_nodes(tmp_path, households=1500)

    with LocalFederation(tmp_path / "fed", nodes) as fed:
        out = run_job(fed, hfl_manifest(regions, val_region, PARAMS), timeout=110)
        # while the nodes still run: no Flower process (SuperLink, SuperNodes, SuperExec,
        # Server/ClientApps) outlives the job itself
        assert _flower_pids(tmp_path.resolve()) == []
    assert out["job"]["state"] == "succeeded", out["job"]
    res = out["result"]["aggregator"]
    assert set(out["result"]) == {"aggregator"}  # regions and key holder release nothing
    assert res["mode"] == "encrypted"
    # the aggregator process's own files: the CKKS context it summed under has no secret key
    (agg_job,) = list((tmp_path / "fed" / "state" / "aggregator" / "hfl").iterdir())
    assert not ts.context_from((agg_job / "public.ctx").read_bytes()).is_private()
    # validation happened where the held-out data is: nothing of it reached the aggregator
    assert not [p for p in (tmp_path / "fed" / "state" / "aggregator").rglob("*") if "validation" in p.name]
    sent = node_audit(tmp_path / "fed", val_region, out["job"]["job_id"], "relay-send")
    to_agg = [e for e in sent if e["to"] == "aggregator"]
    assert {e["step"] for e in to_agg} == {"hfl/hello", "hfl/eval-metrics"}
    (metrics_msg,) = [e for e in to_agg if e["step"] == "hfl/eval-metrics"]
    assert metrics_msg["envelope_bytes"] < 2048  # one AUC per track, no rows
    assert res["rounds"] == 2
    assert all(e["participants"] == regions for e in res["participation"])
    assert set(res["contribution"]) == set(regions)
    assert _flower_pids(tmp_path.resolve()) == []
    # the same data, plain FedAvg in-process (what run_horizontal_job(encrypted=False) computes;
    # measured equal to 1e-12 AUC): the encrypted job must match it
    w_ref = _fedavg([regional["regions"][r]["path"] for r in regions], PARAMS)
    xv, yv, names = logreg.load_table(regional["validation"]["path"])
    assert res["features"] == names
    auc_ref = logreg.auc(yv, logreg.predict_proba(w_ref, xv))
    # CKKS at scale 2^40 over [n_k w_k, n_k]: documented error ~1e-9 on the weights
    assert float(np.max(np.abs(np.array(res["weights"]) - w_ref))) <= WEIGHT_TOL
    assert abs(res["auc"] - auc_ref) < 0.01 and res["auc"] > 0.8, (res["auc"], auc_ref)
    # the key holder decrypted only sums, once per round
    kh_state = tmp_path / "fed" / "state" / "keyholder" / "hfl"
    (job_dir,) = list(kh_state.iterdir())
    decs = [json.loads(x) for x in (job_dir / "decryptions.jsonl").read_text().splitlines()]
    assert len(decs) == 2 and all(t["contributors"] >= 2 for d in decs for t in d["tracks"])

    # the ledger records each region's data contribution and the leave-one-out family of
    # coalition AUCs; points give each region max(drop, 0) x the published unit
    db = tmp_path / "fed" / "state" / "coordinator" / "ledger.db"
    job_id = out["job"]["job_id"]

    def ledger(*args: str) -> object:
        # department-signed facts are checked against the federation CA
        ca = tmp_path / "fed" / "kits" / "auditor" / "ca.crt"
        proc = subprocess.run([sys.executable, "-m", "fedgov", "ledger", *args, "--db", str(db), "--json",
                               "--ca", str(ca)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    rows = ledger("show", "--job", job_id)
    by_type: dict[str, list] = {}
    for r in rows:
        by_type.setdefault(r["type"], []).append(r)
    assert sorted(c["node"] for c in by_type["contribution"]) == regions
    (model,) = by_type["model_contribution"]
    assert model["validation"] == f"{val_region}/validation" and model["metric"] == "auc"
    family = {"+".join(regions)} | {"+".join(x for x in regions if x != r) for r in regions}
    assert set(model["coalitions"]) == family
    assert model["coalitions"]["+".join(regions)] == pytest.approx(res["auc"], abs=1e-6)
    for r in regions:
        rest = "+".join(x for x in regions if x != r)
        assert model["coalitions"][rest] == pytest.approx(res["auc"] - res["contribution"][r], abs=2e-6)
    (done,) = by_type["job_completed"]
    assert done["metrics"]["aggregator.rounds"] == 2
    assert all(done["metrics"][f"aggregator.eval.rounds_joined.{r}"] == 2 for r in regions)
    pts = {row["dept"]: row for row in ledger("points")["rows"]}
    for r in regions:
        want = max(res["contribution"][r], 0.0) * 10_000.0
        assert pts[r]["model_points"] == pytest.approx(want, abs=0.05), (r, pts[r])
