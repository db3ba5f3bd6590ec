"""The console's ASGI app: sessions from a one-time token, security headers, the pages.

:func:`create_app` builds a Starlette app acting as one kit's person. Security
(docs/console.md, docs/security.md "Console"):

- **loopback only**: ``fedgov console`` binds 127.0.0.1; a request whose
  ``Host`` is not 127.0.0.1 / localhost / [::1] is refused (DNS rebinding);
- **one-time token**: the printed URL carries ``?token=``; the first request
  with it gets a fresh session cookie (HttpOnly, SameSite=Strict, Path=/) and
  the token is spent; every other page needs that cookie;
- **CSRF**: each session has its own form token; every POST without it (or
  from another Origin) is refused with 403 (:mod:`fedgov.console.pages`);
- **headers**: a strict Content-Security-Policy (``default-src 'self'``, no
  inline script or style, ``frame-ancestors 'none'``), ``X-Frame-Options:
  DENY``, ``Cache-Control: no-store``, ``Referrer-Policy: same-origin`` (the
  token never leaks to another site in a Referer; no-referrer would make Chromium send
  ``Origin: null`` with every form), ``X-Content-Type-Options: nosniff``.

Nothing secret is put in a page: keys stay in the kit; the console shows
what the SDK returns to this person.
"""

from __future__ import annotations

import hmac
import importlib
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedgov.console import i18n
from fedgov.console.pages import PEOPLE, NavEntry, Page, PageContext, endpoint, role_allowed, route

#: page modules, in nav order; each exports ``PAGE`` (see fedgov/console/__init__.py)
PAGE_MODULES: tuple[str, ...] = (
    "fedgov.console.pages_federation",
    "fedgov.console.pages_jobs",
    "fedgov.console.pages_approvals",
    "fedgov.console.pages_ledger",
    "fedgov.console.pages_points",
)

SESSION_COOKIE = "fedgov_console"
LANG_COOKIE = "fedgov_lang"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'; object-src 'none'")
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})

HERE = Path(__file__).resolve().parent
LOG = logging.getLogger("fedgov.console")


