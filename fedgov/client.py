"""Python SDK for analysts, auditors and admins (notebooks and scripts).

>>> from fedgov.client import Client
>>> c = Client("federation/kits/analyst", "127.0.0.1:50051")
>>> job = c.submit(open("manifest.toml").read())
>>> c.wait(job.job_id).state
'succeeded'

Every call authenticates with the kit's certificate (mutual TLS); manifests
are signed with the kit's key so nodes can verify who asked. Errors are
:class:`~fedgov.errors.FedgovError` with one-line messages.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fedgov.crypto.signing import sign_manifest
from fedgov.errors import ConfigError, FedgovError, JobFailed
from fedgov.manifest import parse_manifest
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


class Client:
    """A connection to the coordinator as the person whose kit is given."""

    def __init__(self, kit: str | Path, coordinator: str) -> None:
        self.material = TlsMaterial.from_kit(Path(kit))
        self.identity = self.material.identity
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
                "datasets": [
                    {
                        "name": d.name,
                        "rows": d.rows,
                        "schema_digest": d.schema_digest,
                        "fields": [f["name"] for f in json.loads(d.schema_json or "{}").get("fields", [])],
                    }
                    for d in n.datasets
                ],
            }
            for n in reply.nodes
        ]

    def submit(self, manifest_toml: str, *, where: str = "manifest") -> JobStatus:
        """Validate locally, sign with this kit's key, submit."""
        m = parse_manifest(manifest_toml, where)
        check_parameters(m.kind, m.parameters, f"{where}: parameters")
        sig = sign_manifest(self.material.key, manifest_toml)
        reply = self._call(
            self._jobs.Submit, jobs_pb2.SubmitJobRequest(manifest_toml=manifest_toml, signature=sig)
        )
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
        """The released result of a succeeded job; JobFailed otherwise."""
        reply = self._call(self._jobs.Result, jobs_pb2.JobRef(job_id=job_id))
        if reply.status.state != "succeeded":
            raise JobFailed(
                f"job is {reply.status.state}" + (f": {reply.status.reason}" if reply.status.reason else ""),
                where=job_id,
            )
        return json.loads(reply.result_json or "{}")

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
