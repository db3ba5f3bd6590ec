"""CKKS helpers for the statistics and eligibility protocols (TenSEAL).

Safe verbs only: a protocol creates a :class:`KeyOwner` (holds the secret
key, never serialises it) or a :class:`PublicKey` (loaded from the owner's
public bytes), encrypts/decrypts packed float vectors, and frames messages.
Nothing here implements a cryptographic primitive: CKKS is TenSEAL/SEAL.

Parameters (one set, :data:`PARAMS`): ring degree 8192 (4096 slots per
ciphertext), coefficient modulus 60+60+40 data bits plus a 50-bit special
prime (210 <= 218 bits allowed for 128-bit security at N=8192 by the
HomomorphicEncryption.org standard), scale 2^40. After the single
plaintext multiplication these protocols use, values up to about 2^78 fit;
decoding is a double-precision FFT, so each slot carries an absolute error
of about ``2^-51 * max|slot|`` over the whole ciphertext — protocols size
their masks and blinding ranges against that.

Framing: every message starts with a fixed header binding the protocol, the
message kind, the job and the SHA-256 of the key owner's public-key bytes
(the *key id*). :func:`unpack` rejects a message for another job, kind or
key with :class:`~fedgov.errors.CryptoError`; SEAL itself rejects a
ciphertext whose encryption parameters differ from the context's.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from fedgov.crypto.ckks import constant_coefficient
from fedgov.errors import CryptoError

__all__ = [
    "PARAMS",
    "SLOTS",
    "KeyOwner",
    "Message",
    "PublicKey",
    "job_tag",
    "pack",
    "unpack",
]

#: (poly_modulus_degree, coeff_mod_bit_sizes, log2 scale)
PARAMS: tuple[int, tuple[int, ...], int] = (8192, (60, 60, 40, 50), 40)
#: Real values per ciphertext.
SLOTS = PARAMS[0] // 2

_HDR = struct.Struct("<4sBB32s32sII")  # magic, version, kind, key id, job tag, meta len, n blobs
_VERSION = 1


def job_tag(protocol: str, job_id: str) -> bytes:
    """32-byte tag binding a message to one protocol and job."""
    if not job_id:
        raise CryptoError("job_id must be non-empty", where=protocol)
    return hashlib.sha256(f"fedgov/{protocol}/v1\x00{job_id}".encode()).digest()


class _Keyed:
    """Shared encryption side (public key only)."""

    ctx: ts.Context
    key_id: bytes

    def encrypt(self, values: np.ndarray) -> list[bytes]:
        """Encrypt a float vector as ``ceil(len/SLOTS)`` ciphertexts of SLOTS values each
        (the last one zero-padded).

        Returns serialised ciphertexts; an empty vector gives one ciphertext of
        zeros so every message has at least one.
        """
        v = np.asarray(values, dtype=np.float64)
        n = max(1, -(-len(v) // SLOTS))
        out = []
        for i in range(n):
            chunk = np.zeros(SLOTS)
            part = v[i * SLOTS : (i + 1) * SLOTS]
            chunk[: len(part)] = part
            out.append(ts.ckks_vector(self.ctx, chunk).serialize())
        return out

    def load(self, blob: bytes, where: str) -> ts.CKKSVector:
        """Deserialise one ciphertext under this key's context (CryptoError if invalid)."""
        try:
            return ts.ckks_vector_from(self.ctx, blob)
        except Exception as exc:  # TenSEAL raises bare RuntimeError/ValueError
            raise CryptoError(f"ciphertext rejected: {exc}", where=where) from None


    # raw SEAL ciphertexts (what a key holder decrypts after another party's blinding) ----------
    def load_raw(self, blob: bytes, where: str) -> Any:
        """A raw SEAL ciphertext (e.g. flooded by :func:`fedgov.crypto.ckks.flood_imaginary`) under this key's context."""
        with tempfile.TemporaryDirectory(prefix="fedgov-ckks-") as d:
            path = os.path.join(d, "ct")
            with open(path, "wb") as f:
                f.write(blob)
            ct = sealapi.Ciphertext()
            try:
                ct.load(self.ctx.data.seal_context(), path)
            except Exception as exc:
                raise CryptoError(f"ciphertext rejected: {exc}", where=where) from None
        return ct

    def add_raw(self, blobs: Sequence[bytes], where: str) -> bytes:
        """Sum of raw SEAL ciphertexts (same level and scale), as raw bytes."""
        if not blobs:
            raise CryptoError("nothing to add", where=where)
        acc = self.load_raw(blobs[0], where)
        ev = sealapi.Evaluator(self.ctx.data.seal_context())
        for b in blobs[1:]:
            ct = self.load_raw(b, where)
            if ct.parms_id() != acc.parms_id() or abs(ct.scale / acc.scale - 1) > 1e-9:
                raise CryptoError("ciphertexts at different levels or scales", where=where)
            ev.add_inplace(acc, ct)
        return _dump(acc)


