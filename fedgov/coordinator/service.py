"""gRPC servicers of the coordinator: thin checks around :class:`CoordinatorStore`.

Every handler first derives the caller from its client certificate and checks
the caller's role; request fields never name the caller. The coordinator
holds no raw data and cannot open relayed envelopes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedgov import __version__
from fedgov.coordinator.store import TERMINAL, CoordinatorStore, JobRow
from fedgov.crypto.envelope import peek_header
from fedgov.crypto.keys import bundle_serial, result_key_id
from fedgov.crypto.pki import Identity
from fedgov.crypto.revocation import Revocations
from fedgov.crypto.signing import verify_manifest
from fedgov.errors import CryptoError, FedgovError
from fedgov.ledger.entries import now_ms
from fedgov.ledger.log import TransparencyLog, public_key_bytes
from fedgov.manifest import check_fresh, parse_manifest
from fedgov.node.witness import head_from_pb, head_to_pb
from fedgov.params import check_parameters
from fedgov.transport.chunks import relay_chunks
from fedgov.transport.tls import SESSION_METADATA, caller_identity
from fedgov.v1 import (
    common_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    relay_pb2,
    relay_pb2_grpc,
)

log = logging.getLogger("fedgov.coordinator")

MAX_WAIT = 30.0


def _require(context: grpc.ServicerContext, *roles: str) -> Identity:
    ident = caller_identity(context)
    if ident.role not in roles:
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"'{ident.name}' has role '{ident.role}'; this call needs {' or '.join(roles)}",
        )
    return ident


def _session_of(context: grpc.ServicerContext) -> str | None:
    """The caller's per-process session id (``fedgov-session`` metadata), or None."""
    for key, value in context.invocation_metadata() or ():
        if key == SESSION_METADATA:
            return str(value) or None
    return None


def job_status(job: JobRow) -> jobs_pb2.JobStatus:
    return jobs_pb2.JobStatus(
        job_id=job.job_id,
        kind=job.kind,
        purpose=job.purpose,
        requester=job.requester,
        state=job.state,
        reason=job.reason,
        created_at=job.created_at,
        updated_at=job.updated_at,
        participants=[
            jobs_pb2.ParticipantStatus(
                node=p.node,
                decision=p.decision,
                reason=p.reason,
                task_state=p.task_state,
                approvers=list(p.approvers),
            )
            for p in job.participants
        ],
    )


