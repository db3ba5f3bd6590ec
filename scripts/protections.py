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


def disable(row_id: str) -> None:
    """Switch off the guard of ``row_id`` in this process (KeyError for an unknown row)."""
    ROWS[row_id].disable()
