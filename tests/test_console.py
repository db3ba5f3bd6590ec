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
