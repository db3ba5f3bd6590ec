"""A test-controlled node: speaks the wire protocol directly with a real kit.

Lets tests play a malicious or vanishing participant (forge, tamper, replay,
misaddress envelopes; go silent) against real coordinator and node processes.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

import grpc
from cryptography import x509

from fedgov.crypto.envelope import Header, MemorySequenceTracker, open_envelope, seal
from fedgov.crypto.keys import JobKey, NodeKeys, PeerKeys, result_recipient, verify_bundle, verify_job_key
from fedgov.crypto.pki import identity_from_cert
from fedgov.manifest import parse_manifest
from fedgov.transport.chunks import relay_chunks
from fedgov.transport.tls import TlsMaterial, secure_channel
from fedgov.v1 import (
    common_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    relay_pb2,
    relay_pb2_grpc,
)


class FakeNode:
    def __init__(self, kit: Path, address: str) -> None:
        self.material = TlsMaterial.from_kit(kit)
        self.keys = NodeKeys.load(kit)
        self.name = self.keys.name
        self.ca = x509.load_pem_x509_certificate(self.material.ca)
        self.channel = secure_channel(self.material, address)
        self.registry = registry_pb2_grpc.RegistryStub(self.channel)
        self.jobs = jobs_pb2_grpc.JobsStub(self.channel)
        self.relay = relay_pb2_grpc.RelayStub(self.channel)
        self._beat = threading.Event()
        #: per job: the task it was asked to evaluate (manifest, requester) and its own job key
        self.tasks: dict[str, jobs_pb2.Task] = {}
        self.job_keys: dict[str, JobKey] = {}
        self._lock = threading.RLock()

    def close(self) -> None:
        self._beat.set()
        self.channel.close()

    def register(self, fields: list[str]) -> None:
        self.registry.Register(registry_pb2.RegisterRequest(key_bundle=self.keys.bundle()), timeout=10)
        schema = {"name": "data", "fields": [{"name": f, "type": "float"} for f in fields]}
        self.registry.PublishCatalog(
            registry_pb2.PublishCatalogRequest(
                datasets=[common_pb2.DatasetInfo(name="data", schema_json=json.dumps(schema), rows=100)]
            ),
            timeout=10,
        )

    def heartbeat(self, every: float = 0.5) -> None:
        """Keep polling in the background so the coordinator sees us alive."""

        def loop() -> None:
            while not self._beat.wait(every):
                with contextlib.suppress(grpc.RpcError):
                    self._take(self.jobs.PollTasks(jobs_pb2.PollTasksRequest(wait_seconds=0), timeout=5))

        threading.Thread(target=loop, daemon=True).start()

    def stop_heartbeat(self) -> None:
        self._beat.set()

    def _take(self, reply: jobs_pb2.PollTasksReply) -> list[jobs_pb2.Task]:
        """Remember every task; on "run", publish a job key as a real node does when its part starts."""
        for t in reply.tasks:
            with self._lock:
                self.tasks.setdefault(t.job_id, t)
            if t.action == "run":
                with contextlib.suppress(grpc.RpcError):
                    self.publish_job_key(t.job_id)
        return list(reply.tasks)

    def approve_all(self, only: set[str] | None = None) -> list[str]:
        tasks = self._take(self.jobs.PollTasks(jobs_pb2.PollTasksRequest(wait_seconds=5), timeout=15))
        ids = []
        for t in tasks:
            if t.action == "evaluate" and (only is None or t.job_id in only):
                self.jobs.Decide(jobs_pb2.TaskDecision(job_id=t.job_id, approve=True), timeout=10)
                ids.append(t.job_id)
        return ids

    def peer(self, name: str) -> PeerKeys:
        b = self.registry.GetKeyBundle(registry_pb2.GetKeyBundleRequest(node=name), timeout=10)
        return verify_bundle(b.bundle, self.ca, name)

    def publish_job_key(self, job_id: str) -> JobKey:
        """Publish this node's sealing key for ``job_id`` (as a real node does when the job starts)."""
        with self._lock:
            if job_id not in self.job_keys:
                key = JobKey(self.name, job_id)
                self.registry.PublishJobKey(
                    registry_pb2.JobKey(job_id=job_id, node=self.name, statement=key.statement(self.keys)),
                    timeout=10,
                )
                self.job_keys[job_id] = key
            return self.job_keys[job_id]

    def peer_job_key(self, job_id: str, name: str, wait: float = 20.0) -> PeerKeys:
        """``name``'s verified sealing key for ``job_id`` (waits until it is published)."""
        reply = self.registry.GetJobKey(
            registry_pb2.GetJobKeyRequest(job_id=job_id, node=name, wait_seconds=wait), timeout=wait + 10
        )
        return verify_job_key(reply.statement, self.peer(name), job_id)

    def envelope(
        self, job_id: str, step: str, to: str, seq: int, payload: bytes, *, sealed_for: str | None = None
    ) -> bytes:
        """An envelope sealed to the recipient's key for this job.

        ``sealed_for``: addressed and sealed to another node (its long-term key:
        a node outside the job has no key for it), to try misaddressing.
        """
        self.publish_job_key(job_id)
        header = Header(job_id=job_id, step=step, sender=self.name, recipient=sealed_for or to, seq=seq)
        target = self.peer(sealed_for) if sealed_for else self.peer_job_key(job_id, to)
        return seal(header, payload, self.keys, target)

    def open(self, job_id: str, blob: bytes) -> bytes:
        """Open an envelope sealed to this node's key for ``job_id``."""
        _, payload = open_envelope(blob, self.job_keys[job_id], self.peer, MemorySequenceTracker())
        return payload

    def post(self, job_id: str, step: str, to: str, seq: int, blob: bytes) -> None:
        self.relay.Send(relay_chunks(blob, job_id=job_id, step=step, recipient=to, seq=seq), timeout=30)

    def fetch(self, job_id: str, step: str, frm: str, seq: int, wait: float = 5.0) -> bytes | None:
        parts = list(
            self.relay.Receive(
                relay_pb2.ReceiveRequest(job_id=job_id, step=step, sender=frm, seq=seq, wait_seconds=wait),
                timeout=wait + 10,
            )
        )
        return b"".join(p.data for p in parts) if parts else None

    def report(self, job_id: str, result: dict | None = None) -> None:
        """Report success, with ``result`` sealed to the requester's key from the signed manifest."""
        task = self.tasks[job_id]
        manifest = parse_manifest(task.manifest_toml)
        requester = identity_from_cert(x509.load_pem_x509_certificate(task.requester_cert_pem)).name
        assert manifest.result_key is not None
        header = Header(job_id=job_id, step="result", sender=self.name, recipient=requester, seq=0)
        blob = seal(header, json.dumps(result or {}).encode(), self.keys, result_recipient(requester, manifest.result_key))
        self.jobs.Report(jobs_pb2.TaskReport(job_id=job_id, ok=True, sealed_result=blob), timeout=10)
