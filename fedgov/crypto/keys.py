"""Node keys: the Ed25519 signing key, the hybrid sealing key and the public key bundle.

Every node holds two long-term key pairs:

* **signing** — Ed25519, certified by the federation CA in ``signing.crt``
  (role ``node``, EKU :data:`~fedgov.crypto.pki.ENVELOPE_SIGNING_EKU`). Signs
  envelopes and the node's key bundle.
* **sealing** — HPKE (RFC 9180) KEM ``MLKEM768_X25519`` (hybrid post-quantum
  ML-KEM-768 + classical X25519), used with HKDF-SHA256 and AES-256-GCM.
  Not certified directly; the node vouches for it by signing the bundle.

``sealing.key`` file format (mode 0600): two PEM ``PRIVATE KEY`` (PKCS#8)
blocks, first the ML-KEM-768 key (seed form), then the X25519 key. Nothing
else.

Key bundle (``sealing.bundle``, public, published through the coordinator
registry), all integers big-endian::

    offset  size   field
    0       4      magic  b"FGKB"
    4       1      version 0x01
    5       2      n = length of the signing certificate DER
    7       n      signing certificate (DER)
    7+n     1184   ML-KEM-768 public key (raw, FIPS 203 encoding)
    1191+n  32     X25519 public key (raw)
    1223+n  64     Ed25519 signature by the certified signing key over
                   b"fedgov/key-bundle/v1\\x00" || bytes[0 : 1223+n]

The coordinator stores and serves bundles but cannot forge one: a node
accepts a peer's sealing key only through :func:`verify_bundle`, which checks
the certificate against the federation CA it was provisioned with.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

from fedgov.crypto import pki
from fedgov.errors import ConfigError, CryptoError

__all__ = [
    "SEALING_SUITE",
    "BUNDLE_MAGIC",
    "InvalidBundle",
    "InvalidSignatureError",
    "PeerKeys",
    "NodeKeys",
    "verify_bundle",
    "generate_sealing_key",
    "write_bundle",
]

#: The one HPKE suite fedgov uses for sealing.
SEALING_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)

BUNDLE_MAGIC = b"FGKB"
BUNDLE_VERSION = 1
_BUNDLE_SIG_TAG = b"fedgov/key-bundle/v1\x00"
_MLKEM768_PUB_LEN = 1184
_X25519_PUB_LEN = 32
_ED25519_SIG_LEN = 64
_PEM_BLOCK = re.compile(
    rb"-----BEGIN PRIVATE KEY-----\r?\n.*?-----END PRIVATE KEY-----\r?\n?", re.DOTALL)


class InvalidBundle(CryptoError):
    """A peer's key bundle is malformed, mis-signed or not certified for that peer."""


class InvalidSignatureError(CryptoError):
    """An Ed25519 signature does not verify under the claimed signer's key."""


@dataclass(frozen=True)
class PeerKeys:
    """A peer's verified public keys (obtain via :func:`verify_bundle` or ``NodeKeys.public``).

    ``sealing_key`` is an ``hpke.MLKEM768X25519PublicKey`` accepted by
    :func:`fedgov.crypto.envelope.seal`. ``sealing_public_bytes`` is the raw
    ML-KEM-768 public key followed by the raw X25519 public key (1216 bytes).
    """

    name: str
    signing_key: ed25519.Ed25519PublicKey
    sealing_key: hpke.MLKEM768X25519PublicKey
    signing_cert: x509.Certificate | None = field(default=None, repr=False, compare=False)
    sealing_public_bytes: bytes = field(default=b"", repr=False)

    def verify(self, data: bytes, signature: bytes, *, what: str = "signature") -> None:
        """Raise InvalidSignatureError unless ``signature`` is this peer's Ed25519 over ``data``.

        Callers must domain-separate their messages (prefix a purpose tag);
        envelopes and bundles use their own tags, so a signature made here can
        never be replayed as one of those unless the caller uses the same tag.
        """
        try:
            self.signing_key.verify(signature, data)
        except InvalidSignature:
            raise InvalidSignatureError(f"{what} does not verify", where=self.name) from None


