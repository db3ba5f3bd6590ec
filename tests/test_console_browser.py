"""The web console in a real browser (Playwright driving Debian's Chromium) over a real federation.

One federation for the module (tests/console_support.py: civil_affairs guest,
tax host with two approvers, arbiter; real coordinator and node processes),
three consoles as real ``fedgov console`` processes: the analyst's and one for
each of tax's approvers (next to tax's node.toml). The story: the analyst
submits a vertical-LR job from the form and follows it; both approvers
approve it in their own consoles ("1 of 2", then "2 of 2"); the analyst sees
the ROC curve and each department's contribution. Around it: an analyst has
no approval inbox (no nav entry, and the URL is refused), a form posted
without its CSRF token is refused, every page carries the CSP and has no
inline script or style (Chromium reports no CSP violation). Every page is
screenshotted into the test's tmp dir (and $FEDGOV_CONSOLE_SCREENSHOTS).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.console_support import (
    TAX_APPROVERS,
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
    tmp = tmp_path_factory.mktemp("console")
    fed = console_federation(tmp)
    with fed:
        tax_cfg = fed.workdir / "nodes" / "tax" / "node.toml"
        consoles = {"analyst": start_console(fed.kits / "analyst", fed.address)}
        try:
            for name in TAX_APPROVERS:
                consoles[name] = start_console(fed.kits / name, fed.address, node_config=tax_cfg)
            with launch_chromium() as browser:
                yield {"fed": fed, "consoles": consoles, "browser": browser, "tmp": tmp, "pages": {}}
        finally:
            for c in consoles.values():
                c.close()


def _page(world: dict[str, Any], who: str, lang: str | None = None) -> Any:
    """One signed-in page per console (each sign-in link works once)."""
    if who not in world["pages"]:
        page = sign_in(world["browser"], world["consoles"][who], lang=lang)
        violations: list[str] = []
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
        page.violations = violations
        world["pages"][who] = page
    return world["pages"][who]


def _open(world: dict[str, Any], who: str, path: str) -> Any:
    page = _page(world, who)
    resp = page.goto(world["consoles"][who].base + path)
    assert resp is not None
    csp = resp.headers.get("content-security-policy", "")
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert resp.headers.get("x-frame-options") == "DENY" and resp.headers.get("cache-control") == "no-store"
    assert page.locator("script").count() == 0
    assert page.locator("[style]").count() == 0
    return page


def _shot(world: dict[str, Any], page: Any, name: str) -> None:
    shot(page, name, world["tmp"])
    assert page.violations == [], page.violations


def test_analyst_submits_approvers_approve_analyst_sees_roc(world: dict[str, Any]) -> None:
    page = _open(world, "analyst", "/federation")
    assert page.locator("#nodes tr[data-node=tax] .online").count() == 1
    assert page.locator("[data-dataset='civil_affairs.data']").count() == 1
    # the purposes tax's policy allows, as tax's node published them (policy.toml -> catalogue -> page)
    from fedgov.policy import load_policy

    allowed = load_policy(world["fed"].workdir / "nodes" / "tax" / "policy.toml").datasets["data"].allowed_purposes()
    shown = page.locator("[data-dataset='tax.data'] .purpose")
    assert allowed and sorted(shown.evaluate_all("els => els.map(e => e.dataset.purpose)")) == sorted(allowed)
    _shot(world, page, "federation")

    page = _open(world, "analyst", "/submit")
    _shot(world, page, "submit")
    page.fill("#manifest", vlr_manifest())
    page.click("#send")
    page.wait_for_url(re.compile(r".*/jobs/[^/]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    assert page.locator("#job-state").inner_text() in ("submitted", "running")
    assert page.locator("#steps [data-step]").count() == 5  # approvals, PSI, training, evaluation, result
    assert "vertical-lr" in page.locator("#manifest").inner_text()
    _shot(world, page, "job-waiting")

    for i, name in enumerate(TAX_APPROVERS, start=1):
        inbox = _open(world, name, "/approvals")
        row = inbox.locator(f"#inbox tr[data-job='{job_id}']")
        row.wait_for(timeout=30_000)
        assert row.locator("[data-approvals]").get_attribute("data-approvals") == f"{i - 1} of 2"
        if i == 1:
            _shot(world, inbox, "approvals-inbox")
        brief = _open(world, name, f"/approvals/{job_id}")
        assert brief.locator("#requester").inner_text() == "analyst"
        assert brief.locator("#self-request").count() == 0
        assert brief.locator("#brief-params tr[data-param=epochs]").count() == 1
        assert brief.locator("#sends tr").count() >= 2 and brief.locator("#learns tr").count() >= 3
        if i == 1:
            _shot(world, brief, "approval-brief")
        brief.fill("#reason", f"reviewed by {name}: model training, no rows leave tax")
        brief.click("#approve")
        brief.locator("#decided").wait_for()
        assert f"({i} of 2 approvals)" in brief.locator("#decided").inner_text()
        if i == 1:
            assert brief.locator("#approval-count").inner_text() == "1 of 2 approvals"
            _shot(world, brief, "approval-1-of-2")

    page = _page(world, "analyst")
    page.goto(world["consoles"]["analyst"].base + f"/jobs/{job_id}")
    # the job page reloads itself (meta refresh) until the job ends
    terminal = re.compile(r"^(succeeded|failed|rejected|cancelled)$")
    page.locator("#job-state", has_text=terminal).wait_for(timeout=120_000)
    assert page.locator("#job-state").inner_text() == "succeeded", page.locator("body").inner_text()
    assert page.locator("#steps [data-state=done]").count() == 5
    _shot(world, page, "job-succeeded")
    page = _open(world, "analyst", "/jobs")
    assert page.locator(f"#jobs tr[data-job='{job_id}'] .state-succeeded").count() == 1
    _shot(world, page, "jobs")

    page = _open(world, "analyst", f"/jobs/{job_id}/result")
    auc = float(page.locator("[data-metric=auc]").inner_text())
    assert 0.9 < auc <= 1.0
    assert page.locator("[data-metric=baseline_auc]").count() == 1
    assert page.locator("#roc svg polyline.curve").count() == 1
    points = page.locator("#roc svg polyline.curve").get_attribute("points")
    assert points is not None and len(points.split()) == 21
    assert page.locator("#contributions svg text", has_text="tax").count() == 1
    _shot(world, page, "result-roc")
    with page.expect_download() as dl:
        page.click("#download")
    assert Path(dl.value.path()).read_text().lstrip().startswith("{")


def test_an_analyst_has_no_approval_inbox(world: dict[str, Any]) -> None:
    page = _open(world, "analyst", "/")
    assert page.locator("nav.main a[data-nav='/jobs']").count() == 1
    assert page.locator("nav.main a[data-nav='/approvals']").count() == 0
    resp = page.goto(world["consoles"]["analyst"].base + "/approvals")
    assert resp is not None and resp.status == 403
    assert "approver" in page.locator(".error .message").inner_text()
    _shot(world, page, "analyst-refused-inbox")
    approver = _open(world, "ann", "/")
    assert approver.locator("nav.main a[data-nav='/approvals']").count() == 1
    assert approver.locator("nav.main a[data-nav='/submit']").count() == 0
    assert approver.goto(world["consoles"]["ann"].base + "/submit").status == 403


def test_a_form_without_its_csrf_token_is_refused(world: dict[str, Any]) -> None:
    page = _open(world, "analyst", "/submit")
    page.fill("#manifest", vlr_manifest(description="posted without a CSRF token"))
    page.locator("input[name=csrf]").evaluate("e => e.remove()")
    page.click("#send")
    page.wait_for_load_state()
    assert page.locator(".error h1").inner_text() == "Form refused"
    assert "CSRF" in page.locator(".error .message").inner_text()
    _shot(world, page, "csrf-refused")
    base = world["consoles"]["analyst"].base
    r = page.request.post(base + "/submit", multipart={"manifest": vlr_manifest(), "csrf": "forged"})
    assert r.status == 403
    page.goto(base + "/jobs")
    assert "posted without a CSRF token" not in page.content()


def test_chinese_interface(world: dict[str, Any]) -> None:
    page = _open(world, "ann", "/approvals?lang=zh")
    assert "审批待办" in page.locator("h1").inner_text()
    _shot(world, page, "approvals-zh")
    page = _open(world, "ann", "/federation")
    assert page.locator("h1").inner_text() == "联邦概况"  # remembered
    page.goto(world["consoles"]["ann"].base + "/federation?lang=en")
