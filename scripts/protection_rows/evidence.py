"""Protection rows added while auditing the suite as evidence (issue 16): envelopes, loader, PSI, durability.

Each ``disable`` function switches one guard off the way a careless change
would (the check still exists in name, the property is gone); the cited tests
must then fail. See ``scripts/protections.py`` for the mechanism.
"""

from __future__ import annotations

from typing import Any

from protections import _original, _patch, row

_ENV = "tests/test_envelope.py::"

# --------------------------------------------------------------------------- envelopes


class _NullSuite:
    """An HPKE stand-in that 'seals' by copying the plaintext (same sizes as the real suite)."""

    def encrypt(self, plaintext: bytes, public_key: Any, info: bytes = b"") -> bytes:
        return b"\0" * 1120 + bytes(plaintext) + b"\0" * 16

    def decrypt(self, ciphertext: Any, private_key: Any, info: bytes = b"") -> bytes:
        return bytes(ciphertext)[1120:-16]


@row(
    "envelope-seal",
    "`fedgov.crypto.keys:SEALING_SUITE` (HPKE ML-KEM-768+X25519, AES-256-GCM) encrypts every envelope payload "
    "to the recipient's key",
    _ENV + "test_round_trip",
    _ENV + "test_bundle_from_another_ca_rejected",
    _ENV + "test_job_key_envelopes_open_with_the_job_key_only",
)
def _envelope_seal() -> None:
    null = _NullSuite()
    _patch("fedgov.crypto.keys:SEALING_SUITE", null)
    _patch("fedgov.crypto.envelope:SEALING_SUITE", null)


@row(
    "envelope-signature",
    "`fedgov.crypto.envelope:_verify_sender` checks the sender's Ed25519 signature over header and ciphertext",
    _ENV + "test_sender_impersonation_rejected",
    _ENV + "test_header_swapped_between_envelopes",
)
def _envelope_signature() -> None:
    _patch("fedgov.crypto.envelope:_verify_sender", lambda peer, parsed: None)


@row(
    "envelope-address",
    "`fedgov.crypto.envelope:_check_addressed`: an envelope opens only at its recipient, and a per-job key "
    "only for its job",
    _ENV + "test_misaddressed",
    _ENV + "test_job_key_is_bound_to_its_job_and_node",
)
def _envelope_address() -> None:
    _patch("fedgov.crypto.envelope:_check_addressed", lambda header, me: None)


@row(
    "envelope-replay",
    "`fedgov.crypto.envelope:check_sequence` (used by `MemorySequenceTracker` and `NodeStore.accept`): "
    "each stream's seq must be the next one",
    _ENV + "test_replay",
    _ENV + "test_reorder",
    _ENV + "test_streams_are_independent",
    "tests/test_node_store.py::test_replay_counters_survive_restart",
)
def _envelope_replay() -> None:
    _patch("fedgov.crypto.envelope:check_sequence", lambda expected, header: None)
    _patch("fedgov.node.store:check_sequence", lambda expected, header: None)


@row(
    "replay-persist",
    "`fedgov.node.store:NodeStore.accept` keeps replay counters in node.db (they survive a restart)",
    "tests/test_node_store.py::test_replay_counters_survive_restart",
)
def _replay_persist() -> None:
    from fedgov.crypto.envelope import MemorySequenceTracker

    def accept(self: Any, header: Any) -> None:  # counters in memory: a restart forgets them
        tracker = self.__dict__.setdefault("_h16_memory_seq", MemorySequenceTracker())
        tracker.accept(header)

    _patch("fedgov.node.store:NodeStore.accept", accept)


# --------------------------------------------------------------------------- revocation lists


