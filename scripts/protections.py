"""The protection table: each docs/security.md row -> the guard that enforces it -> the test that proves it.

Each row's ``disable`` function switches its guard off in the current Python
process by monkeypatching fedgov. ``scripts/check_protections.py`` runs the
row's cited tests with the guard disabled — in the test process *and* in every
process it starts (coordinator, nodes, Flower), through the ``sitecustomize``
hook in ``scripts/protection_hook/`` on ``PYTHONPATH`` — and requires them to
fail. A row whose tests still pass proves nothing: its property is a claim.

Rows are matched with docs/security.md by ``id`` (the table's first column).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Row:
    id: str
    guard: str  # what is switched off, for the docs page ("module:name" + words)
    tests: tuple[str, ...]  # pytest node ids that must fail without the guard
    disable: Callable[[], None]
    #: "unit": tests run in one process; "stack": tests start real processes
    level: str = "unit"


ROWS: dict[str, Row] = {}


def row(id: str, guard: str, *tests: str, level: str = "unit") -> Callable[[Callable[[], None]], Callable[[], None]]:
    def deco(fn: Callable[[], None]) -> Callable[[], None]:
        if id in ROWS:
            raise ValueError(f"row {id!r} declared twice")
        ROWS[id] = Row(id, guard, tuple(tests), fn, level)
        return fn

    return deco


def _patch(target: str, value: Any) -> None:
    """Replace ``module:attr`` (``attr`` may be ``Class.method``) with ``value``."""
    mod_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(mod_name)
    *path, last = attr.split(".")
    for p in path:
        obj = getattr(obj, p)
    if not hasattr(obj, last):
        raise AttributeError(f"{target}: no such attribute (the guard moved: update scripts/protections.py)")
    setattr(obj, last, value)


def _original(target: str) -> Any:
    mod_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(mod_name)
    for p in attr.split("."):
        obj = getattr(obj, p)
    return obj


#: The one imaginary-part flood (eligibility, HE statistics, vertical LR); rows switch it off per caller.
FLOOD_GUARD = "fedgov.crypto.ckks:flood_imaginary_seal"


def _without_imaginary_flood(where: str) -> None:
    """Switch off :data:`FLOOD_GUARD` for the caller named ``where`` only: its flood shrinks to
    ``2^-1000`` (encodes as zero); the real mask, the exact zero-sum check and every other
    caller's flood stay as they are."""
    orig = _original(FLOOD_GUARD)

    def flood(seal_context: Any, ct: Any, size: float, *args: Any, **kw: Any) -> Any:
        if kw.get("where", "ckks") == where:
            size = 2.0**-1000
        return orig(seal_context, ct, size, *args, **kw)

    _patch(FLOOD_GUARD, flood)


# --------------------------------------------------------------------------- transport and identity


@row(
    "mtls",
    "`fedgov.transport.tls:server_credentials` demands a client certificate (`require_client_auth=True`)",
    "tests/test_federation.py::test_tls_refuses_missing_or_foreign_certificate",
    level="stack",
)
def _mtls() -> None:
    import grpc

    def creds(material: Any) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(material.key, material.cert)], root_certificates=material.ca, require_client_auth=False
        )

    _patch("fedgov.transport.tls:server_credentials", creds)


@row(
    "tls12-suites",
    "`fedgov/__init__.py` forces `GRPC_SSL_CIPHER_SUITES` to ECDHE+AEAD before grpc loads",
    "tests/test_federation.py::test_tls12_only_with_forward_secret_aead_suites",
    level="stack",
)
def _tls12() -> None:
    import fedgov  # noqa: F401  (its import forces the variable; undo that below)

    # the hook saved the inherited value before fedgov overwrote it
    inherited = os.environ.get("FEDGOV_GUARD_SAVED_SUITES")
    if inherited is None:
        os.environ.pop("GRPC_SSL_CIPHER_SUITES", None)
    else:
        os.environ["GRPC_SSL_CIPHER_SUITES"] = inherited


@row(
    "roles",
    "`fedgov.coordinator.service:_require` checks the caller's certificate role",
    "tests/test_federation.py::test_roles_come_from_certificates",
    level="stack",
)
def _roles() -> None:
    from fedgov.transport.tls import caller_identity

    _patch("fedgov.coordinator.service:_require", lambda context, *roles: caller_identity(context))


