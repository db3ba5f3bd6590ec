"""L2-regularised logistic regression on numpy, plus AUC and the table loader.

Everything here is deterministic: the same data, weights and hyper-parameters
give bit-identical results, so a plain and an encrypted federated run differ
only by the CKKS approximation error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv

from fedgov.errors import SchemaMismatch
from fedgov.metrics import auc  # noqa: F401  (re-exported: callers use logreg.auc)

__all__ = ["LABEL", "auc", "load_table", "local_train", "predict_proba"]

#: Label column of every regional table.
LABEL = "eligible"


def load_table(path: Path | str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a feature CSV (numeric feature columns + ``eligible``) as ``(X, y, names)``.

    Guarantees ``X`` is float64 with no NaN (missing values become 0) and ``y``
    is 0/1. Raises SchemaMismatch if the label column is missing or a column
    is not numeric. Reads only the local file; nothing leaves the process.
    """
    path = Path(path)
    try:
        table = pacsv.read_csv(path)
    except (OSError, ValueError) as exc:
        raise SchemaMismatch(f"cannot read feature table ({exc})", where=str(path)) from None
    if LABEL not in table.column_names:
        raise SchemaMismatch(f"missing label column {LABEL!r}", where=str(path))
    names = [c for c in table.column_names if c != LABEL]
    cols = []
    for c in names:
        try:
            arr = table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        except (TypeError, ValueError):
            raise SchemaMismatch(f"column {c!r} is not numeric", where=str(path)) from None
        cols.append(np.nan_to_num(arr))
    X = np.column_stack(cols) if cols else np.zeros((table.num_rows, 0))
    y = table.column(LABEL).to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.isin(y, (0.0, 1.0)).all():
        raise SchemaMismatch(f"label {LABEL!r} must be 0/1", where=str(path))
    return X, y, names


def _design(X: np.ndarray) -> np.ndarray:
    return np.hstack([X, np.ones((X.shape[0], 1))])


def predict_proba(w: np.ndarray, X: np.ndarray) -> np.ndarray:
    """P(y=1) under weights ``w`` (last entry is the intercept)."""
    z = np.clip(_design(X) @ w, -35.0, 35.0)
    return 1.0 / (1.0 + np.exp(-z))


def local_train(w: np.ndarray, X: np.ndarray, y: np.ndarray, *, steps: int, lr: float,
                l2: float) -> np.ndarray:
    """Run ``steps`` full-batch gradient steps from ``w``; return the new weights.

    The intercept is not regularised. Deterministic.
    """
    A = _design(X)
    w = np.array(w, dtype=np.float64)
    n = max(len(y), 1)
    reg = np.full_like(w, l2)
    reg[-1] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(A @ w, -35.0, 35.0)))
        grad = A.T @ (p - y) / n + reg * w
        w -= lr * grad
    return w