@row(
    "crl-no-rollback",
    "`fedgov.crypto.revocation:Revocations.update` adopts a list only if its number is higher than the current one",
    "tests/test_revocation.py::test_a_newer_list_replaces_an_older_one_never_the_reverse",
)
def _crl_no_rollback() -> None:
    import fedgov.crypto.revocation as rv

    def update(self: Any, data: bytes, *, where: str = "revocation list", persist: bool = True) -> bool:
        crl = rv.load_crl(data, self._ca, where=where)
        with self._lock:  # any valid list replaces the current one, also an older one
            self._current = crl
            if persist and self._store is not None:
                tmp = self._store.with_name(self._store.name + ".tmp")
                tmp.unlink(missing_ok=True)
                rv.pki.write_secret_file(tmp, crl.der)
                tmp.replace(self._store)
        return True

    _patch("fedgov.crypto.revocation:Revocations.update", update)


# --------------------------------------------------------------------------- approvals at the node


@row(
    "approval-verified",
    "`fedgov.node.agent:verify_approval` (in `NodeAgent._check_approvals`): an approval counts only if "
    "the named approver's certified key signed this job, manifest, decision and reason",
    "tests/test_federation.py::test_a_forged_approval_is_not_counted",
    level="stack",
)
def _approval_verified() -> None:
    from cryptography import x509

    from fedgov.crypto.pki import identity_from_cert

    def unchecked(cert_pem: bytes, ca_cert: Any, job_id: str, digest: str, approve: bool, reason: str,
                  signature: bytes, *, revocations: Any = None) -> Any:
        return identity_from_cert(x509.load_pem_x509_certificate(cert_pem))

    _patch("fedgov.node.agent:verify_approval", unchecked)


# --------------------------------------------------------------------------- data loader


@row(
    "declared-fields",
    "`fedgov.node.agent:declared_columns`: a job handler reads only the fields the manifest declared "
    "(and only the datasets the task was approved for)",
    "tests/test_declared_fields.py",
)
def _declared_fields() -> None:
    def columns(requested: Any, declared: Any, dataset: str, allowed: Any) -> list[str]:
        return list(requested) if requested is not None else list(declared)

    _patch("fedgov.node.agent:declared_columns", columns)


# --------------------------------------------------------------------------- ledger key pinning


@row(
    "ledger-key-pinned",
    "`fedgov.node.witness:NodeWitness._resolve_key` refuses a log key other than the pinned one "
    "(kit `ledger.pub`, configured, or first seen)",
    "tests/test_witness_key_pinning.py",
)
def _ledger_key_pinned() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    import fedgov.node.witness as nw

    def resolve(self: Any, reply: Any) -> Any:  # trusts whatever key the coordinator offers
        offered = bytes(reply.key.public_key)
        if self.ca_cert is not None:
            offered = nw.public_key_bytes(nw.verify_log_key(reply.key, self.ca_cert))
        if self._witness is None or nw.public_key_bytes(self._witness.log_key) != offered:
            self.state_path.unlink(missing_ok=True)
            self._witness = nw.Witness(self.state_path, Ed25519PublicKey.from_public_bytes(offered),
                                       sign=self._sign)
        return self._witness

    _patch("fedgov.node.witness:NodeWitness._resolve_key", resolve)


# --------------------------------------------------------------------------- durability (operations)


