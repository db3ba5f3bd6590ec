"""Ledger and Points pages in a real browser (Playwright + Debian's Chromium) over a real federation.

One federation for the module (tests/console_support.py, both departments on
automatic approval), one vertical-LR job run as the analyst, one auditor
console (a real ``fedgov console`` process). The auditor verifies the ledger
in the page, opens the job's evidence, downloads its bundle and the CLI
(``fedgov ledger verify --bundle``, a subprocess, offline) accepts it; the
points page links each figure to its ledger entries. Then the coordinator is
stopped, one contribution in its ledger.db is edited, it is started again,
and the same pages show verification failed, naming the entry. Every page is
screenshotted (tests/console_support.py:shot).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fedgov.auditor import LedgerClient
from fedgov.errors import FedgovError
from fedgov.runner import run_job
from tests.console_support import (
    console_federation,
    launch_chromium,
    shot,
    sign_in,
    start_console,
    vlr_manifest,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("console-ledger")
    fed = console_federation(tmp, approvers=[])
    tax = next(n for n in fed.nodes if n.name == "tax")
    tax.policy.write_text(tax.policy.read_text().replace('approval = "manual"\napprovers_required = 2',
                                                         'approval = "auto"'))
    with fed:
        done = run_job(fed, vlr_manifest(epochs=2))
        assert done["job"]["state"] == "succeeded", done
        job = done["job"]["job_id"]
        # wait until the departments' witnesses cosigned a head covering the job
        deadline = time.monotonic() + 90
        with LedgerClient(fed.kits / "auditor", fed.address) as lc:
            while True:
                try:
                    lc.bundle(job)
                    break
                except FedgovError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
        console = start_console(fed.kits / "auditor", fed.address)
        try:
            with launch_chromium() as browser:
                page = sign_in(browser, console)
                yield {"fed": fed, "job": job, "page": page, "tmp": tmp}
        finally:
            console.close()


def test_auditor_verifies_the_ledger_and_the_cli_accepts_the_downloaded_bundle(world) -> None:
    page, job, tmp, fed = world["page"], world["job"], world["tmp"], world["fed"]
    page.goto(page.url.split("/", 3)[0] + "//" + page.url.split("/")[2] + "/ledger")
    assert page.locator("#ledger-failed").count() == 0
    heads = page.locator("#heads tbody tr")
    assert heads.count() >= 2 and page.locator("#heads .badge.bad").count() == 0
    assert page.locator("#entries tr[data-proved=failed]").count() == 0
    assert page.locator("#entries tr[data-proved=ok]").count() > 0
    shot(page, "ledger", tmp)
    page.select_option("select[name=type]", "contribution")
    page.fill("input[name=job]", job)
    page.click("form.filters button")
    rows = page.locator("#entries tbody tr")
    assert rows.count() >= 2  # the guest's and the host's data (the arbiter holds none)
    assert page.locator("#entries tr[data-proved=ok]").count() == rows.count()
    first = rows.first.get_attribute("data-index")
    page.click(f"#entries tr[data-index='{first}'] td a")
    assert page.locator("#entry-result").get_attribute("data-ok") == "ok"
    assert "RFC 9162 inclusion proof" in page.locator("#checks").inner_text()
    shot(page, "ledger-entry", tmp)
    page.goto(page.url.split("/ledger")[0] + f"/ledger/job/{job}")
    assert page.locator("#bundle-result").get_attribute("data-ok") == "ok"
    shot(page, "ledger-job", tmp)
    with page.expect_download() as dl:
        page.click("#bundle-download")
    path = tmp / "downloaded.bundle.json"
    dl.value.save_as(str(path))
    out = subprocess.run(
        [sys.executable, "-m", "fedgov", "ledger", "verify", "--bundle", str(path),
         "--ca", str(fed.kits / "auditor" / "ca.crt"), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["verified"] is True and json.loads(out.stdout)["job"] == job
    # points: a row per contributing department, each linking to the entries behind it
    page.goto(page.url.split("/ledger")[0] + "/points?budget=1000")
    depts = page.locator("#points tbody tr")
    assert depts.count() >= 2 and page.locator("svg.points-chart").count() == 1
    shot(page, "points", tmp)
    page.click("#points tbody tr >> nth=0 >> td >> nth=1 >> a")
    facts = page.locator(f"#jobs-points tr[data-job='{job}'] a.fact")
    assert facts.count() >= 3
    shot(page, "points-department", tmp)
    facts.first.click()
    assert page.locator("#entry-result").get_attribute("data-ok") == "ok"


def test_a_tampered_ledger_shows_failed_naming_the_entry(world) -> None:
    page, job, tmp, fed = world["page"], world["job"], world["tmp"], world["fed"]
    fed.kill("coordinator", signal.SIGTERM)
    fed.procs["coordinator"].popen.wait(timeout=30)
    db = sqlite3.connect(fed.workdir / "state" / "coordinator" / "ledger.db")
    idx, data = db.execute(
        "SELECT e.idx, e.data FROM entries e JOIN entry_meta m ON m.idx = e.idx "
        "WHERE m.type = 'contribution' AND m.job = ? ORDER BY e.idx LIMIT 1", (job,)).fetchone()
    edited = bytes(data).replace(b'"records":', b'"records":9', 1)
    assert edited != bytes(data)
    db.execute("DROP TRIGGER entries_no_update")
    db.execute("UPDATE entries SET data = ? WHERE idx = ?", (edited, idx))
    db.commit()
    db.close()
    fed.restart_coordinator_on_same_port()
    base = page.url.split("/", 3)
    home = base[0] + "//" + base[2]
    deadline = time.monotonic() + 30
    while True:  # the console's channel reconnects to the restarted coordinator
        page.goto(home + f"/ledger?job={job}")
        if page.locator("#entries").count() or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert page.locator("#ledger-failed").get_attribute("data-failed") == str(idx)
    assert page.locator(f"#entries tr[data-index='{idx}']").get_attribute("data-proved") == "failed"
    shot(page, "ledger-tampered", tmp)
    page.goto(home + f"/ledger/job/{job}")
    assert page.locator("#bundle-result").get_attribute("data-ok") == "failed"
    subjects = page.locator("#bundle-result li.problem").evaluate_all("els => els.map(e => e.dataset.subject)")
    assert subjects[0] == f"entry {idx}"
    shot(page, "ledger-job-tampered", tmp)
