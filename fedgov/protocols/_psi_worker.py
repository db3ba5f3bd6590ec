"""Hot loops of ECDH-PSI, importable by pool worker processes.

Everything here works on compact byte strings (concatenated fixed-width
values) so that a task crossing the process boundary is one ``bytes`` object,
not a million small Python objects. The only cryptography is the X25519
function of ``cryptography`` (``X25519PrivateKey.exchange``) and SHA-512 from
``hashlib``; no group arithmetic is implemented here.

A worker process receives the party's per-job PSI scalar once, through the
pool initializer (a local pipe to a child of the same party process). The
scalar never appears in any task, result or protocol message.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedgov.errors import CryptoError

#: Width of a Curve25519 u-coordinate (RFC 7748 encoding), bytes.
POINT = 32

_state: dict[str, object] = {}


def hash_to_u(prefix: bytes, ident: str) -> bytes:
    """Map one normalised ID to a 32-byte X25519 u-coordinate.

    ``u = SHA-512(prefix || utf8(id))[:32]`` with bit 255 cleared (RFC 7748
    ignores it anyway). ``prefix`` is the 32-byte job-specific domain tag, so
    the same ID maps to unrelated points in different jobs. About half of the
    u values lie on the quadratic twist; see ``docs/protocols/psi.md``.
    """
    d = hashlib.sha512(prefix + ident.encode("utf-8")).digest()
    return d[:31] + bytes((d[31] & 0x7F,))


def _zero_result(exc: ValueError) -> CryptoError:
    return CryptoError(
        "X25519 produced the all-zero value (a low-order input point); "
        "refusing it: an honest peer produces this with probability < 2^-240",
        where="psi",
    )


def mask_ids(key: X25519PrivateKey, prefix: bytes, ids: list[str]) -> bytes:
    """Return ``concat(k * H(id))`` for ``ids``, 32 bytes each, in input order.

    Raises :class:`CryptoError` if any product is the all-zero value.
    """
    ex = key.exchange
    load = X25519PublicKey.from_public_bytes
    h512 = hashlib.sha512
    out = []
    append = out.append
    try:
        for ident in ids:
            d = h512(prefix + ident.encode("utf-8")).digest()
            append(ex(load(d[:31] + bytes((d[31] & 0x7F,)))))
    except ValueError as exc:  # cryptography refuses an all-zero shared value
        raise _zero_result(exc) from None
    return b"".join(out)


def remask(key: X25519PrivateKey, buf: bytes, width: int) -> bytes:
    """Return ``concat(k * u)[:width]`` for each 32-byte ``u`` in ``buf``, order kept.

    ``width`` < 32 truncates each product (used for the final double-masked
    values, which are only compared). Raises :class:`CryptoError` on an
    all-zero product.
    """
    ex = key.exchange
    load = X25519PublicKey.from_public_bytes
    try:
        if width >= POINT:
            out = [ex(load(buf[i : i + POINT])) for i in range(0, len(buf), POINT)]
        else:
            out = [ex(load(buf[i : i + POINT]))[:width] for i in range(0, len(buf), POINT)]
    except ValueError as exc:
        raise _zero_result(exc) from None
    return b"".join(out)


# -- pool entry points (use the scalar installed by ``init``) ---------------


def init(secret: bytes, prefix: bytes) -> None:
    """Pool initializer: install this party's per-job scalar and domain tag."""
    _state["key"] = X25519PrivateKey.from_private_bytes(secret)
    _state["prefix"] = prefix


def pool_mask_ids(ids: list[str]) -> bytes:
    """:func:`mask_ids` with the installed scalar."""
    return mask_ids(_state["key"], _state["prefix"], ids)  # type: ignore[arg-type]


def pool_remask(args: tuple[bytes, int]) -> bytes:
    """:func:`remask` with the installed scalar; ``args = (buf, width)``."""
    buf, width = args
    return remask(_state["key"], buf, width)  # type: ignore[arg-type]