@dataclass
class ConsoleState:
    """One console: the SDK client, whose kit it is, its sessions, catalogue and pages."""

    client: Any
    identity: Any
    lang: str = i18n.DEFAULT_LANG
    #: the node.toml of an approver's own department (the approval inbox reads it locally)
    node_config: Path | None = None
    kit: Path | None = None
    token: str | None = field(default_factory=lambda: secrets.token_urlsafe(32))
    #: session id -> that session's CSRF token
    sessions: dict[str, str] = field(default_factory=dict)
    catalogue: dict[str, dict[str, str]] = field(default_factory=dict)
    nav: list[NavEntry] = field(default_factory=list)
    env: jinja2.Environment | None = None
    #: anything a page module wants to keep per console (caches), by module
    extra: dict[str, Any] = field(default_factory=dict)

    def translator(self, lang: str) -> i18n.Translator:
        return i18n.Translator(self.catalogue, lang)

    def spend_token(self, given: str) -> str | None:
        """A new session id when ``given`` is the unspent one-time token (then spent), else None."""
        if self.token is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        self.token = None
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = secrets.token_urlsafe(32)
        return sid

    def visible_nav(self) -> list[NavEntry]:
        return [n for n in self.nav if role_allowed(self.identity.role, n.roles)]

    def render(self, request: Request, template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
        assert self.env is not None
        lang = request.scope.get("fedgov.lang", self.lang)
        t = self.translator(lang)
        here = request.url.path
        base = {
            "t": t,
            "lang": lang,
            "langs": i18n.LANGS,
            "lang_links": {code: here + "?" + urlencode({"lang": code}) for code in i18n.LANGS},
            "me": self.identity,
            "nav": self.visible_nav(),
            "here": here,
            "csrf": request.scope.get("fedgov.csrf", ""),
            "csrf_field": "csrf",
            "signed_in": bool(request.scope.get("fedgov.csrf")),
        }
        html = self.env.get_template(template).render(**(base | context))
        return HTMLResponse(html, status_code=status_code)


def loopback_host(host_header: str) -> bool:
    """True when a ``Host`` header names 127.0.0.1, localhost or [::1] (any port): a page served under
    another name (DNS rebinding) is refused before it can spend the token or reach a session."""
    hostname = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    return hostname.lower() in LOOPBACK_HOSTS


def _error(state: ConsoleState, scope: Scope, status: int, title_key: str, body_key: str) -> HTMLResponse:
    request = Request(scope)
    t = state.translator(scope.get("fedgov.lang", state.lang))
    return state.render(request, "error.html", status_code=status, title=t(title_key), message=t(body_key))


async def guarded(state: ConsoleState, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run ``app``; an exception it raises before its response starts becomes a 500 error page sent through
    ``send`` (so it carries the gate's security headers) and the traceback goes to the console's log only.

    Without this, Starlette's outermost ``ServerErrorMiddleware`` answers with a bare 500 that skips the gate:
    no CSP, no ``no-store``, no ``X-Frame-Options``. Leaks: nothing — the page has a fixed text, never the
    exception's message or traceback. An exception after the response started is re-raised (the server
    closes the connection; nothing more can be sent).
    """
    started = False

    async def tracking(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    try:
        await app(scope, receive, tracking)
    except Exception:
        if started:
            raise
        LOG.exception("console: unhandled error in %s %s", scope.get("method"), scope.get("path"))
        try:
            page: Response = _error(state, scope, 500, "err.title", "err.internal")
        except Exception:  # the error page itself failed: a fixed plain text, still through the gate's headers
            LOG.exception("console: the error page failed too")
            page = Response("Internal error; see the console's log.", status_code=500, media_type="text/plain")
        await page(scope, receive, send)


class ConsoleGate:
    """ASGI middleware: loopback Host, token → session cookie, session required, language, headers."""

    def __init__(self, app: ASGIApp, state: ConsoleState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                headers += list(SECURITY_HEADERS)
                headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await guarded(self.state, self._gate, scope, receive, send_secured)

    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Everything after the headers: Host, token, session, language; ``send`` already adds the headers."""
        request = Request(scope)
        st = self.state
        lang = i18n.pick_lang(request.query_params.get("lang")) or i18n.pick_lang(
            request.cookies.get(LANG_COOKIE)) or st.lang
        scope["fedgov.lang"] = lang
        if not loopback_host(request.headers.get("host", "")):
            await _error(st, scope, 400, "err.title", "err.host.body")(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith("/static/"):
            await self.app(scope, receive, send)
            return
        token = request.query_params.get("token")
        if token is not None:
            sid = st.spend_token(token)
            if sid is None:
                await _error(st, scope, 403, "err.auth.title", "err.auth.used")(scope, receive, send)
                return
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            resp = RedirectResponse(path + ("?" + urlencode(rest) if rest else ""), status_code=303)
            resp.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="strict", path="/")
            await resp(scope, receive, send)
            return
        sid = request.cookies.get(SESSION_COOKIE, "")
        csrf = st.sessions.get(sid) if sid else None
        if csrf is None:
            await _error(st, scope, 401, "err.auth.title", "err.auth.body")(scope, receive, send)
            return
        scope["fedgov.csrf"] = csrf
        if "lang" in request.query_params and i18n.pick_lang(request.query_params["lang"]):

            async def send_with_lang(message: Message) -> None:
                if message["type"] == "http.response.start":
                    cookie = Response()
                    cookie.set_cookie(LANG_COOKIE, lang, httponly=True, samesite="strict", path="/")
                    extra = [(k, v) for k, v in cookie.raw_headers if k == b"set-cookie"]
                    message = {**message, "headers": list(message.get("headers", [])) + extra}
                await send(message)

            await self.app(scope, receive, send_with_lang)
            return
        await self.app(scope, receive, send)


def _home(ctx: PageContext) -> Response:
    return ctx.render("home.html")


HOME = Page(routes=[route("/", _home, PEOPLE)])


def load_pages(modules: Sequence[str]) -> list[Page]:
    """``PAGE`` of each module in ``modules`` (ImportError / AttributeError name the module)."""
    return [importlib.import_module(m).PAGE for m in modules]


def create_app(
    kit: str | Path | None = None,
    coordinator: str | None = None,
    *,
    client: Any = None,
    node_config: str | Path | None = None,
    lang: str = i18n.DEFAULT_LANG,
    token: str | None = None,
    pages: Sequence[str] = PAGE_MODULES,
    extra_pages: Sequence[Page] = (),
    client_factory: Callable[[Path, str], Any] | None = None,
) -> Starlette:
    """The console app acting as ``kit``'s person against ``coordinator`` (or an SDK ``client``).

    Guarantees: every route is a :class:`~fedgov.console.pages.PageRoute` (role
    check, CSRF on POST) behind :class:`ConsoleGate` (loopback Host, session,
    headers). ``app.state.console.token`` is the one-time token to print.
    ``node_config`` is an approver's own node.toml (the inbox reads that node's
    queue locally and signs with the kit's key, as ``fedgov node approve``).
    """
    if client is None:
        if kit is None or coordinator is None:
            raise ValueError("give kit and coordinator, or a client")
        if client_factory is None:
            from fedgov.client import Client

            client_factory = Client
        client = client_factory(Path(kit), coordinator)
    chosen = i18n.pick_lang(lang) or i18n.DEFAULT_LANG
    state = ConsoleState(client=client, identity=client.identity, lang=chosen,
                         node_config=Path(node_config) if node_config else None,
                         kit=Path(kit) if kit else None)
    if token is not None:
        state.token = token
    catalogue: dict[str, dict[str, str]] = {k: dict(v) for k, v in i18n.MESSAGES.items()}
    all_pages = [HOME, *load_pages(pages), *extra_pages]
    routes: list[Route | Mount] = []
    for i, page in enumerate(all_pages):
        i18n.merge(catalogue, page.messages, where=f"page {i}")
        state.nav.extend(page.nav)
        for pr in page.routes:
            routes.append(Route(pr.path, endpoint(pr, state), methods=list(pr.methods), name=pr.name))
    state.nav.sort(key=lambda n: (n.order, n.path))
    state.catalogue = catalogue
    state.env = jinja2.Environment(
        loader=jinja2.PackageLoader("fedgov.console", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    state.env.filters["iso"] = _iso
    routes.append(Mount("/static", app=StaticFiles(packages=[("fedgov.console", "static")]), name="static"))

    async def not_found(request: Request, exc: Exception) -> Response:
        t = state.translator(request.scope.get("fedgov.lang", state.lang))
        return state.render(request, "error.html", status_code=404, title=t("err.title"), message=t("err.notfound"))

    app = Starlette(routes=routes, exception_handlers={404: not_found})
    app.state.console = state
    app.add_middleware(ConsoleGate, state=state)
    return app


def _iso(ts: Any) -> str:
    from fedgov.opsview import iso

    try:
        return iso(float(ts)) or "-"
    except (TypeError, ValueError):
        return str(ts)


def messages_of(pages: Sequence[Page]) -> Mapping[str, Mapping[str, str]]:
    """The merged catalogue of the base and ``pages`` (for tests)."""
    catalogue: dict[str, dict[str, str]] = {k: dict(v) for k, v in i18n.MESSAGES.items()}
    for i, page in enumerate(pages):
        i18n.merge(catalogue, page.messages, where=f"page {i}")
    return catalogue
