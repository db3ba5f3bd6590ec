"""Learning jobs: each attack of issue 12 (findings 1, 2, 3, 6) mounted on the protocol and node code.

Through the real stack (coordinator and node processes): tests/test_learning_attacks_stack.py.
"""

from __future__ import annotations

import json
import queue
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tenseal as ts

import fedgov.params as params
from fedgov.errors import ConfigError, CryptoError, FedgovError
from fedgov.hfl import deployment, evaluate
from fedgov.hfl import secure_agg as sa
from fedgov.manifest import parse_manifest
from fedgov.node.agent import NodeAgent, _stricter
from fedgov.node.kinds import vertical_lr as vlr_node
from fedgov.params import horizontal_fl as hfl_params
from fedgov.params import vertical_lr as vlr_params
from fedgov.policy import Decision, parse_policy
from fedgov.protocols import vertical_lr as vlr
from tests.helpers_learning import FATE, hfl_manifest_text, vlr_manifest_text


def _vlr(params_toml: str = "", guest_extra: str = "") -> Any:
    return parse_manifest(vlr_manifest_text(params_toml, guest_extra))


def _refusals(manifest: Any, node: str, policy: dict | None = None, dataset: str = "h") -> list[str]:
    doc = {"datasets": {dataset: {"rules": [], **({"disclosure": policy} if policy else {})}}}
    pol = parse_policy(doc, "policy.toml")
    ds = pol.datasets[dataset]
    found = params.disclosure_refusals(manifest, manifest.participant(node), ds.disclosure, ds.disclosure_source)
    return [str(r) for r in found]


# --------------------------------------------------------------------------- finding 1: VLR floors


def test_vlr_params_enforce_absolute_bounds_themselves() -> None:
    """The protocol module refuses a nearly unmasked run whatever the manifest or policy says."""
    with pytest.raises(ConfigError, match=r"mask_bits must be in \[20, 60\], got 0"):
        vlr.VlrParams.from_json({"mask_bits": 0, "min_hiding_bits": -60})
    with pytest.raises(ConfigError, match="min_hiding_bits must be in"):
        vlr.VlrParams.from_json({"min_hiding_bits": -60})
    with pytest.raises(ConfigError, match="precision_bits must be in"):
        vlr.VlrParams.from_json({"precision_bits": 52})
    with pytest.raises(ConfigError, match="score_bound must be >= 1"):
        vlr.VlrParams.from_json({"score_bound": 1e-9})
    # and the submit-time schema says so too, naming the key
    with pytest.raises(ConfigError, match=r"'mask_bits' must be >= 20, got 0"):
        params.check_parameters("vertical-lr", {"mask_bits": 0, "min_hiding_bits": -60})


def test_vlr_safe_defaults_equal_the_protocol_defaults() -> None:
    """Honest runs are unchanged: a policy that says nothing accepts a manifest that says nothing."""
    d = vlr.VlrParams()
    assert (d.mask_bits, d.min_hiding_bits, d.precision_bits, d.score_bound) == (
        vlr_params.DEFAULT_MASK_BITS, vlr_params.DEFAULT_MIN_HIDING_BITS,
        vlr_params.DEFAULT_PRECISION_BITS, vlr_params.DEFAULT_SCORE_BOUND,
    )
    assert _refusals(_vlr(), "host") == []
    assert _refusals(_vlr('shapley = true\npatience = 2\nvalidation_fraction = 0.2',
                          'eval_dataset = "g2"'), "host") == []


def test_vlr_looser_masks_are_refused_naming_the_policy_key() -> None:
    m = _vlr("mask_bits = 24\nmin_hiding_bits = 18\nprecision_bits = 20\nscore_bound = 8.0")
    got = _refusals(m, "host")
    src = "policy.toml: datasets.h.disclosure"
    assert got == [
        f"parameters.mask_bits = 24 (mask over every value the arbiter decrypts) is below this department's "
        f"floor 30 (policy key {src}.vlr_mask_bits_min)",
        f"parameters.min_hiding_bits = 18 is below this department's floor 24 (policy key {src}.vlr_min_hiding_bits_min)",
        f"parameters.score_bound = 8.0 is below this department's floor 64.0 (policy key {src}.vlr_score_bound_min)",
        f"parameters.precision_bits = 20 (precision of the arbiter's replies) is above this department's "
        f"limit 12 (policy key {src}.vlr_precision_bits_max)",
    ]
    # an owner may raise its floor; the default manifest is then refused, a stricter one accepted
    (one,) = _refusals(_vlr(), "host", {"vlr_mask_bits_min": 36})
    assert "parameters.mask_bits = 30" in one and "vlr_mask_bits_min" in one
    assert _refusals(_vlr("mask_bits = 40\nmin_hiding_bits = 30"), "host", {"vlr_mask_bits_min": 36}) == []
    # the arbiter has no data and no floors of its own here
    assert _refusals(m, "arbiter") == []


