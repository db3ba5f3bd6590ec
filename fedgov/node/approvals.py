"""Local operations of a department's approvers and auditors on its node.

These run on the node's host against the node's own state (no network):
``pending`` lists jobs awaiting manual approval, ``decide`` records an
approver's *signed* decision (the running node verifies it and counts
distinct approvers), ``audit`` reads and verifies the hash-chained log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedgov.crypto.signing import sign_approval
from fedgov.errors import ConfigError, FedgovError
from fedgov.manifest import parse_manifest
from fedgov.node.config import NodeConfig
from fedgov.node.store import NodeStore
from fedgov.transport.tls import TlsMaterial


def pending(config: NodeConfig) -> list[dict[str, Any]]:
    store = NodeStore(config.state_dir)
    try:
        out = []
        for p in store.pending():
            m = parse_manifest(p.manifest)
            me = m.participant(config.name)
            out.append(
                {
                    "job_id": p.job_id,
                    "kind": m.kind,
                    "purpose": m.purpose,
                    "requester": p.requester,
                    "dataset": me.dataset,
                    "fields": list(me.fields),
                    "required": p.required,
                    "approved_by": [a for a, ok, *_ in store.approvals(p.job_id) if ok],
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
        sig = sign_approval(material.key, job_id, digest, approve, reason)
        store.add_approval(job_id, ident.name, approve, reason, material.cert, sig)
        store.audit(job_id, "approval-recorded", approver=ident.name, approve=approve, reason=reason)
        have = len([a for a, ok, *_ in store.approvals(job_id) if ok])
    finally:
        store.close()
    if not approve:
        return f"{ident.name} rejected {job_id}"
    return f"{ident.name} approved {job_id} ({have}/{job.required} approvals)"


def audit(config: NodeConfig, job_id: str | None) -> tuple[list[dict[str, Any]], int | None]:
    store = NodeStore(config.state_dir)
    try:
        return store.audit_entries(job_id), store.verify_audit()
    finally:
        store.close()
