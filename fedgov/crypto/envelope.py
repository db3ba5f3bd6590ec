"""Sealed node-to-node envelopes relayed by the (untrusted) coordinator.

``seal`` encrypts a payload to the recipient's hybrid HPKE key (ML-KEM-768 +
X25519, HKDF-SHA256, AES-256-GCM; single-shot base mode) with the canonical
header as HPKE ``info``, then Ed25519-signs header and ciphertext with the
sender's certified key. ``open_envelope`` checks everything before it returns
a byte of plaintext or advances the per-stream sequence counter.

Wire format (all integers big-endian)::

    offset      size  field
    0           4     magic b"FGEV"
    4           1     version 0x01
    5           2     H = length of the canonical header
    7           H     canonical header (below)
    7+H         8     C = length of the HPKE ciphertext
    15+H        C     HPKE ciphertext: enc (1120 bytes) || AES-256-GCM(payload) || tag (16)
    15+H+C      64    Ed25519 signature over b"fedgov/envelope/v1/sig\\x00" || bytes[0 : 15+H+C]

Canonical header: ``job_id``, ``step``, ``sender``, ``recipient`` each as a
2-byte length + UTF-8 bytes, then ``seq`` as 8 bytes. HPKE ``info`` is
``b"fedgov/envelope/v1/info\\x00" || canonical header``, so a ciphertext only
decrypts under the exact header it was sealed with.

What the relay (coordinator) sees: the whole header in clear (job, step,
sender, recipient, seq), the payload length (ciphertext = payload + 1136
bytes), and timing. It does not see the payload.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag

from fedgov.crypto import pki
from fedgov.crypto.keys import SEALING_SUITE, NodeKeys, PeerKeys
from fedgov.errors import CryptoError, FedgovError


class Recipient(Protocol):
    """Who can open an envelope: a node's long-term keys, its per-job key or a result key.

    ``job_id`` is set for per-job keys (:class:`fedgov.crypto.keys.JobKey`): such
    a key opens envelopes of that job only.
    """

    name: str

    def _hpke_decrypt(self, ciphertext: bytes | memoryview, info: bytes) -> bytes: ...

__all__ = [
    "MAGIC",
    "VERSION",
    "OVERHEAD",
    "Header",
    "EnvelopeError",
    "TamperedEnvelope",
    "MisaddressedEnvelope",
    "ReplayedEnvelope",
    "OutOfOrderEnvelope",
    "UnknownSender",
    "MalformedEnvelope",
    "Recipient",
    "seal",
    "peek_header",
    "open_envelope",
    "SequenceTracker",
    "MemorySequenceTracker",
    "check_sequence",
]

MAGIC = b"FGEV"
VERSION = 1
_SIG_TAG = b"fedgov/envelope/v1/sig\x00"
_INFO_TAG = b"fedgov/envelope/v1/info\x00"
_ENC_LEN = 1120  # hpke.KEM.MLKEM768_X25519.enc_length()
_GCM_TAG = 16
_SIG_LEN = 64
_MAX_FIELD = 256  # bytes, for job_id and step
_MAX_SEQ = 2**64 - 1
#: Bytes an envelope adds to a payload, not counting the canonical header.
OVERHEAD = 4 + 1 + 2 + 8 + _ENC_LEN + _GCM_TAG + _SIG_LEN


class EnvelopeError(CryptoError):
    """An envelope failed a check; nothing from it was accepted."""


class MalformedEnvelope(EnvelopeError):
    """The bytes are not a well-formed envelope (wrong magic/version/lengths/fields)."""


class TamperedEnvelope(EnvelopeError):
    """Signature or AEAD check failed: the envelope was altered or forged."""


class MisaddressedEnvelope(EnvelopeError):
    """The envelope is addressed to another node."""


class UnknownSender(EnvelopeError):
    """No verified keys are known for the claimed sender."""


class ReplayedEnvelope(EnvelopeError):
    """This (job, sender, step) sequence number was already accepted."""


class OutOfOrderEnvelope(EnvelopeError):
    """The sequence number skips ahead of the next expected one."""


@dataclass(frozen=True)
class Header:
    """Routing metadata bound into every envelope (visible to the relay).

    ``sender``/``recipient`` are node names (``^[a-z0-9][a-z0-9_.-]{0,62}$``);
    ``job_id`` and ``step`` are 1-256 UTF-8 bytes of printable text; ``seq``
    is 0 <= seq < 2**64. Invalid values raise MalformedEnvelope.
    """

    job_id: str
    step: str
    sender: str
    recipient: str
    seq: int

    def __post_init__(self) -> None:
        for what in ("job_id", "step"):
            v = getattr(self, what)
            if not isinstance(v, str) or not v or not v.isprintable() or len(
                    v.encode("utf-8")) > _MAX_FIELD:
                raise MalformedEnvelope(f"{what} must be 1-{_MAX_FIELD} bytes of printable text",
                                        where="envelope header")
        for what in ("sender", "recipient"):
            try:
                pki.validate_name(getattr(self, what), what=what)
            except FedgovError as exc:
                raise MalformedEnvelope(exc.message, where="envelope header") from None
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or not (
                0 <= self.seq <= _MAX_SEQ):
            raise MalformedEnvelope(f"seq must be an integer in [0, 2**64), got {self.seq!r}",
                                    where="envelope header")

    def canonical(self) -> bytes:
        """The canonical byte encoding (bound as HPKE info and signed)."""
        out = bytearray()
        for v in (self.job_id, self.step, self.sender, self.recipient):
            b = v.encode("utf-8")
            out += struct.pack(">H", len(b)) + b
        out += struct.pack(">Q", self.seq)
        return bytes(out)

    def where(self) -> str:
        """One-line description for error messages."""
        return f"envelope for job {self.job_id} step {self.step} from {self.sender}"


def _parse_header(data: memoryview) -> Header:
    fields: list[str] = []
    off = 0
    try:
        for _ in range(4):
            if off + 2 > len(data):
                raise MalformedEnvelope("header truncated", where="envelope")
            (n,) = struct.unpack(">H", data[off:off + 2])
            off += 2
            if off + n > len(data):
                raise MalformedEnvelope("header truncated", where="envelope")
            fields.append(data[off:off + n].tobytes().decode("utf-8"))
            off += n
    except UnicodeDecodeError:
        raise MalformedEnvelope("header field is not UTF-8", where="envelope") from None
    if len(data) - off != 8:
        raise MalformedEnvelope("header has wrong length", where="envelope")
    (seq,) = struct.unpack(">Q", data[off:])
    return Header(fields[0], fields[1], fields[2], fields[3], seq)


@dataclass(frozen=True)
class _Parsed:
    header: Header
    header_bytes: bytes
    ciphertext: memoryview
    signed: memoryview
    signature: bytes


def _parse(blob: bytes | bytearray | memoryview) -> _Parsed:
    mv = memoryview(blob).cast("B") if not isinstance(blob, bytes) else memoryview(blob)
    if len(mv) < 7 or mv[:4] != MAGIC:
        raise MalformedEnvelope("not a fedgov envelope (bad magic)", where="envelope")
    if mv[4] != VERSION:
        raise MalformedEnvelope(f"unsupported envelope version {mv[4]}", where="envelope")
    (h,) = struct.unpack(">H", mv[5:7])
    if len(mv) < 7 + h + 8:
        raise MalformedEnvelope("envelope truncated in header", where="envelope")
    header = _parse_header(mv[7:7 + h])
    (c,) = struct.unpack(">Q", mv[7 + h:15 + h])
    end = 15 + h + c
    if c < _ENC_LEN + _GCM_TAG or len(mv) != end + _SIG_LEN:
        raise MalformedEnvelope(
            f"envelope length {len(mv)} does not match its declared ciphertext length {c}",
            where=header.where())
    return _Parsed(header, mv[7:7 + h].tobytes(), mv[15 + h:end], mv[:end],
                   mv[end:].tobytes())


def seal(header: Header, plaintext: bytes, sender: NodeKeys, recipient: PeerKeys) -> bytes:
    """Seal ``plaintext`` from ``sender`` to ``recipient`` under ``header``.

    Guarantees: only the holder of ``recipient``'s sealing private key can
    read the payload (hybrid: safe while either ML-KEM-768 or X25519 holds);
    any change to header, ciphertext or signature is detected by
    :func:`open_envelope`. Leaks the header, the payload length and the time
    of sealing to whoever relays it. ``header.sender`` must be ``sender.name``
    and ``header.recipient`` must be ``recipient.name``; a per-job key
    (``recipient.job_id`` set) seals envelopes of that job only. The caller
    chooses ``seq`` (0, 1, 2, ... per (job, step) stream to this recipient).
    """
    if header.sender != sender.name:
        raise EnvelopeError(f"header sender is {header.sender!r} but sealing as {sender.name!r}",
                            where=header.where())
    if header.recipient != recipient.name:
        raise MisaddressedEnvelope(
            f"header recipient is {header.recipient!r} but the key is {recipient.name!r}'s",
            where=header.where())
    if recipient.job_id is not None and recipient.job_id != header.job_id:
        raise MisaddressedEnvelope(
            f"{recipient.name}'s key is for job {recipient.job_id}, not {header.job_id}",
            where=header.where())
    hb = header.canonical()
    ct = SEALING_SUITE.encrypt(plaintext, recipient.sealing_key, info=_INFO_TAG + hb)
    signed = b"".join((MAGIC, bytes([VERSION]), struct.pack(">H", len(hb)), hb,
                       struct.pack(">Q", len(ct)), ct))
    return signed + sender.sign(_SIG_TAG + signed)


def peek_header(blob: bytes) -> Header:
    """Parse the header for routing, without verifying anything.

    Guarantees only that ``blob`` is structurally well-formed; the header may
    be forged. Raises MalformedEnvelope.
    """
    return _parse(blob).header


class SequenceTracker(Protocol):
    """Per-stream replay/reorder state. A stream is (job_id, sender, step) at one recipient."""

    def accept(self, header: Header) -> None:
        """Accept ``header.seq`` if it equals the next expected seq and advance; else raise.

        Raises ReplayedEnvelope (seq already accepted) or OutOfOrderEnvelope
        (seq skips ahead). Must be atomic: check and advance together.
        """
        ...


def check_sequence(expected: int, header: Header) -> None:
    """The sequence rule: ``header.seq`` must equal ``expected`` (next unseen seq, from 0).

    seq < expected → ReplayedEnvelope; seq > expected → OutOfOrderEnvelope
    (an earlier envelope is missing or the relay reordered them).
    """
    if header.seq < expected:
        raise ReplayedEnvelope(
            f"seq {header.seq} was already accepted (next expected {expected}): replay",
            where=header.where())
    if header.seq > expected:
        raise OutOfOrderEnvelope(
            f"seq {header.seq} arrived but {expected} is expected next (reordered or lost)",
            where=header.where())


class MemorySequenceTracker:
    """In-memory :class:`SequenceTracker` (thread-safe). State is lost on restart."""

    def __init__(self) -> None:
        self._next: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()

    def expected(self, job_id: str, sender: str, step: str) -> int:
        """The next sequence number this tracker will accept for the stream."""
        with self._lock:
            return self._next.get((job_id, sender, step), 0)

    def accept(self, header: Header) -> None:
        """See :meth:`SequenceTracker.accept`."""
        key = (header.job_id, header.sender, header.step)
        with self._lock:
            expected = self._next.get(key, 0)
            check_sequence(expected, header)
            self._next[key] = expected + 1


def _check_addressed(h: Header, me: NodeKeys | Recipient) -> None:
    """MisaddressedEnvelope unless ``h`` is for ``me`` (and, for a per-job key, for its job)."""
    if h.recipient != me.name:
        raise MisaddressedEnvelope(f"addressed to {h.recipient}, not to this node ({me.name})",
                                   where=h.where())
    key_job = getattr(me, "job_id", None)
    if key_job is not None and h.job_id != key_job:
        raise MisaddressedEnvelope(f"belongs to job {h.job_id}, not to job {key_job} whose key "
                                   "opens it (replayed from another job?)", where=h.where())


def _verify_sender(peer: PeerKeys, p: _Parsed) -> None:
    """TamperedEnvelope unless ``peer``'s Ed25519 key signed header and ciphertext."""
    try:
        peer.signing_key.verify(p.signature, _SIG_TAG + p.signed)
    except InvalidSignature:
        raise TamperedEnvelope("signature does not verify (tampered in transit?)",
                               where=p.header.where()) from None


