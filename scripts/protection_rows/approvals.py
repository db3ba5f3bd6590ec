"""Protection rows of docs/security.md "Policy and approvals": parameters, approvals, who approves.

Each disable function switches one guard off (in the test process and, through
the hook, in every coordinator and node process); the cited tests must fail.
"""

from __future__ import annotations

from typing import Any

from protections import _patch, row

_STACK = "tests/test_approvals_stack.py::"


@row(
    "params-at-submit",
    "`fedgov.coordinator.service:check_parameters` (the coordinator's schema check in `JobsService.Submit`)",
    _STACK + "test_psi_mode_typo_is_refused_at_submit_with_did_you_mean",
    level="stack",
)
def _params_at_submit() -> None:
    _patch("fedgov.coordinator.service:check_parameters", lambda kind, parameters, where="": dict(parameters))


@row(
    "params-at-node",
    "`fedgov.node.agent:check_parameters` (the node's own schema check in `NodeAgent._check_task`)",
    _STACK + "test_a_coordinator_that_skips_its_check_is_refused_by_the_node_before_approval",
    level="stack",
)
def _params_at_node() -> None:
    _patch("fedgov.node.agent:check_parameters", lambda kind, parameters, where="": dict(parameters))


@row(
    "protocol-params-at-node",
    "`fedgov.node.handlers:PRECHECKS` (the protocol's own parameter checks, run by the node before approval)",
    _STACK + "test_a_value_only_the_protocol_can_judge_is_refused_before_approval",
    level="stack",
)
def _protocol_params_at_node() -> None:
    _patch("fedgov.node.handlers:PRECHECKS", {})


@row(
    "dual-approval",
    "`fedgov.node.approvals:enough` (a job proceeds only with `approvers_required` distinct approvers)",
    _STACK + "test_dual_control_needs_two_distinct_people",
    "tests/test_federation.py::test_manual_dual_post_approval",
    level="stack",
)
def _dual_approval() -> None:
    _patch("fedgov.node.approvals:enough", lambda approvers, required: len(set(approvers)) >= 1)


@row(
    "approved-manifest",
    "`fedgov.node.approvals:check_approved` (the manifest that runs has the approved digest)",
    "tests/test_federation.py::test_a_node_runs_only_the_manifest_it_approved",
    level="stack",
)
def _approved_manifest() -> None:
    _patch("fedgov.node.approvals:check_approved", lambda store, job_id, manifest: None)


@row(
    "requester-not-approver",
    "`fedgov.node.approvals:self_approval` (same name or same key as the requester's certificate)",
    _STACK + "test_a_requester_cannot_approve_their_own_job",
    level="stack",
)
def _requester_not_approver() -> None:
    _patch("fedgov.node.approvals:self_approval", lambda *a, **k: None)


@row(
    "distinct-approvers",
    "`fedgov.node.approvals:duplicate_approver` (distinct names, certificates and keys)",
    _STACK + "test_dual_control_needs_two_distinct_people",
    level="stack",
)
def _distinct_approvers() -> None:
    def none(*a: Any, **k: Any) -> None:
        return None

    _patch("fedgov.node.approvals:duplicate_approver", none)
