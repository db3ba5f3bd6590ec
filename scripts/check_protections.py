#!/usr/bin/env python3
"""Protection-removal check: every docs/security.md row's test must fail without its guard.

For each row of ``scripts/protections.py``: run its cited tests with
``FEDGOV_DISABLE_GUARD=<row>`` and ``scripts/protection_hook`` first on
``PYTHONPATH`` (so the guard is off in the test process and in every
coordinator, node and Flower process it starts), and record whether they
failed. Also checks that the table and docs/security.md list the same rows.

Usage::

    python scripts/check_protections.py --json              # all rows; one JSON line
    python scripts/check_protections.py --level unit        # rows whose tests run in one process
    python scripts/check_protections.py --row mtls --row roles
    python scripts/check_protections.py --markdown          # the docs/protections.md page
    python scripts/check_protections.py --level unit --record  # also keep the results in
                                                            # docs/protections-check.json and rewrite
                                                            # docs/protections.md with them

Exit status 0 iff every checked row was caught and the tables agree: every docs/security.md row
(in any of its sections) has a row in the table or is listed in ``protections.NOT_YET_GUARDED``,
and every table row is documented. ``--strict`` also requires NOT_YET_GUARDED to be empty.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import protections  # noqa: E402

HOOK = ROOT / "scripts" / "protection_hook"
SECURITY = ROOT / "docs" / "security.md"
PAGE = ROOT / "docs" / "protections.md"
RECORD = ROOT / "docs" / "protections-check.json"
_ID_CELL = re.compile(r"^\|\s*`?([a-z0-9][a-z0-9-]*)`?\s*\|")


def security_sections(path: Path = SECURITY) -> list[tuple[str, str]]:
    """``(section, row id)`` for every row of every property table in docs/security.md.

    The page has one table per area (``## Transport and identity``, ...); a row is
    any table line whose first cell is an id (the header's ``id`` excluded).
    """
    out = []
    section = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        m = _ID_CELL.match(line)
        if m and m.group(1) != "id":
            out.append((section, m.group(1)))
    return out


def security_rows(path: Path = SECURITY) -> list[str]:
    """Row ids of the property tables in docs/security.md (first column), in page order."""
    return [rid for _, rid in security_sections(path)]


def agreement(documented: list[str]) -> dict[str, list[str]]:
    """How docs/security.md and the table disagree (every list empty when they agree)."""
    waived = set(protections.NOT_YET_GUARDED)
    seen: set[str] = set()
    dup = sorted({r for r in documented if r in seen or seen.add(r)})  # type: ignore[func-returns-value]
    return {
        "missing_in_table": [r for r in documented if r not in protections.ROWS and r not in waived],
        "missing_in_docs": [r for r in protections.ROWS if r not in documented],
        "not_guarded": [r for r in documented if r not in protections.ROWS and r in waived],
        "waived_but_undocumented": [r for r in protections.NOT_YET_GUARDED if r not in documented],
        "duplicate_ids": dup,
    }


def load_record(path: Path = RECORD) -> dict:
    """The last recorded check (``--record``): ``{"rows": {id: {...}}, ...}``, or an empty record."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"rows": {}}
    return rec if isinstance(rec, dict) and isinstance(rec.get("rows"), dict) else {"rows": {}}


def _cited(test: str, failed: list[str]) -> bool:
    """Whether the cited node id (a test, a parametrised test or a whole file) has a failure."""
    for f in failed:
        nid = f.split(" - ", 1)[0].strip()
        if nid == test or nid.split("[", 1)[0] == test or nid.startswith(test + "::"):
            return True
    return False


def run_row(row: protections.Row, timeout: float, each: bool = False) -> dict:
    """Run ``row``'s tests with its guard off; 'caught' iff they failed and the guard really was off.

    ``each``: run every cited test (no ``-x``) and require each of them to fail.
    """
    with tempfile.TemporaryDirectory(prefix="fedgov-guard-") as mark:
        env = dict(os.environ)
        env["FEDGOV_DISABLE_GUARD"] = row.id
        env["FEDGOV_GUARD_MARK"] = mark
        env["PYTHONPATH"] = os.pathsep.join([str(HOOK), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.pop("PYTEST_ADDOPTS", None)
        cmd = [sys.executable, "-m", "pytest", "-q", *([] if each else ["-x"]), "-p", "no:cacheprovider",
               "-p", "no:randomly", *row.tests]
        started = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            code, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, out = -1, f"timed out after {timeout:.0f} s\n{exc.stdout or ''}"
        seconds = round(time.monotonic() - started, 1)
        errors = [Path(mark, f).read_text() for f in os.listdir(mark) if f.endswith(".err")]
        applied = sum(1 for f in os.listdir(mark) if f.endswith(".ok"))
    failed = [ln.split(" ", 1)[1] for ln in out.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    broken = bool(errors) or applied == 0 or code in (4, 5)  # hook failed, never ran, or bad test ids
    still_passing = [t for t in row.tests if not _cited(t, failed)] if each else []
    return {
        "row": row.id,
        "caught": code not in (0, -1) and not broken and not still_passing,
        "still_passing": still_passing,
        "broken": broken,
        "hook_errors": sorted(set(errors)),
        "exit": code,
        "failed": failed[:20],
        "seconds": seconds,
        "tail": "" if code not in (0, -1) and not broken else out[-1500:],
    }


def _state(res: dict) -> str:
    return "caught" if res.get("caught") else ("BROKEN" if res.get("broken") else "NOT CAUGHT")


def markdown() -> str:
    """The docs/protections.md page: every documented row -> its guard -> its tests -> last result."""
    record = load_record()
    results = record["rows"]
    sections = security_sections()
    lines = [
        "# Protections and the tests that prove them",
        "",
        "Generated by `python scripts/check_protections.py --markdown` from `scripts/protections.py`,",
        "`scripts/protection_rows/` and the last recorded check (`docs/protections-check.json`);",
        "`tests/test_protections_table.py` fails when this page is stale. For every property row of",
        "[security.md](security.md), the check switches the guard off (in the test process and in every",
        "process it starts, through `scripts/protection_hook/sitecustomize.py`) and requires the cited",
        "tests to fail: a row is *caught* when they do.",
        "",
    ]
    checked = [r for r in protections.ROWS if r in results]
    caught = [r for r in checked if results[r].get("caught")]
    if checked:
        lines += [
            f"Last recorded check: {len(caught)} of {len(checked)} checked rows caught "
            f"({len(protections.ROWS)} rows with a guard, {len(sections)} documented).",
            "",
        ]
    lines += [
        "| id | area | guard switched off | tests that must fail | level | last check |",
        "|---|---|---|---|---|---|",
    ]
    area = {rid: sec for sec, rid in sections}
    for r in protections.ROWS.values():
        tests = "<br>".join(f"`{t}`" for t in r.tests)
        last = _state(results[r.id]) if r.id in results else "not checked"
        lines.append(f"| `{r.id}` | {area.get(r.id, '(not documented)')} | {r.guard} | {tests} | {r.level} | {last} |")
    waived = [(sec, rid) for sec, rid in sections if rid not in protections.ROWS]
    if waived:
        lines += ["", "## Not yet guarded", "",
                  "Documented in security.md, listed in `protections.NOT_YET_GUARDED`: no guard is switched",
                  "off for these yet, so their tests are claims, not evidence.", ""]
        lines += [f"- `{rid}` ({sec})" for sec, rid in waived]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--level", choices=["unit", "stack", "all"], default="all")
    ap.add_argument("--row", action="append", default=[], help="check only this row (repeatable)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per row")
    ap.add_argument("--markdown", action="store_true", help="print the docs/protections.md page and exit")
    ap.add_argument("--record", action="store_true",
                    help="keep the results in docs/protections-check.json and rewrite docs/protections.md")
    ap.add_argument("--strict", action="store_true", help="fail while any documented row has no guard")
    ap.add_argument("--each", action="store_true",
                    help="require every cited test of a row to fail (not only the first)")
    ap.add_argument("--baseline", action="store_true",
                    help="first run each row's tests with every guard on: they must pass")
    ns = ap.parse_args(argv)
    if ns.markdown:
        sys.stdout.write(markdown())
        return 0
    documented = security_rows()
    agree = agreement(documented)
    unknown = [r for r in ns.row if r not in protections.ROWS]
    if unknown:
        print(f"check_protections: no row {', '.join(unknown)} in scripts/protections.py", file=sys.stderr)
        return 2
    rows = [protections.ROWS[r] for r in ns.row] if ns.row else [
        r for r in protections.ROWS.values() if ns.level in ("all", r.level)
    ]
    baseline_failing = []
    if ns.baseline:
        tests = sorted({t for r in rows for t in r.tests})
        env = {k: v for k, v in os.environ.items() if k != "FEDGOV_DISABLE_GUARD"}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=ns.timeout * 4)
        baseline_failing = [ln.split(" ", 1)[1] for ln in proc.stdout.splitlines()
                            if ln.startswith(("FAILED ", "ERROR "))] or ([] if proc.returncode == 0 else ["?"])
    results = []
    for r in rows:
        res = run_row(r, ns.timeout, each=ns.each)
        results.append(res)
        if not ns.json:
            print(f"{r.id:<28} {_state(res):<11} {res['seconds']:>6.1f} s  {'; '.join(res['failed'][:2])}")
            if res["still_passing"]:
                print("    still passing without the guard: " + ", ".join(res["still_passing"]))
            elif not res["caught"]:
                print("    " + (res["tail"] or "").strip().replace("\n", "\n    ")[-1200:])
    caught = [r["row"] for r in results if r["caught"]]
    summary = {
        "rows": len(documented),
        "checked": len(results),
        "caught": len(caught),
        "not_caught": [r["row"] for r in results if not r["caught"] and not r["broken"]],
        **({"still_passing": {r["row"]: r["still_passing"] for r in results if r["still_passing"]}}
           if ns.each else {}),
        "broken": [r["row"] for r in results if r["broken"]],
        "missing_in_table": agree["missing_in_table"],
        "missing_in_docs": agree["missing_in_docs"],
        "not_guarded": agree["not_guarded"],
        "seconds": round(sum(r["seconds"] for r in results), 1),
    }
    if ns.level != "all" or ns.row:
        summary["level"] = ",".join(ns.row) if ns.row else ns.level
    if ns.baseline:
        summary["baseline_failing"] = baseline_failing
    if ns.record:
        record = load_record()
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for res in results:
            record["rows"][res["row"]] = {"caught": res["caught"], "broken": res["broken"],
                                          "failed": res["failed"][:1], "checked_at": when}
        record["rows"] = {k: v for k, v in sorted(record["rows"].items()) if k in protections.ROWS}
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        PAGE.write_text(markdown(), encoding="utf-8")
    print(json.dumps(summary, sort_keys=True))
    ok = (len(caught) == len(results) and not agree["missing_in_table"] and not agree["missing_in_docs"]
          and not agree["duplicate_ids"] and not baseline_failing and not (ns.strict and agree["not_guarded"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