def test_vlr_evaluation_decryptions_are_owner_settings() -> None:
    m = _vlr("shapley = true\npatience = 1\nvalidation_fraction = 0.2", 'eval_dataset = "g2"')
    got = _refusals(m, "host", {"vlr_allow_shapley": False, "vlr_allow_validation_scores": False})
    assert len(got) == 2
    assert "parameters.shapley = true" in got[0] and "vlr_allow_shapley" in got[0]
    assert "parameters.patience = 1" in got[1] and "vlr_allow_validation_scores" in got[1]


# --------------------------------------------------------------------------- finding 2: the arbiter


class _Pipe:
    """A job channel between the arbiter (under test) and a scripted guest/host, in one process."""

    def __init__(self) -> None:
        self.q: dict[tuple[str, str, str], queue.Queue[bytes]] = {}
        self.lock = threading.Lock()

    def _queue(self, frm: str, to: str, step: str) -> queue.Queue[bytes]:
        with self.lock:
            return self.q.setdefault((frm, to, step), queue.Queue())

    def end(self, me: str) -> SimpleNamespace:
        return SimpleNamespace(
            send=lambda to, step, blob: self._queue(me, to, step).put(bytes(blob)),
            recv=lambda frm, step, timeout=30.0: self._queue(frm, me, step).get(timeout=timeout),
        )


def _arbiter_ctx(manifest: Any, pipe: _Pipe, saved: dict) -> Any:
    return SimpleNamespace(
        manifest=manifest, me="arbiter", job_id="job-0", channel=pipe.end("arbiter"),
        save_json=lambda name, obj: saved.__setitem__(name, obj),
    )


def _run_arbiter(manifest: Any, p: vlr.VlrParams, pipe: _Pipe, saved: dict) -> tuple[threading.Thread, list]:
    errors: list[BaseException] = []

    def go() -> None:
        try:
            vlr_node._arbiter(_arbiter_ctx(manifest, pipe, saved), p, "guest", ["host"], training=True)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    th = threading.Thread(target=go, daemon=True)
    th.start()
    return th, errors


def _breast() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = np.genfromtxt(FATE / "breast_hetero_guest.csv", delimiter=",", skip_header=1)
    h = np.genfromtxt(FATE / "breast_hetero_host.csv", delimiter=",", skip_header=1)
    return g[:100, 2:], g[:100, 1], h[:100, 1:]


def test_arbiter_plan_comes_from_the_signed_manifest() -> None:
    p = vlr.VlrParams()
    hosts = ["a", "b", "c"]
    m = _vlr("shapley = true")
    assert vlr_node.arbiter_plan(m, p, "guest", hosts, training=True) == vlr_node.ArbiterPlan(True, False, False, 0)
    m = _vlr("shapley = true", 'eval_dataset = "g2"')
    assert vlr_node.arbiter_plan(m, p, "guest", hosts, training=True).coalitions == 6
    m = _vlr("", 'eval_dataset = "g2"')
    plan = vlr_node.arbiter_plan(m, p, "guest", hosts, training=True)
    assert plan.eval_scores and plan.coalitions == 0
    assert vlr_node.arbiter_plan(m, p, "guest", hosts, training=False) == vlr_node.ArbiterPlan(False, False, True, 0)


def _train_one_batch(pipe: _Pipe, p: vlr.VlrParams, gx: np.ndarray, y: np.ndarray, hx: np.ndarray,
                     hello: dict) -> tuple[vlr.Guest, vlr.Host]:
    """Scripted guest and host: hellos, then one honest batch and the end of training."""
    g, h = pipe.end("guest"), pipe.end("host")
    g.send("arbiter", "vlr/hello", json.dumps({"features": gx.shape[1] + 1, "batches": 1, **hello}).encode())
    h.send("arbiter", "vlr/hello", json.dumps({"features": hx.shape[1], "batches": 1}).encode())
    ctx = g.recv("arbiter", "vlr/context")
    assert h.recv("arbiter", "vlr/context") == ctx
    host = vlr.Host("host", p, hx, ctx)
    guest = vlr.Guest("guest", p, gx, y, ctx, ["host"])
    resid = guest.residual_for_hosts(0, 0, {"host": host.partial_scores(0, 0)})
    h.send("arbiter", "vlr/grad", host.masked_gradient(resid))
    host.apply_unmasked(h.recv("arbiter", "vlr/grad-reply"))
    g.send("arbiter", "vlr/grad", guest.masked_gradient(0, 0))
    guest.apply_unmasked(g.recv("arbiter", "vlr/grad-reply"))
    g.send("arbiter", "vlr/epoch", b"\x00")
    return guest, host


