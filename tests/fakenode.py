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

from fedgov.crypto.envelope import Header, seal
from fedgov.crypto.keys import NodeKeys, PeerKeys, verify_bundle
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
                    self.jobs.PollTasks(jobs_pb2.PollTasksRequest(wait_seconds=0), timeout=5)

        threading.Thread(target=loop, daemon=True).start()

    def stop_heartbeat(self) -> None:
        self._beat.set()

    def approve_all(self, only: set[str] | None = None) -> list[str]:
        reply = self.jobs.PollTasks(jobs_pb2.PollTasksRequest(wait_seconds=5), timeout=15)
        ids = []
        for t in reply.tasks:
            if t.action == "evaluate" and (only is None or t.job_id in only):
                self.jobs.Decide(jobs_pb2.TaskDecision(job_id=t.job_id, approve=True), timeout=10)
                ids.append(t.job_id)
        return ids

    def peer(self, name: str) -> PeerKeys:
        b = self.registry.GetKeyBundle(registry_pb2.GetKeyBundleRequest(node=name), timeout=10)
        return verify_bundle(b.bundle, self.ca, name)

    def envelope(
        self, job_id: str, step: str, to: str, seq: int, payload: bytes, *, sealed_for: str | None = None
    ) -> bytes:
        header = Header(job_id=job_id, step=step, sender=self.name, recipient=sealed_for or to, seq=seq)
        return seal(header, payload, self.keys, self.peer(sealed_for or to))

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
        self.jobs.Report(
            jobs_pb2.TaskReport(job_id=job_id, ok=True, result_json=json.dumps(result or {})), timeout=10
        )
