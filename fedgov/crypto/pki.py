"""Federation PKI: the CA, certificates, CSRs and the identities they carry.

Trust model
-----------
One federation CA (ECDSA P-256, self-signed, ``pathlen=0``) issues every leaf
certificate. A leaf names exactly one principal:

* subject ``CN`` = the principal's name (``^[a-z0-9][a-z0-9_.-]{0,62}$``),
* subject ``OU`` = its role, one of :data:`ROLES`,
* optional SAN URI ``urn:fedgov:dept:<node name>`` = the department it acts for
  (mandatory for ``approver``),
* for the coordinator only: DNS / IP SANs for the hosts it serves on.

Two kinds of leaf exist:

* **TLS certificates** (ECDSA P-256; EKU ``clientAuth``, plus ``serverAuth``
  for the coordinator) authenticate gRPC connections.
* **Envelope-signing certificates** (Ed25519; role ``node`` only; EKU
  :data:`ENVELOPE_SIGNING_EKU`, which no TLS stack accepts for client or server
  auth) vouch for the key that signs sealed node-to-node payloads and the
  node's public key bundle (see :mod:`fedgov.crypto.keys`).

Two provisioning paths produce the same files:

* central: :func:`fedgov.crypto.kits.issue_kit` generates keys and
  certificates in one place;
* distributed: the site runs :func:`fedgov.crypto.kits.make_csr` (private keys
  stay in the site directory), the admin runs :func:`sign_csr` on the CSR
  files only, and the site runs :func:`fedgov.crypto.kits.finish_kit`.

This module holds the certificate layer only (it imports no other fedgov
crypto module); kit assembly lives in :mod:`fedgov.crypto.kits`, revocation
lists in :mod:`fedgov.crypto.revocation`.

Lifetimes (defaults, shorter than before): the CA lasts :data:`CA_DAYS` (5
years); coordinator and node certificates :data:`SERVICE_DAYS` (1 year);
people's certificates (analyst, auditor, admin, approver) :data:`PERSON_DAYS`
(90 days). ``fedgov provision renew`` re-certifies a key before it expires.

Issuance record: every certificate the CA issues, and every revocation, is
appended as one JSON line to ``<ca>/issuance.jsonl`` (what, to whom, until
when, for which key), so the admin can see what is live and re-signing the
same key is refused unless asked for explicitly.

Nothing here talks to the network; every function is deterministic apart from
key generation and serial numbers.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedgov.errors import ConfigError, CryptoError
from fedgov.privatefs import private_dir

__all__ = [
    "ROLES",
    "ENVELOPE_SIGNING_EKU",
    "Identity",
    "CertificateError",
    "UntrustedCertificate",
    "MalformedCertificate",
    "ExpiredCertificate",
    "RevokedCertificate",
    "CA_DAYS",
    "SERVICE_DAYS",
    "PERSON_DAYS",
    "EXPIRY_WARNING",
    "default_days",
    "create_ca",
    "issue_certificate",
    "describe_csr",
    "sign_csr",
    "renew_certificate",
    "IssuedCertificate",
    "issuance_record",
    "expiry_warning",
    "private_dir",
    "load_ca_cert",
    "load_certificate",
    "load_private_key",
    "verify_certificate",
    "identity_from_cert",
    "write_private_key",
    "validate_name",
]

ROLES: tuple[str, ...] = ("coordinator", "node", "analyst", "auditor", "admin", "approver")

#: Extended key usage of envelope-signing certificates. A UUID-derived OID
#: (ITU-T X.667 arc ``2.25``) so it needs no registration and can never be
#: mistaken for a TLS purpose.
ENVELOPE_SIGNING_EKU = x509.ObjectIdentifier("2.25.266032000346908778500370297598498265539")

DEPT_URI_PREFIX = "urn:fedgov:dept:"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
#: Certificates start this long before "now" to tolerate clock skew between hosts.
_BACKDATE = timedelta(minutes=5)

#: Default lifetime of the federation CA.
CA_DAYS = 1826
#: Default lifetime of coordinator and node certificates (services renew yearly).
SERVICE_DAYS = 365
#: Default lifetime of people's certificates (analyst, auditor, admin, approver).
PERSON_DAYS = 90
#: Certificates closer than this to their end are reported by kit checks and ``provision status``.
EXPIRY_WARNING = timedelta(days=30)
#: The CA's append-only record of what it issued and revoked.
ISSUANCE_RECORD = "issuance.jsonl"


def default_days(role: str) -> int:
    """Default certificate lifetime for ``role``: services a year, people 90 days."""
    return SERVICE_DAYS if role in ("coordinator", "node") else PERSON_DAYS

CertPrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


# --------------------------------------------------------------------------- errors


class CertificateError(CryptoError):
    """A certificate, CSR or key file failed a check."""


class UntrustedCertificate(CertificateError):
    """The certificate does not chain to the federation CA or is not a valid leaf."""


class MalformedCertificate(UntrustedCertificate):
    """The certificate parses but does not carry a well-formed fedgov identity."""


class ExpiredCertificate(CertificateError):
    """The certificate is outside its validity period (expired or not yet valid)."""


class RevokedCertificate(UntrustedCertificate):
    """The certificate is listed on the federation CA's revocation list."""


