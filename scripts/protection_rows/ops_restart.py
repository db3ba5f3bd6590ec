"""Operations rows (h14a): crash safety, jobs that survive a coordinator restart, restart
attribution by process session, and department hosts without inbound sockets."""

from __future__ import annotations

import socket
from typing import Any

from protections import _original, _patch, row


@row(
    "crash-safety",
    "`fedgov.coordinator.server:Coordinator._watchdog` fails running jobs whose participant fell silent",
    "tests/test_resilience.py::test_node_vanishing_mid_job_fails_the_job_with_a_reason",
    level="stack",
)
def _crash_safety() -> None:
    _patch("fedgov.coordinator.server:Coordinator._watchdog", lambda self: None)


@row(
    "restart-resume",
    "`fedgov.node.channel` relay and key calls go through `with_retry(idempotent=True, patience=JOB_PATIENCE)` "
    "(switched off: one attempt, an unreachable coordinator fails the job)",
    "tests/test_restart_stack.py::test_psi_survives_a_coordinator_restart",
    level="stack",
)
def _restart_resume() -> None:
    from fedgov.transport.rpc import describe

    def once(fn: Any, **_: Any) -> Any:
        import grpc

        try:
            return fn()
        except grpc.RpcError as exc:
            raise describe(exc) from None

    _patch("fedgov.node.channel:with_retry", once)


@row(
    "node-restart-attribution",
    "`fedgov.coordinator.store:same_process_session` compares the registering process's session id "
    "(`fedgov.coordinator.service:_session_of`) with the persisted one (switched off: every "
    "re-registration counts as a new process)",
    "tests/test_resilience.py::test_reregistration_breaks_jobs_only_for_a_new_process",
    "tests/test_restart_stack.py::test_psi_survives_a_coordinator_restart",
    level="stack",
)
def _attribution() -> None:
    _patch("fedgov.coordinator.store:same_process_session", lambda registered, session: False)


_KEEP: list[socket.socket] = []


@row(
    "no-inbound-department-sockets",
    "`fedgov.node.agent:NodeAgent` only dials out (switched off: the node also listens on a "
    "wildcard TCP port, as a node serving an inbound API would)",
    "tests/test_hosts.py::test_psi_vlr_and_hfl_across_four_hosts_with_a_link_down_mid_job",
    level="stack",
)
def _no_inbound() -> None:
    connect = _original("fedgov.node.agent:NodeAgent._connect")

    def listening_connect(self: Any) -> Any:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", 0))  # noqa: S104 - the mutation this row must catch
        srv.listen(8)
        _KEEP.append(srv)
        return connect(self)

    _patch("fedgov.node.agent:NodeAgent._connect", listening_connect)
