"""The console's app without a federation: sign-in token, session cookie, CSRF, headers, roles, text.

Starlette's TestClient against :func:`fedgov.console.app.create_app` with a
stand-in SDK client; the browser tests (tests/test_console_browser.py) drive
the same app as a real process over a real federation.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient

from fedgov.console import i18n
from fedgov.console.app import CSP, PAGE_MODULES, create_app, load_pages, messages_of
from fedgov.console.pages import NavEntry, Page, PageContext, route

BASE = "http://127.0.0.1:8765"


class FakeClient:
    def __init__(self, role: str, department: str | None = None) -> None:
        self.identity = SimpleNamespace(name=f"{role}-1", role=role, department=department)
        self.changed: list[str] = []

    def close(self) -> None:
        pass


def _changer(ctx: PageContext) -> Any:
    ctx.client.changed.append(str(ctx.form.get("what")))
    return ctx.redirect("/thing")


def _thing(ctx: PageContext) -> Any:
    return ctx.render("error.html", title="thing", message=f"changed={ctx.client.changed} csrf={ctx.csrf}")


TEST_PAGE = Page(
    routes=[route("/thing", _thing, {"analyst", "auditor"}),
            route("/thing", _changer, {"analyst"}, methods=["POST"])],
    nav=[NavEntry("/thing", "nav.thing", frozenset({"analyst"}))],
    messages={"en": {"nav.thing": "Thing"}, "zh": {"nav.thing": "东西"}},
)


def _app(role: str = "analyst") -> tuple[Any, FakeClient]:
    fake = FakeClient(role)
    app = create_app(client=fake, pages=(), extra_pages=[TEST_PAGE])
    return app, fake


def _signed_in(app: Any) -> TestClient:
    c = TestClient(app, base_url=BASE)
    r = c.get(f"/?token={app.state.console.token}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    return c


def _csrf(c: TestClient) -> str:
    m = re.search(r"csrf=([A-Za-z0-9_-]+)", c.get("/thing").text)
    assert m
    return m.group(1)


def test_the_token_is_spent_once_for_an_httponly_strict_session_cookie() -> None:
    app, _ = _app()
    token = app.state.console.token
    anon = TestClient(app, base_url=BASE)
    assert anon.get("/").status_code == 401
    r = anon.get(f"/thing?token={token}&lang=zh", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/thing?lang=zh"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
    assert anon.get("/thing").status_code == 200
    again = TestClient(app, base_url=BASE)
    assert again.get(f"/?token={token}", follow_redirects=False).status_code == 403  # spent
    assert again.get("/").status_code == 401
    forged = TestClient(app, base_url=BASE, cookies={"fedgov_console": "guessed"})
    assert forged.get("/").status_code == 401


def test_a_post_without_or_with_a_wrong_csrf_token_is_refused() -> None:
    app, fake = _app()
    c = _signed_in(app)
    r = c.post("/thing", data={"what": "no-token"}, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.text
    r = c.post("/thing", data={"what": "wrong", "csrf": "x" * 43}, follow_redirects=False)
    assert r.status_code == 403
    r = c.post("/thing", data={"what": "foreign", "csrf": _csrf(c)}, headers={"origin": "http://evil.example"},
               follow_redirects=False)
    assert r.status_code == 403
    assert fake.changed == []
    r = c.post("/thing", data={"what": "ok", "csrf": _csrf(c)}, headers={"origin": BASE}, follow_redirects=False)
    assert r.status_code == 303 and fake.changed == ["ok"]


def test_every_response_carries_the_security_headers() -> None:
    app, _ = _app()
    c = _signed_in(app)
    for r in (c.get("/"), c.get("/thing"), c.get("/missing"), c.get("/static/console.css"),
              TestClient(app, base_url=BASE).get("/")):
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["referrer-policy"] == "same-origin"
    assert "default-src 'self'" in CSP and "frame-ancestors 'none'" in CSP and "unsafe-inline" not in CSP
    assert "<script" not in c.get("/thing").text and "style=" not in c.get("/thing").text


def _boom(ctx: PageContext) -> Any:
    raise RuntimeError("kaboom-detail /secret/path/key.pem")


def test_an_unhandled_error_is_a_500_page_with_the_security_headers_and_no_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(client=FakeClient("analyst"), pages=(),
                     extra_pages=[TEST_PAGE, Page(routes=[route("/boom", _boom, {"analyst"})])])
    c = _signed_in(app)
    c = TestClient(app, base_url=BASE, raise_server_exceptions=False, cookies=dict(c.cookies))
    for r in (c.get("/boom"), c.get("/boom?lang=zh"), c.get("/no/such/page")):
        assert r.status_code in (404, 500)
        assert r.headers.get("content-security-policy") == CSP, r.headers
        assert r.headers.get("x-frame-options") == "DENY"
        assert r.headers.get("cache-control") == "no-store"
        assert r.headers.get("x-content-type-options") == "nosniff"
        for leak in ("kaboom", "secret", "Traceback", "RuntimeError", "File \""):
            assert leak not in r.text
        assert r.headers["content-type"].startswith("text/html")
    assert c.get("/boom").status_code == 500
    assert "控制台内部出错" in c.get("/boom?lang=zh").text
    assert any("kaboom-detail" in (rec.exc_text or str(rec.exc_info)) for rec in caplog.records)  # in the log


def test_a_foreign_host_header_is_refused() -> None:
    app, _ = _app()
    c = TestClient(app, base_url="http://attacker.example:8765")
    assert c.get(f"/?token={app.state.console.token}").status_code == 400
    assert app.state.console.token is not None  # not spent by a rebinding page


def test_roles_decide_nav_and_access() -> None:
    app, _ = _app("auditor")
    c = _signed_in(app)
    assert 'data-nav="/thing"' not in c.get("/").text  # nav only for analysts
    assert c.get("/thing").status_code == 200  # but auditors may read it
    assert c.post("/thing", data={"csrf": "x"}).status_code == 403
    app, _ = _app("approver")
    c = _signed_in(app)
    r = c.get("/thing")
    assert r.status_code == 403 and "approver" in r.text
    app, _ = _app("analyst")
    assert 'data-nav="/thing"' in _signed_in(app).get("/").text


def test_language_switch_and_cookie() -> None:
    app, _ = _app()
    c = _signed_in(app)
    assert "东西" not in c.get("/").text
    assert "东西" in c.get("/?lang=zh").text
    assert "东西" in c.get("/").text  # remembered in a cookie
    assert "Thing" in c.get("/?lang=en").text


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_message_exists_in_both_languages(lang: str) -> None:
    catalogue = messages_of(load_pages(PAGE_MODULES))
    other = "zh" if lang == "en" else "en"
    missing = sorted(set(catalogue[other]) - set(catalogue[lang]))
    assert not missing, f"{lang} lacks {missing}"
    assert set(catalogue) == set(i18n.LANGS)


def test_the_console_is_for_people_and_the_inbox_for_approvers(tmp_path: Any) -> None:
    import subprocess
    import sys

    from fedgov.crypto.kits import issue_kit
    from fedgov.crypto.pki import create_ca

    create_ca(tmp_path / "ca", "test federation")
    issue_kit(tmp_path / "ca", tmp_path / "tax", "tax", "node")
    issue_kit(tmp_path / "ca", tmp_path / "ana", "ana", "analyst")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fedgov", "console", "--coordinator", "127.0.0.1:9", *args],
                              capture_output=True, text=True, timeout=60)

    r = run("--kit", str(tmp_path / "tax"))
    assert r.returncode == 2 and "the console is for people" in r.stderr and "token" not in r.stdout
    r = run("--kit", str(tmp_path / "ana"), "--node-config", str(tmp_path / "node.toml"))
    assert r.returncode == 2 and "--node-config is for an approver" in r.stderr
    r = run("--kit", str(tmp_path / "missing"))
    assert r.returncode == 2 and "missing" in r.stderr


class JobsClient(FakeClient):
    """A stand-in SDK client with one job and the events the coordinator recorded for it."""

    def __init__(self, events: tuple[Any, ...]) -> None:
        super().__init__("analyst")
        from fedgov.client import JobStatus, Participant

        self.job = JobStatus(job_id="job-1", kind="cohort-count", purpose="p", requester="analyst-1",
                             state="succeeded", reason="", created_at=1_700_000_000.0, updated_at=1_700_000_090.0,
                             participants=(Participant("tax", "approved", "ok", "succeeded", ("ann",)),),
                             events=events)

    def status(self, job_id: str) -> Any:
        assert job_id == "job-1"
        return self.job


def test_the_job_timeline_shows_the_coordinators_events_with_iso_times() -> None:
    from fedgov.client import JobEvent
    from fedgov.opsview import iso

    events = (JobEvent(1_700_000_000.25, "job-submitted", "", "cohort-count by analyst-1"),
              JobEvent(1_700_000_012.0, "node-approved", "tax", "ok (approvers: ann)"),
              JobEvent(1_700_000_047.0, "task-succeeded", "tax", ""),
              JobEvent(1_700_000_090.0, "job-succeeded", "", ""),
              JobEvent(1_700_000_091.0, "job-archived", "", "later kind"))
    app = create_app(client=JobsClient(events), pages=("fedgov.console.pages_jobs",))
    c = _signed_in(app)
    html = c.get("/jobs/job-1").text
    timeline = html.split('id="timeline"', 1)[1].split("</ol>", 1)[0]
    items = re.findall(r'<li data-event="([a-z-]+)"><time class="muted" datetime="([^"]+)">([^<]+)</time> ([^<]+)</li>',
                       timeline)
    assert [(ev, when, shown) for ev, when, shown, _ in items] == [(e.event, iso(e.ts), iso(e.ts)) for e in events]
    texts = [what for *_, what in items]
    assert texts[1] == "tax approved: ok (approvers: ann)" and texts[2] == "tax finished its part"
    assert texts[4] == events[4].text  # an event this console does not know: the SDK's wording
    zh = c.get("/jobs/job-1?lang=zh").text
    assert "tax 已批准: ok (approvers: ann)" in zh and iso(events[2].ts) in zh
    # a coordinator that records no events: the status's own two times
    app = create_app(client=JobsClient(()), pages=("fedgov.console.pages_jobs",))
    plain = _signed_in(app).get("/jobs/job-1").text.split('id="timeline"', 1)[1].split("</ol>", 1)[0]
    assert iso(1_700_000_000.0) in plain and "data-event" not in plain


def test_a_stats_result_shows_each_figures_dp_error_from_the_shared_function() -> None:
    from fedgov.protocols import he_stats as hs

    q = hs.StatsQuery(job_id="job-1", requester="analyst-1", scope="hrss.p.x", cohort="c", clip=(0.0, 8000.0),
                      stats=("count", "sum", "mean"), dp=hs.DPConfig("laplace", epsilon=0.5))
    release = hs.Release("job-1", q.scope, q.cohort, {"east": {"count": 120, "sum": 240000.0, "mean": 2000.0}},
                         {"count": 130, "sum": 250000.0, "mean": 1923.1}, {"west": "noisy count below 11"}, 0.5, 11,
                         hs.NOISE_LABEL, dp_noise={"parties": [hs.dp_noise_spec(q, 0.5)]}).to_json()
    client = JobsClient(())
    client.result = lambda job_id: {"hrss": release}  # type: ignore[attr-defined]
    app = create_app(client=client, pages=("fedgov.console.pages_jobs",))
    c = _signed_in(app)
    html = c.get("/jobs/job-1/result").text
    err = hs.dp_error(release)
    for label, cell in (("east", "east"), (hs.TOTAL, "Total (all cells)")):
        row = html.split(f'<tr data-cell="{cell}">', 1)[1].split("</tr>", 1)[0]
        for stat in ("count", "sum", "mean"):
            td = row.split(f'data-stat="{stat}">', 1)[1].split("</td>", 1)[0]
            assert f"± {err[label][stat]:.3g}" in td, (stat, td)
    assert 'id="dp-error"' in html and 'data-suppressed="west"' in html
    assert err["east"]["sum"] > err["east"]["count"] > 0  # the figures differ by statistic (clip 8,000)
    # a release without DP noise: no ± anywhere
    client.result = lambda job_id: {"hrss": {**release, "dp_noise": None}}  # type: ignore[attr-defined]
    assert "dp-err" not in c.get("/jobs/job-1/result").text