def test_a_guest_cannot_buy_decryptions_with_its_hello() -> None:
    """The guest's hello claims an evaluation and 50 coalition re-scorings; the manifest has
    neither: the arbiter refuses before decrypting anything, naming the manifest. A guest that
    says nothing and sends a coalition request anyway is refused at that request.
    (Through real node processes: tests/test_learning_attacks_stack.py.)"""
    gx, y, hx = _breast()
    p = vlr.VlrParams(epochs=1, batch_size=128, seed=1)
    m = _vlr("epochs = 1\nbatch_size = 128")
    pipe, saved = _Pipe(), {}
    th, errors = _run_arbiter(m, p, pipe, saved)
    g = pipe.end("guest")
    g.send("arbiter", "vlr/hello", json.dumps({"features": gx.shape[1] + 1, "batches": 1, "eval": True,
                                               "coalitions": 50}).encode())
    pipe.end("host").send("arbiter", "vlr/hello", json.dumps({"features": hx.shape[1], "batches": 1}).encode())
    th.join(timeout=30)
    assert not th.is_alive()
    (err,) = errors
    assert "the guest's hello asks for 1 evaluation and 50 coalition score decryptions" in str(err)
    assert "the signed manifest allows 0 evaluation and 0 coalition" in str(err)
    assert "parameters.shapley = false" in str(err)
    assert saved["arbiter-decryptions"] == {"gradient": 0, "scores": 0}
    with pytest.raises(queue.Empty):
        g.recv("arbiter", "vlr/context", timeout=0.2)

    pipe, saved = _Pipe(), {}
    th, errors = _run_arbiter(m, p, pipe, saved)
    guest, host = _train_one_batch(pipe, p, gx, y, hx, {})
    # the host's partial scores, masked by the guest as a "coalition request": refused, not decrypted
    _, req = vlr._mask_total(guest.ctx, np.zeros(0), {"host": host.validation_scores()}, ["host"], p, "guest")
    pipe.end("guest").send("arbiter", "vlr/coalition", req)
    th.join(timeout=30)
    assert not th.is_alive()
    (err,) = errors
    assert "refused: the guest sent coalition score request 1" in str(err)
    assert saved["arbiter-decryptions"] == {"gradient": 2, "scores": 0}
    with pytest.raises(queue.Empty):
        pipe.end("guest").recv("arbiter", "vlr/coalition-reply", timeout=0.2)


def test_an_honest_guest_ends_its_requests_and_the_arbiter_finishes() -> None:
    gx, y, hx = _breast()
    p = vlr.VlrParams(epochs=1, batch_size=128, seed=1)
    pipe, saved = _Pipe(), {}
    th, errors = _run_arbiter(_vlr("epochs = 1\nbatch_size = 128"), p, pipe, saved)
    _train_one_batch(pipe, p, gx, y, hx, {"eval": False, "coalitions": 0})
    pipe.end("guest").send("arbiter", "vlr/coalition", b"")  # the end marker
    th.join(timeout=30)
    assert not th.is_alive() and not errors
    assert saved["arbiter-decryptions"] == {"gradient": 2, "scores": 0}


def test_a_score_request_in_a_gradient_step_is_refused() -> None:
    """The guest wraps a host's encrypted per-row partial scores X_h.w_h as a full-vector score
    request in its gradient step (where the block-sum reduction would not apply): refused."""
    gx, y, hx = _breast()
    p = vlr.VlrParams(epochs=1, batch_size=128, seed=1)
    arb = vlr.Arbiter(p, {"guest": gx.shape[1] + 1, "host": hx.shape[1]})
    ctx = arb.public_context()
    host = vlr.Host("host", p, hx, ctx)
    guest = vlr.Guest("guest", p, gx, y, ctx, ["host"])
    _, req = vlr._mask_total(guest.ctx, np.zeros(100), {"host": host.validation_scores()}, ["host"], p, "guest")
    with pytest.raises(CryptoError, match="decrypts only masked gradient messages"):
        arb.decrypt_masked("guest", req, expect="gradient")
    # nor can a gradient message choose its own block (here: one slot per value, no reduction)
    guest.residual_for_hosts(0, 0, {"host": host.partial_scores(0, 0)})
    blob = bytearray(guest.masked_gradient(0, 0))
    vlr._HDR.pack_into(blob, 0, vlr._MAGIC, vlr._VERSION, vlr._K_MASKED, 0, 0, p.ckks.slots, 1)
    with pytest.raises(CryptoError, match="block size"):
        arb.decrypt_masked("guest", bytes(blob), expect="gradient")
    # nor claim so many features that a block sum adds a single slot
    with pytest.raises(ConfigError, match="slots per decrypted block sum"):
        vlr.Arbiter(p, {"guest": p.ckks.slots})
    assert arb.decrypted == {"gradient": 0, "scores": 0}


