"""Python SDK for analysts, auditors and admins (notebooks and scripts).

>>> from fedgov.client import Client
>>> c = Client("federation/kits/analyst", "127.0.0.1:50051")
>>> job = c.submit(open("manifest.toml").read())
>>> c.wait(job.job_id).state
'succeeded'

Every call authenticates with the kit's certificate (mutual TLS); manifests
are signed with the kit's key so nodes can verify who asked. Errors are
:class:`~fedgov.errors.FedgovError` with one-line messages.

Before signing, :meth:`Client.submit` makes the manifest single-use (a fresh
nonce and a validity window, unless the text gives them) and adds a fresh
per-job result public key; the private half is saved 0600 under
``<kit>/results/`` (or ``state_dir``). Every node seals its result to that
key, so :meth:`Client.result` opens results the coordinator only relayed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from fedgov.crypto.envelope import MemorySequenceTracker, open_envelope
from fedgov.crypto.keys import PeerKeys, ResultKey, verify_bundle
from fedgov.crypto.revocation import Revocations
from fedgov.crypto.signing import sign_manifest
from fedgov.errors import ConfigError, CryptoError, FedgovError, JobFailed
from fedgov.manifest import DEFAULT_VALIDITY, parse_manifest, stamp_manifest
from fedgov.params import check_parameters
from fedgov.transport.rpc import describe, with_retry
from fedgov.transport.tls import TlsMaterial, secure_channel
from fedgov.v1 import jobs_pb2, jobs_pb2_grpc, registry_pb2, registry_pb2_grpc

TERMINAL = ("succeeded", "failed", "rejected", "cancelled")


@dataclass(frozen=True)
class Participant:
    node: str
    decision: str
    reason: str
    task_state: str
    approvers: tuple[str, ...]


#: how :attr:`JobEvent.text` words each event the coordinator records (fedgov/coordinator/store.py)
EVENT_TEXT: dict[str, str] = {
    "job-submitted": "job submitted",
    "node-received": "{node} received the job for its policy check",
    "node-approved": "{node} approved",
    "node-rejected": "{node} refused",
    "task-started": "{node} started its part",
    "task-succeeded": "{node} finished its part",
    "task-failed": "{node} failed",
}


@dataclass(frozen=True)
class JobEvent:
    """One thing the coordinator recorded about a job, at ``ts`` (seconds, coordinator clock)."""

    ts: float
    event: str
    node: str = ""
    detail: str = ""

    @property
    def text(self) -> str:
        """One English line: ``"tax approved: within policy (approvers: ann, bob)"``, ``"job succeeded"``."""
        if self.event in EVENT_TEXT:
            head = EVENT_TEXT[self.event].format(node=self.node or "?")
        elif self.event.startswith("job-"):
            head = "job " + self.event[4:]
        else:
            head = f"{self.node}: {self.event}" if self.node else self.event
        return head + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    kind: str
    purpose: str
    requester: str
    state: str
    reason: str
    participants: tuple[Participant, ...]
    created_at: float
    updated_at: float
    #: the signed manifest text (from :meth:`Client.status` only; "" in :meth:`Client.list`)
    manifest: str = ""
    #: what the coordinator recorded about the job, oldest first (:meth:`Client.status` only)
    events: tuple[JobEvent, ...] = ()

    @classmethod
    def from_pb(cls, s: jobs_pb2.JobStatus) -> JobStatus:
        return cls(
            job_id=s.job_id,
            kind=s.kind,
            purpose=s.purpose,
            requester=s.requester,
            state=s.state,
            reason=s.reason,
            participants=tuple(
                Participant(p.node, p.decision, p.reason, p.task_state, tuple(p.approvers))
                for p in s.participants
            ),
            created_at=s.created_at,
            updated_at=s.updated_at,
            manifest=s.manifest_toml,
            events=tuple(JobEvent(e.ts, e.event, e.node, e.detail) for e in s.events),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "kind": self.kind,
            "purpose": self.purpose,
            "requester": self.requester,
            "state": self.state,
            "reason": self.reason,
            "participants": [p.__dict__ | {"approvers": list(p.approvers)} for p in self.participants],
        }


def _dataset_info(d: Any) -> dict[str, Any]:
    """One catalogue entry: name, rows, schema digest, field names, the full schema (field types,
    descriptions, units, ranges), the node's public quality scores ({} when it publishes none) and
    ``purposes``: what its policy allows the dataset for, ``{purpose: [job kinds]}`` ({}: nothing, or a
    node from before purposes were published). Metadata and policy only: the catalogue never carries a row."""
    schema = json.loads(d.schema_json or "{}")
    try:
        quality = json.loads(d.quality_json) if d.quality_json else {}
    except ValueError:
        quality = {}
    return {
        "name": d.name,
        "rows": d.rows,
        "schema_digest": d.schema_digest,
        "fields": [f["name"] for f in schema.get("fields", [])],
        "description": (schema.get("dataset") or {}).get("description", ""),
        "schema": schema.get("fields", []),
        "quality": quality if isinstance(quality, dict) else {},
        "purposes": {p.purpose: list(p.kinds) for p in d.purposes},
    }


class Client:
    """A connection to the coordinator as the person whose kit is given."""

    def __init__(self, kit: str | Path, coordinator: str, *, state_dir: str | Path | None = None) -> None:
        self.material = TlsMaterial.from_kit(Path(kit))
        self.identity = self.material.identity
        #: where the private result keys of submitted jobs are kept (0700 directory, 0600 files)
        self.results_dir = Path(state_dir) if state_dir is not None else Path(kit) / "results"
        self._channel = secure_channel(self.material, coordinator)
        self._jobs = jobs_pb2_grpc.JobsStub(self._channel)
        self._registry = registry_pb2_grpc.RegistryStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Any, request: Any, timeout: float = 30) -> Any:
        try:
            return with_retry(lambda: fn(request, timeout=timeout), patience=15)
        except grpc.RpcError as exc:  # pragma: no cover - with_retry converts
            raise describe(exc) from None

    def nodes(self) -> list[dict[str, Any]]:
        """Registered nodes and their published catalogues (metadata only)."""
        reply = self._call(self._registry.ListNodes, registry_pb2.ListNodesRequest())
        return [
            {
                "name": n.name,
                "online": n.online,
                "last_seen": n.last_seen,
                "datasets": [_dataset_info(d) for d in n.datasets],
            }
            for n in reply.nodes
        ]

    def submit(
        self, manifest_toml: str, *, where: str = "manifest", valid_for: timedelta = DEFAULT_VALIDITY
    ) -> JobStatus:
        """Validate locally, make single-use, add a result key, sign with this kit's key, submit.

        The text that is signed and sent is ``manifest_toml`` with a nonce, a
        validity window of ``valid_for`` (both unless already given) and a
        fresh result public key added under ``[job]``; the result key's private
        half is saved under :attr:`results_dir` before anything is sent.
        """
        m = parse_manifest(manifest_toml, where)
        check_parameters(m.kind, m.parameters, f"{where}: parameters")
        key = ResultKey(self.identity.name)
        text = stamp_manifest(manifest_toml, result_key=key.public_bytes, valid_for=valid_for, where=where)
        key.save(self.results_dir)
        sig = sign_manifest(self.material.key, text)
        reply = self._call(self._jobs.Submit, jobs_pb2.SubmitJobRequest(manifest_toml=text, signature=sig))
        return JobStatus.from_pb(reply)

    def submit_file(self, path: str | Path) -> JobStatus:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read manifest: {exc.strerror}", where=str(p)) from None
        return self.submit(text, where=str(p))

    def status(self, job_id: str) -> JobStatus:
        return JobStatus.from_pb(self._call(self._jobs.Get, jobs_pb2.JobRef(job_id=job_id)))

    def list(self, state: str | None = None) -> list[JobStatus]:
        reply = self._call(self._jobs.List, jobs_pb2.ListJobsRequest(state=state or ""))
        return [JobStatus.from_pb(j) for j in reply.jobs]

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.from_pb(self._call(self._jobs.Cancel, jobs_pb2.JobRef(job_id=job_id)))

    def result(self, job_id: str) -> dict[str, Any]:
        """The released result of a succeeded job, ``{node: result}``; JobFailed otherwise.

        Each node's result arrives sealed to this requester's per-job key and
        signed by the node: it is opened here, after checking the node's key
        bundle against this kit's CA and the CA's revocation list. A result
        that does not open, or a participant without one, raises CryptoError /
        JobFailed. Nodes with an empty result are left out.
        """
        reply = self._call(self._jobs.Result, jobs_pb2.JobRef(job_id=job_id))
        if reply.status.state != "succeeded":
            raise JobFailed(
                f"job is {reply.status.state}" + (f": {reply.status.reason}" if reply.status.reason else ""),
                where=job_id,
            )
        if reply.result_json and reply.result_json != "{}":
            raise CryptoError("the coordinator returned an unsealed result; refusing it", where=job_id)
        sealed = {s.node: s.envelope for s in reply.sealed}
        missing = [p.node for p in reply.status.participants if p.node not in sealed]
        if missing:
            raise JobFailed(f"no sealed result from {', '.join(missing)}", where=job_id)
        if not sealed:
            return {}
        ca = x509.load_pem_x509_certificate(self.material.ca)
        revocations = Revocations(ca)
        crl = self._call(self._registry.GetRevocations, registry_pb2.GetRevocationsRequest())
        if crl.crl_der:
            revocations.update(crl.crl_der, where="revocation list from the coordinator")
        key_ids = {s.key_id for s in reply.sealed}
        if len(key_ids) != 1:
            raise CryptoError("sealed results name more than one result key", where=job_id)
        me = ResultKey.load(self.results_dir, self.identity.name, key_ids.pop())
        out: dict[str, Any] = {}
        for node, blob in sealed.items():
            peer = self._node_keys(node, ca, revocations)
            header, plain = open_envelope(
                blob, me, lambda name, peer=peer: peer, MemorySequenceTracker()
            )
            if (header.job_id, header.step, header.sender) != (job_id, "result", node):
                raise CryptoError(f"sealed result of {node} is for {header.job_id}/{header.step}", where=job_id)
            value = json.loads(plain)
            if value not in ({}, None):
                out[node] = value
        return out

    def _node_keys(self, node: str, ca: x509.Certificate, revocations: Revocations) -> PeerKeys:
        reply = self._call(self._registry.GetKeyBundle, registry_pb2.GetKeyBundleRequest(node=node))
        return verify_bundle(reply.bundle, ca, node, revocations=revocations)

    def publish_revocations(self, crl: bytes) -> None:
        """Admin: hand the coordinator a revocation list (PEM or DER), after checking it locally."""
        ca = x509.load_pem_x509_certificate(self.material.ca)
        lst = Revocations(ca)
        lst.update(crl, where="revocation list")
        assert lst.current is not None
        self._call(self._registry.PublishRevocations, registry_pb2.RevocationList(crl_der=lst.current.der))

    def revocation_number(self) -> int:
        """CRL number of the revocation list the coordinator serves (0: none), verified against the CA."""
        ca = x509.load_pem_x509_certificate(self.material.ca)
        lst = Revocations(ca)
        reply = self._call(self._registry.GetRevocations, registry_pb2.GetRevocationsRequest())
        if reply.crl_der:
            lst.update(reply.crl_der, where="revocation list from the coordinator")
        return lst.number

    def wait(self, job_id: str, *, timeout: float = 600.0, poll: float = 0.3) -> JobStatus:
        """Block until the job is terminal (or raise FedgovError on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(job_id)
            if st.state in TERMINAL:
                return st
            if time.monotonic() > deadline:
                raise FedgovError(f"still {st.state} after {timeout:.0f} s", where=job_id)
            time.sleep(poll)
