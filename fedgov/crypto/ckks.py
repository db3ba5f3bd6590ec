"""Safe CKKS verbs on top of TenSEAL's SEAL bindings (``tenseal.sealapi``).

Nothing here implements a cryptographic primitive: key generation,
encryption, decryption, rotations and key switching are Microsoft SEAL's,
reached through ``tenseal.sealapi``. This module only chooses explicit
parameters, keeps the secret key out of anything that is serialised for
other parties, and packs data so that few SEAL operations are needed:

* :class:`CkksParams` - explicit ring degree, coefficient modulus chain and
  scale; validated against SEAL's 128-bit security table (``TC128``).
* :class:`CkksContext` - one party's view. The key holder creates it with
  :meth:`CkksContext.create` (secret key, public key, relinearisation keys
  and *only* the Galois keys for the rotation steps it is asked for);
  :meth:`CkksContext.public_bytes` serialises everything except the secret
  key; :meth:`CkksContext.from_public_bytes` rebuilds a public-only context
  that can encrypt and evaluate but cannot decrypt.
* :class:`PackedMatrix` / :meth:`CkksContext.matvec` - a ``p x n`` plaintext
  matrix times one encrypted ``n``-slot vector, in the Halevi-Shoup diagonal
  layout with baby-step/giant-step rotations: one ciphertext in, one out,
  ``2*sqrt(p') + log2(n/p')`` rotations and ``p'`` plaintext products
  (``p'`` = ``p`` rounded up to a power of two). Every output slot ``i``
  holds row ``i mod p'``.
* :func:`mask_budget` - checks that an additive real-valued mask of the
  requested size fits the modulus left after the circuit and that the
  decoded result keeps the requested precision; reports how many bits of
  statistical hiding the mask gives.
* :func:`flood_imaginary_seal` - THE imaginary-part flood (uniform or
  Gaussian, optionally together with a real mask whose slot sum is kept
  exactly zero) that every protocol applies before a key holder decrypts, so
  that a key holder who decodes slots as complex numbers learns nothing from
  the imaginary parts (real masks and blinding factors multiply the
  encryption noise there too); :func:`flood_imaginary` (TenSEAL vectors) and
  :meth:`CkksContext.flood_imaginary` only adapt it.

Leakage of the verbs themselves: a ciphertext reveals its level, scale and
size (i.e. which step of a circuit produced it), nothing about the slots.
Decryption is only possible with the secret key, which never leaves the
:class:`CkksContext` that created it.
"""

from __future__ import annotations

import io
import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tenseal.sealapi as sealapi

from fedgov.errors import ConfigError, CryptoError

__all__ = [
    "CkksContext",
    "CkksParams",
    "MaskBudget",
    "PackedMatrix",
    "bsgs_steps",
    "FloodDistribution",
    "ciphertext_bytes",
    "constant_coefficient",
    "flood_imaginary",
    "flood_imaginary_seal",
    "load_ciphertext",
    "mask_budget",
    "random_mask",
]

#: SEAL's 128-bit security bound on the total coefficient-modulus bits (incl. the special prime).
_MAX_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
_MAGIC = b"FCKP"
_VERSION = 1
_TMPDIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
#: Bits of mantissa of an IEEE double; SEAL decodes CKKS slots through doubles.
_DOUBLE_BITS = 52