class RevocationCheck(Protocol):
    """What :func:`verify_certificate` needs from a revocation list (see :mod:`fedgov.crypto.revocation`)."""

    def check(self, cert: x509.Certificate) -> None:
        """Raise RevokedCertificate if ``cert`` is revoked."""
        ...


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class Identity:
    """Who a certificate names. Equality is field-wise."""

    name: str
    role: str
    department: str | None = None


def validate_name(name: str, *, what: str = "name") -> str:
    """Return ``name`` if it matches ``^[a-z0-9][a-z0-9_.-]{0,62}$``; else raise ConfigError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{what} {name!r} is invalid: use 1-63 chars of a-z 0-9 _ . - "
            "starting with a letter or digit"
        )
    return name


def _validate_identity(name: str, role: str, department: str | None) -> None:
    validate_name(name)
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}", where=name)
    if department is not None:
        validate_name(department, what="department")
    if role == "approver" and department is None:
        raise ConfigError("role approver needs a department (the node it approves for)",
                          where=name)


def _parse_hosts(hosts: Sequence[str], role: str, name: str) -> list[x509.GeneralName]:
    if isinstance(hosts, str):
        raise ConfigError("hosts must be a list of host names, not a string", where=name)
    if hosts and role != "coordinator":
        raise ConfigError("hosts (DNS/IP SANs) are only allowed for the coordinator",
                          where=name)
    if role == "coordinator" and not hosts:
        hosts = ("localhost", "127.0.0.1")
    out: list[x509.GeneralName] = []
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9-]{0,62})"
                            r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?", host) \
                or "*" in host:
            raise ConfigError(f"host {host!r} is neither an IP address nor a DNS name",
                              where=name)
        out.append(x509.DNSName(host))
    return out


def _subject(name: str, role: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        x509.NameAttribute(NameOID.COMMON_NAME, name),
    ])


def identity_from_cert(cert: x509.Certificate) -> Identity:
    """Parse the fedgov identity of ``cert`` (CN, OU, department SAN) without verifying it.

    Guarantees only that the returned fields are syntactically valid; says
    nothing about who issued the certificate. Raises MalformedCertificate.
    """
    return _identity_from_name(cert.subject, _san(cert))


def _san(obj: x509.Certificate | x509.CertificateSigningRequest) -> x509.SubjectAlternativeName:
    try:
        return obj.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return x509.SubjectAlternativeName([])


def _identity_from_name(subject: x509.Name, san: x509.SubjectAlternativeName) -> Identity:
    cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ous = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(cns) != 1 or len(ous) != 1:
        raise MalformedCertificate(
            f"subject {subject.rfc4514_string()!r} must have exactly one CN and one OU")
    name, role = str(cns[0].value), str(ous[0].value)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    depts = [u[len(DEPT_URI_PREFIX):] for u in uris if u.startswith(DEPT_URI_PREFIX)]
    if len(depts) > 1:
        raise MalformedCertificate("more than one department URI", where=name)
    department = depts[0] if depts else None
    try:
        _validate_identity(name, role, department)
    except ConfigError as exc:
        raise MalformedCertificate(exc.message, where=exc.where) from None
    return Identity(name=name, role=role, department=department)


# --------------------------------------------------------------------------- files


def write_private_key(path: Path, key: CertPrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM to a new file with mode 0600.

    The file is created with ``O_EXCL`` and mode 0600 in one ``open`` call, so
    there is no moment where it is readable by others, and an existing file
    (or symlink) is never overwritten (ConfigError). Leaks nothing beyond the
    file itself; protection at rest is the file system's job.
    """
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_secret_file(path, pem)