def test_scoring_parameters_must_agree_between_guest_and_hosts() -> None:
    """Scoring: the guest cannot pick weaker masks than the model all parties hold."""
    weak = {**vlr.VlrParams().to_json(), "mask_bits": 24, "min_hiding_bits": 16}
    hello = {"guest": {"params": weak}, "host": {"params": vlr.VlrParams().to_json()}}
    with pytest.raises(FedgovError, match="disagree on 'params'"):
        vlr_node._agreed(hello, "params")


# --------------------------------------------------------------------------- finding 3: HFL

def _hfl(params_toml: str = "", extra: str = 'eval_dataset = "validation"') -> Any:
    return parse_manifest(hfl_manifest_text(params_toml, extra))


def test_hfl_plain_aggregation_and_few_clients_are_the_regions_decision() -> None:
    assert _refusals(_hfl(), "north", dataset="apps") == []  # safe defaults accept an honest job
    (enc,) = _refusals(_hfl("encrypted = false"), "north", dataset="apps")
    assert "parameters.encrypted = false" in enc and "disclosure.hfl_require_encryption" in enc
    assert _refusals(_hfl("encrypted = false"), "north", {"hfl_require_encryption": False}, "apps") == []
    with pytest.raises(ConfigError, match="'min_clients' must be >= 2, got 1"):
        params.check_parameters("horizontal-fl", {"min_clients": 1})
    (few,) = _refusals(_hfl("min_clients = 2"), "north", {"hfl_min_clients_min": 3}, "apps")
    assert "parameters.min_clients = 2" in few and "hfl_min_clients_min" in few
    with pytest.raises(ConfigError, match="'hfl_min_clients_min' must be >= 2"):
        parse_policy({"datasets": {"apps": {"disclosure": {"hfl_min_clients_min": 1}}}}, "policy.toml")


def test_hfl_dp_demanded_by_a_region_is_enforced() -> None:
    pol = {"hfl_dp_noise_min": 0.5, "hfl_dp_clip_max": 1.0}
    got = _refusals(_hfl(), "north", pol, "apps")
    assert len(got) == 2 and "hfl_dp_noise_min" in got[0] and "hfl_dp_clip_max" in got[1]
    (low,) = _refusals(_hfl("dp_clip = 0.5\ndp_noise = 0.1"), "north", pol, "apps")
    assert "parameters.dp_noise = 0.1" in low
    assert _refusals(_hfl("dp_clip = 0.5\ndp_noise = 1.0"), "north", pol, "apps") == []


def test_hfl_eval_dataset_may_not_be_the_training_set() -> None:
    m = _hfl(extra='eval_dataset = "apps"')
    (same,) = _refusals(m, "north", dataset="apps")
    assert "eval_dataset 'apps' is the dataset this region trains on" in same
    assert "hfl_eval_on_training_data" in same
    assert _refusals(m, "north", {"hfl_eval_on_training_data": True}, "apps") == []