@row(
    "durable-state",
    "`PRAGMA synchronous=FULL` (with WAL) on node.db, privacy.db, coordinator.db and the ledger: "
    "a commit is on disk before the call returns",
    "tests/test_node_store.py::test_state_databases_commit_with_synchronous_full",
)
def _durable_state() -> None:
    import sqlite3

    class Relaxed(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
            if sql.replace(" ", "").lower() == "pragmasynchronous=full":
                sql = "PRAGMA synchronous=NORMAL"  # the usual WAL 'optimisation'
            return super().execute(sql, *args)

    connect = sqlite3.connect

    def relaxed(*args: Any, **kw: Any) -> sqlite3.Connection:
        kw.setdefault("factory", Relaxed)
        return connect(*args, **kw)

    sqlite3.connect = relaxed  # type: ignore[assignment]


@row(
    "ledger-outbox",
    "`fedgov.coordinator.store:CoordinatorStore._ledger` writes each ledger entry into `ledger_outbox` "
    "in the transaction of the change it describes",
    "tests/test_node_store.py::test_ledger_entry_of_a_committed_change_survives_sigkill",
)
def _ledger_outbox() -> None:
    orig_flush = _original("fedgov.coordinator.store:CoordinatorStore.flush_ledger")

    def queue(self: Any, db: Any, build: Any) -> None:  # in memory until the drainer runs
        try:
            entry = build()
        except Exception:  # noqa: BLE001
            return
        self.__dict__.setdefault("_h16_memory_outbox", []).append(entry)

    def flush(self: Any) -> int:
        mem = self.__dict__.setdefault("_h16_memory_outbox", [])
        done = 0
        if self.ledger is not None:
            while mem:
                self.ledger.append(mem.pop(0))
                done += 1
        return done + orig_flush(self)

    _patch("fedgov.coordinator.store:CoordinatorStore._ledger", queue)
    _patch("fedgov.coordinator.store:CoordinatorStore.flush_ledger", flush)


# --------------------------------------------------------------------------- PSI (what the peers receive)

_PSI_STACK = "tests/test_psi_stack.py::"


@row(
    "psi-cardinality-unlinkable",
    "`fedgov.protocols.psi:_keyed_permutation`: in cardinality mode the host's replies are permuted by a "
    "key the guest never sees",
    "tests/test_psi.py::test_cardinality_replies_are_unlinkable_to_guest_ids",
)
def _psi_unlinkable() -> None:
    import numpy as np

    _patch("fedgov.protocols.psi:_keyed_permutation", lambda key, n: np.arange(n, dtype=np.int64))


@row(
    "psi-masked-set",
    "`fedgov.protocols._psi_worker:mask_ids` multiplies each job-tagged hash point by the party's secret scalar",
    _PSI_STACK + "test_host_never_receives_guest_ids_in_the_clear",
    level="stack",
)
def _psi_masked() -> None:
    import fedgov.protocols._psi_worker as w

    def mask(key: Any, prefix: bytes, ids: list[str]) -> bytes:
        return b"".join(w.hash_to_u(prefix, i) for i in ids)

    _patch("fedgov.protocols._psi_worker:mask_ids", mask)


@row(
    "row-order-secret",
    "`fedgov.node.row_order:node_order_secret` keys the guest's aligned order with the guest's own secret "
    "(switched off: an empty secret, so the key follows from public inputs)",
    "tests/test_row_order.py::test_a_host_cannot_place_a_person_it_does_not_hold_in_the_guests_order",
)
def _row_order_secret() -> None:
    _patch("fedgov.node.row_order:node_order_secret", lambda state_dir: b"")


@row(
    "psi-set-order",
    "`fedgov.protocols.psi:_Party._compute_masked` sends the masked set sorted by value (not in row order)",
    _PSI_STACK + "test_host_never_receives_guest_ids_in_the_clear",
    level="stack",
)
def _psi_order() -> None:
    import numpy as np

    def compute(self: Any) -> None:
        arr = np.frombuffer(self._mask_own(), dtype="S32")
        self._perm = np.arange(len(arr), dtype=np.int64)
        self._sorted_masked = arr.tobytes()

    _patch("fedgov.protocols.psi:_Party._compute_masked", compute)


@row(
    "psi-named-recipients",
    "`fedgov.node.kinds.psi:run_psi` delivers the aligned order only to hosts named in `[results] recipients`",
    _PSI_STACK + "test_aligned_order_reaches_only_the_hosts_the_manifest_names",
    level="stack",
)
def _psi_recipients() -> None:
    orig = _original("fedgov.node.kinds.psi:psi_steps")

    def steps(ctx: Any, ids: Any, *, guest: str, hosts: Any, deliver_to: Any = (), **kw: Any) -> Any:
        return orig(ctx, ids, guest=guest, hosts=hosts, deliver_to=list(hosts), **kw)

    _patch("fedgov.node.kinds.psi:psi_steps", steps)
