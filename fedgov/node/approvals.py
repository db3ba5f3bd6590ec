"""Local operations of a department's approvers and auditors on its node, and the approval rules.

These run on the node's host against the node's own state (no network):
``pending`` lists jobs awaiting manual approval (one summary line each),
``show`` returns a pending job's full brief (:mod:`fedgov.node.brief`),
``decide`` records an approver's *signed* decision (the running node verifies
it and counts distinct approvers), ``audit`` reads and verifies the
hash-chained log.

The rules the running node applies to every approval (and ``decide`` applies
first, so the approver reads the refusal at once):

- :func:`self_approval` — nobody approves a job they requested (same person
  name on the certificate, or the same key as the requester's certificate);
- :func:`duplicate_approver` — the approvers counted for one job are distinct
  people: distinct names, distinct certificates and distinct keys;
- :func:`enough` — the job proceeds only with ``approvers_required`` of them;
- :func:`check_approved` — the manifest that runs is the one approved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedgov.crypto.pki import Identity, identity_from_cert, key_fingerprint
from fedgov.crypto.signing import sign_approval
from fedgov.errors import ConfigError, FedgovError
from fedgov.manifest import Manifest, parse_manifest
from fedgov.node.brief import Brief
from fedgov.node.config import NodeConfig
from fedgov.node.store import NodeStore
from fedgov.transport.tls import TlsMaterial


def _cert_ids(cert_pem: bytes) -> tuple[str, str]:
    """(certificate sha256, public-key fingerprint) of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest(), key_fingerprint(cert.public_key())


def self_approval(
    job_id: str, requester: str, requester_cert: bytes | None, approver: Identity, approver_cert: bytes
) -> str | None:
    """Why ``approver`` may not approve ``job_id`` because they requested it (None when they may).

    Same person name as the requester's certificate, the same certificate, or
    a certificate over the same key all count as the requester.
    """
    if approver.name == requester:
        return (f"{approver.name} requested job {job_id}: a requester may not approve their own job "
                "(requester and approver must be different people)")
    if requester_cert and _cert_ids(requester_cert)[1] == _cert_ids(approver_cert)[1]:
        return (f"{approver.name}'s certificate has the same key as the requester {requester}'s: "
                "a requester may not approve their own job")
    return None


def duplicate_approver(approver: Identity, approver_cert: bytes, counted: Sequence[tuple[str, bytes]]) -> str | None:
    """Why ``approver`` cannot count next to the approvers already ``counted`` ((name, cert PEM) pairs).

    Two approvals count as two people only with distinct names, distinct
    certificates and distinct keys.
    """
    cert_id, key_id = _cert_ids(approver_cert)
    for name, pem in counted:
        if name == approver.name:
            continue  # the same approver again is the same vote, not a second person
        other_cert, other_key = _cert_ids(pem)
        if other_cert == cert_id or other_key == key_id:
            return (f"{approver.name}'s key is also {name}'s, who already approved: the approvers of a "
                    "dual-control dataset must be distinct people (distinct certificates and keys)")
    return None


def enough(approvers: Sequence[str], required: int) -> bool:
    """True when ``approvers`` (distinct, verified) reach the policy's ``approvers_required``."""
    return len(set(approvers)) >= required


def check_approved(store: NodeStore, job_id: str, manifest: Manifest) -> None:
    """Raise FedgovError unless ``manifest`` is exactly the one this node approved for ``job_id``."""
    if store.approved_digest(job_id) != manifest.digest:
        raise FedgovError("the manifest to run is not the one this node approved")


def brief_digest(store: NodeStore, job_id: str) -> str:
    """sha256 of the brief the node recorded for ``job_id`` ("" when it recorded none).

    An approval is signed over it next to the manifest digest, so what an
    approver signed is bound to what ``fedgov node show`` showed them.
    """
    rec = store.brief(job_id)
    return Brief.from_dict(json.loads(rec[1])).digest if rec else ""


def _requester(store: NodeStore, job_id: str, fallback: str) -> tuple[str, bytes | None]:
    rec = store.brief(job_id)
    if rec is None:
        return fallback, None
    cert_pem, _ = rec
    return identity_from_cert(x509.load_pem_x509_certificate(cert_pem)).name, cert_pem