class RegistryService(registry_pb2_grpc.RegistryServicer):
    def __init__(
        self, store: CoordinatorStore, ca_cert: x509.Certificate, revocations: Revocations | None = None
    ) -> None:
        self.store = store
        self.ca_cert = ca_cert
        self.revocations = revocations if revocations is not None else Revocations(ca_cert)

    def Register(self, request, context):  # noqa: N802
        ident = _require(context, "node")
        if not request.key_bundle:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key_bundle is required")
        # The coordinator checks the bundle too (nodes re-check; they never trust us):
        # certified for this node, not revoked, not older than the bundle it replaces.
        from fedgov.crypto.keys import verify_bundle

        try:
            verify_bundle(request.key_bundle, self.ca_cert, ident.name, revocations=self.revocations)
        except FedgovError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"key bundle rejected: {exc}")
        old = self.store.node_bundle(ident.name)
        if old is not None and bundle_serial(request.key_bundle) < bundle_serial(old):
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"key bundle rejected: serial {bundle_serial(request.key_bundle)} is older than the "
                f"registered serial {bundle_serial(old)} (a superseded kit?)",
            )
        cert_pem = context.auth_context()["x509_pem_cert"][0]
        der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
        session = _session_of(context)
        broken = self.store.register_node(
            ident.name, request.key_bundle, hashlib.sha256(der).hexdigest(), session=session
        )
        for job_id in broken:
            self.store.finish_job(
                job_id, "failed",
                f"node '{ident.name}' restarted during the job (a new process registered; "
                "the old one's protocol state is lost)",
            )
        log.info("node %s registered (session %s)", ident.name, (session or "-")[:8])
        return registry_pb2.RegisterReply(node=ident.name, coordinator_version=__version__)

    def PublishCatalog(self, request, context):  # noqa: N802
        ident = _require(context, "node")
        catalog = []
        for d in request.datasets:
            item = {
                "name": d.name,
                "schema": json.loads(d.schema_json or "{}"),
                "schema_digest": d.schema_digest,
                "rows": d.rows,
                "fact": bytes(d.fact),
                "purposes": {p.purpose: sorted(set(p.kinds)) for p in d.purposes if p.purpose},
            }
            if d.quality_json:
                try:
                    quality = json.loads(d.quality_json)
                except ValueError:
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"dataset {d.name}: quality_json is not JSON"
                    )
                if not isinstance(quality, dict):
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"dataset {d.name}: quality_json is not an object"
                    )
                item["quality"] = quality
            catalog.append(item)
        self.store.publish_catalog(ident.name, catalog)
        return common_pb2.Ack()

    def ListNodes(self, request, context):  # noqa: N802
        caller_identity(context)
        now = time.time()
        out = []
        for n in self.store.nodes():
            out.append(
                registry_pb2.NodeInfo(
                    name=n["name"],
                    online=now - n["last_seen"] < 30,
                    last_seen=n["last_seen"],
                    registered_at=n["registered_at"],
                    datasets=[
                        common_pb2.DatasetInfo(
                            name=d["name"],
                            schema_json=json.dumps(d["schema"], sort_keys=True),
                            schema_digest=d["schema_digest"],
                            rows=d["rows"],
                            quality_json=json.dumps(d["quality"], sort_keys=True) if d.get("quality") else "",
                            purposes=[
                                common_pb2.PurposeAllowed(purpose=p, kinds=k)
                                for p, k in sorted((d.get("purposes") or {}).items())
                            ],
                        )
                        for d in n["catalog"]
                    ],
                )
            )
        return registry_pb2.ListNodesReply(nodes=out)

    def GetKeyBundle(self, request, context):  # noqa: N802
        caller_identity(context)
        bundle = self.store.node_bundle(request.node)
        if bundle is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"node '{request.node}' is not registered")
        return registry_pb2.KeyBundle(node=request.node, bundle=bundle)

    # -- revocation lists and per-job keys (h13b) -----------------------------
    def PublishRevocations(self, request, context):  # noqa: N802
        ident = _require(context, "admin")
        try:
            newer = self.revocations.update(request.crl_der, where="published revocation list")
        except FedgovError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        cur = self.revocations.current
        assert cur is not None
        if not newer:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the coordinator already holds revocation list #{cur.number}; publish a newer one",
            )
        log.info("revocation list #%d from %s: %d certificate(s) revoked", cur.number, ident.name, len(cur.revoked))
        return common_pb2.Ack()

    def GetRevocations(self, request, context):  # noqa: N802
        caller_identity(context)
        cur = self.revocations.current
        return registry_pb2.RevocationList(crl_der=cur.der if cur is not None else b"")

    def _job_participant(self, job_id: str, ident: Identity, context) -> JobRow:
        job = self.store.job(job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job '{job_id}'")
        if ident.name not in {p.node for p in job.participants}:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"'{ident.name}' is not a participant of {job_id}")
        return job

    def PublishJobKey(self, request, context):  # noqa: N802
        ident = _require(context, "node")
        job = self._job_participant(request.job_id, ident, context)
        if job.state != "running":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"job {job.job_id} is {job.state}")
        if request.node and request.node != ident.name:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "a node publishes only its own job key")
        if not self.store.put_job_key(request.job_id, ident.name, request.statement):
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{ident.name} already published its key for {job.job_id}")
        return common_pb2.Ack()

    def GetJobKey(self, request, context):  # noqa: N802
        ident = _require(context, "node")
        job = self._job_participant(request.job_id, ident, context)
        if job.state in TERMINAL:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"job {job.job_id} is {job.state}")
        deadline = time.monotonic() + max(0.0, min(request.wait_seconds, MAX_WAIT))
        while True:
            with self.store.changed:
                statement = self.store.job_key(request.job_id, request.node)
                if statement is not None or time.monotonic() >= deadline or not context.is_active():
                    break
                self.store.changed.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
        if statement is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job key of '{request.node}' for {request.job_id} yet")
        return registry_pb2.JobKey(job_id=request.job_id, node=request.node, statement=statement)


