"""Revocation lists: issued by the CA, trusted only when signed by it, never rolled back; and
everything that verifies a certificate (signers, approvers, bundles, peers) refuses a revoked one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedgov.crypto import kits, pki, revocation
from fedgov.crypto.keys import NodeKeys, verify_bundle
from fedgov.crypto.revocation import InvalidRevocationList, Revocations, load_crl
from fedgov.crypto.signing import sign_approval, sign_manifest, verify_approval, verify_manifest
from fedgov.errors import ConfigError
from fedgov.node.channel import PeerDirectory
from fedgov.node.store import NodeStore, SupersededBundle
from fedgov.v1 import registry_pb2


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    pki.create_ca(tmp_path / "ca")
    for name in ("tax", "civ"):
        kits.issue_kit(tmp_path / "ca", tmp_path / name, name, "node")
    kits.issue_kit(tmp_path / "ca", tmp_path / "li", "li", "analyst")
    kits.issue_kit(tmp_path / "ca", tmp_path / "ann", "ann", "approver", department="tax")
    pki.create_ca(tmp_path / "evil")
    return tmp_path


def _cert(p: Path) -> x509.Certificate:
    return pki.load_certificate(p)


def _ca(root: Path) -> x509.Certificate:
    return pki.load_ca_cert(root / "ca" / "ca.crt")


def test_revoke_by_name_lists_both_certificates_and_only_them(ca: Path) -> None:
    done, crl_path = revocation.revoke(ca / "ca", name="tax", reason="keyCompromise")
    assert {c.purpose for c in done} == {"tls", "signing"} and {c.name for c in done} == {"tax"}
    lst = load_crl(crl_path.read_bytes(), _ca(ca))
    assert lst.number == 1 and lst.next_update is not None
    for f in ("tls.crt", "signing.crt"):
        with pytest.raises(pki.RevokedCertificate, match=r"of 'tax' .* revoked since .*keyCompromise"):
            lst.check(_cert(ca / "tax" / f))
    lst.check(_cert(ca / "civ" / "tls.crt"))  # others untouched
    record = {c.serial: c for c in pki.issuance_record(ca / "ca")}
    assert record[_cert(ca / "tax" / "tls.crt").serial_number].revocation_reason == "keyCompromise"
    assert record[_cert(ca / "civ" / "tls.crt").serial_number].revoked_at is None
    # nothing live is left under that name; an unknown serial is named
    with pytest.raises(ConfigError, match="no live certificate"):
        revocation.revoke(ca / "ca", name="tax")
    with pytest.raises(ConfigError, match="not in this CA's issuance record"):
        revocation.revoke(ca / "ca", serials=(12345,))


def test_only_lists_signed_by_the_federation_ca_are_trusted(ca: Path) -> None:
    _, crl_path = revocation.revoke(ca / "ca", name="tax")
    der = load_crl(crl_path.read_bytes(), _ca(ca)).der
    # a list from another CA (same federation name, different key) is refused
    kits.issue_kit(ca / "evil", ca / "evil-tax", "tax", "node")
    _, evil_crl = revocation.revoke(ca / "evil", name="tax")
    with pytest.raises(InvalidRevocationList, match="signature does not verify"):
        load_crl(evil_crl.read_bytes(), _ca(ca))
    # any flipped byte in the signed part is refused
    tampered = bytearray(der)
    tampered[len(tampered) // 2] ^= 0x01
    with pytest.raises(InvalidRevocationList):
        load_crl(bytes(tampered), _ca(ca))
    with pytest.raises(InvalidRevocationList, match="not a CRL"):
        load_crl(b"garbage", _ca(ca))


def test_a_newer_list_replaces_an_older_one_never_the_reverse(ca: Path, tmp_path: Path) -> None:
    first = revocation.issue_crl(ca / "ca").read_bytes()  # number 1, nothing revoked
    _, second_path = revocation.revoke(ca / "ca", name="tax")  # number 2
    second = second_path.read_bytes()
    store = tmp_path / "state" / "crl.der"
    store.parent.mkdir()
    held = Revocations(_ca(ca), store=store)
    assert held.update(second) and held.number == 2
    assert held.update(first) is False and held.number == 2  # an older list is ignored
    with pytest.raises(pki.RevokedCertificate):
        held.check(_cert(ca / "tax" / "tls.crt"))
    # a restart starts from the stored list, not from nothing
    again = Revocations(_ca(ca), store=store)
    assert again.number == 2
    assert again.update(first) is False
    with pytest.raises(pki.RevokedCertificate):
        again.check(_cert(ca / "tax" / "tls.crt"))


def test_verifiers_refuse_revoked_signers_approvers_and_bundles(ca: Path) -> None:
    ca_cert = _ca(ca)
    text = '[job]\nkind = "cohort-count"\npurpose = "x-y"\n'
    li_pem, li_key = (ca / "li" / "tls.crt").read_bytes(), (ca / "li" / "tls.key").read_bytes()
    sig = sign_manifest(li_key, text)
    ann_pem, ann_key = (ca / "ann" / "tls.crt").read_bytes(), (ca / "ann" / "tls.key").read_bytes()
    asig = sign_approval(ann_key, "job-1", "ab" * 32, True, "ok")
    bundle = NodeKeys.load(ca / "tax").bundle()
    held = Revocations(ca_cert)
    # before revocation everything verifies
    assert verify_manifest(li_pem, ca_cert, text, sig, revocations=held).name == "li"
    assert verify_approval(ann_pem, ca_cert, "job-1", "ab" * 32, True, "ok", asig, revocations=held).name == "ann"
    assert verify_bundle(bundle, ca_cert, "tax", revocations=held).name == "tax"
    for name in ("li", "ann", "tax"):
        _, crl = revocation.revoke(ca / "ca", name=name)
    assert held.update(crl.read_bytes())
    with pytest.raises(pki.RevokedCertificate, match="'li'"):
        verify_manifest(li_pem, ca_cert, text, sig, revocations=held)
    with pytest.raises(pki.RevokedCertificate, match="'ann'"):
        verify_approval(ann_pem, ca_cert, "job-1", "ab" * 32, True, "ok", asig, revocations=held)
    with pytest.raises(pki.RevokedCertificate, match="'tax'"):
        verify_bundle(bundle, ca_cert, "tax", revocations=held)


def test_a_revoked_key_is_never_certified_again(ca: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    kits.make_csr(site, "hrss", "node")
    pki.sign_csr(ca / "ca", site / "tls.csr")
    revocation.revoke(ca / "ca", serials=(_cert(site / "tls.crt").serial_number,), reason="keyCompromise")
    with pytest.raises(ConfigError, match="was revoked"):
        pki.sign_csr(ca / "ca", site / "tls.csr", again=True)
    with pytest.raises(pki.RevokedCertificate):
        pki.renew_certificate(ca / "ca", site / "tls.crt")


class _Registry:
    """Stands in for the coordinator's registry: serves whatever bundle the test sets."""

    def __init__(self) -> None:
        self.bundles: dict[str, bytes] = {}

    def GetKeyBundle(self, request: registry_pb2.GetKeyBundleRequest, **_: object) -> registry_pb2.KeyBundle:  # noqa: N802
        return registry_pb2.KeyBundle(node=request.node, bundle=self.bundles[request.node])


