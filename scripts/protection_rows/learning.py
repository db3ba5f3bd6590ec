"""Protection rows of the learning jobs (docs/security.md, section "Learning jobs").

Vertical LR (masks, owner floors, the arbiter's schedule, model names) and
horizontal FL (aggregator, key holder, validation where the data is, owner
settings, the held-out dataset's decision, contributions).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from protections import FLOOD_GUARD, _original, _patch, _without_imaginary_flood, row

_ATT = "tests/test_learning_attacks.py::"
_ATT_STACK = "tests/test_learning_attacks_stack.py::"
_VLR = "tests/test_vertical_lr.py::"
_HFL = "tests/test_hfl.py::"


# --------------------------------------------------------------------------- vertical LR


@row(
    "vlr-masking",
    "`fedgov.protocols.vertical_lr:random_mask` draws a fresh uniform mask on [-2^mask_bits, 2^mask_bits] "
    "for every slot of every decryption (switched off: the constant 2.0)",
    _VLR + "test_arbiter_only_ever_decrypts_masked_values",
)
def _vlr_masking() -> None:
    import numpy as np

    _patch("fedgov.protocols.vertical_lr:random_mask", lambda n, mask_bits: np.full(n, 2.0))


@row(
    "vlr-imaginary-flood",
    f"`{FLOOD_GUARD}` called with `where=\"vertical-lr\"` (from `fedgov.protocols.vertical_lr:add_mask`) "
    "floods the imaginary part of every slot the arbiter can decode (switched off for this caller: "
    "the real mask only)",
    _VLR + "test_arbiter_only_ever_decrypts_masked_values",
)
def _vlr_flood() -> None:
    _without_imaginary_flood("vertical-lr")


@row(
    "vlr-bounds",
    "`fedgov.protocols.vertical_lr:VlrParams.validate` enforces absolute bounds on mask, hiding, precision "
    "and score bound (switched off: the bounds of `fedgov.params.vertical_lr` opened wide)",
    _ATT + "test_vlr_params_enforce_absolute_bounds_themselves",
)
def _vlr_bounds() -> None:
    _patch("fedgov.params.vertical_lr:MASK_BITS_MIN", -1000)
    _patch("fedgov.params.vertical_lr:MIN_HIDING_BITS_MIN", -1000)
    _patch("fedgov.params.vertical_lr:PRECISION_BITS_MAX", 1000)
    _patch("fedgov.params.vertical_lr:SCORE_BOUND_MIN", 0.0)


@row(
    "vlr-floors",
    "`fedgov.params.vertical_lr:mask_refusals` compares mask, hiding, score bound and precision with the "
    "owner's floors before approval (switched off: no refusals)",
    _ATT + "test_vlr_looser_masks_are_refused_naming_the_policy_key",
    _ATT_STACK + "test_vlr_floors_arbiter_schedule_and_model_path_through_real_jobs",
    level="stack",
)
def _vlr_floors() -> None:
    _patch("fedgov.params.vertical_lr:mask_refusals", lambda values, settings, source="": [])


@row(
    "vlr-arbiter-plan",
    "`fedgov.node.kinds.vertical_lr:arbiter_plan` reads evaluation and coalition decryptions from the signed "
    "manifest; the arbiter refuses a guest hello or request beyond it (switched off: the arbiter serves an "
    "evaluation and 50 coalitions whatever the manifest says)",
    _ATT_STACK + "test_a_lying_guest_gets_no_decryption_beyond_the_signed_manifest",
    _ATT + "test_a_guest_cannot_buy_decryptions_with_its_hello",
    level="stack",
)
def _vlr_plan() -> None:
    from fedgov.node.kinds import vertical_lr as node

    def plan(manifest: Any, params: Any, guest: str, hosts: list[str], *, training: bool) -> Any:
        return node.ArbiterPlan(training, params.patience > 0, True, 50)

    _patch("fedgov.node.kinds.vertical_lr:arbiter_plan", plan)


@row(
    "vlr-arbiter-kinds",
    "`fedgov.protocols.vertical_lr:Arbiter.decrypt_masked` decrypts only the message kind of the step, with "
    "the arbiter's own block size (switched off: the message's kind decides)",
    _ATT_STACK + "test_a_lying_guest_gets_no_decryption_beyond_the_signed_manifest",
    _ATT + "test_a_score_request_in_a_gradient_step_is_refused",
    level="stack",
)
def _vlr_kinds() -> None:
    orig = _original("fedgov.protocols.vertical_lr:Arbiter.decrypt_masked")

    def lax(self: Any, party: str, blob: bytes, *, expect: str = "gradient") -> bytes:
        from fedgov.protocols import vertical_lr as vlr

        return orig(self, party, blob, expect="scores" if blob[5] == vlr._K_SCORE_REQ else "gradient")

    _patch("fedgov.protocols.vertical_lr:Arbiter.decrypt_masked", lax)


@row(
    "model-path",
    "`fedgov.params.vertical_lr:check_model_id` accepts only a training job id as `parameters.model` "
    "(switched off: any string, paths included)",
    _ATT + "test_model_must_be_a_job_id_never_a_path",
)
def _model_path() -> None:
    _patch("fedgov.params.vertical_lr:check_model_id", lambda value: str(value or ""))


# --------------------------------------------------------------------------- horizontal FL


@row(
    "hfl-aggregator",
    "`fedgov.hfl.secure_agg:assert_public` refuses a CKKS context carrying a secret key (aggregator and "
    "regions load only public contexts; switched off: any context)",
    _HFL + "test_public_context_guard",
)
def _hfl_public() -> None:
    _patch("fedgov.hfl.secure_agg:assert_public", lambda ctx: ctx)


@row(
    "hfl-control-api",
    "`fedgov.hfl._superlink:is_allowed` lets only loopback peers use Flower's Control and Runtime APIs "
    "(switched off: everyone)",
    _HFL + "test_control_api_loopback_guard",
)
def _hfl_control() -> None:
    _patch("fedgov.hfl._superlink:is_allowed", lambda path, peer: True)


@row(
    "hfl-dp",
    "`fedgov.hfl.app:_local_dp` clips each update to dp_clip and adds N(0, (dp_noise dp_clip)^2) "
    "(switched off: the update unchanged)",
    _HFL + "test_local_dp_clips_then_adds_gaussian_noise",
)
def _hfl_dp() -> None:
    _patch("fedgov.hfl.app:_local_dp", lambda w0, w, clip, noise: w)


@row(
    "hfl-key-holder",
    "`fedgov.hfl.secure_agg:MIN_SUM_CONTRIBUTORS`: the key holder never decrypts a sum of fewer than 2 "
    "contributors, whatever it is started with (switched off: 0)",
    _ATT + "test_key_holder_refuses_a_sum_of_one_and_a_second_decryption",
)
def _hfl_key_holder() -> None:
    _patch("fedgov.hfl.secure_agg:MIN_SUM_CONTRIBUTORS", 0)


@row(
    "hfl-validation-local",
    "`fedgov.node.kinds.horizontal_fl:_region` keeps the held-out rows at the validation region, which "
    "returns one AUC per track (switched off: it also sends its validation table to the aggregator, "
    "as before)",
    "tests/test_hfl_job.py::test_horizontal_fl_job_through_the_coordinator",
    level="stack",
)
def _hfl_validation() -> None:
    import io

    import pyarrow.csv as pacsv

    orig = _original("fedgov.node.kinds.horizontal_fl:_region")

    def leaky(ctx: Any, agg: str, kh: Any, val_region: str, p: Any) -> Any:
        from fedgov.node.kinds import horizontal_fl as mod

        if ctx.me == val_region:
            table, _ = mod._feature_table(ctx, str(ctx.participant.extra["eval_dataset"]))
            buf = io.BytesIO()
            pacsv.write_csv(table, buf)
            ctx.channel.send(agg, "hfl/validation", buf.getvalue())
        return orig(ctx, agg, kh, val_region, p)

    _patch("fedgov.node.kinds.horizontal_fl:_region", leaky)


@row(
    "hfl-owner-settings",
    "`fedgov.params.horizontal_fl:refusals`: encryption, min clients, DP and eval-on-training are each "
    "region's settings, checked before approval (switched off: the kind declares no refusals)",
    _ATT + "test_hfl_plain_aggregation_and_few_clients_are_the_regions_decision",
    _ATT + "test_hfl_eval_dataset_may_not_be_the_training_set",
    _ATT_STACK + "test_hfl_owner_settings_and_the_eval_dataset_decision_through_real_jobs",
    level="stack",
)
def _hfl_settings() -> None:
    import fedgov.params as params

    schemas = dict(params.SCHEMAS)
    schemas["horizontal-fl"] = dataclasses.replace(schemas["horizontal-fl"], refusals=None)
    _patch("fedgov.params:SCHEMAS", schemas)


@row(
    "hfl-eval-decision",
    "`fedgov.node.agent:_stricter`: a task reading an eval dataset needs that dataset's approval, approvers "
    "and minimum cohort too (switched off: the training dataset's decision alone)",
    _ATT + "test_eval_dataset_gets_its_own_full_decision",
    _ATT_STACK + "test_hfl_owner_settings_and_the_eval_dataset_decision_through_real_jobs",
    level="stack",
)
def _hfl_eval_decision() -> None:
    _patch("fedgov.node.agent:_stricter", lambda train, held_out: train)


@row(
    "hfl-contributions",
    "`fedgov.hfl.evaluate:contribution` turns the per-track AUCs into leave-one-out contributions and "
    "coalitions for the ledger (switched off: the full AUC only)",
    "tests/test_hfl_job.py::test_horizontal_fl_job_through_the_coordinator",
    level="stack",
)
def _hfl_contributions() -> None:
    _patch("fedgov.hfl.evaluate:contribution", lambda aucs, regions: {"auc_validation": float(aucs["all"])})
