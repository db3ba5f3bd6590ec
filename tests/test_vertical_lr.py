"""Vertical LR under CKKS: correctness against the plaintext reference, masking, scoring, input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedgov.crypto.ckks import CkksContext, CkksParams, bsgs_steps, mask_budget
from fedgov.errors import ConfigError, CryptoError
from fedgov.protocols import vertical_lr as vlr

FATE = Path(__file__).resolve().parents[1] / "examples" / "fate" / "data"

#: Stated tolerance: encrypted gradients equal the plaintext reference within 2e-3 (absolute) over a
#: whole epoch; the first batch (identical weights) within 1e-3. Gradient entries are O(0.1..1).
GRAD_TOL_EPOCH = 2e-3
GRAD_TOL_FIRST = 1e-3


def _breast() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = np.genfromtxt(FATE / "breast_hetero_guest.csv", delimiter=",", skip_header=1)
    h = np.genfromtxt(FATE / "breast_hetero_host.csv", delimiter=",", skip_header=1)
    assert (g[:, 0] == h[:, 0]).all()
    return g[:, 2:], g[:, 1], h[:, 1:]


PARAMS = vlr.VlrParams(epochs=5, batch_size=128, sigmoid_range=8.0, seed=7)


@pytest.fixture(scope="module")
def breast_run():
    gx, y, hx = _breast()
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    tr, te = perm[:455], perm[455:]
    enc = vlr.run_in_process(gx[tr], y[tr], {"tax": hx[tr]}, PARAMS, record=True)
    plain = vlr.fit_plain(gx[tr], y[tr], {"tax": hx[tr]}, PARAMS, record=True)
    return gx, y, hx, tr, te, enc, plain


def test_diagonal_matvec_equals_numpy() -> None:
    params = CkksParams()
    rng = np.random.default_rng(1)
    for p, n in [(5, 300), (16, params.slots), (3, 1)]:
        _, _, _, steps = bsgs_steps(p, params.slots, reduce=True)
        ctx = CkksContext.create(params, rotation_steps=steps)
        m = rng.normal(size=(p, n))
        v = rng.normal(size=n) * 0.1
        ref = m @ v
        for reduce in (True, False):
            pm = ctx.pack_matrix(m, rescales=2, reduce=reduce)
            ct = ctx.encrypt(v)
            for _ in range(2):  # bring to the level the protocol uses
                ct = ctx.mul_plain_to(ct, np.ones(n), ct.scale)
            out = ctx.decrypt(ctx.matvec(pm, ct)).reshape(-1, pm.padded_rows)
            got = out[0, :p] if reduce else out.sum(axis=0)[:p]
            assert np.abs(got - ref).max() < 1e-3, (p, n, reduce)
            if reduce:  # every block holds the same rows
                assert np.abs(out[:, :p] - ref).max() < 1e-3


def test_public_context_has_no_secret_key() -> None:
    ctx = CkksContext.create(CkksParams(), rotation_steps=[1])
    pub = CkksContext.from_public_bytes(ctx.public_bytes())
    assert ctx.has_secret_key and not pub.has_secret_key
    ct = pub.encrypt([1.5, 2.5])
    with pytest.raises(CryptoError):
        pub.decrypt(ct)
    assert np.allclose(ctx.decrypt(ct)[:2], [1.5, 2.5], atol=1e-4)
    with pytest.raises(CryptoError):
        pub.rotate(ct, 2)  # only the Galois keys asked for exist


def test_encryption_from_a_prepared_zero_is_used_once() -> None:
    """The host prepares Enc(0) while it waits: the result decrypts right, and a consumed
    zero (or anything not a fresh zero) is refused rather than reused."""
    ctx = CkksContext.create(CkksParams(), rotation_steps=[1])
    pub = CkksContext.from_public_bytes(ctx.public_bytes())
    zero = pub.encrypt_zero()
    ct = pub.encrypt([0.25, -3.0], zero=zero)
    assert np.allclose(ctx.decrypt(ct)[:2], [0.25, -3.0], atol=1e-4)
    with pytest.raises(CryptoError, match="fresh"):
        pub.encrypt([1.0], zero=zero)  # already consumed (it is the ciphertext above)
    with pytest.raises(CryptoError, match="fresh"):
        pub.encrypt([1.0], zero=pub.encrypt([2.0]))


def test_mask_budget_is_checked() -> None:
    p = CkksParams()
    b = mask_budget(p, mask_bits=30, value_bound=0.1, precision_bits=12, min_hiding_bits=24, summed_slots=256)
    assert b.hiding_bits > 30 and b.headroom_bits >= 4
    with pytest.raises(CryptoError, match="does not fit"):
        mask_budget(p, mask_bits=48, value_bound=0.1, precision_bits=1, min_hiding_bits=1)
    with pytest.raises(CryptoError, match="decode error"):
        mask_budget(p, mask_bits=44, value_bound=0.1, precision_bits=12, min_hiding_bits=1)
    with pytest.raises(CryptoError, match="hides only"):
        mask_budget(p, mask_bits=20, value_bound=1.0, precision_bits=12, min_hiding_bits=24)


def test_encrypted_gradients_match_plain_reference(breast_run) -> None:
    *_, enc, plain = breast_run
    n_batches = len(vlr.batches_for(455, PARAMS))
    assert len(enc.gradients) == len(plain.gradients) == n_batches * PARAMS.epochs
    for k in enc.gradients[0]:
        assert np.abs(enc.gradients[0][k] - plain.gradients[0][k]).max() < GRAD_TOL_FIRST
    for a, b in zip(enc.gradients[:n_batches], plain.gradients[:n_batches], strict=True):
        for k in a:
            assert np.abs(a[k] - b[k]).max() < GRAD_TOL_EPOCH


def test_auc_on_breast_close_to_plain_reference(breast_run) -> None:
    gx, y, hx, _, te, enc, plain = breast_run
    a_enc = vlr.auc(y[te], enc.scores(gx[te], {"tax": hx[te]}))
    a_plain = vlr.auc(y[te], plain.scores(gx[te], {"tax": hx[te]}))
    assert abs(a_enc - a_plain) < 0.005
    assert a_enc > 0.95
    m = vlr.metrics(y[te], enc.scores(gx[te], {"tax": hx[te]}))
    assert set(m) == {"auc", "ks", "accuracy", "precision", "recall"} and m["accuracy"] > 0.85
    assert enc.bytes_per_epoch > 0 and enc.bytes_sent["tax->guest"] > 0


def test_auc_helper_matches_sklearn() -> None:
    metrics_mod = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.4).astype(float)
    s = np.round(rng.normal(size=500) + y, 1)  # ties
    assert abs(vlr.auc(y, s) - metrics_mod.roc_auc_score(y, s)) < 1e-12


def _one_batch_setup():
    gx, y, hx = _breast()
    p = vlr.VlrParams(epochs=1, batch_size=256, seed=3)
    arb = vlr.Arbiter(p, {"guest": gx.shape[1] + 1, "tax": hx.shape[1]})
    ctx = arb.public_context()
    host = vlr.Host("tax", p, hx, ctx)
    guest = vlr.Guest("guest", p, gx, y, ctx, ["tax"])
    # move weights away from zero so the residual is not trivial
    host.w = np.random.default_rng(0).normal(size=host.dim) * 0.3
    guest.w = np.random.default_rng(1).normal(size=guest.dim) * 0.3
    return p, arb, host, guest


def test_host_ciphertext_decrypts_to_noise_without_mask() -> None:
    p, arb, host, guest = _one_batch_setup()
    resid = guest.residual_for_hosts(0, 0, {"tax": host.partial_scores(0, 0)})
    masked = host.masked_gradient(resid)
    # what the true (unmasked) slot values are, from the plaintext algorithm
    _, rows = host._batch_rows(0, 0)
    z = host.x[rows] @ host.w + guest.x[rows] @ guest.w
    d = guest.c[rows] / len(rows) * (np.polynomial.polynomial.polyval(z, vlr.sigmoid_poly(p)) - guest.y[rows])
    true_grad = host.x[rows].T @ d
    # the key holder decrypts the host's blob: every slot is far from any true value and uncorrelated with it
    _, _, block, parts = vlr._unpack(masked, vlr._K_MASKED, "test")
    slots = arb._ctx.decrypt(arb._ctx.ct_from_bytes(parts[0]))
    assert np.abs(slots).min() > 1.0  # every one of the 4096 slots is masked (true |t| < 0.1)
    sums = slots.reshape(-1, block).sum(axis=0)[: host.dim]
    assert np.abs(sums - true_grad).min() > 1e3
    tiled = np.tile(np.r_[true_grad, np.zeros(block - host.dim)], slots.size // block)
    assert abs(np.corrcoef(slots, tiled)[0, 1]) < 0.1
    # with the mask removed by the host, the gradient is exact
    g = host.apply_unmasked(arb.decrypt_masked("tax", masked))
    assert np.abs(g - true_grad).max() < GRAD_TOL_FIRST


def _ks_uniform(x: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance of ``x`` from U[-1, 1]."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n = x.size
    cdf = np.clip((x + 1.0) / 2.0, 0.0, 1.0)
    hi = np.arange(1, n + 1) / n
    return float(max(np.max(hi - cdf), np.max(cdf - (hi - 1.0 / n))))


#: KS distance a uniform sample of 4096 slots stays below with probability > 1 - 1e-6 (~2.7 / sqrt(n))
KS_TOL = 0.045
#: |correlation| two independent 4096-slot vectors stay below (~6 / sqrt(n))
CORR_TOL = 0.1


def _spy_arbiter(arb: vlr.Arbiter) -> list[np.ndarray]:
    """Record every decryption the arbiter makes, as the full complex slots a key holder can decode."""
    from tenseal import sealapi

    seen: list[np.ndarray] = []
    ctx = arb._ctx

    def spy(ct):
        pt = sealapi.Plaintext()
        ctx._decryptor.decrypt(ct, pt)
        v = np.asarray(ctx._encoder.decode_complex(pt), dtype=np.complex128)
        seen.append(v)
        return v.real.copy()

    ctx.decrypt = spy  # type: ignore[method-assign]
    return seen


def _assert_masked(v: np.ndarray, mask_bits: int, true: np.ndarray | None = None) -> None:
    """Real and imaginary slots near-uniform on the mask range, uncorrelated with the true values."""
    scale = 2.0**mask_bits
    for part in (v.real, v.imag):
        assert np.abs(part).max() <= scale * 1.001
        assert _ks_uniform(part / scale) < KS_TOL, _ks_uniform(part / scale)
    if true is not None:
        t = np.resize(np.asarray(true, dtype=np.float64), v.size)
        assert abs(np.corrcoef(v.real, t)[0, 1]) < CORR_TOL


def test_arbiter_only_ever_decrypts_masked_values() -> None:
    """Every kind of decryption (training gradients of host and guest on two batches, validation
    scores, evaluation scores, a coalition's scores): each decrypted slot - real and imaginary
    part - is near-uniform on [-2^mask_bits, 2^mask_bits], uncorrelated with the true values,
    and fresh: no two decryptions share a mask. A constant mask, a reused mask or an
    unflooded imaginary part fails this."""
    gx, y, hx = _breast()
    p = vlr.VlrParams(epochs=1, batch_size=256, seed=3, validation_fraction=0.2, patience=1)
    arb = vlr.Arbiter(p, {"guest": gx.shape[1] + 1, "tax": hx.shape[1]})
    ctx = arb.public_context()
    host = vlr.Host("tax", p, hx, ctx)
    guest = vlr.Guest("guest", p, gx, y, ctx, ["tax"])
    host.w = np.random.default_rng(0).normal(size=host.dim) * 0.3
    guest.w = np.random.default_rng(1).normal(size=guest.dim) * 0.3
    seen = _spy_arbiter(arb)
    truths: list[np.ndarray | None] = []
    for b in range(2):  # training: two batches, host and guest
        resid = guest.residual_for_hosts(0, b, {"tax": host.partial_scores(0, b)})
        _, rows = host._batch_rows(0, b)
        z = host.x[rows] @ host.w + guest.x[rows] @ guest.w
        d = guest.c[rows] / len(rows) * (np.polynomial.polynomial.polyval(z, vlr.sigmoid_poly(p)) - guest.y[rows])
        host.apply_unmasked(arb.decrypt_masked("tax", host.masked_gradient(resid), expect="gradient"))
        guest.apply_unmasked(arb.decrypt_masked("guest", guest.masked_gradient(0, b), expect="gradient"))
        truths += [host.x[rows].T @ d, guest.x[rows].T @ d]
    # validation scores (early stopping)
    val = guest.masked_validation_total({"tax": host.validation_scores()})
    guest.end_epoch(arb.decrypt_masked("guest", val, expect="scores"))
    truths.append(host.x[host.val_rows] @ host.w + guest.x[guest.val_rows] @ guest.w)
    # evaluation scoring and one coalition re-scoring
    gm, hm = guest.model(), host.model()
    hs, gs = vlr.HostScorer(hm, hx, ctx), vlr.GuestScorer(gm, gx, ctx, ["tax"])
    hblob = hs.partial_scores()
    gs.scores(arb.decrypt_masked("guest", gs.masked_total({"tax": hblob}), expect="scores"))
    truths.append(gs.u + hs.u)
    gs.scores(arb.decrypt_masked("guest", gs.masked_coalition_total({"tax": hblob}), expect="scores"))
    truths.append(gs.u + hs.u)
    assert len(seen) == len(truths) == 7
    for v, t in zip(seen, truths, strict=True):
        _assert_masked(v, p.mask_bits, t)
    for i in range(len(seen)):  # fresh masks: no two decryptions are related
        for j in range(i):
            assert abs(np.corrcoef(seen[i].real, seen[j].real)[0, 1]) < CORR_TOL, (i, j)
            assert abs(np.corrcoef(seen[i].imag, seen[j].imag)[0, 1]) < CORR_TOL, (i, j)
    # the arbiter refuses anything that is not a masked message of the step's kind
    scores = {"tax": host.partial_scores(0, 0)}
    resid = guest.residual_for_hosts(0, 0, scores)
    for blob in (scores["tax"], resid):
        with pytest.raises(CryptoError):
            arb.decrypt_masked("tax", blob)


def test_scoring_returns_only_final_scores() -> None:
    gx, y, hx = _breast()
    p = vlr.VlrParams(epochs=1, batch_size=128, seed=1)
    res = vlr.run_in_process(gx, y, {"tax": hx}, p)
    gm = vlr.ModelPart.from_bytes(res.guest_model.to_bytes())
    hm = vlr.ModelPart.from_bytes(res.host_models["tax"].to_bytes())
    assert gm.role == "guest" and hm.role == "host" and gm.version == 1
    assert "weights" in gm.to_json() and len(hm.weights) == hx.shape[1]
    arb = vlr.Arbiter(p, {})
    ctx = arb.public_context()
    hs = vlr.HostScorer(hm, hx[:50], ctx)
    gs = vlr.GuestScorer(gm, gx[:50], ctx, ["tax"])
    hblob = hs.partial_scores()
    assert hm.partial_score(hx[:50]).tobytes() not in hblob  # host sends ciphertext only
    reply = arb.decrypt_masked("guest", gs.masked_total({"tax": hblob}), expect="scores")
    scores = gs.scores(reply)
    expect = gm.partial_score(gx[:50]) + hm.partial_score(hx[:50])
    assert scores.shape == (50,)
    assert np.abs(scores - expect).max() < 1e-3
    # the arbiter's reply is masked: without the guest's mask it says nothing about the scores
    _, _, _, parts = vlr._unpack(reply, vlr._K_REPLY, "t")
    assert np.abs(vlr._from_floats(parts[0])[:50] - expect).min() > 1.0
    s2, sent = vlr.score_in_process(gm, gx[:50], {"tax": hm}, {"tax": hx[:50]})
    assert np.abs(s2 - expect).max() < 1e-3 and sent["tax->guest"] > 0


def test_bad_inputs_give_clear_errors() -> None:
    gx, y, hx = _breast()
    p = vlr.VlrParams(epochs=1, batch_size=128)
    with pytest.raises(ConfigError, match="rows"):
        vlr.run_in_process(gx, y, {"tax": hx[:-1]}, p)
    bad = gx.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        vlr.run_in_process(bad, y, {"tax": hx}, p)
    with pytest.raises(ConfigError, match="NaN"):
        vlr.fit_plain(gx, y, {"tax": np.where(hx > 3, np.inf, hx)}, p)
    with pytest.raises(ConfigError, match="0/1"):
        vlr.run_in_process(gx, y * 2, {"tax": hx}, p)
    with pytest.raises(ConfigError, match="2-D"):
        vlr.fit_plain(gx[:, 0], y, {"tax": hx}, p)
    with pytest.raises(ConfigError, match="batch_size"):
        vlr.VlrParams(batch_size=10_000).validate()
    with pytest.raises(ConfigError, match="unknown"):
        vlr.VlrParams.from_json({"epochs": 2, "learning_rat": 0.1})
    with pytest.raises(ConfigError, match="128-bit"):
        CkksParams(8192, (60, 60, 40, 40, 40, 60), 40).validate()
    with pytest.raises(ConfigError, match="features"):
        vlr.ModelPart("h", "host", 1, "", [0.0], [1.0], 0.0, [0.5], 0.0, {}).partial_score(np.ones((3, 2)))
    assert vlr.VlrParams.from_json(p.to_json()) == p


def test_sigmoid_error_budget_is_documented_value() -> None:
    # docs/protocols/vertical-lr.md quotes these maxima
    assert vlr.sigmoid_error(vlr.VlrParams(sigmoid_range=6.0)) < 0.085
    assert vlr.sigmoid_error(vlr.VlrParams(sigmoid_range=8.0)) < 0.12


def test_roc_points_follow_sklearn_roc_curve() -> None:
    """The coarse ROC curve of a guest's evaluation: at each grid FPR the best TPR sklearn's curve reaches."""
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400).astype(float)
    s = y * 0.8 + rng.normal(0, 1, 400)
    pts = vlr.roc_points(y, s)
    fpr, tpr, _ = roc_curve(y, s)
    assert len(pts) == 21 and pts[0][0] == 0.0 and pts[-1] == [1.0, 1.0]
    for f, t in pts:
        assert abs(t - float(tpr[fpr <= f + 1e-12].max())) < 1e-3
    assert all(b[1] >= a[1] for a, b in zip(pts, pts[1:], strict=False))
    assert vlr.roc_points([], []) == []
