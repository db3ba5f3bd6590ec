"""Vertical LR through the real stack: guest, host and arbiter node processes."""

from __future__ import annotations

import csv
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from fedgov.protocols import vertical_lr as vlr
from fedgov.runspec import federation_for, load_spec, manifest_for, run_spec
from tests.helpers_learning import FATE, node_audit, vlr_spec

pytestmark = pytest.mark.slow


def _load(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open() as fh:
        rows = list(csv.reader(fh))
    return rows[0], np.array(rows[1:], dtype=np.float64)


def test_breast_matches_the_plaintext_algorithm(tmp_path: Path) -> None:
    summary = run_spec(vlr_spec(tmp_path))
    gh, g = _load(FATE / "breast_hetero_guest.csv")
    hh, h = _load(FATE / "breast_hetero_host.csv")
    order = {v: i for i, v in enumerate(h[:, 0])}
    h = h[[order[v] for v in g[:, 0]]]
    params = vlr.VlrParams(epochs=5, learning_rate=0.1, seed=3)
    plain = vlr.fit_plain(g[:, 2:], g[:, 1], {"host": h[:, 1:]}, params)
    auc_plain = vlr.auc(g[:, 1], plain.scores(g[:, 2:], {"host": h[:, 1:]}))
    assert summary["intersection_size"] == 569 and summary["epochs"] == 5
    assert abs(summary["auc"] - auc_plain) < 0.01, (summary["auc"], auc_plain)
    assert summary["auc"] > 0.95


def _wait_state(client, job_id: str, states: tuple[str, ...], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        st = client.status(job_id)
        if st.state in states:
            return st.state
        assert time.monotonic() < deadline, st
        time.sleep(0.2)


def test_forbidden_host_field_is_refused_before_any_computation(tmp_path: Path) -> None:
    spec = load_spec(vlr_spec(tmp_path))
    fed = federation_for(spec, tmp_path / "w")
    host = next(n for n in fed.nodes if n.name == "host")
    policy = host.policy.read_text().replace('"x19"]', "]").replace('"x19", ', "")
    host.policy.write_text(policy)
    with fed:
        with fed.client() as c:
            job = c.submit(manifest_for(spec))
            st = c.wait(job.job_id, timeout=60)
        assert st.state == "rejected"
        assert "host" in st.reason and "x19" in st.reason and "may not be used" in st.reason
        assert not node_audit(fed.workdir, "guest", job.job_id, "relay-send")  # nothing left the guest


def _wait_training(fed_dir: Path, job_id: str, timeout: float = 120) -> None:
    """Wait until the host's own audit log shows a masked gradient sent to the arbiter."""
    deadline = time.monotonic() + timeout
    while True:
        if any(e["step"] == "vlr/grad" for e in node_audit(fed_dir, "host", job_id, "relay-send")):
            return
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.5)


def test_host_vanishing_mid_training_fails_the_job(tmp_path: Path) -> None:
    spec = load_spec(vlr_spec(tmp_path, epochs=400))
    fed = federation_for(spec, tmp_path / "w")
    fed.node_timeout = 6
    with fed:
        with fed.client() as c:
            job = c.submit(manifest_for(spec))
            _wait_state(c, job.job_id, ("running",))
            _wait_training(fed.workdir, job.job_id)  # the host has sent gradients: training is under way
            fed.kill("host", signal.SIGKILL)
            st = c.wait(job.job_id, timeout=60)
        assert st.state == "failed"
        assert "node 'host' stopped responding" in st.reason


def test_scoring_with_a_stored_model(tmp_path: Path) -> None:
    spec = load_spec(vlr_spec(tmp_path, epochs=2))
    fed = federation_for(spec, tmp_path / "w")
    for n in fed.nodes:  # the same nodes may also score
        text = n.policy.read_text().replace('kinds = ["vertical-lr"]', 'kinds = ["vertical-lr", "vertical-lr-score"]')
        n.policy.write_text(text)
    with fed:
        with fed.client() as c:
            train = c.wait(c.submit(manifest_for(spec)).job_id, timeout=120)
            assert train.state == "succeeded", train.reason
            score_manifest = manifest_for(spec).replace('kind = "vertical-lr"', 'kind = "vertical-lr-score"')
            score_manifest = score_manifest.replace("[parameters]", f'[parameters]\nmodel = "{train.job_id}"')
            score_manifest = "\n".join(
                line for line in score_manifest.splitlines()
                if not line.startswith(("epochs", "learning_rate", "seed", "eval_dataset"))
            )
            job = c.submit(score_manifest)
            st = c.wait(job.job_id, timeout=120)
            assert st.state == "succeeded", st.reason
            assert c.result(job.job_id) == {"guest": {"scored": 569, "model_version": train.job_id}}
        scores = fed.workdir / "state" / "guest" / "outputs" / job.job_id / "scores.csv"
        with scores.open() as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 569 and {"id", "score", "probability"} <= set(rows[0])
        assert not (fed.workdir / "state" / "host" / "outputs" / job.job_id / "scores.csv").exists()