def test_peer_directory_refuses_a_peer_revoked_after_it_was_cached(ca: Path, tmp_path: Path) -> None:
    """A peer looked up at job start and revoked mid-job is refused at the next lookup
    (every envelope it sends triggers one), not only in later jobs."""
    reg = _Registry()
    reg.bundles["tax"] = NodeKeys.load(ca / "tax").bundle()
    held = Revocations(_ca(ca))
    store = NodeStore(tmp_path / "civ-state")
    peers = PeerDirectory(reg, _ca(ca), held, store)  # type: ignore[arg-type]
    assert peers("tax").name == "tax"
    _, crl = revocation.revoke(ca / "ca", name="tax")
    held.update(crl.read_bytes())
    with pytest.raises(pki.RevokedCertificate):
        peers("tax")  # cached, but revoked now


def test_peer_directory_refuses_a_superseded_bundle(ca: Path, tmp_path: Path) -> None:
    """Once a node has seen a newer bundle of a peer, the coordinator cannot serve it the older one."""
    old = NodeKeys.load(ca / "tax").bundle()
    kits.finish_kit(ca / "tax")  # rebuilds sealing.bundle with a higher serial
    new = NodeKeys.load(ca / "tax").bundle()
    assert verify_bundle(new, _ca(ca), "tax").bundle_serial > verify_bundle(old, _ca(ca), "tax").bundle_serial
    reg = _Registry()
    store = NodeStore(tmp_path / "civ-state")
    reg.bundles["tax"] = new
    assert PeerDirectory(reg, _ca(ca), None, store)("tax").bundle_serial  # type: ignore[arg-type]
    reg.bundles["tax"] = old  # a later job: the coordinator serves the superseded bundle
    with pytest.raises(SupersededBundle, match="superseded key bundle of tax"):
        PeerDirectory(reg, _ca(ca), None, store)("tax")  # type: ignore[arg-type]
    store.close()
    # the memory survives a restart of the node
    store = NodeStore(tmp_path / "civ-state")
    with pytest.raises(SupersededBundle):
        PeerDirectory(reg, _ca(ca), None, store)("tax")  # type: ignore[arg-type]
    # the same serial with other bytes is refused too
    forged = bytearray(new)
    with pytest.raises(SupersededBundle, match="two different"):
        store.note_bundle("tax", verify_bundle(new, _ca(ca), "tax").bundle_serial,
                          hashlib.sha256(bytes(forged) + b"x").hexdigest())


def test_crl_is_public_but_ca_record_is_private(ca: Path) -> None:
    _, crl = revocation.revoke(ca / "ca", name="civ")
    assert (crl.stat().st_mode & 0o777) == 0o644
    assert ((ca / "ca" / "issuance.jsonl").stat().st_mode & 0o777) == 0o600
    # what the list says is serials and dates only
    lst = x509.load_pem_x509_crl(crl.read_bytes())
    assert lst.public_bytes(serialization.Encoding.DER).find(b"civ") == -1