def _dump(ct: Any) -> bytes:
    with tempfile.TemporaryDirectory(prefix="fedgov-ckks-") as d:
        path = os.path.join(d, "ct")
        ct.save(path)
        with open(path, "rb") as f:
            return f.read()


class KeyOwner(_Keyed):
    """Holds a fresh CKKS key pair for one job; the secret key never leaves it."""

    def __init__(self) -> None:
        n, coeffs, log_scale = PARAMS
        self.ctx = ts.context(ts.SCHEME_TYPE.CKKS, n, -1, list(coeffs))
        self.ctx.global_scale = 2.0**log_scale
        pub = self.ctx.copy()
        pub.make_context_public()
        self._public = pub.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
        self.key_id = hashlib.sha256(self._public).digest()

    def public_bytes(self) -> bytes:
        """Public context (parameters + public key; no secret, Galois or relin keys)."""
        return self._public

    def decrypt(self, blob: bytes, where: str) -> np.ndarray:
        """Decrypt one serialised ciphertext to a float vector of SLOTS values."""
        return np.asarray(self.load(blob, where).decrypt(), dtype=np.float64)

    def _decode_raw(self, blob: bytes, where: str) -> tuple[Any, Any]:
        sc = self.ctx.data.seal_context()
        pt = sealapi.Plaintext()
        sealapi.Decryptor(sc, self.ctx.data.secret_key()).decrypt(self.load_raw(blob, where), pt)
        return sealapi.CKKSEncoder(sc), pt

    def decrypt_raw(self, blob: bytes, where: str) -> np.ndarray:
        """Real parts of a raw SEAL ciphertext's slots (what the protocols use)."""
        enc, pt = self._decode_raw(blob, where)
        return np.asarray(enc.decode_double(pt), dtype=np.float64)

    def decrypt_raw_sum(self, blob: bytes, where: str) -> float:
        """Sum of the real parts of all slots of a raw ciphertext, decoded *exactly*.

        The sum over the 4096 slots of ``Re(z_j)`` is ``N * m_0 / (2 * scale)``
        with ``m_0`` the constant coefficient of the decrypted plaintext (the
        other coefficients cancel over all roots of unity), and ``m_0`` is
        ``N^-1 * sum_k a_k`` of its NTT values modulo each prime — exact
        integers, combined by the CRT. So the sum carries no double-precision
        FFT error, however large the (zero-sum) masks on single slots are:
        only CKKS noise (~1e-4 absolute) remains.
        """
        sc = self.ctx.data.seal_context()
        pt = sealapi.Plaintext()
        sealapi.Decryptor(sc, self.ctx.data.secret_key()).decrypt(self.load_raw(blob, where), pt)
        return float(constant_coefficient(sc, pt)) * PARAMS[0] / (2.0 * pt.scale)

    def decrypt_complex_raw(self, blob: bytes, where: str) -> np.ndarray:
        """Complex slots of a raw ciphertext: what a curious key holder can read
        (tests of the imaginary-part channel use it)."""
        enc, pt = self._decode_raw(blob, where)
        return np.asarray(enc.decode_complex(pt), dtype=np.complex128)

    def decrypt_complex(self, blob: bytes, where: str) -> np.ndarray:
        """Complex slots of a TenSEAL ciphertext (own encryptions; tests)."""
        ct = self.load(blob, where).ciphertext()[0]
        sc = self.ctx.data.seal_context()
        pt = sealapi.Plaintext()
        sealapi.Decryptor(sc, self.ctx.data.secret_key()).decrypt(ct, pt)
        return np.asarray(sealapi.CKKSEncoder(sc).decode_complex(pt), dtype=np.complex128)


