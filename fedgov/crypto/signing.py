"""Signatures by people (analysts, admins, approvers) with their TLS certificate key.

- An analyst signs the exact manifest bytes when submitting a job. Nodes
  verify the signature and the analyst's certificate against the federation
  CA themselves, so the coordinator cannot invent jobs or alter what was asked
  (it can only withhold them).
- A department approver signs ``(job id, manifest digest, decision)``; the
  node counts distinct, verified approvers of its own department, so manual
  ("dual-post") approval cannot be forged by whoever can write the node's
  database.

Each statement is prefixed with a domain tag so a signature made for one
purpose is never valid for another.
"""

from __future__ import annotations

import json

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fedgov.crypto.pki import Identity, RevocationCheck, verify_certificate
from fedgov.errors import CryptoError

MANIFEST_DOMAIN = b"fedgov/v1 manifest\x00"
APPROVAL_DOMAIN = b"fedgov/v1 approval\x00"


class BadSignature(CryptoError):
    """A statement signature or the signer's certificate does not verify."""


BadManifestSignature = BadSignature


def _sign(key_pem: bytes, data: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise BadSignature(f"unsupported signing key type {type(key).__name__}")


def _verify(
    cert_pem: bytes,
    ca_cert: x509.Certificate,
    data: bytes,
    signature: bytes,
    what: str,
    revocations: RevocationCheck | None = None,
) -> Identity:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise BadSignature(f"{what}: signer certificate is not valid PEM") from None
    identity = verify_certificate(cert, ca_cert, revocations=revocations)
    if not _signature_holds(cert.public_key(), signature, data, what):
        raise BadSignature(f"{what}: signature by '{identity.name}' does not verify (altered after signing?)")
    return identity


def _signature_holds(pub: object, signature: bytes, data: bytes, what: str) -> bool:
    """Whether ``signature`` is ``pub``'s ECDSA-SHA256 or Ed25519 signature over ``data``."""
    try:
        if isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(signature, data)
        else:
            raise BadSignature(f"{what}: unsupported key type {type(pub).__name__}")
    except InvalidSignature:
        return False
    return True


def sign_manifest(key_pem: bytes, text: str) -> bytes:
    """Sign ``MANIFEST_DOMAIN || manifest`` with a PEM private key."""
    return _sign(key_pem, MANIFEST_DOMAIN + text.encode("utf-8"))


def verify_manifest(
    cert_pem: bytes,
    ca_cert: x509.Certificate,
    text: str,
    signature: bytes,
    *,
    revocations: RevocationCheck | None = None,
) -> Identity:
    """Signer identity if the certificate chains to the CA (and is not revoked) and the signature holds.

    Raises BadSignature (altered text, another signer's signature) or a
    CertificateError (foreign CA, expired, revoked).
    """
    return _verify(
        cert_pem, ca_cert, MANIFEST_DOMAIN + text.encode("utf-8"), signature, "manifest", revocations
    )


def _approval_bytes(job_id: str, manifest_digest: str, approve: bool, reason: str, brief_digest: str = "") -> bytes:
    fields: dict[str, object] = {
        "job_id": job_id, "manifest_sha256": manifest_digest, "approve": approve, "reason": reason
    }
    if brief_digest:  # the approver's brief (fedgov.node.brief) they read before deciding
        fields["brief_sha256"] = brief_digest
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return APPROVAL_DOMAIN + body.encode("utf-8")


def sign_approval(
    key_pem: bytes, job_id: str, manifest_digest: str, approve: bool, reason: str, *, brief_digest: str = ""
) -> bytes:
    """An approver's signed decision on one exact manifest (and, if given, the brief they were shown)."""
    return _sign(key_pem, _approval_bytes(job_id, manifest_digest, approve, reason, brief_digest))


def verify_approval(
    cert_pem: bytes,
    ca_cert: x509.Certificate,
    job_id: str,
    manifest_digest: str,
    approve: bool,
    reason: str,
    signature: bytes,
    *,
    revocations: RevocationCheck | None = None,
    brief_digest: str = "",
) -> Identity:
    """Approver identity if the signed decision covers exactly this job, manifest, decision and reason
    (and ``brief_digest``, the sha256 of the brief the node showed, when given).

    Raises BadSignature when any of them differs from what was signed, or a
    CertificateError for a foreign, expired or revoked approver certificate.
    """
    return _verify(
        cert_pem,
        ca_cert,
        _approval_bytes(job_id, manifest_digest, approve, reason, brief_digest),
        signature,
        "approval",
        revocations,
    )
