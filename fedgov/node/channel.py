"""A job's secure channel between nodes, over the coordinator's relay.

``send`` seals each payload to the recipient (HPKE, signed by this node,
header = job/step/sender/recipient/seq) and streams it in chunks; ``recv``
fetches the addressed envelope, checks it (signature, recipient, sequence)
and returns the plaintext. Peers' keys come from the coordinator but are
verified against the federation CA here, so the coordinator cannot slip in
its own key.

Identity lifecycle (h13b): payloads are sealed to the recipient's **per-job**
key (:class:`fedgov.crypto.keys.JobKey`, signed by its long-term key, erased
when the job ends), so recorded traffic stays closed to whoever later takes a
node's long-term keys. :class:`PeerDirectory` refuses a peer whose bundle is
revoked or older than one this node has seen, and re-checks revocation on
every lookup, so a peer revoked mid-job is refused from the next refresh of
the revocation list on.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator

from cryptography import x509

from fedgov.crypto.envelope import (
    Header,
    MalformedEnvelope,
    ReplayedEnvelope,
    open_envelope,
    peek_header,
    seal,
)
from fedgov.crypto.keys import JobKey, NodeKeys, PeerKeys, verify_bundle, verify_job_key
from fedgov.crypto.pki import RevocationCheck
from fedgov.errors import FedgovError, JobFailed
from fedgov.node.store import NodeStore
from fedgov.transport.chunks import relay_chunks
from fedgov.transport.rpc import JOB_PATIENCE, with_retry
from fedgov.v1 import registry_pb2, registry_pb2_grpc, relay_pb2, relay_pb2_grpc

#: Deadline of one relay upload (a hung call on a dead link ends here and is retried).
SEND_TIMEOUT = 300.0


class PeerDirectory:
    """Verified peer keys: long-term bundles and (with ``job_id``) per-job keys, fetched once per job.

    Guarantees for every key returned: the bundle verified against the
    federation CA for that name; it is not revoked by ``revocations`` *now*
    (checked on every lookup, not only the first); its serial is not below the
    highest serial ``store`` has seen for that peer; a per-job key is signed by
    that bundle's key for this job.
    """

    def __init__(
        self,
        registry: registry_pb2_grpc.RegistryStub,
        ca_cert: x509.Certificate,
        revocations: RevocationCheck | None = None,
        store: NodeStore | None = None,
        *,
        job_id: str | None = None,
        abort: threading.Event | None = None,
    ) -> None:
        self._registry = registry
        self._ca = ca_cert
        self._revocations = revocations
        self._store = store
        self._job_id = job_id
        self._abort = abort
        self._cache: dict[str, PeerKeys] = {}
        self._job_keys: dict[str, PeerKeys] = {}

    def __call__(self, name: str) -> PeerKeys:
        if name not in self._cache:
            reply = with_retry(
                lambda: self._registry.GetKeyBundle(registry_pb2.GetKeyBundleRequest(node=name), timeout=30),
                patience=JOB_PATIENCE,
                stop=self._abort.is_set if self._abort else None,
                idempotent=True,
            )
            peer = verify_bundle(reply.bundle, self._ca, name, revocations=self._revocations)
            if self._store is not None:
                self._store.note_bundle(name, peer.bundle_serial, hashlib.sha256(reply.bundle).hexdigest())
            self._cache[name] = peer
        peer = self._cache[name]
        if self._revocations is not None and peer.signing_cert is not None:
            self._revocations.check(peer.signing_cert)
        return peer

    def job_key(self, name: str, *, timeout: float = 600.0) -> PeerKeys:
        """``name``'s sealing key for this job (waits until the peer has published it)."""
        if self._job_id is None:
            raise FedgovError("this peer directory serves no job")
        peer = self(name)  # long-term keys: verified, fresh, not revoked
        if name not in self._job_keys:
            deadline = time.monotonic() + timeout
            while True:
                if self._abort is not None and self._abort.is_set():
                    raise JobFailed("job aborted by the coordinator", where=self._job_id)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise JobFailed(f"'{name}' published no key for this job within {timeout:.0f} s",
                                    where=self._job_id)
                req = registry_pb2.GetJobKeyRequest(job_id=self._job_id, node=name,
                                                    wait_seconds=min(10.0, remaining))
                try:
                    reply = with_retry(lambda r=req: self._registry.GetJobKey(r, timeout=45),
                                       stop=self._abort.is_set if self._abort else None,
                                       patience=JOB_PATIENCE, idempotent=True)
                except FedgovError as exc:
                    if "no job key" in str(exc):
                        continue
                    raise
                break
            self._job_keys[name] = verify_job_key(reply.statement, peer, self._job_id)
        return self._job_keys[name]


