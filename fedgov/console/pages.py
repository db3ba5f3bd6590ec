"""How a console page is declared: routes with the roles allowed, nav entries, interface text.

A page module exports ``PAGE = Page(...)``; :func:`fedgov.console.app.create_app`
turns every :class:`PageRoute` into a Starlette route through :func:`_endpoint`,
which is the one place that

- refuses a role the route does not list (403 page; the nav hides it too),
- refuses a state-changing request (POST) whose form lacks this session's
  CSRF token, or whose ``Origin`` is another site (403 page),
- runs the blocking handler in a worker thread, and turns a
  :class:`~fedgov.errors.FedgovError` into an error page with its one line.

Page modules never build Starlette routes themselves, so none can skip these.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fedgov.errors import FedgovError

if TYPE_CHECKING:  # pragma: no cover
    from fedgov.console.app import ConsoleState

#: every person role of fedgov.crypto.pki.ROLES (services have no console)
PEOPLE: frozenset[str] = frozenset({"analyst", "approver", "auditor", "admin"})

#: field name of the CSRF token in every state-changing form
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class NavEntry:
    """One navigation link: ``path``, its label's message key, the roles that see it, its order."""

    path: str
    label: str
    roles: frozenset[str]
    order: int = 50


@dataclass(frozen=True)
class PageRoute:
    """``path`` served by ``handler(ctx) -> Response`` to ``roles`` only, for ``methods``."""

    path: str
    handler: Callable[[PageContext], Response]
    roles: frozenset[str]
    methods: tuple[str, ...] = ("GET",)
    name: str | None = None


def route(
    path: str, handler: Callable[[PageContext], Response], roles: Sequence[str] | frozenset[str],
    *, methods: Sequence[str] = ("GET",), name: str | None = None,
) -> PageRoute:
    """A route for :class:`Page`; ``roles`` are certificate roles (fedgov.crypto.pki.ROLES)."""
    return PageRoute(path, handler, frozenset(roles), tuple(m.upper() for m in methods), name)


@dataclass(frozen=True)
class Page:
    """What a page module contributes: routes, nav entries and its interface text."""

    routes: Sequence[PageRoute]
    nav: Sequence[NavEntry] = ()
    messages: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


class PageContext:
    """What a handler gets: the request, the console (SDK client, identity), the language, the form.

    ``form`` is the parsed form of a POST (already CSRF-checked), else empty.
    """

    def __init__(self, request: Request, state: ConsoleState, form: FormData | None) -> None:
        self.request = request
        self.state = state
        self.form = form if form is not None else FormData()
        self.lang: str = request.scope.get("fedgov.lang", state.lang)
        self.t = state.translator(self.lang)
        self.csrf: str = request.scope.get("fedgov.csrf", "")

    @property
    def client(self) -> Any:
        """The SDK :class:`fedgov.client.Client` acting as the kit's person."""
        return self.state.client

    @property
    def identity(self) -> Any:
        return self.state.identity

    def render(self, template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
        return self.state.render(self.request, template, status_code=status_code, **context)

    def redirect(self, path: str) -> RedirectResponse:
        """303 to a path of this console (after a POST)."""
        if not path.startswith("/") or path.startswith("//"):
            raise ValueError(f"not a console path: {path!r}")
        return RedirectResponse(path, status_code=303)


def _foreign_origin(request: Request) -> str | None:
    """The ``Origin`` of a request when it is not this console's own (``http://<Host>``), else None.

    A browser sends ``Origin`` with every POST; ``null`` (sandboxed frames, some redirects) is foreign.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return None
    return None if origin == f"http://{request.headers.get('host', '')}" else origin


def csrf_ok(form: FormData, expected: str) -> bool:
    """True when ``form`` carries the session's CSRF token ``expected`` (constant-time comparison)."""
    given = form.get(CSRF_FIELD)
    return bool(expected) and isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


def role_allowed(role: str, roles: frozenset[str]) -> bool:
    """True when a certificate ``role`` may use a route for ``roles`` (the nav applies the same rule)."""
    return role in roles


def endpoint(pr: PageRoute, state: ConsoleState) -> Callable[[Request], Any]:
    """The Starlette endpoint of ``pr``: role check, CSRF check on POST, handler in a thread."""

    async def _run(request: Request) -> Response:
        t = state.translator(request.scope.get("fedgov.lang", state.lang))
        role = state.identity.role
        if not role_allowed(role, pr.roles):
            roles = ", ".join(t(f"role.{r}") for r in sorted(pr.roles))
            return state.render(request, "error.html", status_code=403, title=t("err.forbidden.title"),
                                message=t("err.forbidden.role", role=t(f"role.{role}"), roles=roles))
        form: FormData | None = None
        if request.method != "GET" and request.method != "HEAD":
            bad_origin = _foreign_origin(request)
            if bad_origin:
                return state.render(request, "error.html", status_code=403, title=t("err.csrf.title"),
                                    message=t("err.origin.body", origin=bad_origin))
            form = await request.form(max_files=2, max_fields=200)
            if not csrf_ok(form, request.scope.get("fedgov.csrf", "")):
                return state.render(request, "error.html", status_code=403, title=t("err.csrf.title"),
                                    message=t("err.csrf.body"))
        ctx = PageContext(request, state, form)
        try:
            return await run_in_threadpool(pr.handler, ctx)
        except FedgovError as exc:
            return state.render(request, "error.html", status_code=400, title=t("err.title"),
                                message=t("err.upstream", error=str(exc)))

    return _run
