"""Vertical (hetero) logistic regression under CKKS, transport-free.

Roles (``docs/protocols/vertical-lr.md`` has the full message table and the
leakage analysis):

* :class:`Arbiter` - holds the CKKS secret key; decrypts only masked values
  and returns, per request, only the block sums the requester asked for.
* :class:`Guest` - label holder; evaluates the polynomial sigmoid on the
  encrypted total score and forms the encrypted residual.
* :class:`Host` - feature holder.

Every step consumes and produces ``bytes``; nothing here does I/O. Per batch
``t`` of epoch ``e`` (rows fixed by the shared ``seed``)::

    host  -> guest    [[u_h]] = Enc(X_h[batch] @ w_h)                 1 fresh ciphertext
    guest             [[z]] = sum_h [[u_h]] + X_g[batch] @ w_g + b
                      [[d]] = c * (p(z) - y)      p = LS sigmoid poly, c = class weight / batch
    guest -> host     [[d]]                                            1 ciphertext (2 levels used)
    each party        [[t]] = Diag(X^T) [[d]] (Halevi-Shoup, BSGS) + mask r  (every slot)
    party -> arbiter  [[t + r]]                                        1 ciphertext (3 levels used)
    arbiter -> party  sum over slot blocks of (t + r) + flooding       p' float64
    party             g = reply - sum_blocks(r);  w <- optimizer(w, g + l2 * w)

The guest learns no host score and no host gradient; a host learns nothing
about labels or the guest's features beyond its own gradient; the arbiter
sees only uniformly masked slots (real and imaginary parts: :func:`add_mask`),
and decrypts only the message kind each step of its schedule expects.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedgov.crypto.ckks import CkksContext, CkksParams, PackedMatrix, bsgs_steps, mask_budget, random_mask
from fedgov.errors import ConfigError, CryptoError, FedgovError
from fedgov.metrics import auc  # noqa: F401  (re-exported: callers use this module's auc)
from fedgov.params import vertical_lr as bounds

__all__ = [
    "Arbiter",
    "Guest",
    "GuestScorer",
    "Host",
    "HostScorer",
    "ModelPart",
    "VlrParams",
    "VlrResult",
    "batches_for",
    "fit_plain",
    "metrics",
    "run_in_process",
    "score_in_process",
    "sigmoid_error",
    "sigmoid_poly",
    "split_rows",
]

_MAGIC = b"FVLR"
_VERSION = 1
# kind codes
_K_SCORES, _K_RESIDUAL, _K_MASKED, _K_REPLY, _K_SCORE_REQ = 1, 2, 3, 4, 5
_HDR = struct.Struct("<4sBBIIII")  # magic, version, kind, epoch, batch, block, count
MODEL_FORMAT = "fedgov.vertical-lr.model/1"
#: fewest masked slots the arbiter adds into each decrypted gradient value
MIN_SUMMED_SLOTS = 2


# ---------------------------------------------------------------------------------------------
# parameters


@dataclass(frozen=True)
class VlrParams:
    """Hyper-parameters and cryptographic parameters every party must agree on (from the manifest).

    ``seed`` fixes the validation split and the batch partition/order; every
    party derives them identically from it and the row count.
    """

    epochs: int = 10
    batch_size: int = 4096
    learning_rate: float = 0.05
    optimizer: str = "adam"  # "adam" (per-coordinate, so each party runs it on its own weights) | "sgd"
    l2: float = 0.0
    validation_fraction: float = 0.0
    patience: int = 0  # 0 = no early stopping
    min_delta: float = 1e-4
    class_weight: str | tuple[float, float] | None = None  # None | "balanced" | (w0, w1)
    sigmoid_degree: int = 3  # 1 or 3
    sigmoid_range: float = 6.0
    clip: float = 4.0  # standardised features are clipped to [-clip, clip]; 0 disables
    seed: int = 0
    ckks: CkksParams = field(default_factory=CkksParams)
    mask_bits: int = 30
    precision_bits: int = 12
    min_hiding_bits: int = 24
    score_bound: float = 64.0  # |total score| bound assumed by the scoring mask budget

    def validate(self) -> None:
        """Raise :class:`ConfigError` on any out-of-range value."""
        w = "vertical-lr params"
        if self.epochs < 1:
            raise ConfigError("epochs must be >= 1", where=w)
        if not 1 <= self.batch_size <= self.ckks.slots:
            raise ConfigError(f"batch_size must be 1..{self.ckks.slots} (CKKS slots)", where=w)
        if not self.learning_rate > 0:
            raise ConfigError("learning_rate must be > 0", where=w)
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError("optimizer must be 'adam' or 'sgd'", where=w)
        if self.l2 < 0:
            raise ConfigError("l2 must be >= 0", where=w)
        if not 0 <= self.validation_fraction < 0.9:
            raise ConfigError("validation_fraction must be in [0, 0.9)", where=w)
        if self.patience < 0:
            raise ConfigError("patience must be >= 0", where=w)
        if self.patience and self.validation_fraction == 0:
            raise ConfigError("early stopping (patience > 0) needs validation_fraction > 0", where=w)
        if self.sigmoid_degree not in (1, 3):
            raise ConfigError("sigmoid_degree must be 1 or 3", where=w)
        if not 0.5 <= self.sigmoid_range <= 32:
            raise ConfigError("sigmoid_range must be in [0.5, 32]", where=w)
        if self.clip < 0:
            raise ConfigError("clip must be >= 0", where=w)
        cw = self.class_weight
        if not (cw is None or cw == "balanced" or (isinstance(cw, tuple) and len(cw) == 2 and min(cw) > 0)):
            raise ConfigError("class_weight must be null, 'balanced' or [w0, w1] with positive weights", where=w)
        # absolute bounds on what the arbiter decrypts: no manifest or policy goes below them
        if not bounds.MASK_BITS_MIN <= self.mask_bits <= bounds.MASK_BITS_MAX:
            raise ConfigError(
                f"mask_bits must be in [{bounds.MASK_BITS_MIN}, {bounds.MASK_BITS_MAX}], got {self.mask_bits}",
                where=w,
            )
        if not bounds.MIN_HIDING_BITS_MIN <= self.min_hiding_bits <= self.mask_bits:
            raise ConfigError(
                f"min_hiding_bits must be in [{bounds.MIN_HIDING_BITS_MIN}, mask_bits], got {self.min_hiding_bits}",
                where=w,
            )
        if not bounds.PRECISION_BITS_MIN <= self.precision_bits <= bounds.PRECISION_BITS_MAX:
            raise ConfigError(
                f"precision_bits must be in [{bounds.PRECISION_BITS_MIN}, {bounds.PRECISION_BITS_MAX}], "
                f"got {self.precision_bits}",
                where=w,
            )
        if not (math.isfinite(self.score_bound) and self.score_bound >= bounds.SCORE_BOUND_MIN):
            raise ConfigError(f"score_bound must be >= {bounds.SCORE_BOUND_MIN:g}, got {self.score_bound}", where=w)
        self.ckks.validate(where=f"{w}: ckks")
        if self.ckks.depth < 3:
            raise ConfigError("CKKS chain must allow 3 rescalings (sigmoid 2 + matvec 1)", where=f"{w}: ckks")

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "ckks"}
        d["class_weight"] = list(self.class_weight) if isinstance(self.class_weight, tuple) else self.class_weight
        d["ckks"] = self.ckks.to_json()
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> VlrParams:
        """Build from manifest parameters; unknown keys are an error."""
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown vertical-lr parameter(s): {', '.join(sorted(unknown))}", where="vertical-lr params")
        if "ckks" in d:
            c = dict(d["ckks"])
            if "coeff_mod_bit_sizes" in c:
                c["coeff_mod_bit_sizes"] = tuple(int(b) for b in c["coeff_mod_bit_sizes"])
            d["ckks"] = CkksParams(**c)
        if isinstance(d.get("class_weight"), list):
            d["class_weight"] = tuple(float(v) for v in d["class_weight"])
        try:
            p = cls(**d)
        except TypeError as exc:
            raise ConfigError(str(exc), where="vertical-lr params") from exc
        p.validate()
        return p


def sigmoid_poly(params: VlrParams) -> np.ndarray:
    """Least-squares odd polynomial for the sigmoid on ``[-R, R]`` (``coef[k]`` multiplies ``z^k``).

    ``0.5 + a1 z (+ a3 z^3)``; the fit is on 4001 uniform points. The max
    error over the range is reported by :func:`sigmoid_error`.
    """
    r = params.sigmoid_range
    t = np.linspace(-r, r, 4001)
    target = 1.0 / (1.0 + np.exp(-t)) - 0.5
    cols = [t] if params.sigmoid_degree == 1 else [t, t**3]
    a, *_ = np.linalg.lstsq(np.stack(cols, axis=1), target, rcond=None)
    coef = np.zeros(4)
    coef[0] = 0.5
    coef[1] = a[0]
    if params.sigmoid_degree == 3:
        coef[3] = a[1]
    return coef


def sigmoid_error(params: VlrParams) -> float:
    """Max ``|poly(z) - sigmoid(z)|`` over ``[-R, R]``."""
    c = sigmoid_poly(params)
    t = np.linspace(-params.sigmoid_range, params.sigmoid_range, 4001)
    return float(np.max(np.abs(np.polynomial.polynomial.polyval(t, c) - 1 / (1 + np.exp(-t)))))


# ---------------------------------------------------------------------------------------------
# shared row bookkeeping


def split_rows(n: int, params: VlrParams) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, validation_rows)``: the same for every party (derived from ``seed`` and ``n``)."""
    rng = np.random.default_rng([params.seed, 0x5EED, n])
    perm = rng.permutation(n)
    nv = int(round(n * params.validation_fraction))
    return np.sort(perm[nv:]), np.sort(perm[:nv])


