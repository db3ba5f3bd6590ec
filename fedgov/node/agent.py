"""The department node: dials out, registers, enforces its policy, runs tasks.

Guarantees:
- no inbound port: every connection is an outbound mTLS call to the coordinator;
- every task is checked here, against this node's own policy, with the
  analyst's signature on the manifest verified against the federation CA —
  the coordinator's word is never taken; the manifest that runs must be the
  one that was approved (same digest);
- manual approval counts distinct approvers of *this* department whose signed
  decisions verify;
- identity lifecycle (h13b): the node checks its own kit before it dials
  (expired, not yet valid, key mismatch, foreign CA, revoked: it exits with the
  reason); a manifest runs here at most once, inside its validity window
  (replay-proof); signers, approvers and peers are checked against the CA's
  revocation list, refreshed every ``crl_refresh_seconds``; each job gets a
  fresh sealing key, erased when the job ends; results are sealed to the
  requester's per-job key, so the coordinator relays only their sizes;
- every payload that leaves the node (relay envelope digests and sizes,
  result JSON, decisions) is appended to the local hash-chained audit log;
- when the coordinator goes away the node reconnects with jittered backoff;
  its running jobs keep their protocol state and carry on once it is back
  (same session id: the coordinator knows it is the same process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.csv as pacsv
from cryptography import x509

from fedgov import __version__
from fedgov.crypto.envelope import Header, seal
from fedgov.crypto.keys import JobKey, NodeKeys, result_recipient
from fedgov.crypto.kits import KitError, check_kit
from fedgov.crypto.pki import RevokedCertificate, identity_from_cert
from fedgov.crypto.revocation import Revocations
from fedgov.crypto.signing import verify_approval, verify_manifest
from fedgov.datasources import read_dataset
from fedgov.errors import FedgovError
from fedgov.manifest import Manifest, Participant, check_fresh, manifest_digest, parse_manifest
from fedgov.node import approvals as approval_rules
from fedgov.node.brief import build_brief
from fedgov.node.channel import JobChannel, PeerDirectory
from fedgov.node.config import NodeConfig
from fedgov.node.context import default_public_facts
from fedgov.node.handlers import HANDLERS, PRECHECKS, TaskContext
from fedgov.node.ledger_facts import dataset_fact, decision_fact, report_facts
from fedgov.node.quality_publish import quality_json, quality_scores
from fedgov.node.store import NodeStore
from fedgov.node.witness import NodeWitness, WitnessError
from fedgov.params import check_parameters, disclosure_refusals
from fedgov.policy import Decision
from fedgov.privatefs import private_dir, private_umask
from fedgov.transport.rpc import JOB_PATIENCE, describe, with_retry
from fedgov.transport.tls import TlsMaterial, secure_channel
from fedgov.v1 import (
    common_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
    ledger_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    relay_pb2_grpc,
)

log = logging.getLogger("fedgov.node")

#: How long a node keeps retrying a registration refused because another process
#: holds its identity (covers a restart right after a crash) before it exits.
DUPLICATE_PATIENCE = 10.0


class DuplicateIdentity(FedgovError):
    """Another live process holds this node's identity at the coordinator."""


def _stricter(train: Decision, held_out: Decision) -> Decision:
    """One decision for a task that reads two datasets (training and ``eval_dataset``).

    The held-out dataset is data too: the task needs manual approval if either
    does, the larger number of approvers, the larger minimum cohort, and only
    approvers both allow. Disclosure settings stay the training dataset's
    (the caller checks the held-out dataset's separately).
    """
    if train.approvers and held_out.approvers:
        approvers = tuple(sorted(set(train.approvers) & set(held_out.approvers)))
        if not approvers:
            return Decision(False, ("no approver is listed by both the training and the eval dataset's policy",))
    else:
        approvers = train.approvers or held_out.approvers
    manual = "manual" in (train.approval, held_out.approval)
    return dataclasses.replace(
        train,
        approval="manual" if manual else "auto",
        approvers_required=max(train.approvers_required, held_out.approvers_required) if manual else 1,
        approvers=approvers,
        min_cohort=max(train.min_cohort, held_out.min_cohort),
        standing_alignment=train.standing_alignment and held_out.standing_alignment,
    )