# --------------------------------------------------------------------------- identity lifecycle (h13b)

_ID = "tests/test_identity_stack.py::"


@row(
    "tls13-clients",
    "`fedgov.coordinator.gate:PeerGate` refuses every RPC whose connection negotiated anything but TLS 1.3",
    _ID + "test_calls_over_tls12_are_refused_tls13_is_required",
    level="stack",
)
def _tls13() -> None:
    _patch("fedgov.coordinator.gate:tls_version", lambda context: "TLSv1.3")


@row(
    "revocation-coordinator",
    "`fedgov.coordinator.gate:PeerGate._refuse_revoked` checks every caller against the CA's revocation list",
    _ID + "test_a_revoked_node_is_refused_at_the_coordinator_and_its_envelopes_by_nodes",
    level="stack",
)
def _revocation_coordinator() -> None:
    _patch("fedgov.coordinator.gate:PeerGate._refuse_revoked", lambda self, context, cert, method: None)


@row(
    "revocation-nodes",
    "`fedgov.node.channel:PeerDirectory` checks peers (also cached ones) against the node's revocation list",
    _ID + "test_a_revoked_node_is_refused_at_the_coordinator_and_its_envelopes_by_nodes",
    "tests/test_revocation.py::test_peer_directory_refuses_a_peer_revoked_after_it_was_cached",
    level="stack",
)
def _revocation_nodes() -> None:
    orig = _original("fedgov.node.channel:PeerDirectory.__init__")

    def init(self: Any, registry: Any, ca_cert: Any, revocations: Any = None, store: Any = None, **kw: Any) -> None:
        orig(self, registry, ca_cert, None, store, **kw)

    _patch("fedgov.node.channel:PeerDirectory.__init__", init)


@row(
    "crl-trust",
    "`fedgov.crypto.revocation:_signed_by`: a revocation list counts only if the pinned CA signed it",
    "tests/test_revocation.py::test_only_lists_signed_by_the_federation_ca_are_trusted",
)
def _crl_trust() -> None:
    _patch("fedgov.crypto.revocation:_signed_by", lambda crl, ca_cert: True)


@row(
    "manifest-signature",
    "`fedgov.crypto.signing:_signature_holds` verifies analysts' and approvers' signatures",
    _ID + "test_a_manifest_whose_analyst_signature_fails_is_refused_by_every_node",
    "tests/test_signing.py",
    level="stack",
)
def _manifest_signature() -> None:
    _patch("fedgov.crypto.signing:_signature_holds", lambda pub, signature, data, what: True)


@row(
    "manifest-replay",
    "`fedgov.node.agent:NodeAgent._check_replay`: nonce, validity window, one job per manifest digest",
    _ID + "test_a_replayed_signed_manifest_is_refused_by_every_node",
    _ID + "test_an_expired_manifest_is_refused_by_every_node",
    level="stack",
)
def _manifest_replay() -> None:
    _patch("fedgov.node.agent:NodeAgent._check_replay", lambda self, job_id, manifest: None)


@row(
    "run-once",
    "`fedgov.node.store:NodeStore.claim_run`: a job id runs once per node",
    _ID + "test_a_job_runs_once_at_each_node",
    level="stack",
)
def _run_once() -> None:
    _patch("fedgov.node.store:NodeStore.claim_run", lambda self, job_id: True)


@row(
    "sealed-results",
    "`fedgov.node.agent:NodeAgent._seal_result` seals each result to the requester's per-job key",
    _ID + "test_results_are_sealed_to_the_requester_and_the_coordinator_learns_sizes_only",
    level="stack",
)
def _sealed_results() -> None:
    import json

    _patch("fedgov.node.agent:NodeAgent._seal_result",
           lambda self, job_id, manifest, requester, result: json.dumps(result).encode())


@row(
    "relay-members",
    "`fedgov.coordinator.service:RelayService._running_participants` / `RegistryService._job_participant`: "
    "only a job's participants relay or fetch its keys",
    _ID + "test_relay_and_job_keys_refuse_a_node_outside_the_job",
    level="stack",
)
def _relay_members() -> None:
    import grpc

    def running(self: Any, job_id: str, nodes: Any, context: Any) -> None:
        job = self.store.job(job_id)
        if job is None or job.state != "running":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"job {job_id} is not running")

    def member(self: Any, job_id: str, ident: Any, context: Any) -> Any:
        return self.store.job(job_id)

    _patch("fedgov.coordinator.service:RelayService._running_participants", running)
    _patch("fedgov.coordinator.service:RegistryService._job_participant", member)


