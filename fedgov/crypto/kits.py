"""Startup kits: the files a principal runs with, how they are made, and the check at start.

A kit directory (mode 0700) holds ``ca.crt`` (the pinned trust anchor),
``tls.crt``/``tls.key`` and, for nodes, ``signing.crt``/``signing.key``,
``sealing.key`` and ``sealing.bundle`` (see :mod:`fedgov.crypto.keys`).
Private key files are 0600, created exclusively, never through a symlink.

Two ways to make one:

* central: :func:`issue_kit` generates keys and certificates in one place (the
  admin sees the private keys);
* distributed: the site runs :func:`make_csr` (keys never leave it), the admin
  runs :func:`fedgov.crypto.pki.sign_csr` on the CSRs (it writes ``ca.crt``
  next to the certificates it returns), the site copies the answer back and
  runs :func:`finish_kit`.

:func:`check_kit` is what a process runs on its own kit before it dials
anything: an expired or not-yet-valid certificate, a key that does not match
its certificate, a certificate from a foreign CA or a revoked one stops it
with that reason, and a certificate ending within 30 days yields a warning.

This module sits above :mod:`fedgov.crypto.pki` and :mod:`fedgov.crypto.keys`
(which never import it), so the certificate and key layers form no cycle.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedgov.crypto import keys as _keys
from fedgov.crypto import pki
from fedgov.errors import ConfigError

__all__ = ["KitError", "KitStatus", "issue_kit", "make_csr", "finish_kit", "check_kit"]


class KitError(pki.CertificateError):
    """A startup kit cannot be used: the message says which file and why."""


@dataclass(frozen=True)
class KitStatus:
    """What :func:`check_kit` found: the kit's identity and warnings (expiry within 30 days)."""

    identity: pki.Identity
    warnings: tuple[str, ...] = field(default=())
    not_after: datetime | None = None


def _kit_private_files(role: str) -> tuple[str, ...]:
    return ("tls.key", "signing.key", "sealing.key") if role == "node" else ("tls.key",)