def declared_columns(
    requested: Sequence[str] | None, declared: Sequence[str], dataset: str, allowed: Collection[str]
) -> list[str]:
    """The columns a job handler may read: ``requested`` (default: all ``declared``), all declared.

    Guarantees: the node's data loader never yields a field the signed
    manifest did not declare for this node (the fields its policy checked),
    nor a dataset other than the ones the task was approved for; a handler
    that asks raises :class:`FedgovError` naming the field or dataset.
    """
    cols = list(requested) if requested is not None else list(declared)
    outside = [c for c in cols if c not in declared]
    if outside:
        raise FedgovError(f"handler asked for undeclared field(s) {', '.join(outside)}")
    if dataset not in allowed:
        raise FedgovError(f"handler asked for dataset '{dataset}' this task was not approved for")
    return cols


class NodeAgent:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        private_umask()  # node.db, outputs/*, caches: 0600 files in 0700 directories
        self.material = TlsMaterial.from_kit(config.kit)
        ident = self.material.identity
        if ident.role != "node" or ident.name != config.name:
            raise FedgovError(
                f"kit certificate is '{ident.name}' ({ident.role}), expected node '{config.name}'",
                where=str(config.kit),
            )
        self.ca_cert = x509.load_pem_x509_certificate(self.material.ca)
        private_dir(config.state_dir)
        self.revocations = Revocations(
            self.ca_cert, store=config.state_dir / "crl.der", sources=(config.kit / "crl.pem",)
        )
        self._check_own_kit()
        self.keys = NodeKeys.load(config.kit)
        #: random per process: the coordinator refuses a second live process with this identity
        self.session = secrets.token_hex(16)
        self._crl_due = 0.0
        self.store = NodeStore(config.state_dir)
        self.stop = threading.Event()
        self._running: dict[str, threading.Event] = {}
        self._evaluated: set[str] = set()
        #: dataset -> rows, read at registration (for the approvers' size estimates)
        self._rows: dict[str, int] = {}
        #: job -> approvers counted at the last check (audited when it changes)
        self._counted: dict[str, tuple[str, ...]] = {}
        self._ignored: set[str] = set()

    def _check_own_kit(self) -> None:
        """Exit (FedgovError) before dialling if this node's own kit cannot work; log expiry warnings."""
        try:
            status = check_kit(self.config.kit, name=self.config.name, role="node", revocations=self.revocations)
        except KitError as exc:
            raise FedgovError(f"cannot start: {exc}") from None
        for warning in status.warnings:
            log.warning("kit: %s", warning)

    # -- connection ----------------------------------------------------------
    def _connect(self) -> grpc.Channel:
        channel = secure_channel(self.material, self.config.coordinator, session=self.session)
        self.registry = registry_pb2_grpc.RegistryStub(channel)
        self.jobs = jobs_pb2_grpc.JobsStub(channel)
        self.relay = relay_pb2_grpc.RelayStub(channel)
        self.witness = NodeWitness(
            self.config.state_dir,
            ledger_pb2_grpc.LedgerStub(channel),
            None,
            self.keys.sign,
            ca_cert=self.ca_cert,
            kit_dir=self.config.kit,
            settings=self.config.ledger,
            keys=self.keys,
            peers=PeerDirectory(self.registry, self.ca_cert, self.revocations, self.store),
            registry=self.registry,
        )
        return channel

    def _register_identity(self) -> None:
        """Register this process; give up (DuplicateIdentity / FedgovError) when the coordinator refuses it.

        Refused because another live process holds the identity: retried for
        :data:`DUPLICATE_PATIENCE` seconds (the other may be this node's
        previous process, just killed), then fatal. Refused because the
        certificate is revoked or unacceptable: fatal at once.
        """
        deadline: float | None = None
        while True:
            try:
                self.registry.Register(
                    registry_pb2.RegisterRequest(software_version=__version__, key_bundle=self.keys.bundle()),
                    timeout=10,
                )
                return
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise FedgovError(f"the coordinator refuses this node: {exc.details()}") from None
                if code not in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION):
                    raise
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    raise FedgovError(f"registration refused: {exc.details()}") from None
                if deadline is None:
                    deadline = time.monotonic() + DUPLICATE_PATIENCE
                    log.warning("registration refused: %s (retrying for %.0f s)", exc.details(), DUPLICATE_PATIENCE)
                if time.monotonic() >= deadline or self.stop.is_set():
                    raise DuplicateIdentity(f"registration refused: {exc.details()}") from None
                self.stop.wait(1.0)

    def _refresh_revocations(self) -> None:
        """Fetch the CA's revocation list from the coordinator every ``crl_refresh_seconds``.

        A list adopted here takes effect at once for every later signer,
        approver, bundle and envelope check. An invalid list raises an alarm
        in the log; an older or the same list is ignored. When the list revokes
        this node's own certificate, the node stops.
        """
        now = time.monotonic()
        if now < self._crl_due:
            return
        self._crl_due = now + self.config.crl_refresh_seconds
        reply = self.registry.GetRevocations(
            registry_pb2.GetRevocationsRequest(have_number=self.revocations.number), timeout=10
        )
        if reply.crl_der:
            try:
                if self.revocations.update(reply.crl_der, where="revocation list from the coordinator"):
                    cur = self.revocations.current
                    assert cur is not None
                    log.info("revocation list #%d applied: %d certificate(s) revoked", cur.number, len(cur.revoked))
                    self.store.audit("-", "revocation-list", number=cur.number, revoked=len(cur.revoked))
            except FedgovError as exc:
                log.error("ALARM: the coordinator served an invalid revocation list: %s", exc)
        cur = self.revocations.current
        if cur is not None and cur.stale():
            log.warning("revocation list #%d is past its next update (%s): ask the admin for a new one",
                        cur.number, cur.next_update)
        try:
            self.revocations.check(x509.load_pem_x509_certificate(self.material.cert))
            self.revocations.check(self.keys.signing_cert)
        except RevokedCertificate as exc:
            log.error("ALARM: this node's own %s; stopping", exc.message)
            self.stop.set()

    def _register(self) -> None:
        self._register_identity()
        tables = {ds.name: self._read(ds.name, None) for ds in self.config.datasets.values()}
        scores = quality_scores(self.config, tables=tables)
        datasets = []
        for ds in self.config.datasets.values():
            table = tables[ds.name]
            qjson = quality_json(scores[ds.name]) if ds.name in scores else ""
            self._rows[ds.name] = table.num_rows
            # the ledger's dataset_published fact, in this department's own signed words
            # (the same bytes again while nothing changed: the coordinator logs changes only)
            quality = json.loads(qjson) if qjson else {}
            fact = self.witness.republish(
                f"dataset:{ds.name}",
                [ds.schema.digest(), table.num_rows, quality],
                lambda ds=ds, table=table, quality=quality: dataset_fact(
                    self.config.name, self.keys.sign, ds.name, ds.schema.digest(), table.num_rows, quality
                ),
            )
            policy = self.config.policy.datasets.get(ds.name)
            allowed = policy.allowed_purposes() if policy is not None else {}
            datasets.append(
                common_pb2.DatasetInfo(
                    name=ds.name,
                    schema_json=json.dumps(ds.schema.to_dict(), sort_keys=True),
                    schema_digest=ds.schema.digest(),
                    rows=table.num_rows,
                    quality_json=qjson,
                    fact=fact,
                    purposes=[  # the policy's purposes (policy text, never data): the console's catalogue
                        common_pb2.PurposeAllowed(purpose=p, kinds=list(k)) for p, k in allowed.items()
                    ],
                )
            )
        self.registry.PublishCatalog(registry_pb2.PublishCatalogRequest(datasets=datasets), timeout=10)
        log.info(
            "node %s registered with %s (%d datasets)",
            self.config.name,
            self.config.coordinator,
            len(datasets),
        )

    def _read(self, dataset: str, columns: Sequence[str] | None) -> pa.Table:
        ds = self.config.datasets[dataset]
        return read_dataset(
            ds.source, ds.schema, base_dir=ds.base_dir, table=ds.table, query=ds.query, columns=columns
        )

    def run(self) -> None:
        """Serve until :attr:`stop` is set; reconnect with backoff on failure.

        One gRPC channel serves the whole process (gRPC re-dials it by itself),
        so a coordinator restart or a dropped link never leaves a running job
        holding a closed channel: job threads keep their protocol state and
        retry their relay calls, and the poll loop re-registers with the same
        session id, which tells the coordinator this is the same process.
        """
        delay = 0.5
        channel = self._connect()
        try:
            while not self.stop.is_set():
                try:
                    self._register()
                    delay = 0.5
                    self._poll_loop()
                except grpc.RpcError as exc:
                    err = describe(exc)
                    log.warning("coordinator connection lost (%s); retrying in %.1f s", err, delay)
                if self.stop.wait(delay * (0.5 + random.random())):
                    break
                delay = min(delay * 2, 10.0)
        finally:
            for ev in list(self._running.values()):
                ev.set()
            channel.close()

    def _poll_loop(self) -> None:
        while not self.stop.is_set():
            try:
                # consistency of the coordinator's ledger with the last head seen
                # (at most every 10 s); a standing alarm raises every time
                self.witness.maybe_check()
            except WitnessError as exc:
                log.error("ALARM: %s; this node refuses all tasks until an operator investigates", exc)
                self.stop.wait(5.0)
                continue
            self._refresh_revocations()
            wait = min(1.0 if self.store.pending() else 5.0, self.config.ledger.witness_interval)
            reply = self.jobs.PollTasks(jobs_pb2.PollTasksRequest(wait_seconds=wait), timeout=wait + 10)
            for task in reply.tasks:
                self._handle(task)
            self._check_approvals()

    # -- tasks ---------------------------------------------------------------
    def _handle(self, task: jobs_pb2.Task) -> None:
        if task.action == "evaluate":
            self._evaluate(task)
        elif task.action == "run":
            self._start(task)
        elif task.action == "abort":
            ev = self._running.get(task.job_id)
            if ev is not None:
                ev.set()
            self.store.set_pending_status(task.job_id, "aborted")
            log.info("job %s aborted: %s", task.job_id, task.reason)

    def _check_task(self, task: jobs_pb2.Task) -> tuple[Manifest, Decision]:
        """Verify the analyst's signature and evaluate this node's policy."""
        signer = verify_manifest(
            task.requester_cert_pem,
            self.ca_cert,
            task.manifest_toml,
            task.manifest_signature,
            revocations=self.revocations,
        )
        if signer.role not in ("analyst", "admin"):
            raise FedgovError(f"requester '{signer.name}' has role '{signer.role}', not analyst")
        manifest = parse_manifest(task.manifest_toml)
        self._check_replay(task.job_id, manifest)
        check_parameters(manifest.kind, manifest.parameters)
        precheck = PRECHECKS.get(manifest.kind)
        if precheck is not None:  # the protocol's own bounds, before anyone is asked to approve
            precheck(manifest)
        if manifest.requester is not None and manifest.requester != signer.name:
            raise FedgovError(
                f"manifest names requester '{manifest.requester}' but was signed by '{signer.name}'"
            )
        me = manifest.participant(self.config.name)
        if manifest.kind not in HANDLERS:
            raise FedgovError(f"this node does not implement job kind '{manifest.kind}'")
        if me.role == "arbiter":
            return manifest, self.config.policy.check_arbiter(
                kind=manifest.kind, purpose=manifest.purpose, requester=signer.name
            )
        ds = self.config.datasets.get(me.dataset)
        if ds is None:
            raise FedgovError(f"this node has no dataset '{me.dataset}'")
        unknown = [f for f in me.fields if f not in ds.schema.field_names]
        if unknown:
            raise FedgovError(f"dataset '{me.dataset}' has no field(s) {', '.join(unknown)}")
        decision = self.config.policy.check(
            dataset=me.dataset,
            kind=manifest.kind,
            purpose=manifest.purpose,
            requester=signer.name,
            fields=me.fields,
        )
        eval_ds = me.extra.get("eval_dataset")
        if decision.allowed and eval_ds:
            # a held-out dataset is data too: same fields, same policy test
            eds = self.config.datasets.get(str(eval_ds))
            if eds is None:
                raise FedgovError(f"this node has no dataset '{eval_ds}' (eval_dataset)")
            missing = [f for f in me.fields if f not in eds.schema.field_names]
            if missing:
                raise FedgovError(f"eval dataset '{eval_ds}' has no field(s) {', '.join(missing)}")
            second = self.config.policy.check(
                dataset=str(eval_ds),
                kind=manifest.kind,
                purpose=manifest.purpose,
                requester=signer.name,
                fields=me.fields,
            )
            if not second.allowed:
                return manifest, second
            refusals = disclosure_refusals(manifest, me, second.disclosure, second.disclosure_source)
            if refusals:
                return manifest, Decision(False, tuple(str(r) for r in refusals))
            decision = _stricter(decision, second)
        if decision.allowed:
            refusals = disclosure_refusals(manifest, me, decision.disclosure, decision.disclosure_source)
            if refusals:
                return manifest, Decision(False, tuple(str(r) for r in refusals))
        return manifest, decision

    def _check_replay(self, job_id: str, manifest: Manifest) -> None:
        """A signed manifest runs here once, for one job, inside its validity window (else FedgovError)."""
        check_fresh(manifest)
        assert manifest.nonce is not None and manifest.not_after is not None
        owner = self.store.claim_manifest(manifest.digest, job_id, manifest.nonce, manifest.not_after.timestamp())
        if owner != job_id:
            raise FedgovError(
                f"manifest {manifest.digest[:12]} was already taken by job {owner} here: "
                "refusing a replayed signed manifest"
            )

    def _decide(self, job_id: str, approve: bool, reason: str, approvers: list[str], digest: str) -> None:
        if approve:
            self.store.mark_approved(job_id, digest)
        self.store.audit(
            job_id, "decision", approve=approve, reason=reason, approvers=approvers, manifest_sha256=digest
        )
        fact = decision_fact(self.config.name, self.keys.sign, job_id, approve, reason, approvers)
        self.witness.expect(fact)
        with_retry(
            lambda: self.jobs.Decide(
                jobs_pb2.TaskDecision(
                    job_id=job_id, approve=approve, reason=reason, approvers=approvers, fact=fact
                ),
                timeout=10,
            )
        )
        log.info(
            "job %s %s%s", job_id, "approved" if approve else "rejected", f": {reason}" if reason else ""
        )

    def _evaluate(self, task: jobs_pb2.Task) -> None:
        digest = manifest_digest(task.manifest_toml)
        try:
            manifest, decision = self._check_task(task)
        except FedgovError as exc:
            self._decide(task.job_id, False, str(exc), [], digest)
            return
        if not decision.allowed:
            self._decide(task.job_id, False, "; ".join(decision.reasons), [], digest)
        elif decision.approval == "auto":
            self._decide(task.job_id, True, "policy: automatic approval", [], digest)
        else:
            requester = identity_from_cert(x509.load_pem_x509_certificate(task.requester_cert_pem)).name
            me = manifest.participant(self.config.name)
            brief = build_brief(manifest, self.config.name, decision, job_id=task.job_id, requester=requester,
                                rows=self._rows.get(me.dataset))
            self.store.set_brief(task.job_id, task.requester_cert_pem, json.dumps(brief.to_dict(), sort_keys=True))
            self.store.add_pending(task.job_id, task.manifest_toml, requester, decision.approvers_required)
            self.store.audit(task.job_id, "awaiting-approval", required=decision.approvers_required)
            log.info(
                "job %s awaits manual approval (%d approver(s) needed): fedgov node approve %s",
                task.job_id,
                decision.approvers_required,
                task.job_id,
            )

    def _allowed_approvers(self, me: Participant) -> tuple[str, ...]:
        """Approver allow-list of the task's datasets (training and eval_dataset): both must list a name."""
        lists = [self.config.policy.datasets[me.dataset].approvers]
        eval_ds = str(me.extra.get("eval_dataset") or "")
        if eval_ds and eval_ds in self.config.policy.datasets:
            lists.append(self.config.policy.datasets[eval_ds].approvers)
        nonempty = [set(a) for a in lists if a]
        if not nonempty:
            return ()  # any approver of this department
        both = tuple(sorted(set.intersection(*nonempty)))
        return both or ("",)  # disjoint lists: nobody (no certificate is named "")

    def _check_approvals(self) -> None:
        for pending in self.store.pending():
            manifest = parse_manifest(pending.manifest)
            me = manifest.participant(self.config.name)
            allowed_names = self._allowed_approvers(me)
            rec = self.store.brief(pending.job_id)
            requester_cert = rec[0] if rec else None
            brief_sha = approval_rules.brief_digest(self.store, pending.job_id)
            approvers: list[str] = []
            counted: list[tuple[str, bytes]] = []
            for name, approve, reason, cert_pem, sig in self.store.approvals(pending.job_id):
                try:
                    ident = verify_approval(
                        cert_pem,
                        self.ca_cert,
                        pending.job_id,
                        manifest.digest,
                        approve,
                        reason,
                        sig,
                        revocations=self.revocations,
                        brief_digest=brief_sha,
                    )
                except FedgovError as exc:
                    self._ignore_approval(pending.job_id, name, str(exc))
                    continue
                if ident.role != "approver" or ident.department != self.config.name or ident.name != name:
                    self._ignore_approval(pending.job_id, name, f"not an approver of {self.config.name}")
                    continue
                if allowed_names and ident.name not in allowed_names:
                    self._ignore_approval(pending.job_id, name, "not listed in policy approvers")
                    continue
                why = approval_rules.self_approval(
                    pending.job_id, pending.requester, requester_cert, ident, cert_pem
                ) if approve else None
                why = why or (approval_rules.duplicate_approver(ident, cert_pem, counted) if approve else None)
                if why:
                    self._ignore_approval(pending.job_id, name, why)
                    continue
                if not approve:
                    self.store.set_pending_status(pending.job_id, "rejected")
                    self._decide(
                        pending.job_id, False, f"rejected by {name}: {reason}", [name], manifest.digest
                    )
                    break
                if name not in approvers:
                    approvers.append(name)
                    counted.append((name, cert_pem))
            else:
                if approval_rules.enough(approvers, pending.required):
                    self.store.set_pending_status(pending.job_id, "approved")
                    self._decide(
                        pending.job_id,
                        True,
                        f"approved by {', '.join(approvers)}",
                        approvers,
                        manifest.digest,
                    )
                if tuple(approvers) != self._counted.get(pending.job_id, ()):
                    # after the decision: whoever reads "1 of 2" here knows the job did not proceed on it
                    self._counted[pending.job_id] = tuple(approvers)
                    self.store.audit(pending.job_id, "approvals-counted", approvers=approvers,
                                     count=f"{len(approvers)} of {pending.required}")

    def _ignore_approval(self, job_id: str, name: str, why: str) -> None:
        """Log and audit (once per approver and reason) an approval the rules do not count."""
        key = f"{job_id}/{name}/{why}"
        if key in self._ignored:
            return
        self._ignored.add(key)
        log.warning("ignoring approval of %s by %s: %s", job_id, name, why)
        self.store.audit(job_id, "approval-ignored", approver=name, reason=why)

    def output_dir(self, job_id: str) -> Path:
        """This node's private output area for a job (never sent anywhere)."""
        return self.config.state_dir / "outputs" / job_id

    def save_output(self, job_id: str, name: str, table: pa.Table) -> Path:
        out = self.output_dir(job_id)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.csv"
        tmp = path.with_suffix(".tmp")
        pacsv.write_csv(table, tmp)
        tmp.replace(path)
        self.store.audit(job_id, "output-saved", name=name, rows=table.num_rows, path=str(path))
        return path

    def save_json(self, job_id: str, name: str, obj: object) -> Path:
        out = self.output_dir(job_id)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, sort_keys=True))
        tmp.replace(path)
        self.store.audit(job_id, "output-saved", name=name, path=str(path))
        return path

    def _start(self, task: jobs_pb2.Task) -> None:
        if task.job_id in self._running:
            return
        abort = threading.Event()
        self._running[task.job_id] = abort
        threading.Thread(
            target=self._run_job, args=(task, abort), name=f"job-{task.job_id}", daemon=True
        ).start()

    def _seal_result(self, job_id: str, manifest: Manifest, requester: str, result: dict | None) -> bytes:
        """``result`` as JSON sealed to the requester's per-job key (manifest ``result_key``), signed by this node.

        A fedgov envelope (job, step ``result``, this node -> requester, seq 0):
        only the requester's private key opens it; whoever relays it learns its
        size. Raises FedgovError if the manifest names no result key.
        """
        if manifest.result_key is None:
            raise FedgovError("manifest has no result_key to seal the result to")
        header = Header(job_id=job_id, step="result", sender=self.config.name, recipient=requester, seq=0)
        plain = json.dumps(result if result is not None else {}, sort_keys=True).encode("utf-8")
        return seal(header, plain, self.keys, result_recipient(requester, manifest.result_key))

    def _report(
        self,
        job_id: str,
        ok: bool,
        result: dict | None,
        error: str,
        public: dict | None = None,
        sealed: bytes = b"",
        facts: Sequence[bytes] = (),
    ) -> None:
        public_json = json.dumps(public, sort_keys=True) if public else ""
        self.store.audit(
            job_id,
            "report",
            ok=ok,
            result=result,
            error=error,
            public=public or {},
            sealed_bytes=len(sealed),
            sealed_sha256=hashlib.sha256(sealed).hexdigest() if sealed else "",
        )
        with_retry(  # idempotent: a repeated report of a finished participant changes nothing
            lambda: self.jobs.Report(
                jobs_pb2.TaskReport(
                    job_id=job_id,
                    ok=ok,
                    error=error,
                    public_json=public_json,
                    sealed_result=sealed,
                    facts=list(facts),
                ),
                timeout=30,
            ),
            patience=JOB_PATIENCE,
            idempotent=True,
        )

    def _start_job_key(self, job_id: str) -> JobKey:
        """A fresh sealing key for this job, published (signed) through the coordinator."""
        job_key = JobKey(self.config.name, job_id)
        statement = job_key.statement(self.keys)
        with_retry(
            lambda: self.registry.PublishJobKey(
                registry_pb2.JobKey(job_id=job_id, node=self.config.name, statement=statement), timeout=10
            ),
            patience=JOB_PATIENCE,
            idempotent=True,
        )
        self.store.audit(job_id, "job-key", sha256=hashlib.sha256(job_key.public_bytes).hexdigest())
        return job_key

    def _task_loader(self, me: Participant) -> Callable[..., pa.Table]:
        """The ``load`` a job handler gets: this node's data, only the fields ``me`` declares.

        ``load(columns=None, dataset=None)`` reads ``columns`` (default: every
        declared field) of ``dataset`` (default: the participant's; else only
        its ``eval_dataset``); see :func:`declared_columns`.
        """
        fields = list(me.fields)
        allowed_datasets = {me.dataset, str(me.extra.get("eval_dataset") or me.dataset)}

        def load(columns: Sequence[str] | None = None, dataset: str | None = None) -> pa.Table:
            ds = dataset or me.dataset
            return self._read(ds, declared_columns(columns, fields, ds, allowed_datasets))

        return load

    def _run_job(self, task: jobs_pb2.Task, abort: threading.Event) -> None:
        job_id = task.job_id
        job_key: JobKey | None = None
        try:
            manifest, decision = self._check_task(task)
            if not decision.allowed:
                raise FedgovError("; ".join(decision.reasons))
            approval_rules.check_approved(self.store, job_id, manifest)
            if not self.store.claim_run(job_id):
                raise FedgovError(f"job {job_id} already ran here: refusing to run it twice")
            requester = identity_from_cert(x509.load_pem_x509_certificate(task.requester_cert_pem)).name
            job_key = self._start_job_key(job_id)
            me = manifest.participant(self.config.name)
            load = self._task_loader(me)

            def save_json(name: str, obj: object) -> str:
                return str(self.save_json(job_id, name, obj))

            def load_json(other_job: str, name: str) -> object:
                outputs = (self.config.state_dir / "outputs").resolve()
                path = (self.output_dir(other_job) / f"{name}.json").resolve()
                if path.parent.parent != outputs or "/" in other_job or other_job in ("", ".", ".."):
                    raise FedgovError(f"'{other_job}' is not a job of this node (a job id, never a path)")
                try:
                    return json.loads(path.read_text())
                except FileNotFoundError:
                    raise FedgovError(f"no {name} from job {other_job} at this node") from None

            def save_output(name: str, table: pa.Table) -> str:
                return str(self.save_output(job_id, name, table))

            peers = PeerDirectory(
                self.registry, self.ca_cert, self.revocations, self.store, job_id=job_id, abort=abort
            )
            channel = JobChannel(job_id, self.keys, self.relay, peers, self.store, abort, job_key=job_key)
            ctx = TaskContext(
                job_id=job_id,
                me=self.config.name,
                manifest=manifest,
                participant=me,
                decision=decision,
                channel=channel,
                abort=abort,
                load=load,
                save_output=save_output,
                save_json=save_json,
                load_json=load_json,
            )
            ctx.notes["state_dir"] = str(self.config.state_dir)
            ctx.notes["hfl_listen"] = self.config.hfl_listen
            ctx.notes["hfl_advertise"] = self.config.hfl_advertise
            if me.dataset:
                schema = self.config.datasets[me.dataset].schema
                ctx.notes["schema_types"] = {f.name: (f.type, tuple(f.values or ())) for f in schema.fields}
            started = time.monotonic()
            result = HANDLERS[manifest.kind](ctx)
            log.info("job %s: my part done in %.2f s", job_id, time.monotonic() - started)
            if job_key is not None:
                job_key.erase()  # recorded envelopes of this job can no longer be opened by anyone
            sealed = self._seal_result(job_id, manifest, requester, result)
            public = ctx.public or default_public_facts(result)
            facts = report_facts(self.config.name, self.keys.sign, job_id, manifest, public, self._rows)
            for fact in facts:
                self.witness.expect(fact)
            self._report(job_id, True, result, "", public, sealed, facts)
        except FedgovError as exc:
            log.warning("job %s failed here: %s", job_id, exc)
            if not abort.is_set():
                with contextlib.suppress(FedgovError):
                    self._report(job_id, False, None, str(exc))
        except Exception as exc:  # a bug: report it, keep the node alive
            log.exception("job %s: unexpected error", job_id)
            with contextlib.suppress(FedgovError):
                self._report(job_id, False, None, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if job_key is not None:
                job_key.erase()
            self._running.pop(job_id, None)
