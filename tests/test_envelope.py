"""Sealed envelopes and key bundles: confidentiality, integrity, addressing, replay/reorder."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from fedgov.crypto import envelope as env
from fedgov.crypto import kits, pki
from fedgov.crypto.envelope import (
    Header,
    MalformedEnvelope,
    MemorySequenceTracker,
    MisaddressedEnvelope,
    OutOfOrderEnvelope,
    ReplayedEnvelope,
    TamperedEnvelope,
    UnknownSender,
    open_envelope,
    peek_header,
    seal,
)
from fedgov.crypto.keys import InvalidBundle, NodeKeys, PeerKeys, verify_bundle
from fedgov.errors import CryptoError


@dataclass
class Fed:
    root: Path
    ca: x509.Certificate
    tax: NodeKeys
    civ: NodeKeys
    hrss: NodeKeys
    evil_civ: NodeKeys  # same name "civ", issued by another CA
    peers: dict[str, PeerKeys]

    def lookup(self, name: str) -> PeerKeys:
        return self.peers[name]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    root = tmp_path_factory.mktemp("envfed")
    pki.create_ca(root / "ca")
    pki.create_ca(root / "evil_ca")
    for name in ("tax", "civ", "hrss"):
        kits.issue_kit(root / "ca", root / name, name, "node")
    kits.issue_kit(root / "evil_ca", root / "evil_civ", "civ", "node")
    ca = pki.load_ca_cert(root / "ca" / "ca.crt")
    nodes = {n: NodeKeys.load(root / n) for n in ("tax", "civ", "hrss", "evil_civ")}
    # peers learn each other's keys only through verify_bundle
    peers = {n: verify_bundle(nodes[n].bundle(), ca, n) for n in ("tax", "civ", "hrss")}
    return Fed(root, ca, nodes["tax"], nodes["civ"], nodes["hrss"], nodes["evil_civ"], peers)


def H(seq: int = 0, *, sender: str = "tax", recipient: str = "civ", step: str = "psi/1",
      job: str = "j1") -> Header:
    return Header(job_id=job, step=step, sender=sender, recipient=recipient, seq=seq)


def _seal(fed: Fed, seq: int = 0, payload: bytes = b"secret payload", **kw: str) -> bytes:
    h = H(seq, **kw)
    sender = getattr(fed, h.sender)
    return seal(h, payload, sender, fed.peers[h.recipient])


def _open(fed: Fed, blob: bytes, me: NodeKeys | None = None,
          tracker: MemorySequenceTracker | None = None,
          lookup: Callable[[str], PeerKeys] | None = None) -> tuple[Header, bytes]:
    return open_envelope(blob, me or fed.civ, lookup or fed.lookup,
                         tracker if tracker is not None else MemorySequenceTracker())


# --------------------------------------------------------------------------- happy path


def test_round_trip(fed: Fed) -> None:
    blob = _seal(fed, 0, b"hello civ")
    assert peek_header(blob) == H(0)
    header, pt = _open(fed, blob)
    assert (header, pt) == (H(0), b"hello civ")
    assert b"hello civ" not in blob
    assert len(blob) == len(b"hello civ") + env.OVERHEAD + len(H(0).canonical())


def test_empty_and_large_payloads(fed: Fed) -> None:
    assert _open(fed, _seal(fed, 0, b""))[1] == b""
    big = bytes(range(256)) * (8 * 1024 * 1024 // 256)  # 8 MiB
    blob = _seal(fed, 0, big)
    assert _open(fed, blob)[1] == big


def test_sealing_is_randomised(fed: Fed) -> None:
    assert _seal(fed, 0) != _seal(fed, 0)


# --------------------------------------------------------------------------- tampering


def _layout(blob: bytes) -> tuple[int, int]:
    """(start of ciphertext, start of signature)."""
    (h,) = struct.unpack(">H", blob[5:7])
    (c,) = struct.unpack(">Q", blob[7 + h:15 + h])
    return 15 + h, 15 + h + c


def _flip(blob: bytes, i: int, mask: int = 0x01) -> bytes:
    b = bytearray(blob)
    b[i] ^= mask
    return bytes(b)


def test_tampered_ciphertext_header_signature(fed: Fed) -> None:
    blob = _seal(fed, 0)
    ct_start, sig_start = _layout(blob)
    tracker = MemorySequenceTracker()
    cases = {
        "kem encapsulation": ct_start + 5,
        "aead body": sig_start - 20,
        "gcm tag": sig_start - 1,
        "signature": sig_start + 10,
        "job id char": 7 + 2,          # 'j' of "j1"
        "seq": ct_start - 8 - 1,       # last byte of seq
    }
    for what, i in cases.items():
        with pytest.raises(TamperedEnvelope, match="job j1|job k1|step"):
            open_envelope(_flip(blob, i), fed.civ, fed.lookup, tracker)
        assert tracker.expected("j1", "tax", "psi/1") == 0, what  # nothing burned
    assert open_envelope(blob, fed.civ, fed.lookup, tracker)[1] == b"secret payload"


def test_every_single_byte_flip_is_rejected(fed: Fed) -> None:
    blob = _seal(fed, 0, b"x" * 32)
    tracker = MemorySequenceTracker()
    for i in range(len(blob)):
        with pytest.raises(env.EnvelopeError):
            open_envelope(_flip(blob, i, 0x80), fed.civ, fed.lookup, tracker)
    assert tracker.expected("j1", "tax", "psi/1") == 0
    with pytest.raises(MalformedEnvelope):
        open_envelope(blob[:-1], fed.civ, fed.lookup, tracker)
    with pytest.raises(MalformedEnvelope):
        open_envelope(blob + b"\0", fed.civ, fed.lookup, tracker)


def test_header_swapped_between_envelopes(fed: Fed) -> None:
    a = _seal(fed, 0, b"payload A")
    b = _seal(fed, 1, b"payload B")
    ha = len(H(0).canonical())
    # header of b, ciphertext+signature of a (and vice versa)
    for x, y in ((a, b), (b, a)):
        swapped = y[:7 + ha] + x[7 + ha:]
        with pytest.raises(TamperedEnvelope):
            _open(fed, swapped)
    # header+ciphertext of b with signature of a
    with pytest.raises(TamperedEnvelope, match="signature"):
        _open(fed, b[:-64] + a[-64:])


def test_ciphertext_rewrapped_by_another_node_does_not_decrypt(fed: Fed) -> None:
    """hrss re-signs tax's ciphertext under its own header: HPKE info binding must catch it."""
    orig = _seal(fed, 0, b"tax secret")
    ct_start, sig_start = _layout(orig)
    hb = H(0, sender="hrss").canonical()
    ct = orig[ct_start:sig_start]
    signed = env.MAGIC + bytes([env.VERSION]) + struct.pack(">H", len(hb)) + hb + \
        struct.pack(">Q", len(ct)) + ct
    forged = signed + fed.hrss.sign(env._SIG_TAG + signed)
    with pytest.raises(TamperedEnvelope, match="decryption failed"):
        _open(fed, forged)


