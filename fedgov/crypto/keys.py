"""Node keys: the Ed25519 signing key, the hybrid sealing keys and the public key bundle.

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
    4       1      version 0x02
    5       8      serial: strictly increasing per node (ms since the epoch when written,
                   and always above the kit's previous bundle)
    13      2      n = length of the signing certificate DER
    15      n      signing certificate (DER)
    15+n    1184   ML-KEM-768 public key (raw, FIPS 203 encoding)
    1199+n  32     X25519 public key (raw)
    1231+n  64     Ed25519 signature by the certified signing key over
                   b"fedgov/key-bundle/v2\\x00" || bytes[0 : 1231+n]

The coordinator stores and serves bundles but cannot forge one: a node
accepts a peer's keys only through :func:`verify_bundle`, which checks the
certificate against the federation CA it was provisioned with (and its
revocation list); the serial lets peers refuse a bundle older than one they
have seen (``fedgov.node.store.NodeStore.note_bundle``), so the coordinator
cannot serve a superseded bundle to a node that knows a newer one.

Per-job sealing keys (:class:`JobKey`): for every job a node generates a fresh
ML-KEM-768 + X25519 key pair in memory, publishes its public half in a
statement signed by its long-term signing key (:func:`verify_job_key`), and
drops the private half when the job ends. Envelopes of the job are sealed to
that key, so whoever later takes the node's long-term keys cannot open
recorded envelopes of finished jobs (forward secrecy). Statement format::

    offset  size  field
    0       4     magic b"FGJK"
    4       1     version 0x01
    5       2+a   job id (2-byte length + UTF-8)
    7+a     2+b   node name (2-byte length + UTF-8)
    9+a+b   1216  job sealing public key (ML-KEM-768 raw || X25519 raw)
    1225+a+b 64   Ed25519 signature over b"fedgov/job-key/v1\\x00" || bytes[0 : 1225+a+b]
"""

from __future__ import annotations

import hashlib
import re
import struct
import time
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
    "bundle_serial",
    "generate_sealing_key",
    "write_bundle",
    "JobKey",
    "verify_job_key",
    "ResultKey",
]

#: The one HPKE suite fedgov uses for sealing.
SEALING_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)

BUNDLE_MAGIC = b"FGKB"
BUNDLE_VERSION = 2
_BUNDLE_SIG_TAG = b"fedgov/key-bundle/v2\x00"
_BUNDLE_HEAD = 4 + 1 + 8 + 2
JOB_KEY_MAGIC = b"FGJK"
_JOB_KEY_VERSION = 1
_JOB_KEY_SIG_TAG = b"fedgov/job-key/v1\x00"
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
    #: the bundle's serial (0 for keys that did not come from a bundle)
    bundle_serial: int = 0
    #: set when ``sealing_key`` is a per-job key (from :func:`verify_job_key`)
    job_id: str | None = None

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
        if len(bundle) > 4 and bundle[:4] == BUNDLE_MAGIC and bundle[4] != BUNDLE_VERSION:
            raise ConfigError(f"sealing.bundle is version {bundle[4]}; rebuild it with "
                              f"`fedgov provision finish {kit_dir}`", where=str(kit_dir))
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
                  mk: mlkem.MLKEM768PrivateKey, xk: x25519.X25519PrivateKey,
                  serial: int) -> bytes:
    der = signing_cert.public_bytes(serialization.Encoding.DER)
    body = (BUNDLE_MAGIC + bytes([BUNDLE_VERSION]) + struct.pack(">Q", serial)
            + struct.pack(">H", len(der)) + der + _sealing_public_bytes(mk, xk))
    return body + signing_key.sign(_BUNDLE_SIG_TAG + body)


def bundle_serial(bundle: bytes) -> int:
    """The serial of a (version 2) bundle, without verifying it; 0 if it has none."""
    if len(bundle) >= 13 and bundle[:4] == BUNDLE_MAGIC and bundle[4] == BUNDLE_VERSION:
        return int(struct.unpack(">Q", bundle[5:13])[0])
    return 0


