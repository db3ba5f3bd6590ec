"""Benchmark: horizontal FL over Flower's deployment engine, plain vs CKKS-encrypted.

Three regional bureaus (``fedgov.scenarios.regional``) train one logistic
regression through real SuperLink/SuperNode processes on loopback, once with
plain FedAvg and once with updates encrypted to a separate key holder. A
centralized fit of the same objective (scikit-learn, ``C = 1/(n*l2)``) on the
pooled training rows is the reference. All AUCs are on the same validation
set. ``--json`` prints one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fedgov.hfl import logreg
from fedgov.hfl.deployment import run_horizontal_job
from fedgov.scenarios.regional import generate_regional


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    ap.add_argument("--households", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--local-steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=4.0)
    ap.add_argument("--l2", type=float, default=1e-4)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    base = args.workdir or Path(tempfile.mkdtemp(prefix="fedgov-hfl-bench-"))
    summary = generate_regional(base / "data", households=args.households)
    regions = {r: Path(v["path"]) for r, v in summary["regions"].items()}
    val = Path(summary["validation"]["path"])
    params = {"rounds": args.rounds, "local-steps": args.local_steps, "lr": args.lr,
              "l2": args.l2, "min-clients": 2, "round-timeout": 120.0, "contribution": True}

    t0 = time.monotonic()
    plain = run_horizontal_job(base / "plain", regions, params, validation=val,
                               encrypted=False)
    t1 = time.monotonic()
    enc = run_horizontal_job(base / "encrypted", regions, params, validation=val,
                             key_holder="auditor", encrypted=True)
    t2 = time.monotonic()

    from sklearn.linear_model import LogisticRegression

    parts = [logreg.load_table(p)[:2] for p in regions.values()]
    X = np.vstack([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    Xv, yv, _ = logreg.load_table(val)
    clf = LogisticRegression(C=1.0 / (len(y) * args.l2), max_iter=20000).fit(X, y)
    auc_central = logreg.auc(yv, clf.predict_proba(Xv)[:, 1])

    w_plain = np.asarray(plain["weights"])
    w_enc = np.asarray(enc["weights"])
    out = {
        "regions": {r: v["rows"] for r, v in summary["regions"].items()},
        "validation_rows": summary["validation"]["rows"],
        "rounds": args.rounds,
        "auc_plain": round(plain["auc_validation"], 6),
        "auc_encrypted": round(enc["auc_validation"], 6),
        "auc_centralized": round(auc_central, 6),
        "max_weight_diff": float(np.max(np.abs(w_plain - w_enc))),
        "seconds_per_round_plain": round(plain["seconds_per_round"], 3),
        "seconds_per_round_encrypted": round(enc["seconds_per_round"], 3),
        "aggregate_seconds_per_round_plain": round(float(np.mean(
            [r["aggregate_seconds"] for r in plain["rounds"]])), 4),
        "aggregate_seconds_per_round_encrypted": round(float(np.mean(
            [r["aggregate_seconds"] for r in enc["rounds"]])), 4),
        "job_seconds_plain": round(t1 - t0, 1),
        "job_seconds_encrypted": round(t2 - t1, 1),
        "contribution_encrypted": enc.get("contribution"),
        "aggregator_context_is_private": enc.get("aggregator_context_is_private"),
    }
    out["targets_met"] = {
        "max_weight_diff<=1e-4": out["max_weight_diff"] <= 1e-4,
        "|auc_encrypted-auc_centralized|<=0.01":
            abs(out["auc_encrypted"] - out["auc_centralized"]) <= 0.01,
        "encrypted<=1.5x_plain":
            out["seconds_per_round_encrypted"] <= 1.5 * out["seconds_per_round_plain"],
    }
    if not args.json:
        print(json.dumps(out, indent=2), file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