def test_sender_impersonation_rejected(fed: Fed) -> None:
    """hrss signs an envelope claiming to come from tax: tax's key does not verify it."""
    hb = H(0).canonical()
    ct = env.SEALING_SUITE.encrypt(b"fake", fed.peers["civ"].sealing_key,
                                   info=env._INFO_TAG + hb)
    signed = env.MAGIC + bytes([env.VERSION]) + struct.pack(">H", len(hb)) + hb + \
        struct.pack(">Q", len(ct)) + ct
    forged = signed + fed.hrss.sign(env._SIG_TAG + signed)
    with pytest.raises(TamperedEnvelope, match="from tax: signature does not verify"):
        _open(fed, forged)
    with pytest.raises(env.EnvelopeError):  # seal itself refuses to lie about the sender
        seal(H(0), b"x", fed.hrss, fed.peers["civ"])


# --------------------------------------------------------------------------- addressing, order


def test_misaddressed(fed: Fed) -> None:
    blob = _seal(fed, 0)
    with pytest.raises(MisaddressedEnvelope, match="addressed to civ, not to this node"):
        _open(fed, blob, me=fed.hrss)
    # the relay rewriting the recipient field to hrss is tampering, not a way in
    ct_start, _ = _layout(blob)
    hb = H(0, recipient="hrss").canonical()
    redirected = env.MAGIC + bytes([env.VERSION]) + struct.pack(">H", len(hb)) + hb + \
        blob[ct_start - 8:]
    assert peek_header(redirected).recipient == "hrss"
    with pytest.raises(TamperedEnvelope, match="signature"):
        _open(fed, redirected, me=fed.hrss)
    with pytest.raises(MisaddressedEnvelope):
        seal(H(0), b"x", fed.tax, fed.peers["hrss"])