def write_bundle(kit_dir: Path) -> Path:
    """Build ``kit_dir/sealing.bundle`` from the kit's signing key/cert and sealing key.

    The serial is the current time in milliseconds, and always above the
    serial of the bundle it replaces, so peers that saw the old bundle accept
    the new one and refuse the old one from then on. Checks the signing key
    matches ``signing.crt``; does not check the chain (``finish_kit`` /
    ``NodeKeys.load`` do). Returns the bundle path.
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
    previous = bundle_serial(out.read_bytes()) if out.exists() else 0
    serial = max(time.time_ns() // 1_000_000, previous + 1)
    tmp = out.with_name("sealing.bundle.tmp")
    tmp.unlink(missing_ok=True)
    tmp.write_bytes(_build_bundle(cert, key, mk, xk, serial))
    tmp.replace(out)
    return out


# --------------------------------------------------------------------------- verify


def verify_bundle(bundle: bytes, ca_cert: x509.Certificate, expected_name: str,
                  *, now: datetime | None = None,
                  revocations: pki.RevocationCheck | None = None) -> PeerKeys:
    """Verify a peer's key bundle (from the untrusted coordinator) and return its keys.

    Guarantees on return: the embedded certificate was issued by ``ca_cert``,
    is valid now (or at ``now``, a datetime), is not on ``revocations`` (when
    given), is an envelope-signing certificate for role ``node`` with CN ==
    ``expected_name``, and its Ed25519 key signed the exact sealing public keys
    and serial returned. Freshness is the caller's: compare
    ``PeerKeys.bundle_serial`` with the highest serial seen for that peer.
    Raises InvalidBundle (or UntrustedCertificate / ExpiredCertificate /
    RevokedCertificate).
    """
    where = f"key bundle of {expected_name}"
    mv = memoryview(bytes(bundle))
    if len(mv) < _BUNDLE_HEAD or mv[:4] != BUNDLE_MAGIC:
        raise InvalidBundle("not a fedgov key bundle (bad magic)", where=where)
    if mv[4] != BUNDLE_VERSION:
        raise InvalidBundle(f"unsupported bundle version {mv[4]}", where=where)
    (serial,) = struct.unpack(">Q", mv[5:13])
    (n,) = struct.unpack(">H", mv[13:15])
    head = _BUNDLE_HEAD
    body_len = head + n + _MLKEM768_PUB_LEN + _X25519_PUB_LEN
    if len(mv) != body_len + _ED25519_SIG_LEN:
        raise InvalidBundle(f"bundle is {len(mv)} bytes, expected {body_len + 64}", where=where)
    try:
        cert = x509.load_der_x509_certificate(mv[head:head + n].tobytes())
    except ValueError as exc:
        raise InvalidBundle(f"embedded certificate does not parse ({exc})", where=where) from None
    ident = pki.verify_certificate(cert, ca_cert, now=now, revocations=revocations)
    if ident.name != expected_name:
        raise InvalidBundle(f"certificate is for {ident.name!r}, not {expected_name!r}",
                            where=where)
    if ident.role != "node":
        raise InvalidBundle(f"certificate role is {ident.role!r}, not 'node'", where=where)
    if pki.ENVELOPE_SIGNING_EKU not in pki.ekus(cert):
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
    seal_bytes = body[head + n:]
    try:
        sealing_key = _sealing_public_key(seal_bytes)
    except ValueError as exc:
        raise InvalidBundle(f"sealing public key does not parse ({exc})", where=where) from None
    return PeerKeys(
        name=ident.name,
        signing_key=signing_key,
        sealing_key=sealing_key,
        signing_cert=cert,
        sealing_public_bytes=seal_bytes,
        bundle_serial=int(serial),
    )


def _sealing_public_key(raw: bytes) -> hpke.MLKEM768X25519PublicKey:
    """An ML-KEM-768 + X25519 public key from its 1216 raw bytes; ValueError if malformed."""
    if len(raw) != _MLKEM768_PUB_LEN + _X25519_PUB_LEN:
        raise ValueError(f"{len(raw)} bytes, expected {_MLKEM768_PUB_LEN + _X25519_PUB_LEN}")
    mpub = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUB_LEN])
    xpub = x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM768_PUB_LEN:])
    return hpke.MLKEM768X25519PublicKey(mpub, xpub)


# --------------------------------------------------------------------------- per-job keys


def _lp(value: str) -> bytes:
    b = value.encode("utf-8")
    if not b or len(b) > 256:
        raise InvalidBundle("job key field must be 1-256 bytes", where="job key")
    return struct.pack(">H", len(b)) + b


class _EphemeralKey:
    """An HPKE key pair held in memory (never serialised by this class); :meth:`erase` drops it."""

    __slots__ = ("name", "_private", "_public_bytes", "_parts")

    def __init__(self, name: str, mk: mlkem.MLKEM768PrivateKey | None = None,
                 xk: x25519.X25519PrivateKey | None = None) -> None:
        mk = mk if mk is not None else mlkem.MLKEM768PrivateKey.generate()
        xk = xk if xk is not None else x25519.X25519PrivateKey.generate()
        self.name = name
        self._public_bytes = _sealing_public_bytes(mk, xk)
        self._private: hpke.MLKEM768X25519PrivateKey | None = hpke.MLKEM768X25519PrivateKey(mk, xk)
        self._parts: tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey] | None = (mk, xk)

    @property
    def public_bytes(self) -> bytes:
        """Raw public key: ML-KEM-768 (1184 bytes) || X25519 (32 bytes)."""
        return self._public_bytes

    @property
    def erased(self) -> bool:
        return self._private is None

    def erase(self) -> None:
        """Drop the private key; nothing can be decrypted with this object afterwards.

        The key only ever lived in this process's memory (OpenSSL cleanses
        private key memory when it frees it); Python cannot promise when the
        freed memory is reused, which is why the key is never written anywhere.
        """
        self._private = None

    def _hpke_decrypt(self, ciphertext: bytes | memoryview, info: bytes) -> bytes:
        if self._private is None:
            raise CryptoError(f"the per-job key of {self.name} was erased", where=self.name)
        return SEALING_SUITE.decrypt(ciphertext, self._private, info=info)


class JobKey(_EphemeralKey):
    """This node's sealing key for one job (forward secrecy for the job's envelopes).

    Generated in memory at job start, never written to disk, published only as
    a statement signed with the node's long-term signing key, erased at job
    end. Usable as ``me`` in :func:`fedgov.crypto.envelope.open_envelope` for
    envelopes of this job only.
    """

    __slots__ = ("job_id",)

    def __init__(self, name: str, job_id: str) -> None:
        super().__init__(name)
        self.job_id = job_id

    def __repr__(self) -> str:
        return f"JobKey(name={self.name!r}, job_id={self.job_id!r}, erased={self.erased})"

    def statement(self, signer: NodeKeys) -> bytes:
        """The signed statement peers verify with :func:`verify_job_key` (public; leaks the key only)."""
        if signer.name != self.name:
            raise CryptoError(f"job key of {self.name} cannot be signed by {signer.name}")
        body = (JOB_KEY_MAGIC + bytes([_JOB_KEY_VERSION]) + _lp(self.job_id) + _lp(self.name)
                + self._public_bytes)
        return body + signer.sign(_JOB_KEY_SIG_TAG + body)


def verify_job_key(statement: bytes, peer: PeerKeys, job_id: str) -> PeerKeys:
    """Verify a peer's per-job key statement against its verified long-term keys.

    Guarantees on return: ``peer``'s signing key (from a bundle that passed
    :func:`verify_bundle`) signed exactly this sealing key for exactly this
    job and node; the result is ``peer`` with ``sealing_key`` replaced by the
    job key and ``job_id`` set. A statement of another job, another node or
    with any byte changed raises InvalidBundle.
    """
    where = f"job key of {peer.name} for {job_id}"
    mv = memoryview(bytes(statement))
    if len(mv) < 5 or mv[:4] != JOB_KEY_MAGIC or mv[4] != _JOB_KEY_VERSION:
        raise InvalidBundle("not a fedgov job key statement", where=where)
    off = 5
    fields = []
    for _ in range(2):
        if off + 2 > len(mv):
            raise InvalidBundle("statement truncated", where=where)
        (n,) = struct.unpack(">H", mv[off:off + 2])
        off += 2
        try:
            fields.append(mv[off:off + n].tobytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidBundle("statement field is not UTF-8", where=where) from None
        off += n
    end = off + _MLKEM768_PUB_LEN + _X25519_PUB_LEN
    if len(mv) != end + _ED25519_SIG_LEN:
        raise InvalidBundle("statement has the wrong length", where=where)
    got_job, got_name = fields
    if got_job != job_id or got_name != peer.name:
        raise InvalidBundle(f"statement is for {got_name!r} in job {got_job!r}", where=where)
    try:
        peer.signing_key.verify(mv[end:].tobytes(), _JOB_KEY_SIG_TAG + mv[:end].tobytes())
    except InvalidSignature:
        raise InvalidBundle("signature does not verify (not signed by this node)",
                            where=where) from None
    raw = mv[off:end].tobytes()
    try:
        key = _sealing_public_key(raw)
    except ValueError as exc:
        raise InvalidBundle(f"job key does not parse ({exc})", where=where) from None
    return PeerKeys(name=peer.name, signing_key=peer.signing_key, sealing_key=key,
                    signing_cert=peer.signing_cert, sealing_public_bytes=raw,
                    bundle_serial=peer.bundle_serial, job_id=job_id)


# --------------------------------------------------------------------------- result keys


class ResultKey(_EphemeralKey):
    """A requester's key pair for one job's results (sealed to it by every node).

    The public half travels in the signed manifest (``[job] result_key``); the
    private half stays with the requester (:meth:`save`, mode 0600, in a 0700
    directory). ``name`` is the requester's certificate name (the recipient
    named in the result envelopes).
    """

    __slots__ = ()

    @property
    def key_id(self) -> str:
        """Identifies the key among a requester's saved keys (32 hex chars of its SHA-256)."""
        return result_key_id(self._public_bytes)

    def save(self, directory: Path) -> Path:
        """Write the private key to ``directory/<key_id>.key`` (0600, exclusive; directory 0700)."""
        if self._parts is None:
            raise CryptoError("result key was erased", where=self.name)
        pki.private_dir(directory)
        path = Path(directory) / f"{self.key_id}.key"
        mk, xk = self._parts
        enc = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
               serialization.NoEncryption())
        pki.write_secret_file(path, mk.private_bytes(*enc) + xk.private_bytes(*enc))
        return path

    @classmethod
    def load(cls, directory: Path, name: str, key_id: str) -> ResultKey:
        """Load the key saved under ``key_id``; ConfigError if this requester never saved it."""
        if not re.fullmatch(r"[0-9a-f]{32}", key_id):
            raise ConfigError(f"bad result key id {key_id!r}")
        path = Path(directory) / f"{key_id}.key"
        if not path.exists():
            raise ConfigError(
                f"no private result key {key_id} here: the job was submitted from another "
                "kit or state directory", where=str(directory))
        mk, xk = _load_sealing_key(path)
        key = cls(name, mk, xk)
        if key.key_id != key_id:
            raise ConfigError("result key file does not match its name", where=str(path))
        return key


def result_key_id(public_bytes: bytes) -> str:
    """The id of a result public key (first 32 hex chars of its SHA-256)."""
    return hashlib.sha256(public_bytes).hexdigest()[:32]


def result_recipient(name: str, public_bytes: bytes) -> PeerKeys:
    """A requester's result key as a sealing target (no signing key: requesters sign nothing here)."""
    try:
        key = _sealing_public_key(public_bytes)
    except ValueError as exc:
        raise InvalidBundle(f"result key does not parse ({exc})", where="manifest result_key") from None
    return PeerKeys(name=name, signing_key=None, sealing_key=key,  # type: ignore[arg-type]
                    sealing_public_bytes=public_bytes)
