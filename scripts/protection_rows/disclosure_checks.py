"""Protection rows: disclosure control of eligibility checks and PSI (issue 11, attacks 5-7).

Rows of docs/security.md "Disclosure control": each ``disable`` switches one guard off
(in every process, through the protection hook) and the cited tests must then fail.
"""

from __future__ import annotations

from typing import Any

from protections import FLOOD_GUARD, _original, _patch, _without_imaginary_flood, row

_ELIG_UNIT = "tests/test_disclosure_checks.py"
_PSI_UNIT = "tests/test_disclosure_psi.py"
_STACK = "tests/test_disclosure_stack.py"


# --------------------------------------------------------------------------- eligibility


@row(
    "eligibility-blinding",
    "`fedgov.protocols.eligibility:Rules.r_bits` sizes the log-uniform blinding factor "
    "(switched off: every factor is 1)",
    "tests/test_eligibility.py::test_decisions_equal_plaintext_and_view_hides_totals",
)
def _elig_blinding() -> None:
    _patch("fedgov.protocols.eligibility:_MIN_R_BITS", 0)
    _patch("fedgov.protocols.eligibility:Rules.r_bits", lambda self, rule: 0)


@row(
    "eligibility-rule-ladder",
    "`fedgov.protocols.eligibility:check_figure_uses` (the protocol module's own limit on rules per figure)",
    f"{_ELIG_UNIT}::test_ten_rule_ladder_on_one_figure_is_refused_by_the_department",
    f"{_ELIG_UNIT}::test_fact_rules_count_towards_the_ladder",
)
def _elig_ladder() -> None:
    _patch("fedgov.protocols.eligibility:check_figure_uses", lambda rules, node, limit: None)


@row(
    "eligibility-ladder-policy",
    "`fedgov.params.eligibility:ladder_refusals` (the node refuses before approval, naming "
    "`elig_max_rules_per_figure`)",
    f"{_ELIG_UNIT}::test_the_node_refuses_a_ladder_before_approval_naming_the_policy_key",
    f"{_STACK}::test_a_rule_ladder_is_refused_by_the_department_before_anything_runs",
    level="stack",
)
def _elig_ladder_policy() -> None:
    _patch("fedgov.params.eligibility:ladder_refusals", lambda manifest, participant, settings: [])


@row(
    "eligibility-check-budget",
    "`fedgov.node.check_budget:CheckBudget.spend` (durable per-applicant check count at the department)",
    f"{_ELIG_UNIT}::test_repeated_jobs_binary_searching_one_applicant_stop_when_the_budget_is_spent",
    f"{_STACK}::test_a_binary_search_over_repeated_jobs_stops_when_the_check_budget_is_spent",
    level="stack",
)
def _elig_budget() -> None:
    _patch("fedgov.node.check_budget:CheckBudget.spend", lambda self, *a, **k: None)


@row(
    "eligibility-imaginary-flooding",
    f"`{FLOOD_GUARD}` called with `where=\"eligibility\"`: fresh uniform imaginary parts on every "
    "blinded ciphertext before the key holder (switched off for this caller only)",
    f"{_ELIG_UNIT}::test_key_holder_learns_nothing_from_imaginary_parts_and_decisions_stay_exact",
)
def _elig_flood() -> None:
    _without_imaginary_flood("eligibility")


# --------------------------------------------------------------------------- PSI


@row(
    "psi-privacy",
    "`fedgov.protocols.psi:PsiGuest.finish` delivers the aligned order only to the named hosts "
    "(switched off: to every host)",
    "tests/test_psi.py::test_multi_party_global_intersection_and_delivery",
)
def _psi_privacy() -> None:
    orig = _original("fedgov.protocols.psi:PsiGuest.finish")

    def finish(self: Any, deliver_to: Any = ()) -> Any:
        return orig(self, list(self.hosts))

    _patch("fedgov.protocols.psi:PsiGuest.finish", finish)


@row(
    "psi-standing",
    "`fedgov.node.standing:_standing_allowed` (a department opts in by policy: `standing_alignment = true`)",
    "tests/test_psi_standing.py::test_a_host_whose_policy_does_not_allow_it_refuses",
)
def _psi_standing() -> None:
    _patch("fedgov.node.standing:_standing_allowed", lambda ctx: True)


@row(
    "psi-size-release",
    "`fedgov.protocols.psi:release_sizes` (sizes leave the guest only as asked and allowed; "
    "switched off: exact sizes always)",
    f"{_PSI_UNIT}::test_defaults_release_no_size_and_deliver_ids_to_nobody",
    f"{_PSI_UNIT}::test_release_levels_round_and_suppress",
    f"{_STACK}::test_psi_sizes_reach_neither_the_requester_nor_the_ledger",
    level="stack",
)
def _psi_release() -> None:
    _patch(
        "fedgov.protocols.psi:release_sizes",
        lambda size, pairwise, **kw: {"intersection_size": int(size), "pairwise_sizes": dict(pairwise)},
    )


@row(
    "psi-size-policy",
    "`fedgov.params.psi:size_refusals` (a manifest asking sizes looser than the owner's "
    "`psi_size_release`/`psi_size_rounding`/`psi_size_min`/`psi_size_ledger` is refused before approval)",
    f"{_PSI_UNIT}::test_a_looser_ask_is_refused_naming_the_policy_key",
    f"{_STACK}::test_looser_psi_asks_are_refused_before_anything_runs",
    level="stack",
)
def _psi_size_policy() -> None:
    _patch("fedgov.params.psi:size_refusals", lambda manifest, participant, settings: [])


@row(
    "psi-size-ledger",
    "`fedgov.node.kinds.psi:_ledger_facts` (the guest publishes a size to the ledger only when asked "
    "and allowed; switched off: the node's default summary figures)",
    f"{_STACK}::test_an_exact_size_the_owners_release_to_the_requester_stays_off_the_ledger",
    level="stack",
)
def _psi_ledger() -> None:
    _patch("fedgov.node.kinds.psi:_ledger_facts", lambda parameters, released: {})


@row(
    "psi-id-recipients",
    "`fedgov.params.psi:recipient_refusals` (only nodes each owner's `psi_id_recipients` allows may "
    "receive aligned IDs)",
    f"{_PSI_UNIT}::test_only_the_owners_decide_who_receives_aligned_ids",
    f"{_PSI_UNIT}::test_a_host_named_to_receive_the_cardinality_size_needs_the_owners_consent_too",
    f"{_STACK}::test_looser_psi_asks_are_refused_before_anything_runs",
    level="stack",
)
def _psi_recipients() -> None:
    _patch("fedgov.params.psi:recipient_refusals", lambda manifest, participant, settings: [])