class JobChannel:
    """Sealed, ordered, replay-protected messages for one job."""

    def __init__(
        self,
        job_id: str,
        keys: NodeKeys,
        relay: relay_pb2_grpc.RelayStub,
        peers: PeerDirectory,
        store: NodeStore,
        abort: threading.Event,
        job_key: JobKey | None = None,
    ) -> None:
        self.job_id = job_id
        self.keys = keys
        #: this node's key for this job (envelopes to it are sealed to it); None: long-term key
        self.job_key = job_key
        self.relay = relay
        self.peers = peers
        self.store = store
        self.abort = abort
        self._next_seq: dict[tuple[str, str], int] = defaultdict(int)
        #: bytes this node sent / received through the relay (envelopes), for reports
        self.bytes_sent = 0
        self.bytes_received = 0

    def _check_abort(self) -> None:
        if self.abort.is_set():
            raise JobFailed("job aborted by the coordinator", where=self.job_id)

    def send(self, to: str, step: str, payload: bytes) -> None:
        """Seal ``payload`` to ``to`` and hand it to the relay (idempotent on retry)."""
        self._check_abort()
        seq = self._next_seq[(to, step)]
        header = Header(job_id=self.job_id, step=step, sender=self.keys.name, recipient=to, seq=seq)
        target = self.peers.job_key(to) if self.job_key is not None else self.peers(to)
        blob = seal(header, payload, self.keys, target)
        # idempotent: the coordinator stores (job, step, sender, recipient, seq) once, so a send
        # retried across a coordinator restart or a dropped link is never relayed twice
        with_retry(
            lambda: self.relay.Send(relay_chunks(blob, job_id=self.job_id, step=step, recipient=to, seq=seq),
                                    timeout=SEND_TIMEOUT),
            stop=self.abort.is_set,
            patience=JOB_PATIENCE,
            idempotent=True,
        )
        self._next_seq[(to, step)] = seq + 1
        self.bytes_sent += len(blob)
        self.store.audit(
            self.job_id,
            "relay-send",
            to=to,
            step=step,
            seq=seq,
            envelope_bytes=len(blob),
            envelope_sha256=hashlib.sha256(blob).hexdigest(),
            payload_sha256=hashlib.sha256(payload).hexdigest(),
        )

    def send_stream(self, to: str, step: str, chunks: Iterable[bytes]) -> int:
        """Send a sequence of payloads as consecutive messages; the last is flagged.

        Lets the receiver start work on chunk *i* while chunk *i+1* is in
        flight, with memory bounded by one chunk on each side.
        """
        n = 0
        pending: bytes | None = None
        for chunk in chunks:
            if pending is not None:
                self.send(to, step, b"\x00" + pending)
                n += 1
            pending = chunk
        self.send(to, step, b"\x01" + (pending or b""))
        return n + 1

    def recv_stream(self, frm: str, step: str, *, timeout: float = 600.0) -> Iterator[bytes]:
        """Receive what :meth:`send_stream` sent, lazily, chunk by chunk."""
        while True:
            msg = self.recv(frm, step, timeout=timeout)
            if not msg or msg[0] not in (0, 1):
                raise MalformedEnvelope(f"bad stream frame from '{frm}' at step '{step}'", where=self.job_id)
            yield msg[1:]
            if msg[0] == 1:
                return

    def recv(self, frm: str, step: str, *, timeout: float = 600.0) -> bytes:
        """Wait for the next envelope from ``frm`` at ``step``; verify and open it."""
        seq_key = (f"<-{frm}", step)
        seq = self._next_seq[seq_key]
        deadline = time.monotonic() + timeout
        while True:
            self._check_abort()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobFailed(
                    f"no message from '{frm}' at step '{step}' within {timeout:.0f} s", where=self.job_id
                )
            request = relay_pb2.ReceiveRequest(
                job_id=self.job_id, step=step, sender=frm, seq=seq, wait_seconds=min(10.0, remaining)
            )
            # the relay keeps every envelope durably until the job ends, addressed by seq: after a
            # coordinator restart the same request fetches it again (redelivery), and the replay
            # counters in this node's store refuse any envelope already accepted
            parts = with_retry(
                lambda r=request: list(self.relay.Receive(r, timeout=r.wait_seconds + 30)),
                stop=self.abort.is_set,
                patience=JOB_PATIENCE,
                idempotent=True,
            )
            if parts:
                break
        blob = b"".join(p.data for p in sorted(parts, key=lambda p: p.index))
        if len(blob) != parts[0].total_size:
            raise FedgovError(
                f"relay delivered {len(blob)} of {parts[0].total_size} bytes", where=self.job_id
            )
        header = peek_header(blob)
        if header.job_id != self.job_id:
            raise ReplayedEnvelope(
                f"envelope from '{header.sender}' belongs to job {header.job_id}, not this job (replayed?)",
                where=self.job_id,
            )
        me = self.job_key if self.job_key is not None else self.keys
        header, payload = open_envelope(blob, me, self.peers, self.store)
        if header.step != step or header.sender != frm or header.seq != seq:
            raise MalformedEnvelope(
                f"envelope header ({header.where()}) does not match the relay address "
                f"(from {frm}, step {step}, seq {seq})",
                where=self.job_id,
            )
        self._next_seq[seq_key] = seq + 1
        self.bytes_received += len(blob)
        return payload