def test_eval_dataset_gets_its_own_full_decision() -> None:
    train = Decision(True, (), approval="auto", approvers_required=1, min_cohort=11)
    held = Decision(True, (), approval="manual", approvers_required=2, approvers=("ana", "bo"), min_cohort=50)
    d = _stricter(train, held)
    assert (d.approval, d.approvers_required, d.approvers, d.min_cohort) == ("manual", 2, ("ana", "bo"), 50)
    both = _stricter(Decision(True, (), approvers=("bo", "cy")), held)
    assert both.approvers == ("bo",)
    disjoint = _stricter(Decision(True, (), approvers=("cy",)), held)
    assert not disjoint.allowed and "no approver is listed by both" in disjoint.reasons[0]
    # the pending job's approvals are checked against both datasets' approver lists too
    pol = parse_policy({"datasets": {"apps": {"approvers": ["ana", "cy"]}, "validation": {"approvers": ["ana"]},
                                     "open": {}}}, "policy.toml")
    agent = SimpleNamespace(config=SimpleNamespace(policy=pol))
    m = _hfl()
    assert NodeAgent._allowed_approvers(agent, m.participant("north")) == ("ana",)  # apps + validation
    pol2 = parse_policy({"datasets": {"apps": {"approvers": ["cy"]}, "validation": {"approvers": ["ana"]}}},
                        "policy.toml")
    assert NodeAgent._allowed_approvers(SimpleNamespace(config=SimpleNamespace(policy=pol2)),
                                        m.participant("north")) == ("",)  # nobody


def test_validation_returns_only_one_auc_per_track() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] + rng.normal(size=200) > 0).astype(float)
    tracks = {"all": [1.0, 0, 0, 0], "-a": [0.5, 0, 0, 0], "-b": [0.0, 1.0, 0, 0]}
    aucs = evaluate.track_aucs(tracks, x, y, ["a", "b"])
    assert set(aucs) == set(tracks) and all(isinstance(v, float) for v in aucs.values())
    res = evaluate.contribution(aucs, ["a", "b"])
    assert res["contribution"]["a"] == pytest.approx(aucs["all"] - aucs["-a"], abs=1e-6)
    with pytest.raises(FedgovError, match="not of this job"):
        evaluate.track_aucs({**tracks, "-zz": [0, 0, 0, 0]}, x, y, ["a", "b"])
    with pytest.raises(FedgovError, match="shape"):
        evaluate.track_aucs({"all": [1.0, 2.0]}, x, y, ["a", "b"])


def test_the_serverapp_run_config_has_no_validation_data() -> None:
    """The ServerApp's declared run config carries no path to held-out data."""
    keys = set(deployment._RUN_CONFIG_DEFAULTS)
    assert not [k for k in keys if "val" in k] and "dim" in keys
    # and the run's default minimum is the owners' safe default (honest jobs are not refused)
    assert deployment.DEFAULT_PARAMS["min-clients"] == hfl_params.DEFAULT_MIN_CLIENTS


def _kh_context() -> tuple[ts.Context, ts.Context]:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=sa.CKKS_POLY_DEGREE,
                     coeff_mod_bit_sizes=list(sa.CKKS_COEFF_BITS))
    ctx.global_scale = sa.CKKS_SCALE
    pub = ts.context_from(ctx.serialize(save_secret_key=False))
    return ctx, pub


def _request(pub: ts.Context, rnd: int, contributors: int, vec: list[float]) -> bytes:
    header = {"job": "j", "round": rnd, "request_id": "r",
              "tracks": [{"name": "all", "contributors": contributors}]}
    return sa._pack(header, [sa.encrypt_vector(pub, vec)])


def test_key_holder_refuses_a_sum_of_one_and_a_second_decryption() -> None:
    secret, pub = _kh_context()
    done: set = set()
    one = sa._decrypt_request(secret, _request(pub, 1, 1, [3.0, 1.0]), 1, done, None)
    assert "1 contributors" in one["error"] and "sums" not in one  # even when asked to accept 1
    ok = sa._decrypt_request(secret, _request(pub, 1, 2, [3.0, 1.0]), 2, done, None)
    assert ok["sums"]["all"][:2] == pytest.approx([3.0, 1.0], abs=1e-6)
    again = sa._decrypt_request(secret, _request(pub, 1, 2, [5.0, 1.0]), 2, done, None)
    assert "already decrypted" in again["error"] and "sums" not in again
    assert hfl_params.MIN_CLIENTS_FLOOR == sa.MIN_SUM_CONTRIBUTORS == 2


# --------------------------------------------------------------------------- finding 6: model path


@pytest.mark.parametrize("bad", ["../../etc", "../job-1234567", "/tmp/x", "job-12/../../x", "", "model.json"])
def test_model_must_be_a_job_id_never_a_path(bad: str) -> None:
    with pytest.raises(ConfigError, match="is not a training job id"):
        vlr_params.check_model_id(bad)
    m = parse_manifest(vlr_manifest_text(f'model = "{bad}"', kind="vertical-lr-score"))
    with pytest.raises(ConfigError, match="never by a path"):
        params.disclosure_refusals(m, m.participant("host"), params.default_disclosure())
    assert vlr_params.check_model_id("job-0123456789ab") == "job-0123456789ab"