class JobsService(jobs_pb2_grpc.JobsServicer):
    def __init__(self, store: CoordinatorStore, ca_cert: x509.Certificate) -> None:
        self.store = store
        self.ca_cert = ca_cert

    # -- analysts --------------------------------------------------------
    def Submit(self, request, context):  # noqa: N802
        ident = _require(context, "analyst", "admin")
        cert_pem = context.auth_context()["x509_pem_cert"][0]
        try:
            manifest = parse_manifest(request.manifest_toml)
            check_parameters(manifest.kind, manifest.parameters)
            signer = verify_manifest(cert_pem, self.ca_cert, request.manifest_toml, request.signature)
            check_fresh(manifest)  # every node checks again; this only gives an early, clear error
        except FedgovError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if signer.name != ident.name:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "manifest signed by someone else")
        if manifest.requester is not None and manifest.requester != ident.name:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"manifest names requester '{manifest.requester}' but you are '{ident.name}'",
            )
        nodes = {n["name"]: n for n in self.store.nodes()}
        for i, p in enumerate(manifest.participants):
            where = f"manifest: participants[{i}]"
            if p.node not in nodes:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{where}: node '{p.node}' is not registered (known: {', '.join(sorted(nodes)) or 'none'})",
                )
            if p.role == "arbiter":
                continue
            catalog = {d["name"]: d for d in nodes[p.node]["catalog"]}
            if p.dataset not in catalog:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{where}: node '{p.node}' publishes no dataset '{p.dataset}' "
                    f"(published: {', '.join(sorted(catalog)) or 'none'})",
                )
            fields = {f["name"] for f in catalog[p.dataset]["schema"].get("fields", [])}
            unknown = [f for f in p.fields if f not in fields]
            if unknown:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{where}: dataset '{p.node}/{p.dataset}' has no field(s) {', '.join(unknown)}",
                )
        job_id = self.store.create_job(
            kind=manifest.kind,
            purpose=manifest.purpose,
            requester=ident.name,
            manifest=request.manifest_toml,
            signature=request.signature,
            requester_cert=cert_pem,
            nodes=list(manifest.nodes),
        )
        log.info("job %s (%s) submitted by %s", job_id, manifest.kind, ident.name)
        return job_status(self._job(job_id, context))

    def _job(self, job_id: str, context) -> JobRow:
        job = self.store.job(job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job '{job_id}'")
        return job

    def _readable(self, job: JobRow, ident: Identity, context) -> None:
        if ident.role in ("admin", "auditor") or ident.name == job.requester:
            return
        if ident.role == "node" and ident.name in {p.node for p in job.participants}:
            return
        context.abort(grpc.StatusCode.PERMISSION_DENIED, f"'{ident.name}' may not see job {job.job_id}")

    def Get(self, request, context):  # noqa: N802
        ident = caller_identity(context)
        job = self._job(request.job_id, context)
        self._readable(job, ident, context)
        st = job_status(job)
        st.manifest_toml = job.manifest  # readers of the job may read what it asked
        st.events.extend(  # the same readers: when each of those things happened
            jobs_pb2.JobEvent(ts=e.ts, event=e.event, node=e.node, detail=e.detail)
            for e in self.store.job_events(job.job_id)
        )
        return st

    def List(self, request, context):  # noqa: N802
        ident = caller_identity(context)
        jobs = self.store.jobs(request.state or None)
        if ident.role not in ("admin", "auditor"):
            jobs = [
                j for j in jobs if j.requester == ident.name or ident.name in {p.node for p in j.participants}
            ]
        return jobs_pb2.ListJobsReply(jobs=[job_status(j) for j in jobs])

    def Cancel(self, request, context):  # noqa: N802
        ident = _require(context, "analyst", "admin")
        job = self._job(request.job_id, context)
        if ident.role != "admin" and ident.name != job.requester:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "only the requester or an admin may cancel")
        if job.state in TERMINAL:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"job {job.job_id} already {job.state}")
        self.store.finish_job(job.job_id, "cancelled", f"cancelled by {ident.name}")
        return job_status(self._job(request.job_id, context))

    def Result(self, request, context):  # noqa: N802
        ident = caller_identity(context)
        job = self._job(request.job_id, context)
        if ident.role != "admin" and ident.name != job.requester:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "only the requester may read the result")
        # results are sealed to the requester's per-job key: relayed, never read here
        try:
            key = parse_manifest(job.manifest).result_key
        except FedgovError:
            key = None
        key_id = result_key_id(key) if key is not None else ""
        sealed = [
            jobs_pb2.SealedResult(node=n, envelope=b, key_id=key_id)
            for n, b in self.store.sealed_results(job.job_id)
        ]
        return jobs_pb2.JobResult(status=job_status(job), result_json=job.result_json, sealed=sealed)

    # -- nodes -----------------------------------------------------------
    def PollTasks(self, request, context):  # noqa: N802
        ident = _require(context, "node")
        if self.store.node_bundle(ident.name) is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "register first")
        deadline = time.monotonic() + max(0.0, min(request.wait_seconds, MAX_WAIT))
        while True:
            self.store.touch_node(ident.name)
            tasks = self.store.take_tasks(ident.name)
            if tasks or time.monotonic() >= deadline or not context.is_active():
                break
            with self.store.changed:
                self.store.changed.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
        return jobs_pb2.PollTasksReply(
            tasks=[
                jobs_pb2.Task(
                    job_id=job.job_id,
                    action=action,
                    manifest_toml=job.manifest,
                    manifest_signature=job.signature,
                    requester_cert_pem=job.requester_cert,
                    reason=job.reason,
                )
                for action, job in tasks
            ]
        )

    def _participant(self, job_id: str, ident: Identity, context) -> JobRow:
        job = self._job(job_id, context)
        if ident.name not in {p.node for p in job.participants}:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"node '{ident.name}' is not a participant of {job_id}"
            )
        return job

    def Decide(self, request, context):  # noqa: N802
        ident = _require(context, "node")
        self._participant(request.job_id, ident, context)
        new = self.store.record_decision(
            request.job_id, ident.name, request.approve, request.reason, list(request.approvers),
            bytes(request.fact),
        )
        if new:
            log.info("job %s -> %s", request.job_id, new)
        return common_pb2.Ack()

    def Report(self, request, context):  # noqa: N802
        ident = _require(context, "node")
        job = self._participant(request.job_id, ident, context)
        if request.result_json:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "results travel sealed to the requester (TaskReport.sealed_result); "
                "the coordinator accepts no plaintext result",
            )
        if request.sealed_result:
            try:
                h = peek_header(request.sealed_result)
            except FedgovError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"sealed_result: {exc}")
            if (h.job_id, h.step, h.sender, h.recipient) != (job.job_id, "result", ident.name, job.requester):
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"sealed_result is addressed {h.sender}->{h.recipient} for {h.job_id}/{h.step}, "
                    f"not {ident.name}->{job.requester} for {job.job_id}/result",
                )
        if request.public_json:
            try:
                facts = json.loads(request.public_json)
            except ValueError:
                facts = None
            if not isinstance(facts, dict):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "public_json is not a JSON object")
        new = self.store.record_report(
            request.job_id,
            ident.name,
            request.ok,
            request.result_json,
            request.error,
            request.public_json,
            sealed_result=request.sealed_result,
            facts=[bytes(f) for f in request.facts],
        )
        if new:
            log.info("job %s -> %s", request.job_id, new)
        return common_pb2.Ack()


