"""Federation PKI: CA, startup kits, CSR path, certificate verification."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedgov.crypto import kits, pki
from fedgov.crypto.keys import NodeKeys, verify_bundle
from fedgov.errors import ConfigError, CryptoError


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fed")
    pki.create_ca(root / "ca")
    kits.issue_kit(root / "ca", root / "coord", "coordinator", "coordinator",
                  hosts=["localhost", "127.0.0.1", "coord.example.gov"])
    kits.issue_kit(root / "ca", root / "tax", "tax", "node")
    kits.issue_kit(root / "ca", root / "alice", "alice", "approver", department="tax")
    pki.create_ca(root / "other_ca")  # same default federation name, different key
    return root


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def _cert(p: Path) -> x509.Certificate:
    return pki.load_certificate(p)


def test_kit_files_and_private_modes(fed: Path) -> None:
    assert _mode(fed / "ca" / "ca.key") == 0o600
    node_files = {"ca.crt", "tls.crt", "tls.key", "signing.crt", "signing.key",
                  "sealing.key", "sealing.bundle"}
    assert set(os.listdir(fed / "tax")) == node_files
    assert set(os.listdir(fed / "coord")) == {"ca.crt", "tls.crt", "tls.key"}
    for kit, name in ((fed / "tax", "tls.key"), (fed / "tax", "signing.key"),
                      (fed / "tax", "sealing.key"), (fed / "coord", "tls.key")):
        assert _mode(kit / name) == 0o600, name
    assert (fed / "tax" / "ca.crt").read_bytes() == (fed / "ca" / "ca.crt").read_bytes()
    keys = NodeKeys.load(fed / "tax")
    assert keys.name == "tax"


def test_create_ca_refuses_overwrite(fed: Path) -> None:
    before = (fed / "ca" / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        pki.create_ca(fed / "ca")
    assert (fed / "ca" / "ca.key").read_bytes() == before


def test_issue_kit_refuses_to_overwrite_keys(fed: Path) -> None:
    before = (fed / "tax" / "tls.key").read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        kits.issue_kit(fed / "ca", fed / "tax", "tax", "node")
    assert (fed / "tax" / "tls.key").read_bytes() == before


def test_write_private_key_is_0600_despite_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        pki.write_private_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "k.pem") == 0o600
    with pytest.raises(ConfigError):
        pki.write_private_key(tmp_path / "k.pem", ed25519.Ed25519PrivateKey.generate())


def test_verify_accepts_own_certificates(fed: Path) -> None:
    ca = pki.load_ca_cert(fed / "ca" / "ca.crt")
    assert pki.verify_certificate(_cert(fed / "tax" / "tls.crt"), ca) == pki.Identity(
        "tax", "node", None)
    assert pki.verify_certificate(_cert(fed / "tax" / "signing.crt"), ca).name == "tax"
    coord = _cert(fed / "coord" / "tls.crt")
    assert pki.verify_certificate(coord, ca) == pki.Identity("coordinator", "coordinator")
    eku = coord.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    san = coord.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "coord.example.gov"}
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # a node's TLS cert is a client cert only
    node_eku = _cert(fed / "tax" / "tls.crt").extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH not in node_eku
    # the signing cert is not usable for TLS
    sig_eku = _cert(fed / "tax" / "signing.crt").extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    assert list(sig_eku) == [pki.ENVELOPE_SIGNING_EKU]


def test_verify_rejects_other_ca(fed: Path) -> None:
    ca = pki.load_ca_cert(fed / "ca" / "ca.crt")
    other = pki.load_ca_cert(fed / "other_ca" / "ca.crt")
    assert other.subject == ca.subject  # same name: only the signature tells them apart
    foreign = pki.issue_certificate(fed / "other_ca",
                                    ec.generate_private_key(ec.SECP256R1()).public_key(),
                                    "tax", "node")
    with pytest.raises(pki.UntrustedCertificate, match="not issued by"):
        pki.verify_certificate(foreign, ca)
    # and our own cert against the other CA
    with pytest.raises(pki.UntrustedCertificate):
        pki.verify_certificate(_cert(fed / "tax" / "tls.crt"), other)


def test_verify_rejects_ca_as_leaf(fed: Path) -> None:
    ca = pki.load_ca_cert(fed / "ca" / "ca.crt")
    with pytest.raises(pki.UntrustedCertificate):
        pki.verify_certificate(ca, ca)


def test_verify_rejects_expired_and_not_yet_valid(fed: Path) -> None:
    ca = pki.load_ca_cert(fed / "ca" / "ca.crt")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    expired = pki.issue_certificate(fed / "ca",
                                    ec.generate_private_key(ec.SECP256R1()).public_key(),
                                    "tax", "node", days=1, not_before=past)
    with pytest.raises(pki.ExpiredCertificate, match="expired"):
        pki.verify_certificate(expired, ca)
    # control: the same construction with a window covering now verifies
    recent = pki.issue_certificate(fed / "ca",
                                   ec.generate_private_key(ec.SECP256R1()).public_key(),
                                   "tax", "node", days=1,
                                   not_before=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    assert pki.verify_certificate(recent, ca).name == "tax"
    good = _cert(fed / "tax" / "tls.crt")
    with pytest.raises(pki.ExpiredCertificate, match="not valid until"):
        pki.verify_certificate(good, ca, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    assert issubclass(pki.ExpiredCertificate, CryptoError)


def test_identity_role_and_department_round_trip(fed: Path) -> None:
    ca = pki.load_ca_cert(fed / "ca" / "ca.crt")
    alice = _cert(fed / "alice" / "tls.crt")
    assert pki.identity_from_cert(alice) == pki.Identity("alice", "approver", "tax")
    assert pki.verify_certificate(alice, ca) == pki.Identity("alice", "approver", "tax")
    san = alice.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:fedgov:dept:tax"]
    assert alice.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value \
        == "approver"
    for role in pki.ROLES:
        if role in ("node", "approver", "coordinator"):
            continue
        pub = ec.generate_private_key(ec.SECP256R1()).public_key()
        c = pki.issue_certificate(fed / "ca", pub, f"p-{role}", role,
                                  department="tax" if role == "auditor" else None)
        ident = pki.verify_certificate(c, ca)
        assert (ident.role, ident.department) == (role, "tax" if role == "auditor" else None)


@pytest.mark.parametrize("name", ["", "Tax", "-tax", "tax dept", "../tax", "a" * 64, "tax\n",
                                  "t\u00e4x", ".hidden"])
def test_bad_names_refused(fed: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError):
        kits.issue_kit(fed / "ca", tmp_path / "kit", name, "node")
    with pytest.raises(ConfigError):
        kits.make_csr(tmp_path / "site", name, "node")
    assert not (tmp_path / "kit" / "tls.key").exists()


def test_bad_role_department_hosts_refused(fed: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="role"):
        kits.issue_kit(fed / "ca", tmp_path / "k1", "bob", "superuser")
    with pytest.raises(ConfigError, match="department"):
        kits.issue_kit(fed / "ca", tmp_path / "k2", "bob", "approver")
    with pytest.raises(ConfigError, match="department"):
        kits.issue_kit(fed / "ca", tmp_path / "k3", "bob", "approver", department="Bad Dept")
    with pytest.raises(ConfigError, match="hosts"):
        kits.issue_kit(fed / "ca", tmp_path / "k4", "tax2", "node", hosts=["localhost"])
    with pytest.raises(ConfigError, match="host"):
        kits.issue_kit(fed / "ca", tmp_path / "k5", "coordinator", "coordinator",
                      hosts=["bad host!"])


def _private_materials(site: Path) -> list[bytes]:
    out = []
    for name in ("tls.key", "signing.key"):
        key = pki.load_private_key(site / name)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            out.append(key.private_bytes_raw())
        else:
            out.append(key.private_numbers().private_value.to_bytes(32, "big"))
        out.append(key.private_bytes(serialization.Encoding.DER,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return out


def test_csr_path_keys_stay_at_site(fed: Path, tmp_path: Path) -> None:
    site, admin = tmp_path / "site", tmp_path / "admin"
    csrs = kits.make_csr(site, "hrss", "node", department="hrss")
    assert [p.name for p in csrs] == ["tls.csr", "signing.csr"]
    assert all(p.parent == site for p in csrs)
    for name in ("tls.key", "signing.key", "sealing.key"):
        assert _mode(site / name) == 0o600
    secrets = _private_materials(site)
    admin.mkdir()
    for p in csrs:
        raw = p.read_bytes()
        assert b"PRIVATE" not in raw
        der = x509.load_pem_x509_csr(raw).public_bytes(serialization.Encoding.DER)
        assert not any(s in der for s in secrets)
        shutil.copy(p, admin / p.name)  # only the CSRs travel

    ident, hosts = pki.describe_csr(admin / "tls.csr")
    assert ident == pki.Identity("hrss", "node", "hrss") and hosts == []
    tls_crt = pki.sign_csr(fed / "ca", admin / "tls.csr")
    sig_crt = pki.sign_csr(fed / "ca", admin / "signing.csr")
    assert (tls_crt, sig_crt) == (admin / "tls.crt", admin / "signing.crt")
    # sign returns the CA certificate with the certificates, so the site needs no manual copy
    assert sorted(os.listdir(admin)) == ["ca.crt", "signing.crt", "signing.csr", "tls.crt", "tls.csr"]
    assert (admin / "ca.crt").read_bytes() == (fed / "ca" / "ca.crt").read_bytes()
    # the issued cert certifies exactly the key the site generated
    for crt, key in ((tls_crt, "tls.key"), (sig_crt, "signing.key")):
        spki = _cert(crt).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        local = pki.load_private_key(site / key).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert spki == local

    # site finishes the kit with what came back (no file from anywhere else); the bundle is valid for peers
    assert not (site / "sealing.bundle").exists()
    for p in (tls_crt, sig_crt, admin / "ca.crt"):
        shutil.copy(p, site / p.name)
    kits.finish_kit(site)
    keys = NodeKeys.load(site)
    ca = pki.load_ca_cert(fed / "ca" / "ca.crt")
    peer = verify_bundle(keys.bundle(), ca, "hrss")
    assert peer.name == "hrss"


def test_finish_kit_rejects_cert_for_another_key(fed: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    kits.make_csr(a, "site-a", "analyst")
    kits.make_csr(b, "site-a", "analyst")
    crt = pki.sign_csr(fed / "ca", b / "tls.csr")
    shutil.copy(crt, a / "tls.crt")
    shutil.copy(fed / "ca" / "ca.crt", a / "ca.crt")
    with pytest.raises(CryptoError, match="does not match"):
        kits.finish_kit(a)
    # a cert from another CA is refused too
    (tmp_path / "x").mkdir()
    shutil.copy(pki.sign_csr(fed / "other_ca", a / "tls.csr", tmp_path / "x" / "tls.crt"), a / "tls.crt")
    with pytest.raises(pki.UntrustedCertificate):
        kits.finish_kit(a)
    (tmp_path / "y").mkdir()
    shutil.copy(pki.sign_csr(fed / "ca", a / "tls.csr", tmp_path / "y" / "tls.crt"), a / "tls.crt")
    kits.finish_kit(a)


def test_sign_csr_checks_self_signature(fed: Path, tmp_path: Path) -> None:
    kits.make_csr(tmp_path, "tax9", "analyst")
    pem = (tmp_path / "tls.csr").read_bytes()
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    i = der.find(b"tax9")
    der[i + 3] = ord("8")  # rename the requester without the key holder's signature
    forged = tmp_path / "forged.csr"
    forged.write_bytes(x509.load_der_x509_csr(bytes(der)).public_bytes(
        serialization.Encoding.PEM))
    with pytest.raises(CryptoError, match="self-signature"):
        pki.sign_csr(fed / "ca", forged)
    assert not (tmp_path / "forged.crt").exists()


def _raw_csr(path: Path, name: str, role: str, *, extensions: list[x509.ExtensionType]) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        x509.NameAttribute(NameOID.COMMON_NAME, name)]))
    for ext in extensions:
        b = b.add_extension(ext, critical=False)
    path.write_bytes(b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


def test_sign_csr_ignores_requested_powers(fed: Path, tmp_path: Path) -> None:
    ca = pki.load_ca_cert(fed / "ca" / "ca.crt")
    csr = _raw_csr(tmp_path / "greedy.csr", "greedy", "analyst", extensions=[
        x509.BasicConstraints(ca=True, path_length=None),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])])
    cert = _cert(pki.sign_csr(fed / "ca", csr))
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert pki.verify_certificate(cert, ca).role == "analyst"
    # host SANs are refused for anyone but the coordinator
    hosty = _raw_csr(tmp_path / "hosty.csr", "tax", "node", extensions=[
        x509.SubjectAlternativeName([x509.DNSName("coordinator.example.gov")])])
    with pytest.raises(ConfigError, match="hosts"):
        pki.sign_csr(fed / "ca", hosty)
    bad_role = _raw_csr(tmp_path / "role.csr", "tax", "root", extensions=[])
    with pytest.raises(ConfigError, match="role"):
        pki.sign_csr(fed / "ca", bad_role)


def test_coordinator_csr_gets_server_cert(fed: Path, tmp_path: Path) -> None:
    (csr,) = kits.make_csr(tmp_path, "coordinator", "coordinator", hosts=["10.0.0.5", "coord"])
    assert pki.describe_csr(csr)[1] == ["coord", "10.0.0.5"]
    cert = _cert(pki.sign_csr(fed / "ca", csr))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    kits.finish_kit(tmp_path)  # sign wrote ca.crt into the kit beside tls.crt