def write_secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` exclusively with mode 0600 and write ``data``; ConfigError if it exists."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ConfigError("refusing to overwrite an existing private key file",
                          where=str(path)) from None
    try:
        os.fchmod(fd, 0o600)  # umask can only remove bits; make the mode explicit anyway
        with os.fdopen(fd, "wb") as fh:
            fd = -1
            fh.write(data)
    finally:
        if fd != -1:
            os.close(fd)


def append_private_line(path: Path, line: str) -> None:
    """Append one line to a private (0600) file, creating it; never through a symlink.

    ``O_NOFOLLOW`` is the guard here: the file is opened for appending (not
    created exclusively), so without it a symlink planted at ``path`` would
    redirect the write to wherever it points.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
    try:
        fd = os.open(Path(path), flags, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot append ({exc.strerror}; a symlink?)", where=str(path)) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def _write_public(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificate(path: Path) -> x509.Certificate:
    """Load one PEM certificate; ConfigError if missing or unparsable (no verification)."""
    path = Path(path)
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError("certificate file not found", where=str(path)) from None
    except ValueError as exc:
        raise ConfigError(f"not a PEM certificate ({exc})", where=str(path)) from None


def load_ca_cert(path: Path) -> x509.Certificate:
    """Load the federation CA certificate and check it is a self-signed CA.

    Guarantees the result is a CA certificate whose self-signature verifies;
    whether it is *the* right CA is for the operator to decide (pin the file).
    """
    cert = load_certificate(path)
    if not _is_ca(cert):
        raise ConfigError("not a CA certificate (basicConstraints ca=false)", where=str(path))
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError("CA certificate is not validly self-signed", where=str(path)) from None
    return cert


def load_private_key(path: Path) -> CertPrivateKey:
    """Load a PEM PKCS#8 ECDSA or Ed25519 private key; ConfigError otherwise."""
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError("private key file not found", where=str(path)) from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"unreadable private key ({exc})", where=str(path)) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ConfigError(f"unexpected key type {type(key).__name__}", where=str(path))
    return key


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _public_der(key: object) -> bytes:
    """SubjectPublicKeyInfo DER of a public key, or of a private key's public half."""
    pub = key.public_key() if hasattr(key, "public_key") else key
    return pub.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# --------------------------------------------------------------------------- CA


def create_ca(ca_dir: Path, federation: str = "fedgov federation", *, days: int = CA_DAYS) -> None:
    """Create ``ca_dir/ca.crt`` and ``ca_dir/ca.key`` (0600) for a new federation.

    Refuses (ConfigError) if either file already exists, so an existing CA is
    never silently replaced. The CA is ECDSA P-256 with ``pathlen=0``: it can
    issue leaves only. ``ca_dir`` is made 0700. Default lifetime 5 years.
    """
    ca_dir = Path(ca_dir)
    if not federation or not federation.isprintable():
        raise ConfigError("federation name must be non-empty printable text")
    if (ca_dir / "ca.crt").exists() or (ca_dir / "ca.key").exists():
        raise ConfigError("a CA already exists here; refusing to overwrite it", where=str(ca_dir))
    private_dir(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(_dt.UTC)
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} CA"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_key(ca_dir / "ca.key", key)
    _write_public(ca_dir / "ca.crt", _cert_pem(cert))


def load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and its key from ``ca_dir`` (checked to match); for CA-side modules."""
    return _load_ca(ca_dir)


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_dir = Path(ca_dir)
    cert = load_ca_cert(ca_dir / "ca.crt")
    key = load_private_key(ca_dir / "ca.key")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or _public_der(key) != _public_der(
            cert.public_key()):
        raise ConfigError("ca.key does not match ca.crt", where=str(ca_dir))
    return cert, key


# --------------------------------------------------------------------------- issuing


def issue_certificate(
    ca_dir: Path,
    public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
    name: str,
    role: str,
    *,
    hosts: Sequence[str] = (),
    department: str | None = None,
    days: int | None = None,
    not_before: datetime | None = None,
) -> x509.Certificate:
    """Issue a leaf certificate for ``public_key`` and return it (only the issuance record is written).

    The key type decides the purpose: ECDSA P-256 → TLS certificate (EKU
    clientAuth, plus serverAuth for the coordinator); Ed25519 → envelope-signing
    certificate (role ``node`` only, EKU :data:`ENVELOPE_SIGNING_EKU`).
    Lifetime ``days`` defaults to :func:`default_days` of the role. Validity
    starts at ``not_before`` (default: now minus 5 minutes of skew allowance)
    and never extends past the CA's own expiry. ``not_before`` exists for tests
    and for re-issuing with a fixed start. The certificate is appended to the
    CA's issuance record.
    """
    _validate_identity(name, role, department)
    days = default_days(role) if days is None else days
    if days < 1:
        raise ConfigError("days must be >= 1", where=name)
    ca_cert, ca_key = _load_ca(ca_dir)
    return issue_leaf(ca_dir, ca_cert, ca_key, public_key, name, role,
                      _parse_hosts(hosts, role, name), department, days, not_before, source="issue")


def issue_leaf(
    ca_dir: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: object,
    name: str,
    role: str,
    host_sans: list[x509.GeneralName],
    department: str | None,
    days: int,
    not_before: datetime | None,
    *,
    source: str,
    csr_sha256: str | None = None,
) -> x509.Certificate:
    """Build a leaf (see :func:`issue_certificate`) and append it to the issuance record."""
    cert = _build_leaf(ca_cert, ca_key, public_key, name, role, host_sans, department, days,
                       not_before)
    _record(ca_dir, _issued_row(cert, source=source, csr_sha256=csr_sha256))
    return cert


def _build_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: object,
    name: str,
    role: str,
    host_sans: list[x509.GeneralName],
    department: str | None,
    days: int,
    not_before: datetime | None,
) -> x509.Certificate:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise ConfigError(f"TLS keys must be P-256, got {public_key.curve.name}", where=name)
        ekus = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if role == "coordinator":
            ekus.append(ExtendedKeyUsageOID.SERVER_AUTH)
        sans = list(host_sans)
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        if role != "node":
            raise ConfigError("only nodes get envelope-signing (Ed25519) certificates",
                              where=name)
        ekus = [ENVELOPE_SIGNING_EKU]
        sans = []
    else:
        raise ConfigError(f"unsupported public key type {type(public_key).__name__}", where=name)
    if department is not None:
        sans.append(x509.UniformResourceIdentifier(DEPT_URI_PREFIX + department))

    start = (not_before if not_before is not None
             else datetime.now(_dt.UTC) - _BACKDATE)
    end = min(start + timedelta(days=days), ca_cert.not_valid_after_utc)
    if end <= start:
        raise ConfigError("the CA expires before this certificate would start", where=name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(name, role))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),  # type: ignore[arg-type]
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


# --------------------------------------------------------------------------- issuance record


@dataclass(frozen=True)
class IssuedCertificate:
    """One certificate in the CA's issuance record, with its revocation if any."""

    serial: int
    name: str
    role: str
    department: str | None
    hosts: tuple[str, ...]
    purpose: str  # "tls" or "signing"
    not_before: datetime
    not_after: datetime
    key_sha256: str
    cert_sha256: str
    source: str  # issue | kit | csr | renew
    issued_at: datetime
    revoked_at: datetime | None = None
    revocation_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (serial in hex, times in ISO 8601)."""
        return {
            "serial": f"{self.serial:x}",
            "name": self.name,
            "role": self.role,
            "department": self.department,
            "hosts": list(self.hosts),
            "purpose": self.purpose,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "key_sha256": self.key_sha256,
            "cert_sha256": self.cert_sha256,
            "source": self.source,
            "issued_at": self.issued_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "revocation_reason": self.revocation_reason,
        }


def key_fingerprint(public_key: object) -> str:
    """SHA-256 hex of a public key's SubjectPublicKeyInfo DER (what identifies a key pair)."""
    return hashlib.sha256(_public_der(public_key)).hexdigest()


def cert_purpose(cert: x509.Certificate) -> str:
    """``signing`` for envelope-signing certificates, else ``tls``."""
    return "signing" if ENVELOPE_SIGNING_EKU in _ekus(cert) else "tls"


def cert_hosts(cert: x509.Certificate) -> list[str]:
    """DNS and IP SANs of a certificate, as strings."""
    san = _san(cert)
    return [*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def _issued_row(cert: x509.Certificate, *, source: str, csr_sha256: str | None) -> dict[str, Any]:
    ident = identity_from_cert(cert)
    return {
        "event": "issued",
        "serial": f"{cert.serial_number:x}",
        "name": ident.name,
        "role": ident.role,
        "department": ident.department,
        "hosts": cert_hosts(cert),
        "purpose": cert_purpose(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key_sha256": key_fingerprint(cert.public_key()),
        "cert_sha256": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        "source": source,
        "csr_sha256": csr_sha256,
        "at": datetime.now(_dt.UTC).isoformat(),
    }


def _record(ca_dir: Path, row: dict[str, Any]) -> None:
    append_private_line(Path(ca_dir) / ISSUANCE_RECORD, json.dumps(row, sort_keys=True))


def record_event(ca_dir: Path, row: dict[str, Any]) -> None:
    """Append an event (``revoked``, ``crl``) to the issuance record; for :mod:`fedgov.crypto.revocation`."""
    _record(ca_dir, {**row, "at": row.get("at") or datetime.now(_dt.UTC).isoformat()})


def record_events(ca_dir: Path) -> list[dict[str, Any]]:
    """Every line of the issuance record, in order; ConfigError naming the line if one is damaged."""
    path = Path(ca_dir) / ISSUANCE_RECORD
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ConfigError("issuance record line is not JSON", where=f"{path}:{i}") from None
        if not isinstance(row, dict) or "event" not in row:
            raise ConfigError("issuance record line has no event", where=f"{path}:{i}")
        out.append(row)
    return out


def issuance_record(ca_dir: Path) -> list[IssuedCertificate]:
    """What this CA issued (oldest first), each with its revocation if it was revoked."""
    events = record_events(ca_dir)
    revoked = {e["serial"]: e for e in events if e["event"] == "revoked"}
    out = []
    for e in events:
        if e["event"] != "issued":
            continue
        r = revoked.get(e["serial"])
        out.append(IssuedCertificate(
            serial=int(e["serial"], 16), name=e["name"], role=e["role"],
            department=e.get("department"), hosts=tuple(e.get("hosts") or ()),
            purpose=e["purpose"], not_before=datetime.fromisoformat(e["not_before"]),
            not_after=datetime.fromisoformat(e["not_after"]), key_sha256=e["key_sha256"],
            cert_sha256=e["cert_sha256"], source=e["source"],
            issued_at=datetime.fromisoformat(e["at"]),
            revoked_at=datetime.fromisoformat(r["at"]) if r else None,
            revocation_reason=r.get("reason") if r else None,
        ))
    return out


def expiry_warning(cert: x509.Certificate, *, now: datetime | None = None,
                   within: timedelta = EXPIRY_WARNING) -> str | None:
    """A one-line warning if ``cert`` ends within ``within`` (default 30 days) of ``now``; else None."""
    now = now if now is not None else datetime.now(_dt.UTC)
    left = cert.not_valid_after_utc - now
    if left > within:
        return None
    ident = identity_from_cert(cert)
    if left.total_seconds() <= 0:
        return (f"{cert_purpose(cert)} certificate of {ident.name} expired on "
                f"{cert.not_valid_after_utc.isoformat()}")
    return (f"{cert_purpose(cert)} certificate of {ident.name} expires in {left.days} day(s) "
            f"({cert.not_valid_after_utc.isoformat()}): renew it (fedgov provision renew)")


# --------------------------------------------------------------------------- CSR path


def _load_csr(csr_path: Path) -> x509.CertificateSigningRequest:
    csr_path = Path(csr_path)
    try:
        csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    except FileNotFoundError:
        raise ConfigError("CSR file not found", where=str(csr_path)) from None
    except ValueError as exc:
        raise ConfigError(f"not a PEM CSR ({exc})", where=str(csr_path)) from None
    if not csr.is_signature_valid:
        raise CertificateError("CSR self-signature does not verify (corrupted or forged)",
                               where=str(csr_path))
    return csr


def describe_csr(csr_path: Path) -> tuple[Identity, list[str]]:
    """Return the identity and host SANs a CSR asks for, after checking its self-signature.

    For the admin to review before :func:`sign_csr`. Raises CertificateError /
    ConfigError.
    """
    csr = _load_csr(csr_path)
    try:
        ident = _identity_from_name(csr.subject, _san(csr))
    except MalformedCertificate as exc:
        raise ConfigError(exc.message, where=str(csr_path)) from None
    san = _san(csr)
    hosts = [*san.get_values_for_type(x509.DNSName),
             *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
    return ident, hosts


def review_csr(ca_dir: Path, csr_path: Path) -> dict[str, Any]:
    """What signing ``csr_path`` would certify, for the admin to confirm (nothing is signed).

    Keys: ``name``, ``role``, ``department``, ``hosts``, ``purpose`` (tls or
    signing), ``key_sha256``, ``days`` (the role's default lifetime) and
    ``earlier`` (serials this CA already issued for the same key, with their
    state). Raises like :func:`sign_csr` for a CSR that could never be signed.
    """
    csr = _load_csr(csr_path)
    ident, hosts = describe_csr(csr_path)
    _parse_hosts(hosts, ident.role, ident.name)
    fp = key_fingerprint(csr.public_key())
    earlier = [
        {"serial": f"{c.serial:x}", "revoked": c.revoked_at is not None, "not_after": c.not_after.isoformat()}
        for c in issuance_record(ca_dir) if c.key_sha256 == fp
    ]
    return {
        "csr": str(csr_path),
        "name": ident.name,
        "role": ident.role,
        "department": ident.department,
        "hosts": hosts,
        "purpose": "signing" if isinstance(csr.public_key(), ed25519.Ed25519PublicKey) else "tls",
        "key_sha256": fp,
        "days": default_days(ident.role),
        "earlier": earlier,
    }


def csr_purpose(csr_path: Path) -> str:
    """``signing`` for an Ed25519 CSR (envelope-signing certificate), else ``tls``."""
    key = _load_csr(csr_path).public_key()
    return "signing" if isinstance(key, ed25519.Ed25519PublicKey) else "tls"


def sign_csr(ca_dir: Path, csr_path: Path, out_path: Path | None = None, *,
             days: int | None = None, again: bool = False) -> Path:
    """Admin side: issue a certificate for a CSR; write it to ``<csr stem>.crt`` (or ``out_path``).

    Checks the CSR's self-signature (proof the requester holds the key), that
    name/role/department are valid and that host SANs are only requested for
    the coordinator. Only CN, OU, the department URI and host SANs are copied
    from the CSR; every other extension (CA flag, key usage, EKU) is set by the
    CA from the role and key type, so a CSR cannot ask for more.

    Re-signing: a key the issuance record already certified is refused
    (ConfigError naming the earlier serial) unless ``again=True``; a key whose
    certificate was revoked is refused always (it must be replaced). The CA
    certificate is written as ``ca.crt`` next to the new certificate (unless
    the same file is already there; a different one is refused), so the site
    gets it back with its certificates and ``finish`` needs no manual copy.
    """
    csr_path = Path(csr_path)
    csr = _load_csr(csr_path)
    ident, hosts = describe_csr(csr_path)
    ca_cert, ca_key = _load_ca(ca_dir)
    fp = key_fingerprint(csr.public_key())
    earlier = [c for c in issuance_record(ca_dir) if c.key_sha256 == fp]
    for c in earlier:
        if c.revoked_at is not None:
            raise ConfigError(
                f"this key's certificate (serial {c.serial:x}) was revoked on "
                f"{c.revoked_at.date()}: the site must generate new keys (fedgov provision csr)",
                where=f"{csr_path}: {ident.name}")
    if earlier and not again:
        c = earlier[-1]
        raise ConfigError(
            f"this key was already certified for {c.role} '{c.name}' (serial {c.serial:x}, "
            f"issued {c.issued_at.date()}, valid until {c.not_after.date()}); "
            "pass --again to issue another certificate for it, or renew that one",
            where=f"{csr_path}: {ident.name}")
    out = Path(out_path) if out_path is not None else csr_path.with_suffix(".crt")
    ca_copy = out.with_name("ca.crt")
    ca_pem = _cert_pem(ca_cert)
    if ca_copy.exists() and ca_copy.read_bytes() != ca_pem:
        raise ConfigError("a different ca.crt is already here; refusing to overwrite it",
                          where=str(ca_copy))
    try:
        host_sans = _parse_hosts(hosts, ident.role, ident.name)
        days = default_days(ident.role) if days is None else days
        if days < 1:
            raise ConfigError("days must be >= 1", where=ident.name)
        cert = issue_leaf(
            ca_dir, ca_cert, ca_key, csr.public_key(), ident.name, ident.role, host_sans,
            ident.department, days, None, source="csr",
            csr_sha256=hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest())
    except ConfigError as exc:
        raise ConfigError(exc.message, where=f"{csr_path}: {ident.name}") from None
    _write_public(out, _cert_pem(cert))
    if not ca_copy.exists():
        _write_public(ca_copy, ca_pem)
    return out


def renew_certificate(ca_dir: Path, cert_path: Path, out_path: Path | None = None, *,
                      days: int | None = None) -> Path:
    """Re-certify the key of an existing certificate of this CA with a fresh validity period.

    The old certificate may have expired, but must have been issued by this
    CA and must not be revoked (a revoked key is never re-certified). Name,
    role, department and hosts are copied; the new certificate replaces
    ``cert_path`` (or goes to ``out_path``) and is recorded with source
    ``renew``. The key does not change: to replace keys, issue new ones and
    revoke the old certificates (rotation).
    """
    cert_path = Path(cert_path)
    old = load_certificate(cert_path)
    ca_cert, ca_key = _load_ca(ca_dir)
    try:
        old.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise UntrustedCertificate("not issued by this CA; cannot renew it",
                                   where=str(cert_path)) from None
    ident = identity_from_cert(old)
    for c in issuance_record(ca_dir):
        if c.serial == old.serial_number and c.revoked_at is not None:
            raise RevokedCertificate(f"serial {c.serial:x} was revoked; issue new keys instead",
                                     where=str(cert_path))
    days = default_days(ident.role) if days is None else days
    if days < 1:
        raise ConfigError("days must be >= 1", where=ident.name)
    cert = issue_leaf(ca_dir, ca_cert, ca_key, old.public_key(), ident.name, ident.role,
                      _parse_hosts(cert_hosts(old), ident.role, ident.name), ident.department,
                      days, None, source="renew")
    out = Path(out_path) if out_path is not None else cert_path
    _write_public(out, _cert_pem(cert))
    return out


def ekus(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    """The certificate's extended key usages (empty if it has none)."""
    return _ekus(cert)


def _ekus(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return []


def public_der(key: object) -> bytes:
    """SubjectPublicKeyInfo DER of a public key, or of a private key's public half."""
    return _public_der(key)


# --------------------------------------------------------------------------- verification


def verify_certificate(cert: x509.Certificate, ca_cert: x509.Certificate, *,
                       now: datetime | None = None,
                       revocations: RevocationCheck | None = None) -> Identity:
    """Verify a leaf against the federation CA and return its identity.

    Guarantees on return: ``cert`` was signed by ``ca_cert``'s key with a
    matching issuer name, it is not a CA, both it and the CA are valid at
    ``now`` (default: current UTC time), it carries a well-formed identity and,
    when ``revocations`` is given (a verified CRL of this CA, see
    :mod:`fedgov.crypto.revocation`), it is not revoked. Does not check key
    usage; callers that need a specific purpose check the EKU.
    Raises UntrustedCertificate / MalformedCertificate / ExpiredCertificate /
    RevokedCertificate.
    """
    now = now if now is not None else datetime.now(_dt.UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=_dt.UTC)
    subj = cert.subject.rfc4514_string()
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise UntrustedCertificate(
            f"certificate {subj!r} is not issued by this federation's CA") from None
    if not _is_ca(ca_cert):
        raise UntrustedCertificate("the trust anchor is not a CA certificate")
    if _is_ca(cert):
        raise UntrustedCertificate(f"certificate {subj!r} is a CA, not a leaf")
    ident = identity_from_cert(cert)
    for what, c in (("federation CA", ca_cert), (f"certificate of {ident.name}", cert)):
        if now < c.not_valid_before_utc:
            raise ExpiredCertificate(
                f"{what} is not valid until {c.not_valid_before_utc.isoformat()}")
        if now > c.not_valid_after_utc:
            raise ExpiredCertificate(f"{what} expired on {c.not_valid_after_utc.isoformat()}")
    if revocations is not None:
        revocations.check(cert)
    return ident
