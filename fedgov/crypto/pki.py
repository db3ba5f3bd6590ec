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

* central: :func:`issue_kit` generates keys and certificates in one place;
* distributed: the site runs :func:`make_csr` (private keys stay in the site
  directory), the admin runs :func:`sign_csr` on the CSR files only, and the
  site runs :func:`finish_kit` once the signed certificates are back.

Nothing here talks to the network; every function is deterministic apart from
key generation and serial numbers.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedgov.errors import ConfigError, CryptoError

__all__ = [
    "ROLES",
    "ENVELOPE_SIGNING_EKU",
    "Identity",
    "CertificateError",
    "UntrustedCertificate",
    "MalformedCertificate",
    "ExpiredCertificate",
    "create_ca",
    "issue_kit",
    "issue_certificate",
    "make_csr",
    "describe_csr",
    "sign_csr",
    "finish_kit",
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


def _write_public(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
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


def create_ca(ca_dir: Path, federation: str = "fedgov federation", *, days: int = 3650) -> None:
    """Create ``ca_dir/ca.crt`` and ``ca_dir/ca.key`` (0600) for a new federation.

    Refuses (ConfigError) if either file already exists, so an existing CA is
    never silently replaced. The CA is ECDSA P-256 with ``pathlen=0``: it can
    issue leaves only.
    """
    ca_dir = Path(ca_dir)
    if not federation or not federation.isprintable():
        raise ConfigError("federation name must be non-empty printable text")
    if (ca_dir / "ca.crt").exists() or (ca_dir / "ca.key").exists():
        raise ConfigError("a CA already exists here; refusing to overwrite it", where=str(ca_dir))
    ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
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
    days: int = 825,
    not_before: datetime | None = None,
) -> x509.Certificate:
    """Issue a leaf certificate for ``public_key`` and return it (nothing is written).

    The key type decides the purpose: ECDSA P-256 → TLS certificate (EKU
    clientAuth, plus serverAuth for the coordinator); Ed25519 → envelope-signing
    certificate (role ``node`` only, EKU :data:`ENVELOPE_SIGNING_EKU`).
    Validity starts at ``not_before`` (default: now minus 5 minutes of skew
    allowance) and never extends past the CA's own expiry. ``not_before`` exists
    for tests and for re-issuing with a fixed start.
    """
    _validate_identity(name, role, department)
    if days < 1:
        raise ConfigError("days must be >= 1", where=name)
    ca_cert, ca_key = _load_ca(ca_dir)
    return _build_leaf(ca_cert, ca_key, public_key, name, role,
                       _parse_hosts(hosts, role, name), department, days, not_before)


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


def issue_kit(
    ca_dir: Path,
    out_dir: Path,
    name: str,
    role: str,
    *,
    hosts: Sequence[str] = (),
    department: str | None = None,
    days: int = 825,
) -> Path:
    """Central provisioning: generate keys and certificates into a startup kit.

    Writes ``ca.crt``, ``tls.crt``, ``tls.key`` and, for role ``node``, also
    ``signing.crt``, ``signing.key``, ``sealing.key`` and ``sealing.bundle``.
    Private key files are 0600 and never overwritten (ConfigError). The kit
    directory is created 0700. Whoever runs this sees every private key: use
    :func:`make_csr` when the site should be the only holder.
    """
    from fedgov.crypto import keys as _keys  # local import: keys imports pki

    _validate_identity(name, role, department)
    host_sans = _parse_hosts(hosts, role, name)
    ca_cert, ca_key = _load_ca(ca_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for fname in _kit_private_files(role):
        if (out_dir / fname).exists():
            raise ConfigError("kit already contains private keys; refusing to overwrite",
                              where=str(out_dir / fname))

    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls_cert = _build_leaf(ca_cert, ca_key, tls_key.public_key(), name, role, host_sans,
                           department, days, None)
    write_private_key(out_dir / "tls.key", tls_key)
    _write_public(out_dir / "tls.crt", _cert_pem(tls_cert))
    _write_public(out_dir / "ca.crt", _cert_pem(ca_cert))
    if role == "node":
        sig_key = ed25519.Ed25519PrivateKey.generate()
        sig_cert = _build_leaf(ca_cert, ca_key, sig_key.public_key(), name, role, [],
                               department, days, None)
        write_private_key(out_dir / "signing.key", sig_key)
        _write_public(out_dir / "signing.crt", _cert_pem(sig_cert))
        _keys.generate_sealing_key(out_dir / "sealing.key")
        _keys.write_bundle(out_dir)
    return out_dir


def _kit_private_files(role: str) -> tuple[str, ...]:
    return ("tls.key", "signing.key", "sealing.key") if role == "node" else ("tls.key",)


# --------------------------------------------------------------------------- CSR path


def make_csr(
    out_dir: Path,
    name: str,
    role: str,
    *,
    hosts: Sequence[str] = (),
    department: str | None = None,
) -> list[Path]:
    """Site side of distributed provisioning: create private keys locally and CSRs.

    Writes ``tls.key`` + ``tls.csr`` and, for nodes, ``signing.key`` +
    ``signing.csr`` + ``sealing.key`` into ``out_dir`` (keys 0600, never
    overwritten). Returns the CSR paths, which are the only files to send to
    the admin; they contain public keys, the requested identity and a
    self-signature, nothing secret.
    """
    from fedgov.crypto import keys as _keys

    _validate_identity(name, role, department)
    host_sans = _parse_hosts(hosts, role, name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for fname in _kit_private_files(role):
        if (out_dir / fname).exists():
            raise ConfigError("private key already exists; refusing to overwrite",
                              where=str(out_dir / fname))
    dept_san = ([x509.UniformResourceIdentifier(DEPT_URI_PREFIX + department)]
                if department is not None else [])

    def _csr(key: CertPrivateKey, sans: list[x509.GeneralName]) -> bytes:
        b = x509.CertificateSigningRequestBuilder().subject_name(_subject(name, role))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        return b.sign(key, algo).public_bytes(serialization.Encoding.PEM)

    paths: list[Path] = []
    tls_key = ec.generate_private_key(ec.SECP256R1())
    write_private_key(out_dir / "tls.key", tls_key)
    _write_public(out_dir / "tls.csr", _csr(tls_key, host_sans + dept_san))
    paths.append(out_dir / "tls.csr")
    if role == "node":
        sig_key = ed25519.Ed25519PrivateKey.generate()
        write_private_key(out_dir / "signing.key", sig_key)
        _write_public(out_dir / "signing.csr", _csr(sig_key, dept_san))
        paths.append(out_dir / "signing.csr")
        _keys.generate_sealing_key(out_dir / "sealing.key")
    return paths


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


def sign_csr(ca_dir: Path, csr_path: Path, out_path: Path | None = None, *,
             days: int = 825) -> Path:
    """Admin side: issue a certificate for a CSR; write it to ``<csr stem>.crt`` (or ``out_path``).

    Checks the CSR's self-signature (proof the requester holds the key), that
    name/role/department are valid and that host SANs are only requested for
    the coordinator. Only CN, OU, the department URI and host SANs are copied
    from the CSR; every other extension (CA flag, key usage, EKU) is set by the
    CA from the role and key type, so a CSR cannot ask for more.
    """
    csr_path = Path(csr_path)
    csr = _load_csr(csr_path)
    ident, hosts = describe_csr(csr_path)
    ca_cert, ca_key = _load_ca(ca_dir)
    try:
        host_sans = _parse_hosts(hosts, ident.role, ident.name)
        cert = _build_leaf(ca_cert, ca_key, csr.public_key(), ident.name, ident.role,
                           host_sans, ident.department, days, None)
    except ConfigError as exc:
        raise ConfigError(exc.message, where=f"{csr_path}: {ident.name}") from None
    out = Path(out_path) if out_path is not None else csr_path.with_suffix(".crt")
    _write_public(out, _cert_pem(cert))
    return out


def finish_kit(kit_dir: Path) -> None:
    """Site side, after the signed certificates and ``ca.crt`` are copied into ``kit_dir``.

    Checks ``tls.crt`` (and for nodes ``signing.crt``) chain to ``ca.crt``,
    are currently valid, match the local private keys and name the same
    identity; for nodes then writes ``sealing.bundle``. Raises ConfigError or
    CertificateError naming the offending file.
    """
    from fedgov.crypto import keys as _keys

    kit_dir = Path(kit_dir)
    ca_cert = load_ca_cert(kit_dir / "ca.crt")
    tls_ident = _check_pair(kit_dir, "tls", ca_cert)
    if tls_ident.role == "node":
        sig_ident = _check_pair(kit_dir, "signing", ca_cert)
        if sig_ident != tls_ident:
            raise CertificateError(f"signing.crt names {sig_ident}, tls.crt names {tls_ident}",
                                   where=str(kit_dir))
        if (kit_dir / "sealing.bundle").exists():
            (kit_dir / "sealing.bundle").unlink()
        _keys.write_bundle(kit_dir)


def _check_pair(kit_dir: Path, stem: str, ca_cert: x509.Certificate) -> Identity:
    cert = load_certificate(kit_dir / f"{stem}.crt")
    key = load_private_key(kit_dir / f"{stem}.key")
    if _public_der(cert.public_key()) != _public_der(key):
        raise CertificateError(f"{stem}.crt does not match the local {stem}.key",
                               where=str(kit_dir))
    ident = verify_certificate(cert, ca_cert)
    want = ENVELOPE_SIGNING_EKU if stem == "signing" else ExtendedKeyUsageOID.CLIENT_AUTH
    if want not in _ekus(cert):
        raise CertificateError(f"{stem}.crt lacks the expected extended key usage",
                               where=str(kit_dir))
    return ident


def _ekus(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return []


# --------------------------------------------------------------------------- verification


def verify_certificate(cert: x509.Certificate, ca_cert: x509.Certificate, *,
                       now: datetime | None = None) -> Identity:
    """Verify a leaf against the federation CA and return its identity.

    Guarantees on return: ``cert`` was signed by ``ca_cert``'s key with a
    matching issuer name, it is not a CA, both it and the CA are valid at
    ``now`` (default: current UTC time) and it carries a well-formed identity.
    Does not check revocation (there is no CRL; rotate the CA to revoke) or
    key usage; callers that need a specific purpose check the EKU.
    Raises UntrustedCertificate / MalformedCertificate / ExpiredCertificate.
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
    return ident
