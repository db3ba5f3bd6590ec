"""The protection table, docs/security.md and docs/protections.md agree.

Fails when docs/protections.md is stale (regenerate it with
``python scripts/check_protections.py --markdown > docs/protections.md``), when
a documented row has neither a guard nor a place on the explicit
``NOT_YET_GUARDED`` list, when a guarded row is not documented, or when a row
cites a test that does not exist (the check would then prove nothing).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import check_protections  # noqa: E402
import protections  # noqa: E402


def test_protections_page_is_up_to_date() -> None:
    page = (ROOT / "docs" / "protections.md").read_text(encoding="utf-8")
    assert page == check_protections.markdown(), (
        "docs/protections.md is stale: python scripts/check_protections.py --markdown > docs/protections.md"
    )


def test_every_documented_row_has_a_guard_or_is_listed_as_not_yet_guarded() -> None:
    documented = check_protections.security_rows()
    assert len(documented) >= 23
    agree = check_protections.agreement(documented)
    assert agree["missing_in_table"] == [], "docs/security.md rows with no guard in scripts/protections.py"
    assert agree["missing_in_docs"] == [], "guarded rows missing from docs/security.md"
    assert agree["duplicate_ids"] == []
    assert agree["waived_but_undocumented"] == [], "NOT_YET_GUARDED names rows security.md does not have"


def test_every_section_of_security_md_is_read() -> None:
    sections = {sec for sec, _ in check_protections.security_sections()}
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    with_rows = set()
    current = ""
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
        elif line.startswith("| ") and not line.startswith(("| id ", "|---")):
            with_rows.add(current)
    assert with_rows and with_rows == sections


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


@pytest.mark.parametrize("row_id", sorted(protections.ROWS))
def test_each_row_cites_tests_that_exist(row_id: str) -> None:
    row = protections.ROWS[row_id]
    assert row.tests, f"{row_id}: no test cited"
    assert row.level in ("unit", "stack")
    for node_id in row.tests:
        file, _, rest = node_id.partition("::")
        path = ROOT / file
        assert path.is_file(), f"{row_id}: {file} does not exist"
        if rest:
            name = rest.split("::")[-1].split("[")[0]
            assert name in _test_functions(path), f"{row_id}: no test {name} in {file}"