def test_unknown_sender(fed: Fed) -> None:
    blob = _seal(fed, 0)
    with pytest.raises(UnknownSender, match="no verified keys"):
        _open(fed, blob, lookup=lambda n: {}[n])
    with pytest.raises(UnknownSender):
        _open(fed, blob, lookup=lambda n: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(UnknownSender, match="keys of 'hrss'"):
        _open(fed, blob, lookup=lambda n: fed.peers["hrss"])


def test_replay(fed: Fed) -> None:
    tracker = MemorySequenceTracker()
    blob = _seal(fed, 0)
    _open(fed, blob, tracker=tracker)
    with pytest.raises(ReplayedEnvelope, match="seq 0 was already accepted"):
        _open(fed, blob, tracker=tracker)
    # a fresh seal with an old seq is a replay too
    _open(fed, _seal(fed, 1), tracker=tracker)
    with pytest.raises(ReplayedEnvelope):
        _open(fed, _seal(fed, 0), tracker=tracker)


def test_reorder(fed: Fed) -> None:
    tracker = MemorySequenceTracker()
    b0, b1, b2 = (_seal(fed, i) for i in range(3))
    with pytest.raises(OutOfOrderEnvelope, match="seq 1 arrived but 0 is expected"):
        _open(fed, b1, tracker=tracker)
    assert tracker.expected("j1", "tax", "psi/1") == 0
    _open(fed, b0, tracker=tracker)
    with pytest.raises(OutOfOrderEnvelope):
        _open(fed, b2, tracker=tracker)  # gap: 1 missing
    _open(fed, b1, tracker=tracker)
    _open(fed, b2, tracker=tracker)
    assert tracker.expected("j1", "tax", "psi/1") == 3


def test_streams_are_independent(fed: Fed) -> None:
    tracker = MemorySequenceTracker()
    _open(fed, _seal(fed, 0), tracker=tracker)
    _open(fed, _seal(fed, 0, step="psi/2"), tracker=tracker)
    _open(fed, _seal(fed, 0, job="j2"), tracker=tracker)
    _open(fed, _seal(fed, 0, sender="hrss"), tracker=tracker)
    with pytest.raises(ReplayedEnvelope):
        _open(fed, _seal(fed, 0, step="psi/2"), tracker=tracker)


def test_check_sequence_rule() -> None:
    env.check_sequence(0, H(0))
    env.check_sequence(5, H(5))
    with pytest.raises(ReplayedEnvelope):
        env.check_sequence(5, H(4))
    with pytest.raises(OutOfOrderEnvelope):
        env.check_sequence(5, H(6))


@pytest.mark.parametrize("kwargs", [
    {"seq": -1}, {"seq": 2**64}, {"sender": "Tax"}, {"recipient": ""}, {"job_id": ""},
    {"step": "a\nb"}, {"job_id": "x" * 257},
])
def test_bad_headers_refused(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"job_id": "j1", "step": "s", "sender": "tax", "recipient": "civ",
                               "seq": 0}
    with pytest.raises(MalformedEnvelope):
        Header(**{**base, **kwargs})  # type: ignore[arg-type]


def test_peek_header_rejects_garbage() -> None:
    for blob in (b"", b"FGEV", b"XXXX\x01\x00\x00", b"FGEV\x02" + b"\0" * 100):
        with pytest.raises(MalformedEnvelope):
            peek_header(blob)


# --------------------------------------------------------------------------- bundles


def test_bundle_for_another_name_rejected(fed: Fed) -> None:
    with pytest.raises(InvalidBundle, match="for 'civ', not 'tax'"):
        verify_bundle(fed.civ.bundle(), fed.ca, "tax")


def test_bundle_from_another_ca_rejected(fed: Fed) -> None:
    with pytest.raises(pki.UntrustedCertificate):
        verify_bundle(fed.evil_civ.bundle(), fed.ca, "civ")
    # and an envelope sealed to such a key is not readable by the real civ
    evil_peer = fed.evil_civ.public()
    blob = seal(H(0), b"to evil", fed.tax, evil_peer)
    with pytest.raises(TamperedEnvelope, match="decryption failed"):
        _open(fed, blob)


def test_bundle_tampering_rejected(fed: Fed) -> None:
    bundle = fed.civ.bundle()
    for i in (len(bundle) - 64 - 5, len(bundle) - 64 - 40, len(bundle) - 1):
        with pytest.raises(CryptoError):
            verify_bundle(_flip(bundle, i), fed.ca, "civ")
    # swap civ's sealing key for hrss's under civ's certificate
    tail = 1184 + 32 + 64
    spliced = bundle[:-tail] + fed.hrss.bundle()[-tail:]
    with pytest.raises(InvalidBundle, match="signature does not verify"):
        verify_bundle(spliced, fed.ca, "civ")
    for junk in (b"", bundle[:100], b"FGKB\x09" + bundle[5:]):
        with pytest.raises(InvalidBundle):
            verify_bundle(junk, fed.ca, "civ")


def test_node_keys_load_detects_foreign_bundle(fed: Fed, tmp_path: Path) -> None:
    kit = tmp_path / "civ"
    shutil.copytree(fed.root / "civ", kit)
    shutil.copy(fed.root / "hrss" / "sealing.bundle", kit / "sealing.bundle")
    with pytest.raises(CryptoError):
        NodeKeys.load(kit)


# --------------------------------------------------------------------------- per-job keys


def test_job_key_envelopes_open_with_the_job_key_only(fed: Fed) -> None:
    """Forward secrecy: what is sealed to a job key does not open with the long-term keys."""
    from fedgov.crypto.keys import JobKey, verify_job_key

    jk = JobKey("civ", "j1")
    target = verify_job_key(jk.statement(fed.civ), fed.peers["civ"], "j1")
    blob = seal(H(), b"per-job secret", fed.tax, target)
    with pytest.raises(TamperedEnvelope, match="decryption failed"):
        _open(fed, blob)  # civ's long-term NodeKeys
    h, payload = _open(fed, blob, me=jk)  # type: ignore[arg-type]
    assert payload == b"per-job secret" and h.job_id == "j1"
    jk.erase()
    with pytest.raises(CryptoError, match="erased"):
        _open(fed, blob, me=jk)  # type: ignore[arg-type]


def test_job_key_is_bound_to_its_job_and_node(fed: Fed) -> None:
    from fedgov.crypto.keys import JobKey, verify_job_key

    jk = JobKey("civ", "j1")
    st = jk.statement(fed.civ)
    with pytest.raises(InvalidBundle, match="statement is for 'civ' in job 'j1'"):
        verify_job_key(st, fed.peers["civ"], "j2")  # replayed into another job
    with pytest.raises(InvalidBundle, match="statement is for 'civ'"):
        verify_job_key(st, fed.peers["hrss"], "j1")  # presented as another node's
    with pytest.raises(CryptoError):
        JobKey("civ", "j1").statement(fed.hrss)  # a node signs only its own job keys
    for i in (9, len(st) // 2, len(st) - 70):  # any byte of the statement
        bad = bytearray(st)
        bad[i] ^= 0x01
        with pytest.raises(InvalidBundle):
            verify_job_key(bytes(bad), fed.peers["civ"], "j1")
    # a job key opens envelopes of its own job only
    target = verify_job_key(st, fed.peers["civ"], "j1")
    with pytest.raises(MisaddressedEnvelope, match="for job j1"):
        seal(H(job="j2"), b"x", fed.tax, target)
    other = JobKey("civ", "j2")
    blob = seal(H(job="j2"), b"x", fed.tax, verify_job_key(other.statement(fed.civ), fed.peers["civ"], "j2"))
    with pytest.raises(MisaddressedEnvelope, match="belongs to job j2, not to job j1"):
        _open(fed, blob, me=jk)  # type: ignore[arg-type]


def test_bundle_serial_grows_when_the_bundle_is_rebuilt(fed: Fed, tmp_path: Path) -> None:
    from fedgov.crypto.keys import write_bundle

    kit = tmp_path / "tax"
    shutil.copytree(fed.root / "tax", kit)
    first = verify_bundle((kit / "sealing.bundle").read_bytes(), fed.ca, "tax").bundle_serial
    write_bundle(kit)
    second = verify_bundle((kit / "sealing.bundle").read_bytes(), fed.ca, "tax").bundle_serial
    assert second > first > 0
    # the serial is signed: changing it breaks the signature
    b = bytearray((kit / "sealing.bundle").read_bytes())
    b[12] ^= 0x01
    with pytest.raises(InvalidBundle, match="signature does not verify"):
        verify_bundle(bytes(b), fed.ca, "tax")
