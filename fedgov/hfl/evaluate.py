"""Validation of a horizontal-FL job where the held-out data is: only metrics leave.

The region that names ``eval_dataset`` receives the final model of every
*track* (``all`` and, with contributions, each leave-one-out ``-<region>``),
scores its own held-out rows locally (:func:`track_aucs`) and sends back one
AUC per track. The aggregator turns them into the leave-one-out contribution
(:func:`contribution`). No row, label or score of the held-out set leaves the
region: the aggregator learns the AUCs, which it released before anyway.

Pure: numpy only, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedgov.errors import FedgovError
from fedgov.hfl import logreg

__all__ = ["ALL", "contribution", "track_aucs"]

#: the track of the model trained by every region
ALL = "all"


def track_aucs(track_weights: Mapping[str, Sequence[float]], x: np.ndarray, y: np.ndarray,
               regions: Sequence[str]) -> dict[str, float]:
    """AUC of each track's model on ``(x, y)``; refuses tracks that are not this job's.

    Guarantees: the result holds only one number per expected track; the
    held-out rows never leave this function.
    """
    allowed = {ALL, *(f"-{r}" for r in regions)}
    unknown = sorted(set(track_weights) - allowed)
    if unknown or ALL not in track_weights:
        raise FedgovError(f"evaluation request names tracks {unknown or '(no all)'} not of this job")
    out: dict[str, float] = {}
    for t, w in track_weights.items():
        wa = np.asarray(w, dtype=np.float64)
        if wa.shape != (x.shape[1] + 1,) or not np.isfinite(wa).all():
            raise FedgovError(f"track {t}: model of shape {wa.shape}, expected ({x.shape[1] + 1},)")
        out[t] = float(logreg.auc(y, logreg.predict_proba(wa, x)))
    return out


def contribution(aucs: Mapping[str, float], regions: Sequence[str]) -> dict[str, Any]:
    """The result fields derived from the per-track AUCs: full AUC and leave-one-out drops."""
    full = float(aucs[ALL])
    res: dict[str, Any] = {"auc_validation": full}
    without = {t[1:]: float(a) for t, a in aucs.items() if t != ALL}
    if without:
        res["contribution"] = {r: round(full - a, 6) for r, a in without.items()}
        res["contribution_method"] = "leave-one-out AUC drop on the validation set"
        names = sorted(regions)
        coalitions = {"+".join(names): round(full, 6)}
        for r, a in without.items():
            coalitions["+".join(n for n in names if n != r)] = round(a, 6)
        res["eval"] = {"coalition_metric": "auc", "coalitions": coalitions}
    return res
