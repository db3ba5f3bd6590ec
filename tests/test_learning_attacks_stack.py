"""Learning jobs attacked through real federation jobs (coordinator and node processes over mTLS).

Findings 1, 2, 3 and 6 of issue 12; the protocol-level versions are in tests/test_learning_attacks.py.
Each test reads what a user sees (the job's state and reason) and what each node process
itself recorded (its audit log, its private files).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedgov.errors import ConfigError
from fedgov.runner import LocalFederation
from fedgov.runspec import federation_for, load_spec, manifest_for
from tests.helpers_learning import LYING_GUEST, hfl_federation, hfl_manifest, node_audit, until, vlr_spec

pytestmark = pytest.mark.slow


def _add_disclosure(policy: Path, dataset: str, table: str) -> None:
    policy.write_text(policy.read_text() + f"\n[datasets.{dataset}.disclosure]\n{table}\n")


def test_vlr_floors_arbiter_schedule_and_model_path_through_real_jobs(tmp_path: Path) -> None:
    spec = load_spec(vlr_spec(tmp_path, epochs=1))
    fed = federation_for(spec, tmp_path / "w")
    host = next(n for n in fed.nodes if n.name == "host")
    # the host's owner raises its mask floor above the default and lowers the precision ceiling
    _add_disclosure(host.policy, "data", "vlr_mask_bits_min = 32\nvlr_precision_bits_max = 8")
    arbiter = next(n for n in fed.nodes if n.name == "arbiter")
    arbiter.policy.write_text('[arbiter]\nkinds = ["vertical-lr", "vertical-lr-score"]\n')
    base = manifest_for(spec)
    with fed, fed.client() as c:
        # finding 1 (absolute bound): refused at submit, before any node sees it
        with pytest.raises(ConfigError, match=r"'mask_bits' must be >= 20, got 0"):
            c.submit(base.replace("[parameters]", "[parameters]\nmask_bits = 0\nmin_hiding_bits = -60"))
        # finding 1 (owner floor): the default manifest is looser than the host allows
        loose = c.submit(base)
        st = c.wait(loose.job_id, timeout=90)
        assert st.state == "rejected"
        assert "parameters.mask_bits = 30" in st.reason and "floor 32" in st.reason
        assert "datasets.data.disclosure.vlr_mask_bits_min" in st.reason
        assert "parameters.precision_bits = 12" in st.reason and "vlr_precision_bits_max" in st.reason
        for node in ("guest", "host", "arbiter"):  # refused before anything left any node
            assert not [e for e in node_audit(fed.workdir, node, loose.job_id) if e["action"] == "relay-send"]
        # stricter than the floors: runs
        strict = base.replace("[parameters]", "[parameters]\nmask_bits = 32\nprecision_bits = 8")
        train = c.wait(c.submit(strict).job_id, timeout=180)
        assert train.state == "succeeded", train.reason
        assert c.result(train.job_id)["guest"]["eval"]["auc"] > 0.9
        # finding 2: the arbiter served exactly the manifest's decryptions (1 batch x 2 parties,
        # one evaluation; no coalitions since shapley is off), as recorded by the arbiter process
        arb_out = fed.workdir / "state" / "arbiter" / "outputs" / train.job_id / "arbiter-decryptions.json"
        assert json.loads(arb_out.read_text()) == {"gradient": 2, "scores": 1}
        # finding 6: a model named by a path is refused before approval, naming the rule
        score = strict.replace('kind = "vertical-lr"', 'kind = "vertical-lr-score"')
        score = "\n".join(
            line for line in score.splitlines()
            if not line.startswith(("epochs", "learning_rate", "seed", "eval_dataset", "mask_bits",
                                    "precision_bits"))
        )
        bad = c.wait(c.submit(score.replace("[parameters]", '[parameters]\nmodel = "../../../etc"')).job_id,
                     timeout=90)
        assert bad.state == "rejected"
        assert "parameters.model = '../../../etc' is not a training job id" in bad.reason
        # the stored model's masks meet the floors: scoring runs, one score decryption
        ok = c.wait(c.submit(score.replace("[parameters]", f'[parameters]\nmodel = "{train.job_id}"')).job_id,
                    timeout=180)
        assert ok.state == "succeeded", ok.reason
        arb_score = fed.workdir / "state" / "arbiter" / "outputs" / ok.job_id / "arbiter-decryptions.json"
        assert json.loads(arb_score.read_text()) == {"gradient": 0, "scores": 1}


def test_hfl_owner_settings_and_the_eval_dataset_decision_through_real_jobs(tmp_path: Path) -> None:
    # the held-out set needs two approvers; the training set is automatic
    fed, regions, val_region, _ = hfl_federation(
        tmp_path, households=600,
        validation_policy='\n[datasets.validation]\napproval = "manual"\napprovers_required = 2\n')
    params = {"rounds": 1, "local-steps": 5, "min-clients": 2}
    with fed, fed.client() as c:
        # finding 3: plain aggregation is each region's decision, refused before any Flower process
        plain = c.wait(c.submit(hfl_manifest(regions, val_region, {**params, "encrypted": False})).job_id,
                       timeout=90)
        assert plain.state == "rejected"
        assert "parameters.encrypted = false" in plain.reason and "hfl_require_encryption" in plain.reason
        # the eval dataset may not be the region's own training set
        same = hfl_manifest(regions, val_region, params).replace(
            'eval_dataset = "validation"', 'eval_dataset = "applications_features"')
        st = c.wait(c.submit(same).job_id, timeout=90)
        assert st.state == "rejected"
        assert "eval_dataset 'applications_features' is the dataset this region trains on" in st.reason
        assert "hfl_eval_on_training_data" in st.reason
        # the held-out dataset's own policy: manual approval by 2, though training is automatic
        job = c.submit(hfl_manifest(regions, val_region, params))
        waiting = until(
            lambda: [e for e in node_audit(fed.workdir, val_region, job.job_id)
                     if e["action"] == "awaiting-approval"],
            "the validation region to ask for approval",
        )
        assert waiting[0]["detail"]["required"] == 2
        assert c.status(job.job_id).state not in ("running", "succeeded")
        others = [r for r in regions if r != val_region]
        for r in others:  # the other regions approved automatically
            assert [e for e in node_audit(fed.workdir, r, job.job_id)
                    if e["action"] == "decision" and e["detail"]["approve"]]


def _lying_guest_federation(tmp_path: Path) -> tuple[LocalFederation, str, Path]:
    """Guest, two hosts and an arbiter; the guest node process runs tests/liars/vlr_guest."""
    spec = load_spec(vlr_spec(tmp_path, epochs=2, hosts=2))
    fed = federation_for(spec, tmp_path / "w")
    liar = tmp_path / "liar"
    liar.mkdir()
    guest = next(n for n in fed.nodes if n.name == "guest")
    path = os.environ.get("PYTHONPATH", "")
    guest.env = {"FEDGOV_TEST_LIAR": str(liar),
                 "PYTHONPATH": os.pathsep.join([str(LYING_GUEST), *([path] if path else [])])}
    text = manifest_for(spec)
    assert "shapley" not in text  # the signed manifest: no coalition (Shapley) re-scoring
    return fed, text, liar


def _arbiter_served(fed: LocalFederation, job_id: str) -> tuple[dict, dict[str, int]]:
    """(the arbiter process's own decryption counts, what it sent per step from its audit log)."""
    counts = json.loads(
        (fed.workdir / "state" / "arbiter" / "outputs" / job_id / "arbiter-decryptions.json").read_text())
    sent: dict[str, int] = {}
    for e in node_audit(fed.workdir, "arbiter", job_id, "relay-send"):
        sent[e["step"]] = sent.get(e["step"], 0) + 1
    return counts, sent


def test_a_lying_guest_gets_no_decryption_beyond_the_signed_manifest(tmp_path: Path) -> None:
    """Finding 2 through real node processes: the guest node lies (hello, extra coalition
    requests, a full-vector score request in a gradient step); each job fails with the
    arbiter's reason, and the arbiter's own records show nothing decrypted beyond the manifest."""
    fed, text, liar = _lying_guest_federation(tmp_path)
    with fed, fed.client() as c:
        # (a) the hello claims an evaluation and a Shapley re-scoring the manifest does not have
        (liar / "mode").write_text("hello-coalitions")
        job = c.submit(text).job_id
        st = c.wait(job, timeout=180)
        assert st.state == "failed", st
        assert "refused: the guest's hello asks for 1 evaluation and 2 coalition score decryptions" in st.reason
        assert ("the signed manifest allows 1 evaluation and 0 coalition score decryptions "
                "(parameters.shapley = false, guest eval_dataset 'eval')") in st.reason
        counts, sent = _arbiter_served(fed, job)
        assert counts == {"gradient": 0, "scores": 0} and sent == {}  # refused before the context
        assert not (liar / f"loot-{job}.json").exists()

        # (a') an honest hello, then the coalition requests anyway, after the evaluation
        (liar / "mode").write_text("quiet-coalitions")
        job = c.submit(text).job_id
        st = c.wait(job, timeout=180)
        assert st.state == "failed", st
        assert "refused: the guest sent coalition score request 1; the signed manifest allows 1 evaluation " \
               "and 0 coalition score decryptions" in st.reason
        counts, sent = _arbiter_served(fed, job)
        assert counts["scores"] == sent["vlr/score-reply"] == 1  # the manifest's one evaluation
        assert counts["gradient"] == sent["vlr/grad-reply"] > 0
        assert "vlr/coalition-reply" not in sent
        assert not (liar / f"loot-{job}.json").exists()

        # (b) a host's per-row partial scores wrapped as a score request in a gradient step
        (liar / "mode").write_text("grad-score")
        job = c.submit(text).job_id
        st = c.wait(job, timeout=180)
        assert st.state == "failed", st
        assert "refused guest's 'vlr/grad' message, not decrypted: this step decrypts only masked gradient " \
               "messages" in st.reason and "schedule comes from the signed manifest" in st.reason
        counts, sent = _arbiter_served(fed, job)
        assert counts["scores"] == 0 and "vlr/score-reply" not in sent
        assert counts["gradient"] == sent.get("vlr/grad-reply", 0)
        assert not (liar / f"loot-{job}.json").exists()
