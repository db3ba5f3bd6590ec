"""Signed statements by people: manifests (analysts) and approvals (approvers).

Each test changes one thing a verifier must notice and checks that it is refused.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from fedgov.crypto import kits, pki
from fedgov.crypto.signing import (
    BadSignature,
    sign_approval,
    sign_manifest,
    verify_approval,
    verify_manifest,
)

TEXT = '[job]\nkind = "cohort-count"\npurpose = "test-counting"\n\n[[participants]]\nnode = "a"\n'
DIGEST = "ab" * 32


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sig")
    pki.create_ca(root / "ca")
    pki.create_ca(root / "other")
    kits.issue_kit(root / "ca", root / "li", "li", "analyst")
    kits.issue_kit(root / "ca", root / "wang", "wang", "analyst")
    kits.issue_kit(root / "ca", root / "ann", "ann", "approver", department="tax")
    kits.issue_kit(root / "other", root / "li-foreign", "li", "analyst")
    kits.issue_kit(root / "ca", root / "li-old", "li", "analyst", days=1,
                   not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    return root


def _pem(fed: Path, who: str) -> bytes:
    return (fed / who / "tls.crt").read_bytes()


def _key(fed: Path, who: str) -> bytes:
    return (fed / who / "tls.key").read_bytes()


def test_manifest_signature_round_trip_and_every_forgery(fed: Path) -> None:
    ca = pki.load_ca_cert(fed / "ca" / "ca.crt")
    sig = sign_manifest(_key(fed, "li"), TEXT)
    assert verify_manifest(_pem(fed, "li"), ca, TEXT, sig).name == "li"
    # one byte of the manifest changed after signing
    with pytest.raises(BadSignature, match="signature by 'li' does not verify"):
        verify_manifest(_pem(fed, "li"), ca, TEXT.replace('"a"', '"b"'), sig)
    # someone else's signature presented with li's certificate
    with pytest.raises(BadSignature, match="does not verify"):
        verify_manifest(_pem(fed, "li"), ca, TEXT, sign_manifest(_key(fed, "wang"), TEXT))
    # a flipped bit in the signature
    bad = bytearray(sig)
    bad[-1] ^= 1
    with pytest.raises(BadSignature):
        verify_manifest(_pem(fed, "li"), ca, TEXT, bytes(bad))
    # same name, certificate from another CA
    foreign = sign_manifest(_key(fed, "li-foreign"), TEXT)
    with pytest.raises(pki.UntrustedCertificate, match="not issued by this federation's CA"):
        verify_manifest(_pem(fed, "li-foreign"), ca, TEXT, foreign)
    # an expired certificate
    old = sign_manifest(_key(fed, "li-old"), TEXT)
    with pytest.raises(pki.ExpiredCertificate, match="expired"):
        verify_manifest(_pem(fed, "li-old"), ca, TEXT, old)
    with pytest.raises(BadSignature, match="not valid PEM"):
        verify_manifest(b"nonsense", ca, TEXT, sig)


def test_approval_covers_exactly_job_manifest_decision_and_reason(fed: Path) -> None:
    ca = pki.load_ca_cert(fed / "ca" / "ca.crt")
    sig = sign_approval(_key(fed, "ann"), "job-1", DIGEST, True, "checked purpose")
    ident = verify_approval(_pem(fed, "ann"), ca, "job-1", DIGEST, True, "checked purpose", sig)
    assert (ident.name, ident.role, ident.department) == ("ann", "approver", "tax")
    for job, digest, approve, reason in (
        ("job-2", DIGEST, True, "checked purpose"),  # moved to another job
        ("job-1", "cd" * 32, True, "checked purpose"),  # another manifest
        ("job-1", DIGEST, False, "checked purpose"),  # decision flipped
        ("job-1", DIGEST, True, "checked"),  # reason edited
    ):
        with pytest.raises(BadSignature, match="approval: signature by 'ann' does not verify"):
            verify_approval(_pem(fed, "ann"), ca, job, digest, approve, reason, sig)


def test_signatures_are_domain_separated(fed: Path) -> None:
    """A manifest signature is never a valid approval, nor the reverse."""
    ca = pki.load_ca_cert(fed / "ca" / "ca.crt")
    approval_bytes = '{"approve":true,"job_id":"job-1","manifest_sha256":"' + DIGEST + '","reason":"ok"}'
    as_manifest = sign_manifest(_key(fed, "ann"), approval_bytes)
    with pytest.raises(BadSignature):
        verify_approval(_pem(fed, "ann"), ca, "job-1", DIGEST, True, "ok", as_manifest)
    approval = sign_approval(_key(fed, "li"), "job-1", DIGEST, True, "ok")
    with pytest.raises(BadSignature):
        verify_manifest(_pem(fed, "li"), ca, approval_bytes, approval)


def test_an_approval_can_cover_the_brief_the_approver_was_shown(fed: Path) -> None:
    """Signed over a brief digest, an approval verifies only against that brief (and the same manifest)."""
    ca = pki.load_ca_cert(fed / "ca" / "ca.crt")
    brief = "b" * 64
    sig = sign_approval(_key(fed, "ann"), "job-1", DIGEST, True, "", brief_digest=brief)
    assert verify_approval(_pem(fed, "ann"), ca, "job-1", DIGEST, True, "", sig, brief_digest=brief).name == "ann"
    for other in ("", "c" * 64):
        with pytest.raises(BadSignature):
            verify_approval(_pem(fed, "ann"), ca, "job-1", DIGEST, True, "", sig, brief_digest=other)
    plain = sign_approval(_key(fed, "ann"), "job-1", DIGEST, True, "")
    with pytest.raises(BadSignature):  # an approval without the brief does not pass for one with it
        verify_approval(_pem(fed, "ann"), ca, "job-1", DIGEST, True, "", plain, brief_digest=brief)
