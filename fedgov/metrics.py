"""Model-quality metrics shared by every learning protocol."""

from __future__ import annotations

import numpy as np


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of 0/1 labels ``y`` (Mann–Whitney U, ties count half).

    Returns 0.5 when one class is absent (no ranking to judge).
    """
    y = np.asarray(y, dtype=np.float64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    pos = int((y > 0.5).sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return 0.5
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # average rank of each distinct score (1-based), then per element
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    return float((ranks[y > 0.5].sum() - pos * (pos + 1) / 2.0) / (pos * neg))