@row(
    "forward-secrecy",
    "`fedgov.node.agent:NodeAgent._start_job_key`: envelopes of a job are sealed to a per-job key",
    _ID + "test_recorded_job_traffic_stays_closed_to_the_long_term_keys",
    level="stack",
)
def _forward_secrecy() -> None:
    _patch("fedgov.node.agent:NodeAgent._start_job_key", lambda self, job_id: None)


@row(
    "superseded-bundle",
    "`fedgov.node.store:NodeStore.note_bundle` refuses a peer bundle older than one seen",
    _ID + "test_rotating_one_node_leaves_the_others_alone_and_old_bundles_are_refused",
    "tests/test_revocation.py::test_peer_directory_refuses_a_superseded_bundle",
    level="stack",
)
def _superseded() -> None:
    _patch("fedgov.node.store:NodeStore.note_bundle", lambda self, node, serial, digest: None)


@row(
    "one-process",
    "`fedgov.coordinator.gate:Sessions.enter`: one live process per node identity",
    _ID + "test_a_second_live_process_with_a_node_identity_is_refused",
    level="stack",
)
def _one_process() -> None:
    _patch("fedgov.coordinator.gate:Sessions.enter", lambda self, node, session, registering: None)


@row(
    "session-after-restart",
    "`fedgov.coordinator.gate:Sessions._carried_over`: after a coordinator restart the session a node "
    "registered before it stays the node's for the restart grace (switched off: memory only, first caller wins)",
    "tests/test_gate_restart.py::test_an_impostor_cannot_take_a_live_nodes_identity_right_after_a_restart",
    "tests/test_restart_stack.py::test_an_impostor_cannot_take_a_live_nodes_identity_right_after_a_restart",
    level="stack",
)
def _session_after_restart() -> None:
    _patch("fedgov.coordinator.gate:Sessions._carried_over", lambda self, node, now: None)


@row(
    "kit-check",
    "`fedgov.node.agent:NodeAgent._check_own_kit` stops a node whose kit cannot work, with the reason",
    _ID + "test_a_node_with_a_broken_kit_exits_with_the_reason",
    level="stack",
)
def _kit_check() -> None:
    _patch("fedgov.node.agent:NodeAgent._check_own_kit", lambda self: None)


@row(
    "sign-confirm",
    "`fedgov.cli:_confirm`: provision sign/revoke ask first; without a terminal only --yes confirms",
    _ID + "test_csr_path_ends_with_a_working_kit",
    level="stack",
)
def _sign_confirm() -> None:
    _patch("fedgov.cli:_confirm", lambda question, yes: None)


@row(
    "resign-refused",
    "`fedgov.crypto.pki:sign_csr` consults the issuance record: a certified key needs --again, a revoked one never",
    "tests/test_kits.py::test_resigning_a_csr_is_refused_unless_explicit",
    "tests/test_revocation.py::test_a_revoked_key_is_never_certified_again",
)
def _resign() -> None:
    _patch("fedgov.crypto.pki:issuance_record", lambda ca_dir: [])


@row(
    "lifetimes",
    "`fedgov.crypto.pki:default_days` (services 1 year, people 90 days) and `expiry_warning` (30 days ahead)",
    "tests/test_kits.py::test_default_lifetimes_are_short",
    "tests/test_kits.py::test_a_good_kit_passes_and_warns_30_days_before_expiry",
)
def _lifetimes() -> None:
    _patch("fedgov.crypto.pki:default_days", lambda role: 825)
    _patch("fedgov.crypto.pki:expiry_warning", lambda cert, **kw: None)