def batches_for(n_train: int, params: VlrParams) -> list[np.ndarray]:
    """Fixed partition of training positions into batches (shuffled once from ``seed``)."""
    rng = np.random.default_rng([params.seed, 0xBA7C, n_train])
    perm = rng.permutation(n_train)
    return [perm[i : i + params.batch_size] for i in range(0, n_train, params.batch_size)]


def batch_order(n_batches: int, epoch: int, params: VlrParams) -> np.ndarray:
    """Order in which the fixed batches are visited in ``epoch`` (shared)."""
    return np.random.default_rng([params.seed, 0x0D3E, epoch]).permutation(n_batches)


def _check_matrix(x: Any, name: str, rows: int | None = None) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: features must be numeric", where="vertical-lr") from exc
    if a.ndim != 2 or a.shape[1] < 1:
        raise ConfigError(f"{name}: features must be a 2-D array with at least one column, got shape {a.shape}", where="vertical-lr")
    if rows is not None and a.shape[0] != rows:
        raise ConfigError(f"{name}: {a.shape[0]} rows, expected {rows} (rows must come aligned from PSI)", where="vertical-lr")
    if a.shape[0] < 2:
        raise ConfigError(f"{name}: need at least 2 rows", where="vertical-lr")
    bad = ~np.isfinite(a)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ConfigError(
            f"{name}: {int(bad.sum())} missing/NaN/inf feature value(s), first at row {r}, column {c}; impute before training",
            where="vertical-lr",
        )
    return a


def _check_labels(y: Any, rows: int) -> np.ndarray:
    a = np.asarray(y, dtype=np.float64).ravel()
    if a.shape[0] != rows:
        raise ConfigError(f"labels: {a.shape[0]} values, expected {rows}", where="vertical-lr")
    if not np.all(np.isin(a, (0.0, 1.0))):
        raise ConfigError("labels must be 0/1", where="vertical-lr")
    if a.min() == a.max():
        raise ConfigError("labels contain a single class", where="vertical-lr")
    return a