class NodeKeys:
    """This node's private keys. Private key objects never leave :mod:`fedgov.crypto`.

    Public attributes: ``name``, ``signing_cert``. Use :meth:`sign`,
    :meth:`bundle` and :meth:`public`; decryption is reachable only through
    :func:`fedgov.crypto.envelope.open_envelope`.
    """

    __slots__ = ("name", "signing_cert", "_signing_key", "_sealing_key", "_public", "_bundle")

    def __init__(
        self,
        name: str,
        signing_cert: x509.Certificate,
        signing_key: ed25519.Ed25519PrivateKey,
        mlkem_key: mlkem.MLKEM768PrivateKey,
        x25519_key: x25519.X25519PrivateKey,
        bundle: bytes,
        public: PeerKeys,
    ) -> None:
        self.name = name
        self.signing_cert = signing_cert
        self._signing_key = signing_key
        self._sealing_key = hpke.MLKEM768X25519PrivateKey(mlkem_key, x25519_key)
        self._bundle = bundle
        self._public = public

    def __repr__(self) -> str:
        return f"NodeKeys(name={self.name!r})"

    @classmethod
    def load(cls, kit_dir: Path) -> NodeKeys:
        """Load a node kit: ``signing.key``, ``signing.crt``, ``sealing.key``, ``sealing.bundle``.

        Guarantees: the bundle verifies against the kit's ``ca.crt`` for this
        node's name, names the same signing certificate, and carries exactly
        the public halves of the local keys; the signing certificate is valid
        now. Raises ConfigError (missing/unreadable files) or CryptoError.
        """
        kit_dir = Path(kit_dir)
        ca_cert = pki.load_ca_cert(kit_dir / "ca.crt")
        signing_cert = pki.load_certificate(kit_dir / "signing.crt")
        signing_key = pki.load_private_key(kit_dir / "signing.key")
        if not isinstance(signing_key, ed25519.Ed25519PrivateKey):
            raise ConfigError("signing.key is not an Ed25519 key", where=str(kit_dir))
        ident = pki.identity_from_cert(signing_cert)
        mlkem_key, x25519_key = _load_sealing_key(kit_dir / "sealing.key")
        try:
            bundle = (kit_dir / "sealing.bundle").read_bytes()
        except FileNotFoundError:
            raise ConfigError("sealing.bundle missing (run finish_kit after signing)",
                              where=str(kit_dir)) from None
        peer = verify_bundle(bundle, ca_cert, ident.name)
        if peer.signing_cert is None or peer.signing_cert != signing_cert:
            raise InvalidBundle("sealing.bundle carries a different signing certificate",
                                where=str(kit_dir))
        if _raw_pub(signing_key.public_key()) != _raw_pub(peer.signing_key):
            raise ConfigError("signing.key does not match signing.crt", where=str(kit_dir))
        if _sealing_public_bytes(mlkem_key, x25519_key) != peer.sealing_public_bytes:
            raise InvalidBundle("sealing.bundle does not match sealing.key", where=str(kit_dir))
        return cls(ident.name, signing_cert, signing_key, mlkem_key, x25519_key, bundle, peer)

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature over ``data`` (64 bytes). Callers must domain-separate ``data``."""
        return self._signing_key.sign(data)

    def bundle(self) -> bytes:
        """The signed public key bundle to publish via the coordinator registry."""
        return self._bundle

    def public(self) -> PeerKeys:
        """This node's own public keys, as a peer would see them after verify_bundle."""
        return self._public

    def _hpke_decrypt(self, ciphertext: bytes | memoryview, info: bytes) -> bytes:
        """HPKE single-shot open; raises cryptography's InvalidTag on failure (crypto-internal)."""
        return SEALING_SUITE.decrypt(ciphertext, self._sealing_key, info=info)


# --------------------------------------------------------------------------- files


def generate_sealing_key(path: Path) -> None:
    """Generate a fresh ML-KEM-768 + X25519 sealing key and write it to ``path`` (0600, O_EXCL)."""
    mk = mlkem.MLKEM768PrivateKey.generate()
    xk = x25519.X25519PrivateKey.generate()
    enc = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
           serialization.NoEncryption())
    pki.write_secret_file(Path(path), mk.private_bytes(*enc) + xk.private_bytes(*enc))


def _load_sealing_key(path: Path) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError("sealing key file not found", where=str(path)) from None
    blocks = _PEM_BLOCK.findall(data)
    if len(blocks) != 2:
        raise ConfigError(f"expected 2 PEM private keys, found {len(blocks)}", where=str(path))
    try:
        mk = serialization.load_pem_private_key(blocks[0], password=None)
        xk = serialization.load_pem_private_key(blocks[1], password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"unreadable sealing key ({exc})", where=str(path)) from None
    if not isinstance(mk, mlkem.MLKEM768PrivateKey) or not isinstance(
            xk, x25519.X25519PrivateKey):
        raise ConfigError("sealing key must be ML-KEM-768 then X25519", where=str(path))
    return mk, xk


def _raw_pub(key: ed25519.Ed25519PublicKey | x25519.X25519PublicKey) -> bytes:
    return key.public_bytes_raw()


def _sealing_public_bytes(mk: mlkem.MLKEM768PrivateKey, xk: x25519.X25519PrivateKey) -> bytes:
    return mk.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()


