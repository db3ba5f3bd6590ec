"""Vertical LR, memory-bounded packing: a wide party keeps at most its budget of encoded diagonals,
and the batches it re-encodes give exactly the ciphertexts the cached ones do."""

from __future__ import annotations

import numpy as np

from fedgov.protocols import vertical_lr as vlr

PARAMS = vlr.VlrParams(epochs=2, batch_size=64, seed=3)


def _level2(ctx, v: np.ndarray):
    ct = ctx.encrypt(v)
    for _ in range(2):  # the residual arrives two rescales down
        ct = ctx.mul_plain_to(ct, np.ones(len(v)), ct.scale)
    return ct


def test_lazy_packing_is_bounded_and_gives_identical_ciphertexts() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(320, 20))  # 5 batches of 64 rows
    arb = vlr.Arbiter(PARAMS, {"guest": 3, "host": 20})
    pub = arb.public_context()
    cached = vlr.Host("host", PARAMS, x, pub)
    cached.prepare()
    assert len(cached._packed) == len(cached.batches) == 5  # small party: everything stays encoded
    lazy = vlr.Host("host", PARAMS, x, pub)
    lazy.pack_cache_bytes = 2 * lazy.packed_batch_bytes()  # room for two batches only
    lazy.prepare()
    assert sorted(lazy._packed) == [0, 1]
    ct = _level2(lazy.ctx, rng.normal(size=64) * 0.1)
    for bid in range(5):
        a = lazy.ctx.ct_to_bytes(lazy.ctx.matvec(lazy._packed_for(bid), ct))
        b = cached.ctx.ct_to_bytes(cached.ctx.matvec(cached._packed_for(bid), ct))
        assert a == b, bid
        assert sorted(lazy._packed) == [0, 1]  # re-encoded batches are dropped after use
    none = vlr.Host("host", PARAMS, x, pub)
    none.pack_cache_bytes = 0
    none.prepare()
    assert none._packed == {}
    assert none.ctx.ct_to_bytes(none.ctx.matvec(none._packed_for(4), ct)) == b


def test_prefetched_batch_is_used_once_and_gives_the_same_ciphertext() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(320, 20))
    arb = vlr.Arbiter(PARAMS, {"guest": 3, "host": 20})
    pub = arb.public_context()
    ref = vlr.Host("host", PARAMS, x, pub)
    lazy = vlr.Host("host", PARAMS, x, pub)
    lazy.pack_cache_bytes = 0
    ct = _level2(lazy.ctx, rng.normal(size=64) * 0.1)
    for b in range(len(lazy.batches)):
        bid, _ = lazy._batch_rows(1, b)
        lazy.prefetch(1, b)
        assert lazy._prefetched is not None and lazy._prefetched[0] == bid
        got = lazy.ctx.ct_to_bytes(lazy.ctx.matvec(lazy._packed_for(bid), ct))
        assert lazy._prefetched is None and lazy._packed == {}  # consumed, nothing kept
        assert got == ref.ctx.ct_to_bytes(ref.ctx.matvec(ref._packed_for(bid), ct))