@dataclass(frozen=True)
class CkksParams:
    """Explicit CKKS parameters.

    ``coeff_mod_bit_sizes`` lists the prime sizes, first the primes that stay
    until decryption, then one prime per rescaling (of ``scale_bits`` bits),
    then SEAL's special (key-switching) prime. ``decrypt_primes`` says how
    many leading primes remain at decryption; the circuit depth is therefore
    ``len(coeff_mod_bit_sizes) - 1 - decrypt_primes``.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (40, 40, 30, 30, 30, 48)
    scale_bits: int = 30
    decrypt_primes: int = 2

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        return len(self.coeff_mod_bit_sizes) - 1 - self.decrypt_primes

    @property
    def final_modulus_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes[: self.decrypt_primes])

    def validate(self, *, where: str = "ckks") -> None:
        """Raise :class:`ConfigError` unless the parameters give 128-bit security and a sane chain."""
        n = self.poly_modulus_degree
        if n not in _MAX_BITS_128 or n < 4096:
            raise ConfigError(f"poly_modulus_degree must be one of 4096..32768 (power of two), got {n}", where=where)
        bits = tuple(int(b) for b in self.coeff_mod_bit_sizes)
        total = sum(bits)
        if total > _MAX_BITS_128[n]:
            raise ConfigError(
                f"coeff_mod_bit_sizes sum to {total} bits; 128-bit security allows at most {_MAX_BITS_128[n]} for N={n}",
                where=where,
            )
        if any(b < 20 or b > 60 for b in bits):
            raise ConfigError("every coefficient prime must have 20..60 bits", where=where)
        if not 1 <= self.decrypt_primes <= len(bits) - 2:
            raise ConfigError("decrypt_primes must leave at least one rescaling prime and the special prime", where=where)
        if bits[-1] < max(bits[:-1]):
            raise ConfigError("the special (last) prime must be at least as large as every other prime", where=where)
        for b in bits[self.decrypt_primes : -1]:
            if b != self.scale_bits:
                raise ConfigError(
                    f"rescaling primes must have scale_bits={self.scale_bits} bits, got {b}", where=where
                )
        if self.final_modulus_bits <= self.scale_bits + 2:
            raise ConfigError("the decryption modulus leaves no room for the integer part of values", where=where)

    def to_json(self) -> dict[str, Any]:
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
            "decrypt_primes": self.decrypt_primes,
        }


@dataclass(frozen=True)
class MaskBudget:
    """Result of :func:`mask_budget` (all sizes in bits, log2 of magnitudes)."""

    mask_bits: int
    value_bits: float
    hiding_bits: float
    decode_error_bits: float
    headroom_bits: float


def mask_budget(
    params: CkksParams,
    *,
    mask_bits: int,
    value_bound: float,
    precision_bits: int,
    min_hiding_bits: int,
    summed_slots: int = 1,
) -> MaskBudget:
    """Check an additive mask ``r ~ U[-2^mask_bits, 2^mask_bits]`` against the CKKS precision budget.

    Guarantees (raises :class:`CryptoError` otherwise):

    * ``|value + r| <= 2^(mask_bits+1)`` fits the modulus left at decryption
      with >= 4 bits of headroom: ``mask_bits + 1 + scale_bits + 4 < final_modulus_bits``,
      so masked values never wrap around.
    * SEAL decodes slots through IEEE doubles; the decode error of a value of
      magnitude ``2^(mask_bits+1)`` is at most about ``2^(mask_bits+1-52) * log2(N)``
      (FFT round-off); when the key holder adds ``summed_slots`` decoded slots
      the independent errors grow by ``sqrt(summed_slots)``; the result must be
      ``<= 2^-precision_bits``.
    * Statistical hiding: a value ``|v| <= value_bound`` plus ``r`` is within
      statistical distance ``value_bound / 2^mask_bits`` of ``r`` alone, per
      slot; ``hiding_bits = mask_bits - log2(value_bound)`` must be
      ``>= min_hiding_bits``.
    """
    if value_bound <= 0:
        raise CryptoError("value_bound must be positive", where="mask budget")
    value_bits = math.log2(value_bound)
    headroom = params.final_modulus_bits - (mask_bits + 1 + params.scale_bits)
    if headroom < 4:
        raise CryptoError(
            f"mask of 2^{mask_bits} does not fit the decryption modulus "
            f"({params.final_modulus_bits} bits, scale 2^{params.scale_bits}); headroom {headroom} bits < 4",
            where="mask budget",
        )
    decode_err = (
        mask_bits + 1 - _DOUBLE_BITS + math.log2(math.log2(params.poly_modulus_degree)) + 0.5 * math.log2(summed_slots)
    )
    if decode_err > -precision_bits:
        raise CryptoError(
            f"mask of 2^{mask_bits} leaves a decode error of 2^{decode_err:.1f}, above the required 2^-{precision_bits}",
            where="mask budget",
        )
    hiding = mask_bits - value_bits
    if hiding < min_hiding_bits:
        raise CryptoError(
            f"mask of 2^{mask_bits} over values bounded by {value_bound} hides only {hiding:.1f} bits "
            f"(< {min_hiding_bits})",
            where="mask budget",
        )
    return MaskBudget(mask_bits, value_bits, hiding, decode_err, headroom)


def random_mask(n: int, mask_bits: int) -> np.ndarray:
    """``n`` i.i.d. uniform reals in ``[-2^mask_bits, 2^mask_bits)`` from a generator seeded by ``os.urandom``."""
    rng = np.random.default_rng(int.from_bytes(os.urandom(32), "little"))
    return rng.uniform(-(2.0**mask_bits), 2.0**mask_bits, size=n)


#: How :func:`flood_imaginary_seal` draws the imaginary flood of each slot.
FloodDistribution = Literal["uniform", "gaussian"]


def _fresh_rng() -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(os.urandom(32), "little"))


def constant_coefficient(seal_context: Any, pt: Any) -> int:
    """The exact constant coefficient (centred, an integer) of an NTT-form CKKS plaintext.

    For the negacyclic NTT, ``sum_k a_k = N * m_0`` modulo each prime, so
    ``m_0 = N^-1 * sum_k a_k`` per prime, combined by the CRT. The sum of the
    real parts of all slots is ``N * m_0 / (2 * scale)``, exactly.
    """
    parms = seal_context.get_context_data(pt.parms_id()).parms()
    n = parms.poly_modulus_degree()
    qs = [m.value() for m in parms.coeff_modulus()]
    if pt.coeff_count() != n * len(qs) or not pt.is_ntt_form():
        raise CryptoError("unexpected plaintext layout", where="ckks")
    data = pt.data
    big_q = 1
    for q in qs:
        big_q *= q
    x = 0
    for j, q in enumerate(qs):
        tot = sum(data(j * n + i) for i in range(n)) % q
        qi = big_q // q
        x += (tot * pow(n, -1, q) % q) * qi * pow(qi, -1, q)
    x %= big_q
    return x - big_q if x > big_q // 2 else x


def flood_imaginary_seal(
    seal_context: Any,
    ct: Any,
    size: float,
    rng: np.random.Generator | None = None,
    *,
    distribution: FloodDistribution = "uniform",
    real: np.ndarray | Callable[[], np.ndarray] | None = None,
    exact_real_sum: bool = False,
    where: str = "ckks",
    tries: int = 32,
) -> Any:
    """Add the plaintext ``real + i*u`` to every slot of the SEAL ciphertext ``ct``
    (in place; returns it). The one imaginary-part flood of fedgov: eligibility
    checks, HE statistics and vertical LR all call this just before a
    ciphertext goes to a key holder.

    ``u`` is fresh per slot, i.i.d., from ``rng`` (``os.urandom``-seeded when
    not given): ``distribution="uniform"`` draws it on ``[-size, size]``,
    ``"gaussian"`` from ``N(0, size^2)``. ``real`` is an optional real mask
    added in the same plaintext (an array, zero-padded to the slot count, or a
    callable drawing a fresh one); ``exact_real_sum`` requires the added
    plaintext's constant coefficient to be exactly zero, so the slot sum of the
    real parts is preserved exactly (double-precision encoding can leave a
    residue; ``real`` and ``u`` are then drawn again, up to ``tries`` times).
    ``where`` names the caller in errors (and lets a protection check switch
    off one caller's flood).

    Why: CKKS slots are complex. Masks and blinding factors are real, so the
    imaginary part of a decrypted slot is encryption/rescaling noise times the
    same real factors that multiply the secret (``Im = s*r*eta``), and the key
    holder can divide them out of the real part.

    What the key holder learns after it, per slot:

    * ``Im``: ``Im = Im_before + u``. For any two values ``a, b`` of
      ``Im_before`` the distributions of ``Im`` differ in total variation by at
      most ``|a - b| / (2*size)`` (uniform) or
      ``2*Phi(|a - b| / (2*size)) - 1 <= |a - b| / (sqrt(2*pi)*size)``
      (gaussian). So when ``|Im_before| <= 2^-k * size`` the imaginary part
      carries at most about ``2^-k`` (statistical distance per slot; over ``n``
      slots at most ``n`` times that) about anything that shaped the
      ciphertext.
    * ``Re``: ``Re_before + real``, up to decoding precision. The flood hides
      nothing in the real part — that is ``real``'s job (sized by
      :func:`mask_budget`). SEAL decodes through doubles, so the decoded error
      grows with the largest slot magnitude: the caller picks ``size`` no
      larger than its precision budget allows (at most doubling the largest
      magnitude costs one bit). With ``exact_real_sum`` the slot sum of
      ``Re`` is ``Re_before``'s, exactly.

    Leaks nothing itself (the key holder sees ``u`` only mixed with
    ``Im_before``). Raises :class:`CryptoError` (naming ``where``) for a
    ``size`` that is not a positive finite number, an unknown distribution, a
    ``real`` longer than the slots, or when no exactly zero-sum encoding was
    found.
    """
    if not (math.isfinite(size) and size > 0):
        raise CryptoError(f"imaginary flood size (uniform bound / gaussian sigma) must be > 0, got {size!r}",
                          where=where)
    if distribution not in ("uniform", "gaussian"):
        raise CryptoError(f"unknown imaginary flood distribution {distribution!r}", where=where)
    gen = rng if rng is not None else _fresh_rng()
    encoder = sealapi.CKKSEncoder(seal_context)
    slots = encoder.slot_count()
    pt = sealapi.Plaintext()
    for _ in range(max(1, tries) if exact_real_sum else 1):
        re = np.zeros(slots)
        if real is not None:
            m = np.asarray(real() if callable(real) else real, dtype=np.float64).ravel()
            if m.size > slots:
                raise CryptoError(f"real mask of {m.size} values does not fit {slots} slots", where=where)
            re[: m.size] = m
        u = gen.uniform(-size, size, slots) if distribution == "uniform" else gen.normal(0.0, size, slots)
        encoder.encode((re + 1j * u).tolist(), ct.parms_id(), ct.scale, pt)
        if not exact_real_sum or constant_coefficient(seal_context, pt) == 0:
            break
    else:
        raise CryptoError("could not encode an exactly zero-sum mask (mask too large?)", where=where)
    sealapi.Evaluator(seal_context).add_plain_inplace(ct, pt)
    return ct


def flood_imaginary(vec: Any, size: float, rng: np.random.Generator | None = None, **kwargs: Any) -> list[Any]:
    """:func:`flood_imaginary_seal` on the ciphertexts of a TenSEAL ``CKKSVector``
    (same arguments and guarantee, per slot).

    TenSEAL hands out *copies* of a vector's SEAL ciphertexts, so the vector
    itself is left as it was: the flooded copies are returned. Send those
    (:func:`ciphertext_bytes`), never the vector's own serialisation.
    """
    sc = vec.context().data.seal_context()
    gen = rng if rng is not None else _fresh_rng()
    return [flood_imaginary_seal(sc, ct, size, gen, **kwargs) for ct in vec.ciphertext()]


def ciphertext_bytes(ct: Any) -> bytes:
    """SEAL's own serialisation of one ciphertext (no secret material)."""
    return _save(ct)