def _build_bundle(signing_cert: x509.Certificate, signing_key: ed25519.Ed25519PrivateKey,
                  mk: mlkem.MLKEM768PrivateKey, xk: x25519.X25519PrivateKey) -> bytes:
    der = signing_cert.public_bytes(serialization.Encoding.DER)
    body = (BUNDLE_MAGIC + bytes([BUNDLE_VERSION]) + struct.pack(">H", len(der)) + der
            + _sealing_public_bytes(mk, xk))
    return body + signing_key.sign(_BUNDLE_SIG_TAG + body)


def write_bundle(kit_dir: Path) -> Path:
    """Build ``kit_dir/sealing.bundle`` from the kit's signing key/cert and sealing key.

    Checks the signing key matches ``signing.crt``; does not check the chain
    (``finish_kit`` / ``NodeKeys.load`` do). Returns the bundle path.
    """
    kit_dir = Path(kit_dir)
    cert = pki.load_certificate(kit_dir / "signing.crt")
    key = pki.load_private_key(kit_dir / "signing.key")
    if not isinstance(key, ed25519.Ed25519PrivateKey) or _raw_pub(
            key.public_key()) != cert.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw):
        raise ConfigError("signing.key does not match signing.crt", where=str(kit_dir))
    mk, xk = _load_sealing_key(kit_dir / "sealing.key")
    out = kit_dir / "sealing.bundle"
    tmp = out.with_name("sealing.bundle.tmp")
    tmp.write_bytes(_build_bundle(cert, key, mk, xk))
    tmp.replace(out)
    return out


# --------------------------------------------------------------------------- verify


def verify_bundle(bundle: bytes, ca_cert: x509.Certificate, expected_name: str,
                  *, now: datetime | None = None) -> PeerKeys:
    """Verify a peer's key bundle (from the untrusted coordinator) and return its keys.

    Guarantees on return: the embedded certificate was issued by ``ca_cert``,
    is valid now (or at ``now``, a datetime), is an envelope-signing
    certificate for role ``node`` with CN == ``expected_name``, and its Ed25519
    key signed the exact sealing public keys returned. Does not guarantee
    freshness: an old, still-certified bundle of the same node would also
    verify (re-keying requires a new signing certificate to be meaningful).
    Raises InvalidBundle (or UntrustedCertificate / ExpiredCertificate).
    """
    where = f"key bundle of {expected_name}"
    mv = memoryview(bytes(bundle))
    if len(mv) < 7 or mv[:4] != BUNDLE_MAGIC:
        raise InvalidBundle("not a fedgov key bundle (bad magic)", where=where)
    if mv[4] != BUNDLE_VERSION:
        raise InvalidBundle(f"unsupported bundle version {mv[4]}", where=where)
    (n,) = struct.unpack(">H", mv[5:7])
    body_len = 7 + n + _MLKEM768_PUB_LEN + _X25519_PUB_LEN
    if len(mv) != body_len + _ED25519_SIG_LEN:
        raise InvalidBundle(f"bundle is {len(mv)} bytes, expected {body_len + 64}", where=where)
    try:
        cert = x509.load_der_x509_certificate(mv[7:7 + n].tobytes())
    except ValueError as exc:
        raise InvalidBundle(f"embedded certificate does not parse ({exc})", where=where) from None
    ident = pki.verify_certificate(cert, ca_cert, now=now)
    if ident.name != expected_name:
        raise InvalidBundle(f"certificate is for {ident.name!r}, not {expected_name!r}",
                            where=where)
    if ident.role != "node":
        raise InvalidBundle(f"certificate role is {ident.role!r}, not 'node'", where=where)
    if pki.ENVELOPE_SIGNING_EKU not in pki._ekus(cert):
        raise InvalidBundle("certificate is not an envelope-signing certificate", where=where)
    signing_key = cert.public_key()
    if not isinstance(signing_key, ed25519.Ed25519PublicKey):
        raise InvalidBundle("certificate key is not Ed25519", where=where)
    body = mv[:body_len].tobytes()
    try:
        signing_key.verify(mv[body_len:].tobytes(), _BUNDLE_SIG_TAG + body)
    except InvalidSignature:
        raise InvalidBundle("signature does not verify (altered or not signed by this node)",
                            where=where) from None
    off = 7 + n
    seal_bytes = body[off:]
    try:
        mpub = mlkem.MLKEM768PublicKey.from_public_bytes(seal_bytes[:_MLKEM768_PUB_LEN])
        xpub = x25519.X25519PublicKey.from_public_bytes(seal_bytes[_MLKEM768_PUB_LEN:])
    except ValueError as exc:
        raise InvalidBundle(f"sealing public key does not parse ({exc})", where=where) from None
    return PeerKeys(
        name=ident.name,
        signing_key=signing_key,
        sealing_key=hpke.MLKEM768X25519PublicKey(mpub, xpub),
        signing_cert=cert,
        sealing_public_bytes=seal_bytes,
    )
