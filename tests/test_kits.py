"""Startup kits: the self-check a process runs before it dials, file modes, the CA's issuance
record, re-signing, renewal, default lifetimes, and the crypto layers' import order."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fedgov.crypto import kits, pki, revocation
from fedgov.crypto.keys import NodeKeys
from fedgov.crypto.revocation import Revocations
from fedgov.errors import ConfigError

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    pki.create_ca(tmp_path / "ca")
    return tmp_path / "ca"


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_a_good_kit_passes_and_warns_30_days_before_expiry(ca: Path, tmp_path: Path) -> None:
    kits.issue_kit(ca, tmp_path / "tax", "tax", "node")
    status = kits.check_kit(tmp_path / "tax", name="tax", role="node")
    assert status.identity == pki.Identity("tax", "node") and status.warnings == ()
    kits.issue_kit(ca, tmp_path / "soon", "soon", "node", days=20)
    warned = kits.check_kit(tmp_path / "soon").warnings
    assert len(warned) == 2  # tls and signing certificates
    assert all("expires in 19 day(s)" in w and "fedgov provision renew" in w for w in warned)
    # 31 days left: no warning yet
    kits.issue_kit(ca, tmp_path / "later", "later", "analyst", days=32)
    assert kits.check_kit(tmp_path / "later").warnings == ()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("expired", "tls.crt: certificate expired on"),
        ("not-yet-valid", "tls.crt: certificate not yet valid until"),
        ("key-mismatch", "tls.crt does not match tls.key (key mismatch)"),
        ("foreign-ca", "not issued by the kit's CA in ca.crt (foreign CA?)"),
        ("revoked", "tls.crt: certificate revoked"),
        ("wrong-name", "kit certificate is for 'tax', expected 'civ'"),
    ],
)
def test_a_kit_that_cannot_work_is_named_with_its_reason(ca: Path, tmp_path: Path, make: str, message: str) -> None:
    kit = tmp_path / "tax"
    held = Revocations(pki.load_ca_cert(ca / "ca.crt"))
    expect_name = "tax"
    if make == "expired":
        kits.issue_kit(ca, kit, "tax", "node", days=1, not_before=NOW - dt.timedelta(days=3))
    elif make == "not-yet-valid":
        kits.issue_kit(ca, kit, "tax", "node", not_before=NOW + dt.timedelta(days=2))
    else:
        kits.issue_kit(ca, kit, "tax", "node")
    if make == "key-mismatch":
        kits.issue_kit(ca, tmp_path / "other", "tax", "node")
        shutil.copy(tmp_path / "other" / "tls.crt", kit / "tls.crt")
    elif make == "foreign-ca":
        pki.create_ca(tmp_path / "evil")
        kits.issue_kit(tmp_path / "evil", tmp_path / "evil-tax", "tax", "node")
        for f in ("tls.crt", "tls.key"):
            (kit / f).unlink()
            shutil.copy(tmp_path / "evil-tax" / f, kit / f)
    elif make == "revoked":
        _, crl = revocation.revoke(ca, name="tax")
        held.update(crl.read_bytes())
    elif make == "wrong-name":
        expect_name = "civ"
    with pytest.raises(kits.KitError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        kits.check_kit(kit, name=expect_name, role="node", revocations=held)


def test_kit_folders_are_0700_even_when_they_existed_wider(ca: Path, tmp_path: Path) -> None:
    for d in ("kit", "csr"):
        (tmp_path / d).mkdir(mode=0o755)
        os.chmod(tmp_path / d, 0o755)
    kits.issue_kit(ca, tmp_path / "kit", "tax", "node")
    kits.make_csr(tmp_path / "csr", "civ", "node")
    assert _mode(tmp_path / "kit") == 0o700 and _mode(tmp_path / "csr") == 0o700
    assert _mode(ca) == 0o700
    for f in ("tls.key", "signing.key", "sealing.key"):
        assert _mode(tmp_path / "kit" / f) == 0o600 and _mode(tmp_path / "csr" / f) == 0o600
    # a symlink where the kit folder belongs is refused, not followed
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(ConfigError, match="symlink"):
        kits.issue_kit(ca, tmp_path / "link", "hrss", "node")
    assert not (tmp_path / "elsewhere").exists()


def test_issuance_record_is_never_written_through_a_symlink(ca: Path, tmp_path: Path) -> None:
    """The record is appended to (not created exclusively), so O_NOFOLLOW is what stops a planted link."""
    target = tmp_path / "victim.txt"
    target.write_text("untouched\n")
    os.symlink(target, ca / "issuance.jsonl")
    with pytest.raises(ConfigError, match="a symlink"):
        kits.issue_kit(ca, tmp_path / "tax", "tax", "node")
    assert target.read_text() == "untouched\n"


def test_private_key_files_are_never_written_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "victim.txt"
    target.write_text("untouched\n")
    (tmp_path / "kit").mkdir()
    os.symlink(target, tmp_path / "kit" / "tls.key")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        kits.make_csr(tmp_path / "kit", "tax", "analyst")
    assert target.read_text() == "untouched\n"


def test_issuance_record_says_what_was_issued_to_whom_until_when(ca: Path, tmp_path: Path) -> None:
    kits.issue_kit(ca, tmp_path / "tax", "tax", "node")
    kits.issue_kit(ca, tmp_path / "li", "li", "analyst")
    kits.issue_kit(ca, tmp_path / "coord", "coordinator", "coordinator", hosts=["coord.example.gov"])
    rows = pki.issuance_record(ca)
    assert [(r.name, r.role, r.purpose) for r in rows] == [
        ("tax", "node", "tls"), ("tax", "node", "signing"), ("li", "analyst", "tls"),
        ("coordinator", "coordinator", "tls")]
    tls = pki.load_certificate(tmp_path / "tax" / "tls.crt")
    assert rows[0].serial == tls.serial_number and rows[0].not_after == tls.not_valid_after_utc
    assert rows[0].key_sha256 == pki.key_fingerprint(tls.public_key())
    assert rows[3].hosts == ("coord.example.gov",)
    assert _mode(ca / "issuance.jsonl") == 0o600


def test_default_lifetimes_are_short(ca: Path, tmp_path: Path) -> None:
    ca_cert = pki.load_ca_cert(ca / "ca.crt")
    assert (ca_cert.not_valid_after_utc - ca_cert.not_valid_before_utc).days == pki.CA_DAYS == 1826
    for name, role, days in (("tax", "node", 365), ("coordinator", "coordinator", 365), ("li", "analyst", 90),
                             ("ann", "approver", 90)):
        kits.issue_kit(ca, tmp_path / name, name, role, department="tax" if role == "approver" else None)
        cert = pki.load_certificate(tmp_path / name / "tls.crt")
        assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == days, name


def test_resigning_a_csr_is_refused_unless_explicit(ca: Path, tmp_path: Path) -> None:
    kits.make_csr(tmp_path / "site", "li", "analyst")
    first = pki.load_certificate(pki.sign_csr(ca, tmp_path / "site" / "tls.csr"))
    with pytest.raises(ConfigError, match="already certified .* pass --again"):
        pki.sign_csr(ca, tmp_path / "site" / "tls.csr")
    assert pki.load_certificate(tmp_path / "site" / "tls.crt").serial_number == first.serial_number
    second = pki.load_certificate(pki.sign_csr(ca, tmp_path / "site" / "tls.csr", again=True))
    assert second.serial_number != first.serial_number
    assert [r.source for r in pki.issuance_record(ca)] == ["csr", "csr"]


def test_renewal_keeps_the_key_and_extends_the_window(ca: Path, tmp_path: Path) -> None:
    kits.issue_kit(ca, tmp_path / "tax", "tax", "node", days=10)
    old = pki.load_certificate(tmp_path / "tax" / "tls.crt")
    old_bundle = NodeKeys.load(tmp_path / "tax").public().bundle_serial
    for f in ("tls.crt", "signing.crt"):
        pki.renew_certificate(ca, tmp_path / "tax" / f)
    kits.finish_kit(tmp_path / "tax")
    new = pki.load_certificate(tmp_path / "tax" / "tls.crt")
    assert pki.key_fingerprint(new.public_key()) == pki.key_fingerprint(old.public_key())
    assert new.not_valid_after_utc - old.not_valid_after_utc > dt.timedelta(days=300)
    assert kits.check_kit(tmp_path / "tax").warnings == ()
    assert NodeKeys.load(tmp_path / "tax").public().bundle_serial > old_bundle
    assert pki.issuance_record(ca)[-1].source == "renew"
    # a certificate of another CA is not renewed here
    pki.create_ca(tmp_path / "evil")
    kits.issue_kit(tmp_path / "evil", tmp_path / "evil-tax", "tax", "node")
    with pytest.raises(pki.UntrustedCertificate, match="not issued by this CA"):
        pki.renew_certificate(ca, tmp_path / "evil-tax" / "tls.crt")


def test_certificate_layer_does_not_import_the_key_layer() -> None:
    """pki <- keys <- kits: no cycle (pki imported alone loads neither keys nor kits)."""
    code = ("import sys, fedgov.crypto.pki; import fedgov.crypto.revocation; "
            "print(sorted(m for m in sys.modules if m in ('fedgov.crypto.keys', 'fedgov.crypto.kits')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import sys, fedgov.crypto.keys; print('fedgov.crypto.kits' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
