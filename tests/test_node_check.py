"""`fedgov node check` lists every problem of a node's configuration; `fedgov node start`
refuses bad data before it dials (issue 14, findings 6 and 8). Real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedgov.crypto.kits import issue_kit
from fedgov.crypto.pki import create_ca
from tests.test_federation import policy

SCHEMA = """[dataset]
name = "people"
key = "resident_id"

[[fields]]
name = "resident_id"
type = "resident_id"
required = true

[[fields]]
name = "income"
type = "float"
"""


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kits")
    create_ca(root / "ca", "test federation")
    issue_kit(root / "ca", root / "tax", "tax", "node")
    issue_kit(root / "ca", root / "alice", "alice", "analyst")
    return root


def node_dir(tmp: Path, kits: Path, *, data: bytes, kit: str = "tax", schema: str = SCHEMA,
             policy_text: str | None = None) -> Path:
    (tmp / "schemas").mkdir(parents=True, exist_ok=True)
    (tmp / "schemas" / "people.toml").write_text(schema)
    (tmp / "people.csv").write_bytes(data)
    if policy_text is None:
        policy(tmp / "policy.toml", ["income"])
        text = (tmp / "policy.toml").read_text().replace("datasets.data.rules", "datasets.people.rules")
        (tmp / "policy.toml").write_text(text)
    else:
        (tmp / "policy.toml").write_text(policy_text)
    cfg = tmp / "node.toml"
    cfg.write_text(
        "[node]\nname = \"tax\"\ncoordinator = \"127.0.0.1:1\"\n"
        f"kit = {json.dumps(str(kits / kit))}\nstate_dir = \"state\"\npolicy = \"policy.toml\"\n\n"
        "[[datasets]]\nname = \"people\"\nschema = \"schemas/people.toml\"\nsource = \"people.csv\"\n"
    )
    return cfg


def fedgov(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedgov", *args], capture_output=True, text=True, timeout=timeout)


GOOD = b"resident_id,income\n110101199001011234,1.5\n11010119900101123X,2\n"


def test_a_good_node_passes(tmp_path: Path, kits: Path) -> None:
    cfg = node_dir(tmp_path, kits, data=GOOD)
    out = fedgov("node", "check", "--config", str(cfg))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every check passed" in out.stdout and "data of people (2 rows)" in out.stdout


def test_every_problem_is_listed(tmp_path: Path, kits: Path) -> None:
    # four independent problems: bad policy field, short data row, a kit of another identity,
    # and a policy naming a dataset the node does not have
    bad_policy = (
        '[defaults]\nmin_cohort = 11\nrequesters = ["*"]\napproval = "auto"\n\n'
        '[[datasets.people.rules]]\npurposes = ["p"]\nkinds = ["cohort-count"]\nfields = ["incme"]\n\n'
        '[[datasets.vehicles.rules]]\npurposes = ["p"]\nkinds = ["cohort-count"]\nfields = ["x"]\n'
    )
    cfg = node_dir(tmp_path, kits, data=GOOD + b"110101199001011250\n", kit="alice", policy_text=bad_policy)
    out = fedgov("node", "check", "--config", str(cfg), "--json")
    assert out.returncode == 2
    report = json.loads(out.stdout)
    problems = "\n".join(report["problems"])
    assert report["ok"] is False and len(report["problems"]) >= 4, problems
    assert "people.csv row 3: 1 cell(s), the header has 2" in problems
    assert "rules[0].fields: incme not in schema people" in problems
    assert "datasets.vehicles: node.toml lists no dataset 'vehicles'" in problems
    assert f"kit {kits / 'alice'}" in problems
    text = fedgov("node", "check", "--config", str(cfg))
    assert text.returncode == 2 and text.stdout.count("PROBLEM") == len(report["problems"])
    assert "Traceback" not in text.stderr


def test_a_broken_schema_and_missing_files_are_listed(tmp_path: Path, kits: Path) -> None:
    cfg = node_dir(tmp_path, kits, data=GOOD, schema=SCHEMA.replace('type = "float"', 'type = "flaot"'))
    (tmp_path / "policy.toml").unlink()
    out = fedgov("node", "check", "--config", str(cfg), "--json")
    report = json.loads(out.stdout)
    problems = "\n".join(report["problems"])
    assert out.returncode == 2 and "flaot" in problems and "policy.toml" in problems and "file not found" in problems


def test_node_refuses_to_start_with_an_empty_required_id(tmp_path: Path, kits: Path) -> None:
    cfg = node_dir(tmp_path, kits, data=b"resident_id,income\n110101199001011234,1.5\n,2\n")
    out = fedgov("node", "start", "--config", str(cfg), timeout=120)
    assert out.returncode == 2, out.stderr
    assert "people.csv row 2 column resident_id: empty value in required ID field" in out.stderr
    assert "Traceback" not in out.stderr
    # and the stop is logged
    assert "node tax stopped" in out.stderr
    check = fedgov("node", "check", "--config", str(cfg))
    assert check.returncode == 2 and "row 2 column resident_id" in check.stdout
