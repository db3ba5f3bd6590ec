from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fedgov.metrics import auc


@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=2, max_size=40))
def test_auc_equals_pairwise_definition(rows: list[tuple[int, int]]) -> None:
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows], dtype=float)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        assert auc(y, s) == 0.5
        return
    brute = sum((s[p] > s[n]) + 0.5 * (s[p] == s[n]) for p in pos for n in neg) / (len(pos) * len(neg))
    assert abs(auc(y, s) - brute) < 1e-12