def load_ciphertext(seal_context: Any, blob: bytes, where: str = "ckks") -> Any:
    """A SEAL ciphertext from :func:`ciphertext_bytes`, checked by SEAL against
    ``seal_context`` (CryptoError naming ``where`` if it is not one)."""
    try:
        return _load(sealapi.Ciphertext(), seal_context, blob)
    except CryptoError as exc:
        raise CryptoError(str(exc.args[0]) if exc.args else "malformed ciphertext", where=where) from None


def bsgs_steps(p: int, slots: int, *, reduce: bool = False) -> tuple[int, int, int, list[int]]:
    """Rotation plan for a ``p``-row diagonal matvec over ``slots`` slots.

    Returns ``(p_padded, baby, giant, steps)``: ``p_padded`` is ``p`` rounded up
    to a power of two, ``baby * giant == p_padded`` and ``steps`` the distinct
    left-rotation amounts used: baby steps, giant steps and, if ``reduce``,
    the final rotate-and-sum over the ``slots / p_padded`` blocks.
    """
    if p < 1:
        raise ConfigError("a matrix needs at least one row", where="ckks matvec")
    pp = 1 << max(0, (p - 1).bit_length())
    if pp > slots:
        raise ConfigError(f"{p} rows do not fit {slots} slots", where="ckks matvec")
    baby = 1 << ((pp.bit_length() - 1 + 1) // 2)
    giant = pp // baby
    steps = set(range(1, baby)) | {baby * k for k in range(1, giant)}
    s = pp
    while reduce and s < slots:
        steps.add(s)
        s *= 2
    return pp, baby, giant, sorted(steps)


def _save(obj: Any) -> bytes:
    with tempfile.NamedTemporaryFile(dir=_TMPDIR, prefix="fedgov-ckks-", delete=False) as f:
        path = f.name
    try:
        obj.save(path)
        return Path(path).read_bytes()
    finally:
        os.unlink(path)


def _load(obj: Any, ctx: Any, blob: bytes) -> Any:
    with tempfile.NamedTemporaryFile(dir=_TMPDIR, prefix="fedgov-ckks-", delete=False) as f:
        f.write(blob)
        path = f.name
    try:
        if ctx is None:
            obj.load(path)
        else:
            obj.load(ctx, path)
    except Exception as exc:  # SEAL raises ValueError/RuntimeError with C++ messages
        raise CryptoError(f"malformed CKKS object: {exc}", where="ckks") from exc
    finally:
        os.unlink(path)
    return obj


def _pack(parts: Sequence[bytes]) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack("<4sBI", _MAGIC, _VERSION, len(parts)))
    for p in parts:
        out.write(struct.pack("<Q", len(p)))
        out.write(p)
    return out.getvalue()