class RelayService(relay_pb2_grpc.RelayServicer):
    def __init__(self, store: CoordinatorStore, max_payload: int) -> None:
        self.store = store
        self.max_payload = max_payload

    def _running_participants(self, job_id: str, nodes: tuple[str, ...], context) -> None:
        job = self.store.job(job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job '{job_id}'")
        if job.state != "running":
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job {job_id} is {job.state}" + (f": {job.reason}" if job.reason else ""),
            )
        members = {p.node for p in job.participants}
        for n in nodes:
            if n not in members:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, f"'{n}' is not a participant of {job_id}")

    def Send(self, request_iterator, context):  # noqa: N802
        ident = _require(context, "node")
        parts: list[bytes] = []
        first: relay_pb2.RelayChunk | None = None
        received = 0
        for chunk in request_iterator:
            if first is None:
                first = chunk
                if chunk.total_size > self.max_payload:
                    context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"payload of {chunk.total_size} bytes exceeds the relay limit of "
                        f"{self.max_payload} bytes (coordinator max_payload_mb)",
                    )
                self._running_participants(chunk.job_id, (ident.name, chunk.recipient), context)
            elif (chunk.job_id, chunk.step, chunk.recipient, chunk.seq) != (
                first.job_id,
                first.step,
                first.recipient,
                first.seq,
            ):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "chunks of one message changed address")
            if chunk.index != len(parts):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"chunk {chunk.index} out of order")
            received += len(chunk.data)
            if received > first.total_size:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "more bytes than announced")
            parts.append(chunk.data)
        if first is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty message")
        if len(parts) != first.total or received != first.total_size:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "message truncated")
        self.store.put_message(
            first.job_id, first.step, ident.name, first.recipient, first.seq, b"".join(parts)
        )
        return common_pb2.Ack()

    def Receive(self, request, context) -> Iterator[relay_pb2.RelayChunk]:  # noqa: N802
        ident = _require(context, "node")
        deadline = time.monotonic() + max(0.0, min(request.wait_seconds, MAX_WAIT))
        while True:
            self.store.touch_node(ident.name)
            self._running_participants(request.job_id, (ident.name, request.sender), context)
            # check and wait under the condition's lock: a message stored between the two
            # would otherwise be noticed only at the next timeout (up to a second late)
            with self.store.changed:
                data = self.store.get_message(
                    request.job_id, request.step, request.sender, ident.name, request.seq
                )
                if data is not None or time.monotonic() >= deadline or not context.is_active():
                    break
                self.store.changed.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
        if data is None:
            return
        yield from relay_chunks(
            data,
            job_id=request.job_id,
            step=request.step,
            sender=request.sender,
            recipient=ident.name,
            seq=request.seq,
        )