def open_envelope(
    blob: bytes,
    me: NodeKeys | Recipient,
    sender_keys: Callable[[str], PeerKeys],
    tracker: SequenceTracker,
) -> tuple[Header, bytes]:
    """Verify and decrypt an envelope addressed to ``me``; return (header, plaintext).

    ``me`` is the recipient's key: its long-term :class:`NodeKeys`, a per-job
    :class:`~fedgov.crypto.keys.JobKey` (then the envelope must belong to that
    job) or a requester's :class:`~fedgov.crypto.keys.ResultKey`.
    Checks in order, raising at the first failure: well-formed
    (MalformedEnvelope); ``header.recipient == me.name`` and, for a per-job
    key, ``header.job_id == me.job_id`` (MisaddressedEnvelope);
    ``sender_keys(header.sender)`` yields that sender's verified keys
    (UnknownSender if it returns None, a PeerKeys for another name, or raises
    LookupError/FedgovError); sender's Ed25519 signature (TamperedEnvelope);
    HPKE decryption under the header (TamperedEnvelope); finally
    ``tracker.accept(header)`` (ReplayedEnvelope / OutOfOrderEnvelope). The
    tracker is advanced only when every cryptographic check passed, so a
    forged envelope cannot burn a sequence number.
    """
    p = _parse(blob)
    h = p.header
    _check_addressed(h, me)
    try:
        peer = sender_keys(h.sender)
    except (LookupError, FedgovError) as exc:
        raise UnknownSender(f"no verified keys for sender ({exc})", where=h.where()) from exc
    if peer is None:
        raise UnknownSender("no verified keys for sender", where=h.where())
    if peer.name != h.sender:
        raise UnknownSender(f"key lookup returned keys of {peer.name!r}", where=h.where())
    _verify_sender(peer, p)
    try:
        plaintext = me._hpke_decrypt(p.ciphertext, _INFO_TAG + p.header_bytes)
    except (InvalidTag, ValueError):
        raise TamperedEnvelope("decryption failed (ciphertext not sealed to this node's key "
                               "under this header)", where=h.where()) from None
    tracker.accept(h)
    return h, plaintext
