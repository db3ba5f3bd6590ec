"""Operations rows (h14b): the metrics endpoint stays on loopback, operator views show a
caller only what its certificate may see, and an empty required ID stops a node."""

from __future__ import annotations

from typing import Any

from protections import _patch, row


@row(
    "metrics-loopback",
    "`fedgov.coordinator.prom:is_loopback` (used by `check_listen` at config load and at bind) refuses "
    "a non-loopback `metrics_listen`",
    "tests/test_status.py::test_metrics_listen_must_be_loopback",
    "tests/test_status.py::test_metrics_on_a_network_address_is_refused",
    level="stack",
)
def _metrics_loopback() -> None:
    _patch("fedgov.coordinator.prom:is_loopback", lambda host: True)


@row(
    "operator-status-mtls",
    "`fedgov.coordinator.service:JobsService.List` filters jobs by the caller's certificate "
    "(switched off: every caller sees every job)",
    "tests/test_status.py::test_status_shows_nodes_pending_approvals_and_ledger",
    level="stack",
)
def _operator_status_mtls() -> None:
    from fedgov.coordinator.service import job_status
    from fedgov.v1 import jobs_pb2

    def list_all(self: Any, request: Any, context: Any) -> Any:
        return jobs_pb2.ListJobsReply(jobs=[job_status(j) for j in self.store.jobs(request.state or None)])

    _patch("fedgov.coordinator.service:JobsService.List", list_all)


@row(
    "empty-required-id",
    "`fedgov.datasources:_check_required_ids` refuses an empty required ID at load (CSV, Parquet, SQL), "
    "so `fedgov node start` stops before it dials",
    "tests/test_datasources.py::test_empty_required_id_is_a_load_error",
    "tests/test_node_check.py::test_node_refuses_to_start_with_an_empty_required_id",
    level="stack",
)
def _empty_required_id() -> None:
    _patch("fedgov.datasources:_check_required_ids", lambda table, schema, where, row_offset=0: table)


@row(
    "job-status-readers",
    "`fedgov.coordinator.service:JobsService._readable` (a job's status, manifest and recorded events go to "
    "its requester, admins, auditors and its own nodes; switched off: to any member)",
    "tests/test_status.py::test_job_status_and_follow_show_the_coordinators_events",
    level="stack",
)
def _job_status_readers() -> None:
    _patch("fedgov.coordinator.service:JobsService._readable", lambda self, job, ident, context: None)