@dataclass
class _Standardizer:
    mean: np.ndarray
    std: np.ndarray
    clip: float

    @classmethod
    def fit(cls, x: np.ndarray, clip: float) -> _Standardizer:
        sd = x.std(axis=0)
        sd[sd == 0] = 1.0
        return cls(x.mean(axis=0), sd, clip)

    def apply(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        return np.clip(z, -self.clip, self.clip) if self.clip > 0 else z


class _Optimizer:
    def __init__(self, params: VlrParams, dim: int) -> None:
        self.kind = params.optimizer
        self.lr = params.learning_rate
        self.m = np.zeros(dim)
        self.v = np.zeros(dim)
        self.t = 0

    def step(self, w: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self.kind == "sgd":
            return w - self.lr * g
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        mh = self.m / (1 - 0.9**self.t)
        vh = self.v / (1 - 0.999**self.t)
        return w - self.lr * mh / (np.sqrt(vh) + 1e-8)


def _class_weights(y: np.ndarray, params: VlrParams) -> np.ndarray:
    cw = params.class_weight
    if cw is None:
        w0 = w1 = 1.0
    elif cw == "balanced":
        n1 = float(y.sum())
        n0 = float(len(y) - n1)
        w0, w1 = len(y) / (2 * n0), len(y) / (2 * n1)
    else:
        w0, w1 = float(cw[0]), float(cw[1])  # type: ignore[index]
    return np.where(y > 0.5, w1, w0)


# ---------------------------------------------------------------------------------------------
# wire format


def _pack(kind: int, epoch: int, batch: int, block: int, parts: list[bytes]) -> bytes:
    out = [_HDR.pack(_MAGIC, _VERSION, kind, epoch, batch, block, len(parts))]
    for p in parts:
        out.append(struct.pack("<Q", len(p)))
        out.append(p)
    return b"".join(out)


def _unpack(blob: bytes, kind: int, where: str) -> tuple[int, int, int, list[bytes]]:
    try:
        magic, ver, k, epoch, batch, block, count = _HDR.unpack_from(blob, 0)
    except struct.error as exc:
        raise CryptoError("truncated vertical-lr message", where=where) from exc
    if magic != _MAGIC or ver != _VERSION:
        raise CryptoError("not a vertical-lr message", where=where)
    if k != kind:
        raise CryptoError(f"unexpected message kind {k} (expected {kind})", where=where)
    off = _HDR.size
    parts = []
    for _ in range(count):
        if off + 8 > len(blob):
            raise CryptoError("truncated vertical-lr message", where=where)
        (ln,) = struct.unpack_from("<Q", blob, off)
        off += 8
        if off + ln > len(blob):
            raise CryptoError("truncated vertical-lr message", where=where)
        parts.append(bytes(blob[off : off + ln]))
        off += ln
    return epoch, batch, block, parts


def _floats(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f8").tobytes()


def _from_floats(b: bytes) -> np.ndarray:
    if len(b) % 8:
        raise CryptoError("malformed float vector", where="vertical-lr")
    return np.frombuffer(b, dtype="<f8").copy()


def rotation_steps(feature_counts: Mapping[str, int], params: VlrParams) -> list[int]:
    """Every rotation any party's gradient matvec needs (the only Galois keys generated).

    ``feature_counts`` maps party name to its number of gradient rows (the
    guest's includes the intercept).
    """
    steps: set[int] = set()
    for p in feature_counts.values():
        steps.update(bsgs_steps(int(p), params.ckks.slots)[3])
    return sorted(steps)


# ---------------------------------------------------------------------------------------------
# arbiter


class Arbiter:
    """Key holder. Sees only masked slots; returns block sums with flooding noise.

    Guarantees: the secret key never leaves this object (``public_context``
    has no secret key). ``decrypt_masked`` returns, for a ciphertext whose
    slots are ``t + r`` (``r`` uniform on ``[-2^mask_bits, 2^mask_bits]``),
    only ``sum_k (t + r)[k*block + i]`` for ``i < block`` plus Gaussian noise
    of standard deviation ``2^-(precision_bits+4)``.
    Leaks to the arbiter: the masked slots (statistically close to uniform,
    see :func:`fedgov.crypto.ckks.mask_budget`), message sizes and timing.
    """

    def __init__(self, params: VlrParams, feature_counts: Mapping[str, int]) -> None:
        params.validate()
        self.params = params
        self.feature_counts = dict(feature_counts)
        for party, count in self.feature_counts.items():
            pp = bsgs_steps(int(count), params.ckks.slots)[0]
            if params.ckks.slots // pp < MIN_SUMMED_SLOTS:
                raise ConfigError(
                    f"{party}: {count} gradient rows leave fewer than {MIN_SUMMED_SLOTS} slots per "
                    "decrypted block sum",
                    where="vertical-lr arbiter",
                )
        self._ctx = CkksContext.create(params.ckks, rotation_steps=rotation_steps(feature_counts, params))
        self._public = self._ctx.public_bytes()
        self._rng = np.random.default_rng(int.from_bytes(os.urandom(32), "little"))
        self.requests = 0
        #: decryptions served, by kind ("gradient", "scores")
        self.decrypted: dict[str, int] = {"gradient": 0, "scores": 0}

    def public_context(self) -> bytes:
        """Serialised public key, relinearisation and Galois keys (no secret key)."""
        return self._public

    def decrypt_masked(self, party: str, blob: bytes, *, expect: str = "gradient") -> bytes:
        """Decrypt a masked gradient (``expect="gradient"``) or masked score request (``"scores"``).

        The caller (the arbiter's schedule, fixed by the signed manifest) says
        which kind of decryption this step is; a message of the other kind is
        refused. The block size is the arbiter's own: a gradient reply is
        always the block-sum of ``slots / block`` slots, with ``block`` from
        the party's feature count as set up; a score reply is one value per
        row (``block = slots``), which only the manifest's evaluation steps
        ask for. See the class docstring.
        """
        where = f"vertical-lr arbiter ({party})"
        want = {"gradient": _K_MASKED, "scores": _K_SCORE_REQ}.get(expect)
        if want is None:
            raise FedgovError(f"unknown decryption kind {expect!r}", where=where)
        kind = blob[5] if len(blob) > _HDR.size else -1  # magic(4) version(1) kind(1)
        if kind != want:
            raise CryptoError(
                f"this step decrypts only masked {expect} messages (got message kind {kind})", where=where
            )
        epoch, batch, block, parts = _unpack(blob, kind, where)
        slots = self._ctx.slots
        if kind == _K_MASKED:
            if party not in self.feature_counts:
                raise CryptoError(f"{party} has no gradient in this job", where=where)
            expected = bsgs_steps(self.feature_counts[party], slots)[0]
            if block != expected or len(parts) != 1:
                raise CryptoError(f"block size {block}, expected {expected} for {party}", where=where)
        elif block != slots:
            raise CryptoError(f"score requests are per row (block {slots}), got block {block}", where=where)
        out = []
        for p in parts:
            ct = self._ctx.ct_from_bytes(p, rescales=self.params.ckks.depth if kind == _K_MASKED else None)
            v = self._ctx.decrypt(ct).reshape(-1, block).sum(axis=0)
            v = v + self._rng.normal(0.0, 2.0 ** -(self.params.precision_bits + 4), size=v.shape)
            out.append(_floats(v))
        self.requests += 1
        self.decrypted[expect] += 1
        return _pack(_K_REPLY, epoch, batch, block, out)


# ---------------------------------------------------------------------------------------------
# parties


#: per party, the most memory spent keeping batches' encoded diagonals across epochs (bytes);
#: batches beyond it are re-encoded on each use (same results, bounded memory)
PACK_CACHE_BYTES = 768 * 2**20


class _Party:
    role = "party"

    def __init__(self, name: str, params: VlrParams, x: np.ndarray, ctx: bytes, *, extra_cols: int = 0) -> None:
        params.validate()
        self.name = name
        self.params = params
        x = _check_matrix(x, f"{self.role} {name}")
        self.n = x.shape[0]
        self.train_rows, self.val_rows = split_rows(self.n, params)
        if len(self.train_rows) < 2:
            raise ConfigError("too few training rows", where=f"vertical-lr {name}")
        self.std = _Standardizer.fit(x[self.train_rows], params.clip)
        xs = self.std.apply(x)
        if extra_cols:
            xs = np.hstack([xs, np.ones((self.n, 1))])
        self.x = xs
        self.features = x.shape[1]
        self.dim = xs.shape[1]
        self.w = np.zeros(self.dim)
        self.opt = _Optimizer(params, self.dim)
        self.ctx = CkksContext.from_public_bytes(ctx)
        if self.ctx.has_secret_key:
            raise CryptoError("parties must not hold the CKKS secret key", where=f"vertical-lr {name}")
        if self.ctx.params != params.ckks:
            raise CryptoError("public context parameters differ from the job's", where=f"vertical-lr {name}")
        self.batches = batches_for(len(self.train_rows), params)
        self.block = bsgs_steps(self.dim, self.ctx.slots)[0]
        self._packed: dict[int, PackedMatrix] = {}
        self.pack_cache_bytes = PACK_CACHE_BYTES
        self._prefetched: tuple[int, PackedMatrix] | None = None
        self._mask_sum: np.ndarray | None = None
        self._pending: tuple[int, int] | None = None
        self.gradients_seen = 0
        self.snapshots: list[np.ndarray] = []
        # explicit precision-budget check for the gradient masks
        self.budget = mask_budget(
            params.ckks,
            mask_bits=params.mask_bits,
            value_bound=self._slot_bound(),
            precision_bits=params.precision_bits,
            min_hiding_bits=params.min_hiding_bits,
            summed_slots=self.ctx.slots // self.block,
        )

    def _slot_bound(self) -> float:
        """Bound on one un-reduced matvec slot: ``block`` rows x max|x| x max|c*(p(z)-y)|.

        Valid while every total score lies in ``[-2R, 2R]`` (the polynomial is
        bounded there); documented in the protocol page.
        """
        coef = sigmoid_poly(self.params)
        t = np.linspace(-2 * self.params.sigmoid_range, 2 * self.params.sigmoid_range, 2001)
        pv = np.polynomial.polynomial.polyval(t, coef)
        resid = float(max(np.abs(pv).max(), np.abs(pv - 1).max()))
        cw = self.params.class_weight
        cmax = 1.0 if cw is None else (float(max(cw)) if isinstance(cw, tuple) else 20.0)
        xmax = float(np.abs(self.x).max()) if self.x.size else 1.0
        per_row = xmax * cmax * resid / min(self.params.batch_size, len(self.train_rows))
        return max(per_row * self.block, 1e-12)

    def _batch_rows(self, epoch: int, batch: int) -> tuple[int, np.ndarray]:
        if not 0 <= epoch < self.params.epochs:
            raise FedgovError(f"epoch {epoch} out of range", where=f"vertical-lr {self.name}")
        order = batch_order(len(self.batches), epoch, self.params)
        if not 0 <= batch < len(order):
            raise FedgovError(f"batch {batch} out of range", where=f"vertical-lr {self.name}")
        bid = int(order[batch])
        return bid, self.train_rows[self.batches[bid]]

    def packed_batch_bytes(self) -> int:
        """Upper bound on the memory of one batch's encoded diagonals (``padded_dim`` plaintexts).

        Each diagonal is a plaintext at the matvec level (two rescales down):
        ``poly_modulus_degree`` 64-bit words per remaining prime.
        """
        cp = self.ctx.params
        primes = len(cp.coeff_mod_bit_sizes) - 1 - 2
        padded = 1 << max(0, (self.dim - 1).bit_length())
        return padded * cp.poly_modulus_degree * primes * 8

    def packed_cache_batches(self) -> int:
        """How many batches' diagonals stay encoded across epochs (within :data:`PACK_CACHE_BYTES`)."""
        return min(len(self.batches), self.pack_cache_bytes // max(self.packed_batch_bytes(), 1))

    def _packed_for(self, bid: int) -> PackedMatrix:
        """Batch ``bid``'s encoded diagonals: from the cache, or encoded now.

        Memory-bounded: at most :meth:`packed_cache_batches` batches are kept
        (the lowest batch ids, so the cache never churns); any other batch is
        encoded for this use and dropped. Encoding is deterministic, so the
        ciphertexts, masks and everything any party receives are the same
        whichever batches are cached.
        """
        pm = self._packed.get(bid)
        if pm is None and self._prefetched is not None and self._prefetched[0] == bid:
            pm, self._prefetched = self._prefetched[1], None
        if pm is None:
            rows = self.train_rows[self.batches[bid]]
            pm = self.ctx.pack_matrix(self.x[rows].T, rescales=2)
            if bid < self.packed_cache_batches():
                self._packed[bid] = pm
        return pm

    def prefetch(self, epoch: int, batch: int) -> None:
        """Encode the diagonals of batch ``(epoch, batch)`` now if they are not cached.

        Call while waiting on the network (the host does, while the guest
        computes the residual): the next gradient for that batch then skips
        the encoding. Holds at most one such batch; involves only this
        party's own data and changes nothing anyone receives.
        """
        bid, _ = self._batch_rows(epoch, batch)
        if bid in self._packed or (self._prefetched is not None and self._prefetched[0] == bid):
            return
        self._prefetched = None  # free the old one before encoding the next
        self._prefetched = (bid, self._packed_for(bid))

    def prepare(self) -> None:
        """Pre-encode the cached batches' diagonals (optional; otherwise done lazily on first use).

        Only the batches that fit :data:`PACK_CACHE_BYTES` are encoded ahead; a
        wide party (e.g. 300 features x 20 batches, ~2 GB of plaintexts)
        encodes the rest batch by batch when it uses them.
        """
        for bid in range(self.packed_cache_batches()):
            self._packed_for(bid)

    def _masked_gradient(self, epoch: int, batch: int, d_ct: Any) -> bytes:
        bid, _ = self._batch_rows(epoch, batch)
        t = self.ctx.matvec(self._packed_for(bid), d_ct)
        r = random_mask(self.ctx.slots, self.params.mask_bits)
        self._mask_sum = r.reshape(-1, self.block).sum(axis=0)
        self._pending = (epoch, batch)
        masked = add_mask(self.ctx, t, r, self.params.mask_bits)
        return _pack(_K_MASKED, epoch, batch, self.block, [self.ctx.ct_to_bytes(masked)])

    def apply_unmasked(self, reply: bytes) -> np.ndarray:
        """Remove this party's mask from the arbiter's reply and take one optimizer step.

        Returns the gradient (data term + L2) that was applied. Learns: its own
        gradient for the batch, nothing else.
        """
        where = f"vertical-lr {self.name}"
        epoch, batch, block, parts = _unpack(reply, _K_REPLY, where)
        if self._pending != (epoch, batch) or self._mask_sum is None:
            raise FedgovError(f"reply for epoch {epoch} batch {batch} was not requested", where=where)
        if block != self.block or len(parts) != 1:
            raise CryptoError("reply shape mismatch", where=where)
        g = _from_floats(parts[0]) - self._mask_sum
        self._mask_sum = None
        self._pending = None
        g = g[: self.dim]
        g = g + self._l2_grad()
        self.w = self.opt.step(self.w, g)
        self.gradients_seen += 1
        return g

    def _l2_grad(self) -> np.ndarray:
        return self.params.l2 * self.w

    def snapshot(self) -> None:
        """Keep this epoch's weights (call at the end of every epoch; needed for early stopping)."""
        self.snapshots.append(self.w.copy())

    def finish(self, best_epoch: int | None) -> None:
        """Roll back to the weights after ``best_epoch`` (the guest's early-stopping choice), if given."""
        if best_epoch is not None:
            if not 0 <= best_epoch < len(self.snapshots):
                raise FedgovError(f"no snapshot for epoch {best_epoch}", where=f"vertical-lr {self.name}")
            self.w = self.snapshots[best_epoch].copy()


class Host(_Party):
    """Feature holder. Holds its own weights; never sees labels, residuals or other parties' data.

    Learns: its own (unmasked) batch gradients ``X_h[batch]^T d`` - the same as
    in FATE - and nothing else; everything it receives is CKKS-encrypted
    under the arbiter's key or masked by the arbiter's reply protocol.
    """

    role = "host"

    def __init__(self, name: str, params: VlrParams, x: np.ndarray, ctx: bytes) -> None:
        super().__init__(name, params, x, ctx)
        self._zero: Any = None

    def partial_scores(self, epoch: int, batch: int) -> bytes:
        """``Enc(X_h[batch] @ w_h)``: one fresh ciphertext for the guest."""
        _, rows = self._batch_rows(epoch, batch)
        zero, self._zero = self._zero, None  # an encryption of zero is used once, never again
        ct = self.ctx.encrypt(self.x[rows] @ self.w, zero=zero)
        return _pack(_K_SCORES, epoch, batch, 0, [self.ctx.ct_to_bytes(ct)])

    def precompute(self) -> None:
        """Prepare the data-independent half of the next :meth:`partial_scores` encryption.

        Call while waiting on the network (it costs most of an encryption);
        involves no data, changes nothing the guest or arbiter sees.
        """
        if self._zero is None:
            self._zero = self.ctx.encrypt_zero()

    def masked_gradient(self, residual: bytes) -> bytes:
        """From the guest's encrypted residual, the masked encrypted gradient for the arbiter.

        Every one of the ``slots`` slots carries a fresh uniform mask.
        """
        epoch, batch, _, parts = _unpack(residual, _K_RESIDUAL, f"vertical-lr {self.name}")
        if len(parts) != 1:
            raise CryptoError("residual must be one ciphertext", where=f"vertical-lr {self.name}")
        d = self.ctx.ct_from_bytes(parts[0], rescales=2)
        return self._masked_gradient(epoch, batch, d)

    def validation_scores(self) -> bytes:
        """Encrypted partial scores on the shared validation rows (for the guest's early stopping)."""
        return _encrypt_rows(self.ctx, self.x[self.val_rows] @ self.w, _K_SCORES)

    def model(self, version: int = 1, model_id: str = "") -> ModelPart:
        return ModelPart(
            party=self.name, role="host", version=version, model_id=model_id,
            mean=self.std.mean.tolist(), std=self.std.std.tolist(), clip=self.std.clip,
            weights=self.w.tolist(), intercept=0.0, params=self.params.to_json(),
        )


#: cache the guest's per-batch plaintexts when there are at most this many batches
_PT_CACHE_BATCHES = 128


class Guest(_Party):
    """Label holder. Holds its weights and the intercept (last coordinate of ``w``).

    Learns: its own batch gradients, and - only if early stopping is on -
    the total validation scores once per epoch. Never sees a host's partial
    score, weights or gradient in the clear.
    """

    role = "guest"

    def __init__(self, name: str, params: VlrParams, x: np.ndarray, y: np.ndarray, ctx: bytes, hosts: list[str]) -> None:
        super().__init__(name, params, x, ctx, extra_cols=1)
        self.y = _check_labels(y, self.n)
        ytr = self.y[self.train_rows]
        if ytr.min() == ytr.max():
            raise ConfigError("training rows contain a single class", where=f"vertical-lr {name}")
        self.c = _class_weights(self.y, params)
        if params.class_weight == "balanced":
            self.c = _class_weights_from(ytr, self.y, params)
        self.hosts = list(hosts)
        if not self.hosts:
            raise ConfigError("vertical-lr needs at least one host", where=f"vertical-lr {name}")
        self.coef = sigmoid_poly(params)
        self.best_val = math.inf
        self.bad_epochs = 0
        self.best_epoch: int | None = None
        self.history: list[dict[str, float]] = []
        self._val_mask: np.ndarray | None = None
        self._pt_cache: dict[Any, Any] = {}

    def _l2_grad(self) -> np.ndarray:
        g = self.params.l2 * self.w
        g[-1] = 0.0  # no penalty on the intercept
        return g

    def residual_for_hosts(self, epoch: int, batch: int, host_scores: Mapping[str, bytes]) -> bytes:
        """Encrypted residual ``[[c * (p(z) - y)]]`` for the batch (sent to every host).

        Also prepares the guest's own masked gradient (:meth:`masked_gradient`).
        """
        where = f"vertical-lr {self.name}"
        if set(host_scores) != set(self.hosts):
            raise FedgovError(
                f"partial scores from {sorted(host_scores)}, expected {sorted(self.hosts)}", where=where
            )
        bid, rows = self._batch_rows(epoch, batch)
        b = len(rows)
        z = None
        for h in self.hosts:
            e, bt, _, parts = _unpack(host_scores[h], _K_SCORES, where)
            if (e, bt) != (epoch, batch) or len(parts) != 1:
                raise FedgovError(f"host {h} sent scores for epoch {e} batch {bt}", where=where)
            ct = self.ctx.ct_from_bytes(parts[0], rescales=0)
            z = ct if z is None else self.ctx.add(z, ct)
        assert z is not None
        z = self.ctx.add_plain(z, self.x[rows] @ self.w)
        c = self.c[rows] / b
        a0, a1, _, a3 = self.coef
        lvl2 = self.ctx.level_parms_id(2)
        # the batch's weight/label plaintexts do not change between epochs: encoded once
        # (about 1 MB per batch at N = 8192, so only up to _PT_CACHE_BATCHES batches)
        pc = self._pt_cache if len(self.batches) <= _PT_CACHE_BATCHES else None
        if self.params.sigmoid_degree == 3:
            z2 = self.ctx.mul(z, z)  # level 1, scale S^2/q
            t1 = self.ctx.mul_plain_to(z, a3 * c, z2.scale, cache=pc, key=(bid, "a3c"))  # level 1, same scale
            d = self.ctx.mul(z2, t1)  # level 2: c * a3 * z^3
            lin = self.ctx.mul_plain_to(z, a1 * c, d.scale, cache=pc, key=(bid, "a1c"))  # level 1, scale of d
            d = self.ctx.add(d, self.ctx.mod_switch_to(lin, lvl2))
        else:
            lin = self.ctx.mul_plain_to(z, a1 * c, self.ctx.scale, cache=pc, key=(bid, "a1c"))
            d = self.ctx.mod_switch_to(lin, lvl2)
        d = self.ctx.add_plain(d, c * (a0 - self.y[rows]), cache=pc, key=(bid, "c(a0-y)"))
        self._d = (epoch, batch, d)
        return _pack(_K_RESIDUAL, epoch, batch, 0, [self.ctx.ct_to_bytes(d)])

    def masked_gradient(self, epoch: int, batch: int) -> bytes:
        """The guest's own masked encrypted gradient (incl. intercept) for the arbiter."""
        if getattr(self, "_d", None) is None or self._d[:2] != (epoch, batch):
            raise FedgovError("residual for this batch not computed yet", where=f"vertical-lr {self.name}")
        d = self._d[2]
        self._d = None
        return self._masked_gradient(epoch, batch, d)

    # -- validation / early stopping ----------------------------------------------------------
    def masked_validation_total(self, host_scores: Mapping[str, bytes]) -> bytes:
        """Sum the hosts' encrypted validation scores with the guest's, mask every slot, for the arbiter."""
        self._val_mask, blob = _mask_total(self.ctx, self.x[self.val_rows] @ self.w, host_scores, self.hosts, self.params, self.name)
        return blob

    def end_epoch(self, reply: bytes | None) -> bool:
        """Record the epoch; with early stopping, read the validation scores. Returns True to continue."""
        self.snapshot()
        rec: dict[str, float] = {"epoch": float(len(self.history))}
        if reply is not None:
            if self._val_mask is None:
                raise FedgovError("no validation request pending", where=f"vertical-lr {self.name}")
            z = _unmask_total(reply, self._val_mask)[: len(self.val_rows)]
            self._val_mask = None
            yv = self.y[self.val_rows]
            loss = _logloss(yv, z)
            rec["val_loss"] = loss
            rec["val_auc"] = auc(yv, z)
            if loss < self.best_val - self.params.min_delta:
                self.best_val = loss
                self.bad_epochs = 0
                self.best_epoch = len(self.history)
            else:
                self.bad_epochs += 1
        self.history.append(rec)
        return not (self.params.patience and self.bad_epochs >= self.params.patience)

    def model(self, version: int = 1, model_id: str = "") -> ModelPart:
        return ModelPart(
            party=self.name, role="guest", version=version, model_id=model_id,
            mean=self.std.mean.tolist(), std=self.std.std.tolist(), clip=self.std.clip,
            weights=self.w[:-1].tolist(), intercept=float(self.w[-1]), params=self.params.to_json(),
        )


def _class_weights_from(ytr: np.ndarray, y: np.ndarray, params: VlrParams) -> np.ndarray:
    n1 = float(ytr.sum())
    n0 = float(len(ytr) - n1)
    return np.where(y > 0.5, len(ytr) / (2 * n1), len(ytr) / (2 * n0))


def _logloss(y: np.ndarray, z: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0, z) - y * z))


def add_mask(ctx: CkksContext, ct: Any, mask: np.ndarray, mask_bits: int) -> Any:
    """``ct + mask + i * flood`` (in place; returns ``ct``): the real mask, and a fresh uniform
    flood of every slot's imaginary part (:func:`fedgov.crypto.ckks.flood_imaginary_seal`).

    CKKS slots are complex; the parties' values are real, but products and
    rescaling leave imaginary parts of size (value x noise) that a real mask
    does not touch, and a key holder can decode them. ``flood`` is fresh,
    uniform on ``[-2^mask_bits, 2^mask_bits]``, so the imaginary part the
    arbiter could decode is as hidden as the real one. The real part is
    unchanged (up to CKKS encoding error). Callers pass a ciphertext of their
    own that nothing else holds (a matvec result, a fresh sum).
    """
    return ctx.flood_imaginary(ct, 2.0**mask_bits, distribution="uniform", real=mask, where="vertical-lr")


def _encrypt_rows(ctx: CkksContext, values: np.ndarray, kind: int) -> bytes:
    n = ctx.slots
    parts = [ctx.ct_to_bytes(ctx.encrypt(values[i : i + n])) for i in range(0, max(len(values), 1), n)]
    return _pack(kind, 0, 0, 0, parts)


def _mask_total(
    ctx: CkksContext, own: np.ndarray, host_scores: Mapping[str, bytes], hosts: list[str], params: VlrParams, name: str
) -> tuple[np.ndarray, bytes]:
    where = f"vertical-lr {name}"
    if set(host_scores) != set(hosts):
        raise FedgovError(f"scores from {sorted(host_scores)}, expected {sorted(hosts)}", where=where)
    mask_budget(
        params.ckks, mask_bits=params.mask_bits, value_bound=params.score_bound,
        precision_bits=params.precision_bits, min_hiding_bits=params.min_hiding_bits,
    )
    n = ctx.slots
    chunks = max(1, -(-len(own) // n))
    totals: list[Any] = [None] * chunks
    for h in hosts:
        _, _, _, parts = _unpack(host_scores[h], _K_SCORES, where)
        if len(parts) != chunks:
            raise FedgovError(f"host {h} sent {len(parts)} score chunks, expected {chunks}", where=where)
        for i, p in enumerate(parts):
            ct = ctx.ct_from_bytes(p, rescales=0)
            totals[i] = ct if totals[i] is None else ctx.add(totals[i], ct)
    mask = random_mask(chunks * n, params.mask_bits)
    out = []
    for i in range(chunks):
        tot = ctx.add_plain(totals[i], own[i * n : (i + 1) * n])
        out.append(ctx.ct_to_bytes(add_mask(ctx, tot, mask[i * n : (i + 1) * n], params.mask_bits)))
    return mask, _pack(_K_SCORE_REQ, 0, 0, n, out)


def _unmask_total(reply: bytes, mask: np.ndarray) -> np.ndarray:
    _, _, _, parts = _unpack(reply, _K_REPLY, "vertical-lr scores")
    v = np.concatenate([_from_floats(p) for p in parts])
    if v.shape != mask.shape:
        raise CryptoError("score reply shape mismatch", where="vertical-lr scores")
    return v - mask


# ---------------------------------------------------------------------------------------------
# model parts and scoring


@dataclass
class ModelPart:
    """One party's share of a trained model: its standardiser and weights (guest: + intercept)."""

    party: str
    role: str
    version: int
    model_id: str
    mean: list[float]
    std: list[float]
    clip: float
    weights: list[float]
    intercept: float
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"format": MODEL_FORMAT, **self.__dict__}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, b: bytes | str) -> ModelPart:
        try:
            d = json.loads(b)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError("model part is not JSON", where="vertical-lr model") from exc
        if not isinstance(d, dict) or d.pop("format", None) != MODEL_FORMAT:
            raise ConfigError(f"model part format must be {MODEL_FORMAT}", where="vertical-lr model")
        try:
            m = cls(**d)
        except TypeError as exc:
            raise ConfigError(f"model part fields: {exc}", where="vertical-lr model") from exc
        if not (len(m.mean) == len(m.std) == len(m.weights)):
            raise ConfigError("model part has inconsistent lengths", where="vertical-lr model")
        return m

    def standardized(self, x: Any) -> np.ndarray:
        x = _check_matrix(x, f"{self.role} {self.party}")
        if x.shape[1] != len(self.weights):
            raise ConfigError(f"{x.shape[1]} features, model expects {len(self.weights)}", where=f"vertical-lr {self.party}")
        return _Standardizer(np.asarray(self.mean), np.asarray(self.std), self.clip).apply(x)

    def partial_score(self, x: Any) -> np.ndarray:
        return self.standardized(x) @ np.asarray(self.weights) + self.intercept


class HostScorer:
    """Host side of ``vertical-lr-score``: sends only encrypted partial scores. Learns nothing."""

    def __init__(self, model: ModelPart, x: Any, ctx: bytes) -> None:
        self.model = model
        self.ctx = CkksContext.from_public_bytes(ctx)
        if self.ctx.has_secret_key:
            raise CryptoError("hosts must not hold the CKKS secret key", where="vertical-lr score")
        self.u = model.partial_score(x)

    def partial_scores(self) -> bytes:
        return _encrypt_rows(self.ctx, self.u, _K_SCORES)


class GuestScorer:
    """Guest side of ``vertical-lr-score``: learns only the final total score per row."""

    def __init__(self, model: ModelPart, x: Any, ctx: bytes, hosts: list[str]) -> None:
        self.model = model
        self.ctx = CkksContext.from_public_bytes(ctx)
        if self.ctx.has_secret_key:
            raise CryptoError("the guest must not hold the CKKS secret key", where="vertical-lr score")
        self.params = VlrParams.from_json(model.params)
        self.hosts = list(hosts)
        self.u = model.partial_score(x)
        self._mask: np.ndarray | None = None

    def masked_total(self, host_scores: Mapping[str, bytes]) -> bytes:
        """Encrypted total score, every slot masked, for the arbiter."""
        for h, b in host_scores.items():
            _, _, _, parts = _unpack(b, _K_SCORES, "vertical-lr score")
            if len(parts) != max(1, -(-len(self.u) // self.ctx.slots)):
                raise FedgovError(f"host {h} scored a different number of rows", where="vertical-lr score")
        self._mask, blob = _mask_total(self.ctx, self.u, host_scores, self.hosts, self.params, self.model.party)
        return blob

    def masked_coalition_total(self, host_scores: Mapping[str, bytes]) -> bytes:
        """Like :meth:`masked_total`, over a non-empty subset of the hosts.

        For model-contribution (Shapley) re-scoring. Leaks to the guest, once
        decrypted, the coalition's total score per held-out row; with two
        coalitions differing by one host, that host's partial scores on the
        held-out rows. Only run when the signed manifest asks for it.
        """
        if not host_scores or not set(host_scores) <= set(self.hosts):
            raise FedgovError("a coalition is a non-empty subset of the hosts", where="vertical-lr score")
        self._mask, blob = _mask_total(
            self.ctx, self.u, host_scores, sorted(host_scores), self.params, self.model.party
        )
        return blob

    def scores(self, reply: bytes) -> np.ndarray:
        """Final linear scores (log-odds) for the guest's rows."""
        if self._mask is None:
            raise FedgovError("no score request pending", where="vertical-lr score")
        z = _unmask_total(reply, self._mask)[: len(self.u)]
        self._mask = None
        return z


# ---------------------------------------------------------------------------------------------
# metrics


def metrics(y: Any, scores: Any, threshold: float = 0.5) -> dict[str, float]:
    """AUC, KS, accuracy, precision and recall of log-odds ``scores`` against 0/1 labels ``y``."""
    y = np.asarray(y, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ConfigError("labels and scores differ in length", where="vertical-lr metrics")
    p = 1 / (1 + np.exp(-s))
    pred = p >= threshold
    tp = float(np.sum(pred & (y > 0.5)))
    fp = float(np.sum(pred & (y < 0.5)))
    fn = float(np.sum(~pred & (y > 0.5)))
    order = np.argsort(-s, kind="mergesort")
    ys = y[order]
    tpr = np.cumsum(ys) / max(ys.sum(), 1)
    fpr = np.cumsum(1 - ys) / max((1 - ys).sum(), 1)
    return {
        "auc": auc(y, s),
        "ks": float(np.max(np.abs(tpr - fpr))) if len(y) else float("nan"),
        "accuracy": float(np.mean(pred == (y > 0.5))),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
    }


def roc_points(y: Any, scores: Any, points: int = 21, decimals: int = 3) -> list[list[float]]:
    """The ROC curve of ``scores`` against 0/1 labels ``y`` as at most ``points`` ``[fpr, tpr]`` pairs.

    The pairs are read at ``points`` evenly spaced false-positive rates
    (0, 0.05, ..., 1 for 21), each with the best true-positive rate reached at
    or below it, rounded to ``decimals``: a coarse curve of the guest's own
    labels and scores (the evaluation it already computes AUC and KS from),
    no row and no threshold. Empty labels give ``[]``.
    """
    y = np.asarray(y, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ConfigError("labels and scores differ in length", where="vertical-lr roc")
    if not len(y) or points < 2:
        return []
    order = np.argsort(-s, kind="mergesort")
    ys = y[order]
    tpr = np.concatenate([[0.0], np.cumsum(ys) / max(ys.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(1 - ys) / max((1 - ys).sum(), 1)])
    out = []
    for f in np.linspace(0.0, 1.0, points):
        reached = tpr[fpr <= f + 1e-12]
        out.append([round(float(f), decimals), round(float(reached.max()) if len(reached) else 0.0, decimals)])
    return out


# ---------------------------------------------------------------------------------------------
# plaintext reference and in-process drivers


@dataclass
class VlrResult:
    """Outcome of a training run (in-process)."""

    guest_model: ModelPart
    host_models: dict[str, ModelPart]
    epochs_run: int
    seconds_per_epoch: float
    setup_seconds: float
    bytes_sent: dict[str, int]
    bytes_per_epoch: float
    history: list[dict[str, float]]
    gradients: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)

    def scores(self, guest_x: Any, hosts_x: Mapping[str, Any]) -> np.ndarray:
        """Plaintext scoring with all parts in one place (tests/benchmarks only)."""
        z = self.guest_model.partial_score(guest_x)
        for h, m in self.host_models.items():
            z = z + m.partial_score(hosts_x[h])
        return z


def fit_plain(
    guest_x: Any, y: Any, hosts_x: Mapping[str, Any], params: VlrParams, *, exact_sigmoid: bool = False,
    record: bool = False,
) -> VlrResult:
    """The same algorithm in numpy: same standardisation, split, batches, order, polynomial and optimizer.

    With ``exact_sigmoid`` the logistic function replaces the polynomial.
    """
    params.validate()
    gx = _check_matrix(guest_x, "guest")
    n = gx.shape[0]
    yy = _check_labels(y, n)
    hx = {h: _check_matrix(x, f"host {h}", n) for h, x in hosts_x.items()}
    tr, va = split_rows(n, params)
    gstd = _Standardizer.fit(gx[tr], params.clip)
    xs = {"__guest__": np.hstack([gstd.apply(gx), np.ones((n, 1))])}
    stds = {}
    for h, x in hx.items():
        stds[h] = _Standardizer.fit(x[tr], params.clip)
        xs[h] = stds[h].apply(x)
    w = {k: np.zeros(v.shape[1]) for k, v in xs.items()}
    opt = {k: _Optimizer(params, v.shape[1]) for k, v in xs.items()}
    c_all = _class_weights_from(yy[tr], yy, params) if params.class_weight == "balanced" else _class_weights(yy, params)
    coef = sigmoid_poly(params)
    batches = batches_for(len(tr), params)
    grads: list[dict[str, np.ndarray]] = []
    history: list[dict[str, float]] = []
    best, bad, best_w = math.inf, 0, {k: v.copy() for k, v in w.items()}
    t0 = time.perf_counter()
    epochs = 0
    for e in range(params.epochs):
        for bid in batch_order(len(batches), e, params):
            rows = tr[batches[bid]]
            z = sum(xs[k][rows] @ w[k] for k in xs)
            sg = 1 / (1 + np.exp(-z)) if exact_sigmoid else np.polynomial.polynomial.polyval(z, coef)
            d = c_all[rows] * (sg - yy[rows]) / len(rows)
            rec = {}
            for k in xs:
                g = xs[k][rows].T @ d + params.l2 * w[k]
                if k == "__guest__":
                    g[-1] -= params.l2 * w[k][-1]
                rec[k] = g
                w[k] = opt[k].step(w[k], g)
            if record:
                grads.append(rec)
        epochs += 1
        h: dict[str, float] = {"epoch": float(e)}
        if params.patience:
            zv = sum(xs[k][va] @ w[k] for k in xs)
            loss = _logloss(yy[va], zv)
            h["val_loss"] = loss
            if loss < best - params.min_delta:
                best, bad, best_w = loss, 0, {k: v.copy() for k, v in w.items()}
            else:
                bad += 1
        history.append(h)
        if params.patience and bad >= params.patience:
            break
    secs = (time.perf_counter() - t0) / max(epochs, 1)
    if params.patience:
        w = best_w
    gm = ModelPart("guest", "guest", 1, "plain", gstd.mean.tolist(), gstd.std.tolist(), gstd.clip,
                   w["__guest__"][:-1].tolist(), float(w["__guest__"][-1]), params.to_json())
    hm = {h: ModelPart(h, "host", 1, "plain", stds[h].mean.tolist(), stds[h].std.tolist(), stds[h].clip,
                       w[h].tolist(), 0.0, params.to_json()) for h in hx}
    return VlrResult(gm, hm, epochs, secs, 0.0, {}, 0.0, history, grads)


def run_in_process(
    guest_x: Any, y: Any, hosts_x: Mapping[str, Any], params: VlrParams, *, record: bool = False,
    guest_name: str = "guest", model_id: str = "",
) -> VlrResult:
    """Drive Arbiter, Guest and Hosts in one process, passing only bytes; counts every byte sent.

    ``bytes_sent`` keys are ``"sender->receiver"``. The public-context
    broadcast is counted once per receiver under ``"arbiter->*"`` setup keys
    and excluded from ``bytes_per_epoch``.
    """
    params.validate()
    gx = _check_matrix(guest_x, "guest")
    n = gx.shape[0]
    _check_labels(y, n)
    if not hosts_x:
        raise ConfigError("vertical-lr needs at least one host", where="vertical-lr")
    hx = {h: _check_matrix(x, f"host {h}", n) for h, x in hosts_x.items()}
    if guest_name in hx:
        raise ConfigError("guest and host names must differ", where="vertical-lr")
    sent: dict[str, int] = {}

    def count(key: str, blob: bytes) -> bytes:
        sent[key] = sent.get(key, 0) + len(blob)
        return blob

    t_setup = time.perf_counter()
    counts = {guest_name: gx.shape[1] + 1, **{h: x.shape[1] for h, x in hx.items()}}
    arb = Arbiter(params, counts)
    ctx = arb.public_context()
    hosts = {h: Host(h, params, x, count(f"setup:arbiter->{h}", ctx)) for h, x in hx.items()}
    guest = Guest(guest_name, params, gx, y, count(f"setup:arbiter->{guest_name}", ctx), list(hx))
    for p in [guest, *hosts.values()]:
        p.prepare()
    setup = time.perf_counter() - t_setup
    grads: list[dict[str, np.ndarray]] = []
    t0 = time.perf_counter()
    epochs = 0
    for e in range(params.epochs):
        for b in range(len(guest.batches)):
            scores = {h: count(f"{h}->{guest_name}", hp.partial_scores(e, b)) for h, hp in hosts.items()}
            resid = guest.residual_for_hosts(e, b, scores)
            rec = {}
            for h, hp in hosts.items():
                masked = hp.masked_gradient(count(f"{guest_name}->{h}", resid))
                reply = arb.decrypt_masked(h, count(f"{h}->arbiter", masked), expect="gradient")
                rec[h] = hp.apply_unmasked(count(f"arbiter->{h}", reply))
            masked = guest.masked_gradient(e, b)
            reply = arb.decrypt_masked(guest_name, count(f"{guest_name}->arbiter", masked), expect="gradient")
            rec["__guest__"] = guest.apply_unmasked(count(f"arbiter->{guest_name}", reply))
            if record:
                grads.append(rec)
        epochs += 1
        reply_v = None
        if params.patience:
            vs = {h: count(f"{h}->{guest_name}", hp.validation_scores()) for h, hp in hosts.items()}
            req = count(f"{guest_name}->arbiter", guest.masked_validation_total(vs))
            reply_v = count(f"arbiter->{guest_name}", arb.decrypt_masked(guest_name, req, expect="scores"))
        for hp in hosts.values():
            hp.snapshot()
        if not guest.end_epoch(reply_v):
            break
    secs = (time.perf_counter() - t0) / max(epochs, 1)
    # early stopping: the guest tells every host which epoch to keep (a 4-byte message)
    best = guest.best_epoch if params.patience else None
    for h, hp in hosts.items():
        count(f"{guest_name}->{h}", struct.pack("<i", -1 if best is None else best))
        hp.finish(best)
    guest.finish(best)
    gm = guest.model(model_id=model_id)
    hm = {h: hp.model(model_id=model_id) for h, hp in hosts.items()}
    per_epoch = sum(v for k, v in sent.items() if not k.startswith("setup:")) / max(epochs, 1)
    return VlrResult(gm, hm, epochs, secs, setup, sent, per_epoch, guest.history, grads)


def score_in_process(
    guest_model: ModelPart, guest_x: Any, host_models: Mapping[str, ModelPart], hosts_x: Mapping[str, Any],
    params: VlrParams | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """``vertical-lr-score`` in one process with a fresh arbiter key. Returns (guest's scores, bytes sent)."""
    params = params or VlrParams.from_json(guest_model.params)
    arb = Arbiter(params, {})
    ctx = arb.public_context()
    sent: dict[str, int] = {}
    hs = {h: HostScorer(m, hosts_x[h], ctx) for h, m in host_models.items()}
    gs = GuestScorer(guest_model, guest_x, ctx, list(host_models))
    blobs = {h: s.partial_scores() for h, s in hs.items()}
    for h, b in blobs.items():
        sent[f"{h}->guest"] = len(b)
    req = gs.masked_total(blobs)
    sent["guest->arbiter"] = len(req)
    reply = arb.decrypt_masked(guest_model.party, req, expect="scores")
    sent["arbiter->guest"] = len(reply)
    return gs.scores(reply), sent