def issue_kit(
    ca_dir: Path,
    out_dir: Path,
    name: str,
    role: str,
    *,
    hosts: Sequence[str] = (),
    department: str | None = None,
    days: int | None = None,
    not_before: datetime | None = None,
) -> Path:
    """Central provisioning: generate keys and certificates into a startup kit.

    Writes ``ca.crt``, ``tls.crt``, ``tls.key`` and, for role ``node``, also
    ``signing.crt``, ``signing.key``, ``sealing.key`` and ``sealing.bundle``.
    Private key files are 0600 and never overwritten (ConfigError). The kit
    directory is made 0700. Lifetime defaults to the role's
    (:func:`fedgov.crypto.pki.default_days`); ``not_before`` exists for tests
    (kits that are expired or not yet valid). Whoever runs this sees every
    private key: use :func:`make_csr` when the site should be the only holder.
    """
    pki._validate_identity(name, role, department)
    host_sans = pki._parse_hosts(hosts, role, name)
    days = pki.default_days(role) if days is None else days
    if days < 1:
        raise ConfigError("days must be >= 1", where=name)
    ca_cert, ca_key = pki.load_ca(ca_dir)
    out_dir = Path(out_dir)
    for fname in _kit_private_files(role):
        if (out_dir / fname).exists():
            raise ConfigError("kit already contains private keys; refusing to overwrite",
                              where=str(out_dir / fname))
    pki.private_dir(out_dir)

    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls_cert = pki.issue_leaf(ca_dir, ca_cert, ca_key, tls_key.public_key(), name, role,
                              host_sans, department, days, not_before, source="kit")
    pki.write_private_key(out_dir / "tls.key", tls_key)
    pki._write_public(out_dir / "tls.crt", pki._cert_pem(tls_cert))
    pki._write_public(out_dir / "ca.crt", pki._cert_pem(ca_cert))
    if role == "node":
        sig_key = ed25519.Ed25519PrivateKey.generate()
        sig_cert = pki.issue_leaf(ca_dir, ca_cert, ca_key, sig_key.public_key(), name, role, [],
                                  department, days, not_before, source="kit")
        pki.write_private_key(out_dir / "signing.key", sig_key)
        pki._write_public(out_dir / "signing.crt", pki._cert_pem(sig_cert))
        _keys.generate_sealing_key(out_dir / "sealing.key")
        _keys.write_bundle(out_dir)
    return out_dir


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
    ``signing.csr`` + ``sealing.key`` into ``out_dir`` (made 0700; keys 0600,
    never overwritten). Returns the CSR paths, which are the only files to send
    to the admin; they contain public keys, the requested identity and a
    self-signature, nothing secret.
    """
    pki._validate_identity(name, role, department)
    host_sans = pki._parse_hosts(hosts, role, name)
    out_dir = Path(out_dir)
    for fname in _kit_private_files(role):
        if (out_dir / fname).exists():
            raise ConfigError("private key already exists; refusing to overwrite",
                              where=str(out_dir / fname))
    pki.private_dir(out_dir)
    dept_san = ([x509.UniformResourceIdentifier(pki.DEPT_URI_PREFIX + department)]
                if department is not None else [])

    def _csr(key: pki.CertPrivateKey, sans: list[x509.GeneralName]) -> bytes:
        from cryptography.hazmat.primitives import hashes, serialization

        b = x509.CertificateSigningRequestBuilder().subject_name(pki._subject(name, role))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        return b.sign(key, algo).public_bytes(serialization.Encoding.PEM)

    paths: list[Path] = []
    tls_key = ec.generate_private_key(ec.SECP256R1())
    pki.write_private_key(out_dir / "tls.key", tls_key)
    pki._write_public(out_dir / "tls.csr", _csr(tls_key, host_sans + dept_san))
    paths.append(out_dir / "tls.csr")
    if role == "node":
        sig_key = ed25519.Ed25519PrivateKey.generate()
        pki.write_private_key(out_dir / "signing.key", sig_key)
        pki._write_public(out_dir / "signing.csr", _csr(sig_key, dept_san))
        paths.append(out_dir / "signing.csr")
        _keys.generate_sealing_key(out_dir / "sealing.key")
    return paths


def finish_kit(kit_dir: Path) -> pki.Identity:
    """Site side, once the signed certificates (and the ``ca.crt`` sign wrote beside them) are back.

    Checks ``tls.crt`` (and for nodes ``signing.crt``) chain to ``ca.crt``,
    are currently valid, match the local private keys and name the same
    identity; for nodes then writes ``sealing.bundle`` (with a serial higher
    than any earlier bundle of this kit). Returns the identity. Raises
    ConfigError or CertificateError naming the offending file.
    """
    kit_dir = Path(kit_dir)
    if not (kit_dir / "ca.crt").exists():
        raise ConfigError("ca.crt missing: copy back every file `fedgov provision sign` wrote "
                          "(tls.crt, signing.crt and ca.crt)", where=str(kit_dir))
    ca_cert = pki.load_ca_cert(kit_dir / "ca.crt")
    tls_ident = _check_pair(kit_dir, "tls", ca_cert)
    if tls_ident.role == "node":
        sig_ident = _check_pair(kit_dir, "signing", ca_cert)
        if sig_ident != tls_ident:
            raise pki.CertificateError(
                f"signing.crt names {sig_ident}, tls.crt names {tls_ident}", where=str(kit_dir))
        _keys.write_bundle(kit_dir)
    pki.private_dir(kit_dir)
    return tls_ident


def _check_pair(kit_dir: Path, stem: str, ca_cert: x509.Certificate) -> pki.Identity:
    cert = pki.load_certificate(kit_dir / f"{stem}.crt")
    key = pki.load_private_key(kit_dir / f"{stem}.key")
    if pki.public_der(cert.public_key()) != pki.public_der(key):
        raise pki.CertificateError(f"{stem}.crt does not match the local {stem}.key",
                                   where=str(kit_dir))
    ident = pki.verify_certificate(cert, ca_cert)
    want = pki.ENVELOPE_SIGNING_EKU if stem == "signing" else ExtendedKeyUsageOID.CLIENT_AUTH
    if want not in pki.ekus(cert):
        raise pki.CertificateError(f"{stem}.crt lacks the expected extended key usage",
                                   where=str(kit_dir))
    return ident


def check_kit(
    kit_dir: Path,
    *,
    name: str | None = None,
    role: str | None = None,
    revocations: pki.RevocationCheck | None = None,
    now: datetime | None = None,
) -> KitStatus:
    """Check a kit before using it; raise KitError with the reason, or return its status.

    Checks, for ``tls`` and (nodes) ``signing``: the certificate parses, was
    issued by the kit's ``ca.crt`` ("not issued by the kit's CA (foreign
    CA?)"), the CA and the certificate are inside their validity period
    ("certificate expired on …" / "certificate not yet valid until …"), the
    private key matches ("does not match"), it is not on ``revocations``
    ("certificate revoked"), and it names ``name`` / ``role`` when given. The
    returned warnings name every certificate that ends within 30 days.
    Guarantees nothing about the network: it reads local files only.
    """
    kit_dir = Path(kit_dir)
    now = now if now is not None else datetime.now(_dt.UTC)
    try:
        ca_cert = pki.load_ca_cert(kit_dir / "ca.crt")
    except ConfigError as exc:
        raise KitError(exc.message, where=exc.where) from None
    _check_window("ca.crt", ca_cert, now, kit_dir, "federation CA certificate")
    stems = ["tls"]
    try:
        first = pki.load_certificate(kit_dir / "tls.crt")
    except ConfigError as exc:
        raise KitError(exc.message, where=exc.where) from None
    ident = _identity(first, kit_dir / "tls.crt")
    if ident.role == "node":
        stems.append("signing")
    warnings: list[str] = []
    ends: list[datetime] = []
    for stem in stems:
        path = kit_dir / f"{stem}.crt"
        try:
            cert = pki.load_certificate(path)
            key = pki.load_private_key(kit_dir / f"{stem}.key")
        except ConfigError as exc:
            raise KitError(exc.message, where=exc.where) from None
        try:
            cert.verify_directly_issued_by(ca_cert)
        except Exception:  # noqa: BLE001 - any failure means: not this CA's certificate
            raise KitError(f"{stem}.crt is not issued by the kit's CA in ca.crt (foreign CA?)",
                           where=str(kit_dir)) from None
        _check_window(f"{stem}.crt", cert, now, kit_dir, "certificate")
        if pki.public_der(cert.public_key()) != pki.public_der(key):
            raise KitError(f"{stem}.crt does not match {stem}.key (key mismatch)",
                           where=str(kit_dir))
        this = _identity(cert, path)
        if this != ident:
            raise KitError(f"{stem}.crt names {this.name} ({this.role}), tls.crt names "
                           f"{ident.name} ({ident.role})", where=str(kit_dir))
        if revocations is not None:
            try:
                revocations.check(cert)
            except pki.RevokedCertificate as exc:
                raise KitError(f"{stem}.crt: certificate revoked ({exc.message})",
                               where=str(kit_dir)) from None
        warn = pki.expiry_warning(cert, now=now)
        if warn:
            warnings.append(warn)
        ends.append(cert.not_valid_after_utc)
    if name is not None and ident.name != name:
        raise KitError(f"kit certificate is for '{ident.name}', expected '{name}'",
                       where=str(kit_dir))
    if role is not None and ident.role != role:
        raise KitError(f"kit certificate has role '{ident.role}', expected '{role}'",
                       where=str(kit_dir))
    if ident.role == "node":
        try:
            _keys.NodeKeys.load(kit_dir)
        except Exception as exc:  # noqa: BLE001 - report the reason, whatever it is
            raise KitError(f"node keys unusable: {exc}", where=str(kit_dir)) from None
    return KitStatus(identity=ident, warnings=tuple(warnings), not_after=min(ends))


def _identity(cert: x509.Certificate, path: Path) -> pki.Identity:
    try:
        return pki.identity_from_cert(cert)
    except pki.MalformedCertificate as exc:
        raise KitError(exc.message, where=str(path)) from None


def _check_window(label: str, cert: x509.Certificate, now: datetime, kit_dir: Path,
                  what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise KitError(f"{label}: {what} not yet valid until "
                       f"{cert.not_valid_before_utc.isoformat()} (check this host's clock)",
                       where=str(kit_dir))
    if now > cert.not_valid_after_utc:
        raise KitError(f"{label}: {what} expired on {cert.not_valid_after_utc.isoformat()}; "
                       "renew it (fedgov provision renew)", where=str(kit_dir))