class PublicKey(_Keyed):
    """Another party's public key, loaded from :meth:`KeyOwner.public_bytes`."""

    def __init__(self, public: bytes, *, where: str) -> None:
        try:
            ctx = ts.context_from(public)
        except Exception as exc:
            raise CryptoError(f"not a CKKS public context: {exc}", where=where) from None
        if ctx.is_private():
            raise CryptoError("public context unexpectedly carries a secret key", where=where)
        try:
            kcd = ctx.data.seal_context().key_context_data()
            n, bits = kcd.parms().poly_modulus_degree(), kcd.total_coeff_modulus_bit_count()
        except Exception as exc:
            raise CryptoError(f"cannot read CKKS parameters: {exc}", where=where) from None
        if (n, bits) != (PARAMS[0], sum(PARAMS[1])):
            raise CryptoError(
                f"unexpected CKKS parameters (N={n}, {bits} modulus bits; expected "
                f"N={PARAMS[0]}, {sum(PARAMS[1])} bits)",
                where=where,
            )
        if not ctx.data.has_public_key():
            raise CryptoError("public context carries no public key", where=where)
        self.ctx = ctx
        self.ctx.global_scale = 2.0 ** PARAMS[2]
        self.key_id = hashlib.sha256(public).digest()


@dataclass(frozen=True)
class Message:
    """A decoded protocol message: JSON metadata plus opaque blobs."""

    kind: int
    key_id: bytes
    meta: dict[str, Any]
    blobs: list[bytes]


def pack(
    magic: bytes, kind: int, key_id: bytes, tag: bytes, meta: dict[str, Any], blobs: Sequence[bytes]
) -> bytes:
    """Frame ``meta`` (JSON) and ``blobs`` under a header binding magic, kind, key and job."""
    m = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    parts = [_HDR.pack(magic, _VERSION, kind, key_id, tag, len(m), len(blobs)), m]
    for b in blobs:
        parts.append(struct.pack("<Q", len(b)))
        parts.append(b)
    return b"".join(parts)


def unpack(
    buf: bytes, *, magic: bytes, kind: int, tag: bytes, key_id: bytes | None, where: str
) -> Message:
    """Parse and check a framed message.

    Raises :class:`CryptoError` when the magic/version/kind is wrong, the job
    tag differs (a message from another job), ``key_id`` is given and differs
    (ciphertexts under an unknown key), or the framing is truncated.
    """
    if len(buf) < _HDR.size:
        raise CryptoError("message truncated", where=where)
    mg, ver, k, kid, tg, mlen, nblobs = _HDR.unpack_from(buf)
    if mg != magic or ver != _VERSION:
        raise CryptoError(f"not a {magic.decode(errors='replace')} v{_VERSION} message", where=where)
    if k != kind:
        raise CryptoError(f"unexpected message kind {k} (expected {kind})", where=where)
    if tg != tag:
        raise CryptoError("message belongs to another job", where=where)
    if key_id is not None and kid != key_id:
        raise CryptoError(
            f"ciphertexts are under an unknown key (key id {kid.hex()[:16]}…, "
            f"expected {key_id.hex()[:16]}…)",
            where=where,
        )
    off = _HDR.size
    try:
        meta = json.loads(buf[off : off + mlen])
    except ValueError:
        raise CryptoError("malformed message metadata", where=where) from None
    if not isinstance(meta, dict):
        raise CryptoError("malformed message metadata", where=where)
    off += mlen
    blobs = []
    for _ in range(nblobs):
        if off + 8 > len(buf):
            raise CryptoError("message truncated", where=where)
        (ln,) = struct.unpack_from("<Q", buf, off)
        off += 8
        if off + ln > len(buf):
            raise CryptoError("message truncated", where=where)
        blobs.append(buf[off : off + ln])
        off += ln
    if off != len(buf):
        raise CryptoError("trailing bytes after message", where=where)
    return Message(k, kid, meta, blobs)