def _unpack(blob: bytes) -> list[bytes]:
    try:
        magic, version, count = struct.unpack_from("<4sBI", blob, 0)
        if magic != _MAGIC or version != _VERSION:
            raise CryptoError("not a fedgov CKKS public context", where="ckks")
        off = struct.calcsize("<4sBI")
        parts = []
        for _ in range(count):
            (ln,) = struct.unpack_from("<Q", blob, off)
            off += 8
            if off + ln > len(blob):
                raise CryptoError("truncated CKKS public context", where="ckks")
            parts.append(bytes(blob[off : off + ln]))
            off += ln
    except struct.error as exc:
        raise CryptoError("truncated CKKS public context", where="ckks") from exc
    return parts


@dataclass
class PackedMatrix:
    """A ``p x n`` plaintext matrix in pre-encoded, pre-rotated diagonal form.

    Encoded for one ciphertext level (``parms_id``) and multiplier scale, so
    that ``matvec`` of a ciphertext at that level keeps the ciphertext's scale
    exactly after the rescale.
    """

    rows: int
    padded_rows: int
    baby: int
    giant: int
    parms_id: list[int]
    plaintexts: list[Any | None] = field(repr=False)
    reduce: bool = False


class CkksContext:
    """One party's CKKS context. Holds the secret key only if it created the keys."""

    def __init__(
        self,
        params: CkksParams,
        *,
        public_key: Any,
        relin_keys: Any,
        galois_keys: Any,
        rotation_steps: Sequence[int],
        seal_context: Any,
        secret_key: Any | None = None,
    ) -> None:
        self.params = params
        self.scale = 2.0**params.scale_bits
        self._ctx = seal_context
        self._pk = public_key
        self._rk = relin_keys
        self._gk = galois_keys
        self._sk = secret_key
        self.rotation_steps = tuple(int(s) for s in rotation_steps)
        self._encoder = sealapi.CKKSEncoder(seal_context)
        self._evaluator = sealapi.Evaluator(seal_context)
        self._encryptor = sealapi.Encryptor(seal_context, public_key)
        self._decryptor = sealapi.Decryptor(seal_context, secret_key) if secret_key is not None else None
        # chain of levels from the top (fresh ciphertexts) down to the decryption level
        self._levels: list[Any] = []
        cd = seal_context.first_context_data()
        while cd is not None:
            self._levels.append(cd)
            cd = cd.next_context_data()

    # -- construction -----------------------------------------------------------------------
    @staticmethod
    def _seal_context(params: CkksParams) -> Any:
        params.validate()
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.poly_modulus_degree)
        parms.set_coeff_modulus(
            sealapi.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))
        )
        ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
        if not ctx.parameters_set():
            raise ConfigError(f"SEAL rejects the parameters: {ctx.parameters_error_message()}", where="ckks")
        return ctx

    @classmethod
    def create(cls, params: CkksParams, *, rotation_steps: Iterable[int]) -> CkksContext:
        """Fresh keys (key holder only). Galois keys are generated for exactly ``rotation_steps``."""
        ctx = cls._seal_context(params)
        kg = sealapi.KeyGenerator(ctx)
        sk = kg.secret_key()
        pk = sealapi.PublicKey()
        kg.create_public_key(pk)
        rk = sealapi.RelinKeys()
        kg.create_relin_keys(rk)
        steps = sorted({int(s) for s in rotation_steps})
        n = params.poly_modulus_degree
        for s in steps:
            if not 0 < s < n // 2:
                raise ConfigError(f"rotation step {s} out of range 1..{n // 2 - 1}", where="ckks")
        gk = sealapi.GaloisKeys()
        if steps:
            # SEAL's Galois element for a left rotation by s slots is 3^s mod 2N
            kg.create_galois_keys([pow(3, s, 2 * n) for s in steps], gk)
        return cls(params, public_key=pk, relin_keys=rk, galois_keys=gk, rotation_steps=steps, seal_context=ctx, secret_key=sk)

    def public_bytes(self) -> bytes:
        """Parameters, public key, relinearisation and Galois keys. Never the secret key."""
        header = repr(
            (self.params.poly_modulus_degree, tuple(self.params.coeff_mod_bit_sizes), self.params.scale_bits,
             self.params.decrypt_primes, self.rotation_steps)
        ).encode()
        gk = _save(self._gk) if self.rotation_steps else b""
        return _pack([header, _save(self._pk), _save(self._rk), gk])

    @classmethod
    def from_public_bytes(cls, blob: bytes) -> CkksContext:
        """Rebuild a public-only context (can encrypt and evaluate; cannot decrypt)."""
        parts = _unpack(blob)
        if len(parts) != 4:
            raise CryptoError("CKKS public context must have 4 parts", where="ckks")
        try:
            import ast

            n, bits, scale_bits, dp, steps = ast.literal_eval(parts[0].decode())
            params = CkksParams(int(n), tuple(int(b) for b in bits), int(scale_bits), int(dp))
        except (ValueError, SyntaxError, TypeError, UnicodeDecodeError) as exc:
            raise CryptoError("malformed CKKS parameter header", where="ckks") from exc
        ctx = cls._seal_context(params)
        pk = _load(sealapi.PublicKey(), ctx, parts[1])
        rk = _load(sealapi.RelinKeys(), ctx, parts[2])
        gk = _load(sealapi.GaloisKeys(), ctx, parts[3]) if steps else sealapi.GaloisKeys()
        for obj in (pk, rk, gk) if steps else (pk, rk):
            if not sealapi.is_valid_for(obj, ctx):
                raise CryptoError("CKKS key does not match its parameters", where="ckks")
        return cls(params, public_key=pk, relin_keys=rk, galois_keys=gk, rotation_steps=tuple(steps), seal_context=ctx)

    @property
    def has_secret_key(self) -> bool:
        return self._sk is not None

    @property
    def slots(self) -> int:
        return self.params.slots

    # -- levels -----------------------------------------------------------------------------
    def level_parms_id(self, rescales: int) -> list[int]:
        """``parms_id`` of a ciphertext after ``rescales`` rescalings from fresh."""
        if not 0 <= rescales < len(self._levels):
            raise CryptoError(f"no level {rescales} in the modulus chain", where="ckks")
        return self._levels[rescales].parms_id()

    def _prime_at(self, parms_id: list[int]) -> float:
        cd = self._ctx.get_context_data(parms_id)
        return float(cd.parms().coeff_modulus()[-1].value())

    def rescales_of(self, ct: Any) -> int:
        pid = list(ct.parms_id())
        for i, cd in enumerate(self._levels):
            if list(cd.parms_id()) == pid:
                return i
        raise CryptoError("ciphertext is not at any level of this context", where="ckks")

    # -- encode / encrypt / decrypt ---------------------------------------------------------
    def _vec(self, values: np.ndarray | Sequence[float] | float) -> list[float]:
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size > self.slots:
            raise CryptoError(f"{arr.size} values do not fit {self.slots} slots", where="ckks")
        if not np.all(np.isfinite(arr)):
            raise CryptoError("refusing to encode NaN/inf", where="ckks")
        if arr.size < self.slots:
            arr = np.concatenate([arr, np.zeros(self.slots - arr.size)])
        return arr.tolist()

    def encode(self, values: Any, *, parms_id: list[int] | None = None, scale: float | None = None) -> Any:
        pt = sealapi.Plaintext()
        pid = parms_id if parms_id is not None else self.level_parms_id(0)
        self._encoder.encode(self._vec(values), pid, float(scale if scale is not None else self.scale), pt)
        return pt

    def encrypt(self, values: Any, *, zero: Any | None = None) -> Any:
        """Fresh public-key encryption of up to ``slots`` reals (zero-padded).

        ``zero``: a fresh :meth:`encrypt_zero` result to use up (it is consumed:
        the caller must not use it again). SEAL's own ``encrypt`` is exactly
        ``encrypt_zero`` plus the plaintext, so the result is distributed the
        same; splitting lets a party prepare the costly, data-independent part
        while it waits on the network.
        """
        pt = self.encode(values)
        if zero is None:
            ct = sealapi.Ciphertext()
            self._encryptor.encrypt(pt, ct)
            return ct
        if list(zero.parms_id()) != list(pt.parms_id()) or zero.size() != 2 or zero.scale != 1.0:
            raise CryptoError("not a fresh top-level encryption of zero", where="ckks")
        zero.scale = pt.scale
        self._evaluator.add_plain_inplace(zero, pt)
        return zero

    def encrypt_zero(self) -> Any:
        """A fresh public-key encryption of zero at the top level (for :meth:`encrypt`)."""
        ct = sealapi.Ciphertext()
        self._encryptor.encrypt_zero(ct)
        return ct

    def decrypt(self, ct: Any) -> np.ndarray:
        """All ``slots`` decoded values. Only the key holder can call this."""
        if self._decryptor is None:
            raise CryptoError("this context has no secret key", where="ckks")
        pt = sealapi.Plaintext()
        self._decryptor.decrypt(ct, pt)
        return np.asarray(self._encoder.decode_double(pt), dtype=np.float64)

    def flood_imaginary(self, ct: Any, size: float, rng: np.random.Generator | None = None, **kwargs: Any) -> Any:
        """:func:`flood_imaginary_seal` under this context (in place; returns ``ct``; same arguments)."""
        return flood_imaginary_seal(self._ctx, ct, size, rng, **kwargs)

    def ct_to_bytes(self, ct: Any) -> bytes:
        return _save(ct)

    def ct_from_bytes(self, blob: bytes, *, rescales: int | None = None) -> Any:
        """Load and validate a ciphertext (optionally: require it to be at a given level, size 2)."""
        ct = _load(sealapi.Ciphertext(), self._ctx, blob)
        if not sealapi.is_valid_for(ct, self._ctx):
            raise CryptoError("ciphertext is not valid for this context", where="ckks")
        if ct.size() != 2:
            raise CryptoError("ciphertext must be relinearised (size 2)", where="ckks")
        if rescales is not None and self.rescales_of(ct) != rescales:
            raise CryptoError(
                f"ciphertext at level {self.rescales_of(ct)}, expected {rescales}", where="ckks"
            )
        return ct

    # -- arithmetic -------------------------------------------------------------------------
    def add(self, a: Any, b: Any) -> Any:
        out = sealapi.Ciphertext()
        self._evaluator.add(a, b, out)
        return out

    def add_inplace(self, a: Any, b: Any) -> None:
        self._evaluator.add_inplace(a, b)

    def add_plain(self, ct: Any, values: Any, *, cache: dict[Any, Any] | None = None, key: Any = None) -> Any:
        """``ct + values`` at ``ct``'s level and scale.

        ``cache``/``key``: reuse the encoding of ``values`` stored under ``key``
        (the caller guarantees the same key always means the same values) when
        its level and scale match; otherwise encode and store it.
        """
        out = sealapi.Ciphertext()
        pt = self._encode_cached(values, ct.parms_id(), ct.scale, cache, key)
        self._evaluator.add_plain(ct, pt, out)
        return out

    def _encode_cached(
        self, values: Any, parms_id: list[int], scale: float, cache: dict[Any, Any] | None, key: Any
    ) -> Any:
        if cache is None:
            return self.encode(values, parms_id=parms_id, scale=scale)
        pt = cache.get(key)
        if pt is None or list(pt.parms_id()) != list(parms_id) or pt.scale != scale:
            pt = self.encode(values, parms_id=parms_id, scale=scale)
            cache[key] = pt
        return pt

    def mul_plain_to(
        self, ct: Any, values: Any, target_scale: float, *, cache: dict[Any, Any] | None = None, key: Any = None
    ) -> Any:
        """``ct * values``, rescaled once, with result scale exactly ``target_scale``
        (``cache``/``key`` as in :meth:`add_plain`)."""
        pid = ct.parms_id()
        q = self._prime_at(pid)
        pt = self._encode_cached(values, pid, target_scale * q / ct.scale, cache, key)
        out = sealapi.Ciphertext()
        self._evaluator.multiply_plain(ct, pt, out)
        self._evaluator.rescale_to_next_inplace(out)
        return out

    def mul(self, a: Any, b: Any) -> Any:
        """``a * b`` (same level), relinearised and rescaled once."""
        out = sealapi.Ciphertext()
        self._evaluator.multiply(a, b, out)
        self._evaluator.relinearize_inplace(out, self._rk)
        self._evaluator.rescale_to_next_inplace(out)
        return out

    def mod_switch_to(self, ct: Any, parms_id: list[int]) -> Any:
        out = sealapi.Ciphertext()
        self._evaluator.mod_switch_to(ct, parms_id, out)
        return out

    def rotate(self, ct: Any, step: int) -> Any:
        if step not in self.rotation_steps:
            raise CryptoError(f"no Galois key for rotation {step}", where="ckks")
        out = sealapi.Ciphertext()
        self._evaluator.rotate_vector(ct, step, self._gk, out)
        return out

    # -- diagonal matrix-vector product -----------------------------------------------------
    def pack_matrix(self, m: np.ndarray, *, rescales: int, reduce: bool = False) -> PackedMatrix:
        """Pre-encode a ``p x n`` (``n <= slots``) plaintext matrix for :meth:`matvec`.

        Columns beyond ``n`` are zero. ``rescales`` is the level of the
        ciphertexts it will multiply; the diagonals are encoded at that level's
        last prime so the product keeps the ciphertext's scale after rescaling.
        """
        m = np.asarray(m, dtype=np.float64)
        if m.ndim != 2:
            raise ConfigError("matrix must be 2-D", where="ckks matvec")
        p, n = m.shape
        slots = self.slots
        if n > slots:
            raise ConfigError(f"{n} columns do not fit {slots} slots", where="ckks matvec")
        pp, baby, giant, steps = bsgs_steps(p, slots, reduce=reduce)
        missing = set(steps) - set(self.rotation_steps)
        if missing:
            raise CryptoError(f"context lacks Galois keys for rotations {sorted(missing)}", where="ckks matvec")
        full = np.zeros((pp, slots))
        full[:p, :n] = m
        pid = self.level_parms_id(rescales)
        q = self._prime_at(pid)
        i = np.arange(slots)
        pts = []
        for k in range(giant):
            for ell in range(baby):
                j = baby * k + ell
                diag = full[i % pp, (i + j) % slots]
                diag = np.roll(diag, baby * k)  # pre-rotate by -baby*k (undone by the giant step)
                # SEAL refuses products that are identically zero ("transparent"); skip zero diagonals
                pts.append(self.encode(diag, parms_id=pid, scale=q) if np.any(diag) else None)
        return PackedMatrix(p, pp, baby, giant, list(pid), pts, reduce)

    def matvec(self, pm: PackedMatrix, ct: Any) -> Any:
        """Encrypted ``M @ v`` in the Halevi-Shoup diagonal layout.

        With ``pm.reduce`` every slot ``i`` of the result holds row ``i mod
        padded_rows`` of ``M @ v``. Without it (the default, and what the
        vertical-LR protocol uses) slot ``i`` holds a *partial* sum for row
        ``i mod padded_rows``, and the rows are
        ``decrypted.reshape(-1, padded_rows).sum(axis=0)``; this saves the
        ``log2(slots / padded_rows)`` rotate-and-sum steps, but the partial
        sums must be masked slot by slot before anyone decrypts them.
        Consumes one level; the result has ``ct``'s scale. ``ct`` must be at
        the level ``pm`` was packed for.
        """
        if list(ct.parms_id()) != pm.parms_id:
            raise CryptoError("ciphertext level does not match the packed matrix", where="ckks matvec")
        ev = self._evaluator
        babies = [ct] + [self.rotate(ct, ell) for ell in range(1, pm.baby)]
        acc = None
        for k in range(pm.giant):
            inner = None
            for ell in range(pm.baby):
                pt = pm.plaintexts[k * pm.baby + ell]
                if pt is None:
                    continue
                prod = sealapi.Ciphertext()
                ev.multiply_plain(babies[ell], pt, prod)
                if inner is None:
                    inner = prod
                else:
                    ev.add_inplace(inner, prod)
            if inner is None:
                continue
            ev.rescale_to_next_inplace(inner)
            if k:
                inner = self.rotate(inner, pm.baby * k)
            if acc is None:
                acc = inner
            else:
                ev.add_inplace(acc, inner)
        if acc is None:  # the zero matrix: a fresh encryption of zeros at the output level
            zero = self.encrypt(np.zeros(1))
            acc = self.mod_switch_to(zero, self.level_parms_id(self.rescales_of(ct) + 1))
            acc.scale = ct.scale
        s = pm.padded_rows
        while pm.reduce and s < self.slots:
            ev.add_inplace(acc, self.rotate(acc, s))
            s *= 2
        return acc