def show(config: NodeConfig, job_id: str | None) -> Brief:
    """The brief of a job in this node's approval queue (FedgovError if there is none)."""
    if not job_id:
        raise ConfigError("give the job id to show")
    store = NodeStore(config.state_dir)
    try:
        job = store.pending_job(job_id)
        rec = store.brief(job_id)
        if job is None or rec is None:
            raise FedgovError(f"no job '{job_id}' awaits approval at {config.name}")
        brief = Brief.from_dict(json.loads(rec[1]))
        approved = [a for a, ok, *_ in store.approvals(job_id) if ok]
        return brief.with_approvals(job.required, approved, job.status)
    finally:
        store.close()


def pending(config: NodeConfig) -> list[dict[str, Any]]:
    store = NodeStore(config.state_dir)
    try:
        out = []
        for p in store.pending():
            m = parse_manifest(p.manifest)
            me = m.participant(config.name)
            approved = [a for a, ok, *_ in store.approvals(p.job_id) if ok]
            rec = store.brief(p.job_id)
            brief = Brief.from_dict(json.loads(rec[1])).with_approvals(p.required, approved) if rec else None
            out.append(
                {
                    "job_id": p.job_id,
                    "kind": m.kind,
                    "purpose": m.purpose,
                    "description": m.description,
                    "requester": p.requester,
                    "dataset": me.dataset,
                    "fields": list(me.fields),
                    "where": [f"{c.field} {c.op} {json.dumps(c.value)}" for c in me.where],
                    "parameters": dict(m.parameters),
                    "others": [q.node for q in m.participants if q.node != config.name],
                    "required": p.required,
                    "approved_by": approved,
                    "approvals": f"{len(approved)} of {p.required}",
                    "summary": brief.summary() if brief else "",
                }
            )
        return out
    finally:
        store.close()


def decide(config: NodeConfig, job_id: str | None, kit: Path | None, *, approve: bool, reason: str) -> str:
    """Sign and record one approver's decision on a pending job."""
    if not job_id:
        raise ConfigError("give the job id to decide on")
    if kit is None:
        raise ConfigError("give --kit: the approver's own startup kit (role approver)")
    material = TlsMaterial.from_kit(kit)
    ident = material.identity
    if ident.role != "approver" or ident.department != config.name:
        raise FedgovError(
            f"'{ident.name}' is a {ident.role}"
            + (f" of {ident.department}" if ident.department else "")
            + f", not an approver of {config.name}"
        )
    if not approve and not reason:
        raise ConfigError("a rejection needs --reason (the analyst will read it)")
    store = NodeStore(config.state_dir)
    try:
        job = store.pending_job(job_id)
        if job is None:
            raise FedgovError(f"no job '{job_id}' awaits approval at {config.name}")
        if job.status != "pending":
            raise FedgovError(f"job {job_id} is already {job.status}")
        digest = parse_manifest(job.manifest).digest
        if approve:
            requester, requester_cert = _requester(store, job_id, job.requester)
            why = self_approval(job_id, requester, requester_cert, ident, material.cert)
            counted = [(a, c) for a, ok, _r, c, _s in store.approvals(job_id) if ok]
            why = why or duplicate_approver(ident, material.cert, counted)
            if why:
                raise FedgovError(why)
        brief = brief_digest(store, job_id)
        sig = sign_approval(material.key, job_id, digest, approve, reason, brief_digest=brief)
        store.add_approval(job_id, ident.name, approve, reason, material.cert, sig)
        store.audit(job_id, "approval-recorded", approver=ident.name, approve=approve, reason=reason,
                    manifest_sha256=digest, brief_sha256=brief)
        have = len([a for a, ok, *_ in store.approvals(job_id) if ok])
    finally:
        store.close()
    if not approve:
        return f"{ident.name} rejected {job_id}"
    return f"{ident.name} approved {job_id} ({have} of {job.required} approvals)"


def audit(config: NodeConfig, job_id: str | None) -> tuple[list[dict[str, Any]], int | None]:
    store = NodeStore(config.state_dir)
    try:
        return store.audit_entries(job_id), store.verify_audit()
    finally:
        store.close()
