"""Protection rows of the statistics disclosure controls (he-stats, cohort counts): issue 11.

Each ``disable`` switches one guard off (in every process, through the protection hook);
``scripts/check_protections.py --row ID`` requires the cited tests to fail then.
"""

from __future__ import annotations

from typing import Any

from protections import FLOOD_GUARD, _original, _patch, _without_imaginary_flood, row

_D = "tests/test_disclosure_stats.py::"
_H = "tests/test_he_stats.py::"
_S = "tests/test_he_stats_stack.py::"


@row(
    "he-stats-owner",
    "`fedgov.protocols.he_stats:_zero_sum_mask`: every slot the owner decrypts carries the cohort "
    "holder's 2^40-times-bound Gaussian zero-sum mask",
    _D + "test_range_edge_estimator_learns_nothing_from_gaussian_masks",
)
def _he_stats_owner() -> None:
    import numpy as np

    from fedgov.crypto.ckks_stats import SLOTS

    _patch("fedgov.protocols.he_stats:_zero_sum_mask", lambda rng, sigma: np.zeros(SLOTS))


@row(
    "he-stats-horizontal",
    "`fedgov.protocols.he_stats:plan_cells` checks answers against the release history (also "
    "over another set of regions) when the owners have DP off",
    _H + "test_small_cell_suppressed_and_not_derivable",
    "tests/test_he_stats_horizontal.py::test_dropping_a_region_cannot_isolate_its_small_part",
    level="stack",
)
def _he_stats_horizontal() -> None:
    orig = _original("fedgov.protocols.he_stats:plan_cells")

    def plan_cells(counts: Any, *, query: Any, min_cohort: int, history: Any) -> Any:
        return orig(counts, query=query, min_cohort=min_cohort, history=[])

    _patch("fedgov.protocols.he_stats:plan_cells", plan_cells)


@row(
    "stats-dp-default",
    "`fedgov.protocols.he_stats:Disclosure.epsilon_for`: DP (OpenDP discrete Laplace) on every "
    "released count and sum unless the owner's policy says `stats_dp = false`; minimum cell on "
    "the noisy count",
    _D + "test_released_numbers_carry_opendp_noise_on_the_grid",
    _D + "test_thresholds_apply_to_noisy_counts_and_empty_cells_are_noised",
    _D + "test_tracker_is_too_noisy_under_the_owners_default_dp",
    _S + "test_grouped_statistics_answer_with_dp_by_default",
    level="stack",
)
def _dp_default() -> None:
    _patch("fedgov.protocols.he_stats:Disclosure.epsilon_for", lambda self, query: None)


@row(
    "stats-epsilon-charged",
    "`fedgov.protocols.he_stats:BudgetAccountant.charge`: ε is charged up front for every query, "
    "whatever it returns, and refused when the period's budget is spent",
    _D + "test_single_target_cohort_outcomes_look_alike_and_always_cost_epsilon",
    _D + "test_budget_is_one_per_dataset_for_every_requester_and_field",
)
def _charged() -> None:
    _patch("fedgov.protocols.he_stats:BudgetAccountant.charge", lambda self, *a, **kw: None)


@row(
    "stats-budget-per-dataset",
    "`fedgov.node.kinds.he_stats:budget_scope`: the owner's budget key is its dataset (one per "
    "period for every requester certificate and field)",
    _S + "test_one_budget_for_every_requester_and_field",
    level="stack",
)
def _budget_scope() -> None:
    def scope(ctx: Any) -> str:
        return f"{ctx.me}.{ctx.participant.dataset}.{ctx.manifest.requester}.{ctx.manifest.parameters.get('field')}"

    _patch("fedgov.node.kinds.he_stats:budget_scope", scope)


@row(
    "stats-mask-floor",
    "`fedgov.protocols.he_stats:check_mask_floor`: the cohort holder refuses masks below its "
    "`stats_mask_bits_min` (default 40)",
    _D + "test_small_masks_are_refused_by_module_holder_and_policy",
)
def _mask_floor() -> None:
    _patch("fedgov.protocols.he_stats:check_mask_floor", lambda query, floor: None)


@row(
    "stats-auditor",
    "`fedgov.protocols.he_stats:audit_cohort`: the cohort holder drops rows so that every atom of "
    "its released cohort vectors has >= min cell rows",
    _D + "test_tracker_is_blocked_by_the_cohort_holders_auditor",
    _D + "test_auditor_atoms_never_smaller_than_min_cell",
)
def _auditor() -> None:
    import numpy as np

    def audit(codes: Any, ids: Any, released: Any, min_cell: int) -> Any:
        codes = np.asarray(codes)
        labels = sorted({int(c) for c in codes if c >= 0})
        vec = [[ids[r] for r in np.flatnonzero(codes == g)] for g in labels]
        return codes, vec

    _patch("fedgov.protocols.he_stats:audit_cohort", audit)


@row(
    "stats-imaginary-flood",
    f"`{FLOOD_GUARD}` called with `where=\"he-stats\"`: the cohort holder floods the imaginary "
    "part of every slot it returns to the key holder with a Gaussian of "
    "`fedgov.protocols.he_stats:IMAG_FLOOD_BELOW_MASK` below its mask (switched off for this caller only)",
    _D + "test_imaginary_part_estimator_is_at_chance",
)
def _imag() -> None:
    _without_imaginary_flood("he-stats")


@row(
    "stats-membership-silent",
    "`fedgov.node.kinds.he_stats:small_cohort_as_empty`: civil affairs' own minimum cohort "
    "empties a small cohort silently instead of refusing",
    _S + "test_single_target_membership_is_not_separable",
    level="stack",
)
def _silent() -> None:
    from fedgov.errors import PolicyDenied

    def refuse(codes: Any, min_cell: int) -> Any:
        n = int((codes >= 0).sum())
        if 0 < n < min_cell:
            raise PolicyDenied(f"the cohort has fewer than {min_cell} rows", where="he-stats")
        return codes

    _patch("fedgov.node.kinds.he_stats:small_cohort_as_empty", refuse)


@row(
    "cohort-count-dp",
    "`fedgov.protocols.cohort_count:release_noisy`: with DP (the default) a count is noised "
    "(OpenDP) and thresholded on its noisy value",
    _D + "test_cohort_count_noisy_threshold_and_noise",
)
def _count_dp() -> None:
    _patch("fedgov.protocols.cohort_count:release_noisy", lambda n, epsilon, min_cell: n)