@row(
    "kit-folders",
    "`fedgov.privatefs:private_dir` makes kit and CA folders 0700; `fedgov.crypto.pki:append_private_line` "
    "never appends through a symlink",
    "tests/test_kits.py::test_kit_folders_are_0700_even_when_they_existed_wider",
    "tests/test_kits.py::test_issuance_record_is_never_written_through_a_symlink",
)
def _kit_folders() -> None:
    from pathlib import Path

    def mkdir(path: Any) -> Any:
        Path(path).mkdir(parents=True, exist_ok=True)
        return Path(path)

    def append(path: Any, line: str) -> None:
        with open(path, "a") as fh:  # follows symlinks, keeps whatever mode
            fh.write(line + "\n")

    _patch("fedgov.privatefs:private_dir", mkdir)
    _patch("fedgov.crypto.pki:private_dir", mkdir)
    _patch("fedgov.crypto.pki:append_private_line", append)


@row(
    "private-state",
    "`fedgov.privatefs:private_umask` in every node and coordinator process (state files 0600, folders 0700)",
    _ID + "test_private_state_files_are_0600_in_0700_folders",
    level="stack",
)
def _private_state() -> None:
    _patch("fedgov.privatefs:private_umask", lambda: 0)


@row(
    "message-limits",
    "`fedgov.transport.tls:GRPC_OPTIONS` (4 MiB per message) and `fedgov.transport.chunks:CHUNK_SIZE` (1 MiB)",
    _ID + "test_message_limits_4mib_per_message_1mib_chunks",
    level="stack",
)
def _limits() -> None:
    import fedgov.transport.tls as tls

    big = 64 * 1024 * 1024
    for opts in (tls.GRPC_OPTIONS, tls.SERVER_OPTIONS):
        for i, (k, _) in enumerate(opts):
            if k in ("grpc.max_send_message_length", "grpc.max_receive_message_length"):
                opts[i] = (k, big)
    _patch("fedgov.transport.chunks:CHUNK_SIZE", 8 * 1024 * 1024)


# --------------------------------------------------------------------------- policy and release


@row(
    "policy",
    "`fedgov.policy:Policy.check` (purpose, kind, fields, requesters)",
    "tests/test_federation.py::test_refusals_reach_the_analyst",
    "tests/test_manifest_policy.py",
    level="stack",
)
def _policy() -> None:
    from fedgov.policy import Decision, Policy

    orig = _original("fedgov.policy:Policy.check")

    def check(self: Policy, **kw: Any) -> Decision:
        d = orig(self, **kw)
        if d.allowed:
            return d
        dp = self.datasets.get(kw["dataset"])
        if dp is None:
            return Decision(True, ())
        return Decision(True, (), approval=dp.approval, approvers_required=dp.approvers_required,
                        approvers=dp.approvers, min_cohort=dp.min_cohort,
                        standing_alignment=dp.standing_alignment, disclosure=dp.disclosure,
                        disclosure_source=dp.disclosure_source)

    _patch("fedgov.policy:Policy.check", check)


@row(
    "cohort-suppression",
    "`fedgov.protocols.cohort_count:release` suppresses counts below the owner's minimum cohort",
    "tests/test_federation.py::test_a_small_cell_never_leaves_its_data_owner",
    "tests/test_federation.py::test_small_cells_are_suppressed",
    level="stack",
)
def _cohort() -> None:
    _patch("fedgov.protocols.cohort_count:release", lambda n, min_cohort: n)


# --------------------------------------------------------------------------- audit


@row(
    "audit-chain",
    "`fedgov.node.store:NodeStore.verify_audit` recomputes the hash chain",
    "tests/test_node_store.py::test_audit_chain_detects_edits",
)
def _audit() -> None:
    _patch("fedgov.node.store:NodeStore.verify_audit", lambda self: None)


def _load_area_rows() -> None:
    """Import ``scripts/protection_rows/*.py``: one module of rows per area (disclosure, learning, ...)."""
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))
    for path in sorted((here / "protection_rows").glob("*.py")):
        if path.name != "__init__.py":
            importlib.import_module(f"protection_rows.{path.stem}")


#: docs/security.md rows that have no guard in this table yet: each is listed on docs/protections.md
#: as "not yet guarded" and is the only way a documented row may lack one. Remove an id when its
#: area module (scripts/protection_rows/) adds the row; a guarded id here is ignored.
NOT_YET_GUARDED: tuple[str, ...] = ()


def disable(row_id: str) -> None:
    """Switch off the guard of ``row_id`` in this process (KeyError for an unknown row)."""
    ROWS[row_id].disable()


_load_area_rows()
