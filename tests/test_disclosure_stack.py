"""Issue 11 attacks 5 and 7 through real federation jobs (coordinator + node processes over
mTLS), with the departments' reference policies, which set no disclosure key: the owners'
defaults hold.

* Attack 5: a ten-rule ladder on tax's income is refused by tax before anything runs; a
  binary search over repeated one-rule jobs stops when the applicants' check budget is spent.
* Attack 7: PSI sizes are not released to the requester nor written to the ledger; a
  cardinality job and a manifest that names a host as recipient of the aligned IDs are
  refused before anything runs, naming the policy key.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedgov.runner import DatasetSpec, LocalFederation, NodeSpec
from fedgov.scenarios.profiles import node_specs
from fedgov.scenarios.social_assistance import generate
from fedgov.scenarios.social_assistance_jobs import eligibility_manifest
from tests.conftest import write_csv
from tests.test_federation import schema

pytestmark = pytest.mark.slow

NODES = ("civil_affairs", "tax", "arbiter")


def income_rule(standard: float) -> str:
    return f"""
[check]
name = "income only"
tie_tolerance = 0.01
[thresholds.default]
income_standard = {standard:.2f}
[[rules]]
name = "income"
kind = "threshold"
per_capita = true
threshold = "income_standard"
terms = [{{ node = "tax", field = "annual_income", divide = 12, max = 2000000 }}]
"""


def ladder(k: int) -> str:
    rungs = "\n".join(f"t{i} = {300 * 2**i}.0" for i in range(k))
    rules = "".join(
        f'[[rules]]\nname = "rung{i}"\nkind = "threshold"\nthreshold = "t{i}"\n'
        'terms = [{ node = "tax", field = "annual_income", divide = 12, max = 2000000 }]\n'
        for i in range(k)
    )
    return f'[check]\nname = "ladder"\n[thresholds.default]\n{rungs}\n{rules}'


def psi_manifest(params: str = 'mode = "align"', recipients: str = '["requester"]') -> str:
    return (
        '[job]\nkind = "psi"\npurpose = "social-assistance-eligibility"\n'
        f"[parameters]\n{params}\n"
        '[[participants]]\nnode = "civil_affairs"\ndataset = "applications"\nfields = ["resident_id"]\n'
        'id = "resident_id"\nrole = "guest"\n'
        '[[participants]]\nnode = "tax"\ndataset = "income"\nfields = ["resident_id"]\n'
        'id = "resident_id"\nrole = "host"\n'
        f"[results]\nrecipients = {recipients}\n"
    )


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    root = tmp_path_factory.mktemp("disclosure-stack")
    generate(root / "data", households=300)
    with LocalFederation(root / "fed", [s for s in node_specs(root / "data") if s.name in NODES]) as f:
        yield f


def run(fed: LocalFederation, manifest: str, timeout: float = 240) -> tuple[str, str, dict]:
    with fed.client("analyst") as c:
        job = c.submit(manifest)
        st = c.wait(job.job_id, timeout=timeout)
        result = c.result(job.job_id) if st.state == "succeeded" else {}
    return job.job_id, st.state, {"reason": st.reason, "result": result}


def outputs(fed: LocalFederation, node: str, job_id: str) -> Path:
    return fed.workdir / "state" / node / "outputs" / job_id


# --------------------------------------------------------------------------- attack 5


def test_a_rule_ladder_is_refused_by_the_department_before_anything_runs(fed: LocalFederation) -> None:
    job_id, state, out = run(fed, eligibility_manifest(ladder(10), dataset="applications",
                                                       baseline=False, label=False))
    assert state == "rejected", out
    assert "elig_max_rules_per_figure" in out["reason"] and "tax.annual_income" in out["reason"], out
    assert not outputs(fed, "civil_affairs", job_id).exists()  # no alignment, no decision


def test_a_binary_search_over_repeated_jobs_stops_when_the_check_budget_is_spent(fed: LocalFederation) -> None:
    """Each job asks one rule (within the ladder limit) with a new standard; tax counts
    the checks of each of its records and refuses the third job (default budget: 2 per
    applicant per quarter)."""
    states = []
    for standard in (1000.0, 500.0, 250.0, 125.0):
        _, state, out = run(fed, eligibility_manifest(income_rule(standard), dataset="applications",
                                                      baseline=False, label=False))
        states.append(state)
        if state != "succeeded":
            assert "elig_checks_per_applicant" in out["reason"], out
            assert "budget" in out["reason"] and "tax" in out["reason"], out
            break
        assert out["result"]["civil_affairs"]["applicants"] > 0
    assert states == ["succeeded", "succeeded", "failed"], states


# --------------------------------------------------------------------------- attack 7


def _ledger_entries(fed: LocalFederation, job_id: str) -> list[dict]:
    db = sqlite3.connect(fed.workdir / "state" / "coordinator" / "ledger.db", timeout=30)
    try:
        out = []
        for (data,) in db.execute("SELECT data FROM entries ORDER BY idx"):
            try:
                e = json.loads(data)
            except ValueError:
                continue
            if isinstance(e, dict) and e.get("job") == job_id:
                out.append(e)
        return out
    finally:
        db.close()


def test_psi_sizes_reach_neither_the_requester_nor_the_ledger(fed: LocalFederation) -> None:
    job_id, state, out = run(fed, psi_manifest())
    assert state == "succeeded", out
    rel = out["result"]["civil_affairs"]
    assert rel == {"mode": "align", "size_release": "none"}, rel
    assert "tax" not in out["result"] or out["result"]["tax"] == {}
    # the aligned order stays with civil affairs (the only party that learned it)
    assert (outputs(fed, "civil_affairs", job_id) / "aligned_ids.csv").exists()
    assert not (outputs(fed, "tax", job_id) / "aligned_ids.csv").exists()
    # what the nodes published for the ledger, and the ledger itself: no size
    db = sqlite3.connect(fed.workdir / "state" / "coordinator" / "coordinator.db", timeout=30)
    published = dict(db.execute("SELECT node, public_json FROM participants WHERE job_id=?", (job_id,)))
    db.close()
    assert json.loads(published["civil_affairs"]) == {"sizes_published": False}, published
    assert not any("intersection_size" in (v or "") for v in published.values()), published
    deadline = time.monotonic() + 60
    entries = _ledger_entries(fed, job_id)
    while not any(e.get("type") == "job_completed" for e in entries):
        assert time.monotonic() < deadline, "job_completed never reached the ledger"
        time.sleep(0.2)
        entries = _ledger_entries(fed, job_id)
    assert "intersection_size" not in json.dumps(entries)


def test_looser_psi_asks_are_refused_before_anything_runs(fed: LocalFederation) -> None:
    job_id, state, out = run(fed, psi_manifest('mode = "cardinality"'))
    assert state == "rejected" and "psi_size_release" in out["reason"], out
    job_id2, state, out = run(fed, psi_manifest(recipients='["requester", "tax"]'))
    assert state == "rejected", out
    assert "psi_id_recipients" in out["reason"] and "'tax'" in out["reason"], out
    for j in (job_id, job_id2):
        assert not outputs(fed, "civil_affairs", j).exists() and not outputs(fed, "tax", j).exists()


def test_an_exact_size_the_owners_release_to_the_requester_stays_off_the_ledger(tmp_path: Path) -> None:
    """Owners that release exact sizes but keep psi_size_ledger at its default (false): the
    requester gets the size, the ledger does not; asking for the ledger is refused."""
    specs = []
    for name, ids in (("alpha", range(0, 80)), ("beta", range(40, 160))):
        data = write_csv(tmp_path / f"{name}.csv", ["id"], [[f"p{i:04d}"] for i in ids])
        pol = tmp_path / f"{name}-policy.toml"
        pol.write_text('[defaults]\napproval = "auto"\n[defaults.disclosure]\npsi_size_release = "exact"\n'
                       '[[datasets.data.rules]]\npurposes = ["test-psi"]\nkinds = ["psi"]\nfields = ["id"]\n')
        specs.append(NodeSpec(name, pol, [DatasetSpec("data", schema(tmp_path / f"{name}-s.toml", "data",
                                                                      {"id": "string"}), str(data))]))
    manifest = (
        '[job]\nkind = "psi"\npurpose = "test-psi"\n[parameters]\nsize_release = "exact"\n{extra}'
        '[[participants]]\nnode = "alpha"\ndataset = "data"\nfields = ["id"]\nrole = "guest"\n'
        '[[participants]]\nnode = "beta"\ndataset = "data"\nfields = ["id"]\nrole = "host"\n'
    )
    with LocalFederation(tmp_path / "fed", specs) as f:
        job_id, state, out = run(f, manifest.format(extra=""))
        assert state == "succeeded", out
        assert out["result"]["alpha"]["intersection_size"] == 40
        deadline = time.monotonic() + 60
        entries = _ledger_entries(f, job_id)
        while not any(e.get("type") == "job_completed" for e in entries):
            assert time.monotonic() < deadline, "job_completed never reached the ledger"
            time.sleep(0.2)
            entries = _ledger_entries(f, job_id)
        assert "intersection_size" not in json.dumps(entries), entries
        _, state, out = run(f, manifest.format(extra="size_on_ledger = true\n"))
        assert state == "rejected" and "psi_size_ledger" in out["reason"], out
