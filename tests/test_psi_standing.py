"""Standing alignment: correctness across register changes, epochs and tampering."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest

from fedgov.errors import CryptoError, PolicyDenied
from fedgov.node.standing import align_standing
from fedgov.protocols import psi_standing as st

W = 1  # in-process: no worker pool in unit tests


def _ids(lo: int, hi: int) -> list[str]:
    return [f"P{i:06d}" for i in range(lo, hi)]


def _run(ep, gcache, hcache, register, batch):
    hcache, values, header = st.host_delta(
        hcache, ep.epoch, gcache.table if gcache else "", len(gcache) if gcache else 0, register, workers=W
    )
    gcache = st.apply_delta(gcache, ep, header, values, workers=W)
    reply = st.reply_batch(hcache, st.mask_batch(ep, batch, workers=W), workers=W)
    return gcache, hcache, st.match(gcache, reply), len(values) // 32


def _check(m: np.ndarray, batch: list[str], register: list[str], hcache: st.HostCache) -> None:
    reg = set(register)
    for i, x in enumerate(batch):
        if x in reg:
            assert m[i] >= 0 and hcache.ids[m[i]] == x, x
        else:
            assert m[i] == -1, x


def test_matches_equal_the_plaintext_intersection_as_the_register_changes() -> None:
    ep = st.GuestEpoch.new()
    register = _ids(0, 800)
    rng = random.Random(1)
    g = h = None
    for step in range(4):
        if step >= 2:  # the register churns: 30 leave, 49 arrive
            gone = set(register[:30])
            register = [x for x in register if x not in gone] + _ids(1200 + 50 * step, 1249 + 50 * step)
        if step == 3:
            register.append("P000000")  # left at the previous churn; returns with a new handle
        batch = rng.sample(_ids(0, 1400), 150)
        g, h, m, masked = _run(ep, g, h, register, batch)
        _check(m, batch, register, h)
        # the first job masks the whole register, an unchanged register nothing, then only newcomers
        assert masked == {0: 800, 1: 0, 2: 49, 3: 50}[step], (step, masked)


def test_a_new_epoch_starts_over_and_unlinks_the_batches() -> None:
    register, batch = _ids(0, 300), _ids(250, 350)
    e1, e2 = st.GuestEpoch.new(), st.GuestEpoch.new()
    g1, h1, m1, _ = _run(e1, None, None, register, batch)
    # within an epoch the host sees the same value for the same applicant (documented linkability)
    assert st.mask_batch(e1, batch[:5], workers=W) == st.mask_batch(e1, batch[:5], workers=W)
    # a new epoch: the host's old table is replaced (fresh k), all values differ
    g2, h2, m2, masked = _run(e2, None, h1, register, batch)
    assert masked == 300 and h2.key != h1.key
    assert set(st.mask_batch(e2, batch, workers=W)[i : i + 32] for i in range(0, 3200, 32)).isdisjoint(
        st.mask_batch(e1, batch, workers=W)[i : i + 32] for i in range(0, 3200, 32)
    )
    _check(m2, batch, register, h2)
    # a host table older than the maximum age is renewed too
    h2.created_ms -= st.EPOCH_MAX_AGE_MS + 1
    _, h3, _, masked = _run(e2, g2, h2, register, batch)
    assert masked == 300 and h3.key != h2.key


def test_a_delta_that_does_not_continue_the_guest_cache_is_refused() -> None:
    ep = st.GuestEpoch.new()
    g, h, _, _ = _run(ep, None, None, _ids(0, 100), _ids(0, 10))
    h, values, header = st.host_delta(h, ep.epoch, g.table, len(g), _ids(0, 120), workers=W)
    with pytest.raises(CryptoError, match="delta covers"):
        st.apply_delta(g, ep, {**header, "from": header["from"] + 1}, values, workers=W)
    with pytest.raises(CryptoError, match="delta covers"):
        st.apply_delta(g, ep, header, values[:-32], workers=W)
    with pytest.raises(CryptoError, match="epoch"):
        st.apply_delta(g, ep, {**header, "epoch": "other"}, values, workers=W)
    with pytest.raises(CryptoError, match="tombstone"):
        st.apply_delta(g, ep, {**header, "tombstones": [10_000]}, values, workers=W)
    with pytest.raises(CryptoError, match="does not hold"):
        st.apply_delta(g, ep, {**header, "table": "f" * 32}, values, workers=W)
    # a host table restored from an older copy (same epoch, new table id) is sent in full
    h2 = st.HostCache.new(ep.epoch)
    h2, values, header = st.host_delta(h2, ep.epoch, g.table, len(g), _ids(0, 120), workers=W)
    assert header["from"] == 0 and len(values) == 120 * 32


def test_handles_do_not_follow_register_order() -> None:
    """New register entries get handles in a random order: a matched handle tells the guest
    nothing about where the person sits in the department's register."""
    ep = st.GuestEpoch.new()
    register = _ids(0, 1000)
    h, _, _ = st.host_delta(None, ep.epoch, "", 0, register, workers=W)
    pos = [register.index(x) for x in h.ids]  # register position of each handle
    assert sorted(pos) == list(range(1000)) and pos != sorted(pos)
    assert abs(float(np.corrcoef(pos, range(1000))[0, 1])) < 0.2  # no trend either


def test_state_round_trips() -> None:
    ep = st.GuestEpoch.new()
    g, h, _, _ = _run(ep, None, None, _ids(0, 50), _ids(0, 5))
    assert st.GuestEpoch.from_bytes(ep.to_bytes()) == ep
    assert st.HostCache.from_bytes(h.to_bytes()) == h
    g2 = st.GuestCache.from_bytes(g.to_bytes())
    assert g2.values == g.values and g2.tombstones == g.tombstones and g2.epoch == g.epoch


def test_a_host_whose_policy_does_not_allow_it_refuses(tmp_path) -> None:
    import pyarrow as pa

    part = SimpleNamespace(fields=["resident_id", "x"], extra={"id": "resident_id"}, node="tax")
    ctx = SimpleNamespace(
        me="tax",
        participant=part,
        manifest=SimpleNamespace(parameters={}, participant=lambda n: part),
        load=lambda cols, dataset=None: pa.table({"resident_id": ["A1"], "x": [1.0]}),
        notes={"state_dir": str(tmp_path)},
        decision=SimpleNamespace(standing_alignment=False),
    )
    with pytest.raises(PolicyDenied, match="standing_alignment = true"):
        align_standing(ctx, tag="batch", dataset="income", guest="civil_affairs", hosts=["tax"])  # type: ignore[arg-type]
