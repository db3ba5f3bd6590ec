"""`fedgov demo --json`: the newcomer's first command must work and say what happened."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_json_runs_end_to_end() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fedgov", "demo", "--json", "--households", "3000"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["nodes"] == 6
    counts = summary["cohort_count"]["counts"]
    assert set(counts) == {"civil_affairs", "tax", "hrss", "housing", "vehicles", "medical"}
    assert all(isinstance(v, int) and v >= 11 for v in counts.values())
    assert summary["small_cell"]["suppressed"] == ["civil_affairs"]
    assert summary["refused"]["state"] == "rejected" and "birth_date" in summary["refused"]["reason"]
    assert summary["ledger"]["verified"] is True and summary["ledger"]["size"] > 20
    shares = {row["dept"]: row["share"] for row in summary["points"]}
    assert abs(sum(shares.values()) - 1) < 1e-5 and shares["tax"] > 0  # shares are rounded to 6 places
    assert summary["eligibility"]["applicants"] > 0 and summary["he_stats"]["cells"]
    model = summary["model"]
    assert model["auc_joint"] > model["auc_civil_affairs_only"] + 0.1 > 0.6
    # Shapley efficiency: contributions add up to what the hosts add over civil affairs alone
    assert set(model["shapley_auc"]) == {"tax", "hrss", "housing", "vehicles", "medical"}
    assert sum(model["shapley_auc"].values()) > 0.1
    assert any(row["model_points"] > 0 for row in summary["points"])
    # the departments' default policies release no intersection size (issue 11, attack 7)
    assert summary["psi"] == {"size_release": "none"}