#: A head older than this is re-signed on GetHead, so witnesses see time advance
#: (and a log restored from an old copy shows a fresh, inconsistent head).
HEAD_MAX_AGE_MS = 300_000
#: The freshest head a witness can make the log sign (one signature per second at most).
MIN_HEAD_AGE_MS = 1_000
#: Largest gossip envelope relayed between nodes' witnesses.
MAX_GOSSIP_BYTES = 64 * 1024
#: Largest page of GetEntries in one call.
MAX_ENTRIES_PER_CALL = 100_000


class LedgerService(ledger_pb2_grpc.LedgerServicer):
    """Read access to the transparency log for every authenticated caller; cosigning for nodes."""

    def __init__(
        self,
        store: CoordinatorStore,
        ledger: TransparencyLog,
        ca_cert: x509.Certificate,
        key_statement: ledger_pb2.LogKey,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.ca_cert = ca_cert
        self.key_statement = key_statement
        #: latest sealed gossip envelope per (sender, recipient); opaque, in memory only
        self._gossip: dict[tuple[str, str], bytes] = {}
        self._gossip_lock = threading.Lock()

    def _flush(self, context) -> None:
        try:
            self.store.flush_ledger()
        except FedgovError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"ledger unavailable: {exc}")

    def GetHead(self, request, context):  # noqa: N802
        caller_identity(context)
        self._flush(context)
        try:
            sth = self.ledger.latest_head()
            # a witness may ask for a fresher head (ledger.proto GetHeadRequest.max_age_ms)
            max_age = max(int(request.max_age_ms), MIN_HEAD_AGE_MS) if request.max_age_ms else HEAD_MAX_AGE_MS
            if sth is None or sth.size != self.ledger.size or now_ms() - sth.timestamp > min(max_age, HEAD_MAX_AGE_MS):
                sth = self.ledger.tree_head(fresh=True)
        except FedgovError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"ledger unavailable: {exc}")
        return ledger_pb2.GetHeadReply(head=head_to_pb(sth), key=self.key_statement)

    def GetConsistencyProof(self, request, context):  # noqa: N802
        caller_identity(context)
        try:
            new = request.new_size or self.ledger.size
            hashes = self.ledger.consistency_proof(request.old_size, new)
        except FedgovError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return ledger_pb2.Proof(hashes=hashes)

    def GetInclusionProof(self, request, context):  # noqa: N802
        caller_identity(context)
        try:
            size = request.size or self.ledger.size
            if request.index >= size:
                raise FedgovError(f"no entry {request.index} in a tree of size {size}", where="ledger")
            hashes = self.ledger.inclusion_proof(request.index, size)
            data = self.ledger.entry(request.index)
        except FedgovError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return ledger_pb2.InclusionProof(index=request.index, size=size, entry=data, hashes=hashes)

    def GetEntries(self, request, context) -> Iterator[ledger_pb2.LedgerEntry]:  # noqa: N802
        caller_identity(context)
        end = request.end or self.ledger.size
        end = min(end, request.start + MAX_ENTRIES_PER_CALL)
        for idx, data in self.ledger.iter_entries(request.start, end):
            yield ledger_pb2.LedgerEntry(index=idx, data=data)

    def QueryEntries(self, request, context):  # noqa: N802
        caller_identity(context)
        self._flush(context)
        page, nxt = self.ledger.query(
            types=list(request.types),
            node=request.node or None,
            job=request.job or None,
            since_ms=request.since_ms or None,
            until_ms=request.until_ms or None,
            before=request.before if request.has_before else None,
            limit=request.limit or 50,
            ascending=request.ascending,
        )
        return ledger_pb2.QueryEntriesReply(
            entries=[ledger_pb2.LedgerEntry(index=i, data=d) for i, d in page],
            next=nxt or 0,
            has_next=nxt is not None,
            size=self.ledger.size,
        )

    def ListHeads(self, request, context):  # noqa: N802
        caller_identity(context)
        heads = self.ledger.heads_page(before_ts=request.before_ts or None, limit=request.limit or 50)
        return ledger_pb2.ListHeadsReply(heads=[head_to_pb(h) for h in heads])

    def AddCosignature(self, request, context):  # noqa: N802
        ident = _require(context, "node")
        bundle = self.store.node_bundle(ident.name)
        if bundle is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "register first")
        from fedgov.crypto.keys import verify_bundle

        try:
            key = verify_bundle(bundle, self.ca_cert, ident.name).signing_key
            self.ledger.add_cosignature(ident.name, head_from_pb(request.head), request.signature, key)
        except CryptoError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cosignature refused: {exc}")
        return common_pb2.Ack()

    def GetCosignatures(self, request, context):  # noqa: N802
        caller_identity(context)
        return ledger_pb2.GetCosignaturesReply(
            cosignatures=[
                ledger_pb2.Cosignature(witness=c.witness, head=head_to_pb(c.sth), signature=c.signature)
                for c in (
                    self.ledger.latest_cosignatures()
                    if request.latest
                    else self.ledger.cosignatures(request.size or None)
                )
            ]
        )

    def SendGossip(self, request, context):  # noqa: N802
        """Keep a node's sealed head gossip for one peer (opaque bytes; the latest replaces the last)."""
        ident = _require(context, "node")
        if len(request.envelope) > MAX_GOSSIP_BYTES:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"gossip over {MAX_GOSSIP_BYTES} bytes")
        if self.store.node_bundle(request.recipient) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no node '{request.recipient}'")
        with self._gossip_lock:
            self._gossip[(ident.name, request.recipient)] = bytes(request.envelope)
        return common_pb2.Ack()

    def GetGossip(self, request, context):  # noqa: N802
        """The latest gossip envelope from each peer addressed to the caller."""
        ident = _require(context, "node")
        with self._gossip_lock:
            got = [(s, e) for (s, r), e in self._gossip.items() if r == ident.name]
        return ledger_pb2.GetGossipReply(
            messages=[ledger_pb2.GossipMessage(sender=s, recipient=ident.name, envelope=e) for s, e in got]
        )


def key_statement(ledger: TransparencyLog, tls_cert_pem: bytes, endorsement: bytes) -> ledger_pb2.LogKey:
    """The LogKey message GetHead carries: raw key, endorsement, coordinator certificate."""
    return ledger_pb2.LogKey(
        public_key=public_key_bytes(ledger.public_key),
        endorsement=endorsement,
        coordinator_cert_pem=tls_cert_pem,
    )
