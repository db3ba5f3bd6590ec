"""Console rows of docs/security.md "Console": sign-in token, CSRF, headers, role-gated pages,
loopback Host, and approvals signed locally with the approver's key.

The unit rows run tests/test_console.py (Starlette's TestClient over the real
app); the approval row runs the browser test, whose consoles are real
``fedgov console`` processes (the hook switches the guard off there too).
"""

from __future__ import annotations

from typing import Any

from protections import _patch, row

_UNIT = "tests/test_console.py::"
_BROWSER = "tests/test_console_browser.py::"


@row(
    "console-token",
    "`fedgov.console.app:ConsoleState.spend_token` (the printed token opens one session, once; switched off: "
    "any token, any number of times)",
    _UNIT + "test_the_token_is_spent_once_for_an_httponly_strict_session_cookie",
)
def _console_token() -> None:
    import secrets

    def any_token(self: Any, given: str) -> str:
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = secrets.token_urlsafe(32)
        return sid

    _patch("fedgov.console.app:ConsoleState.spend_token", any_token)


@row(
    "console-csrf",
    "`fedgov.console.pages:csrf_ok` (every POST carries the session's form token)",
    _UNIT + "test_a_post_without_or_with_a_wrong_csrf_token_is_refused",
)
def _console_csrf() -> None:
    _patch("fedgov.console.pages:csrf_ok", lambda form, expected: True)


@row(
    "console-csp",
    "`fedgov.console.app:SECURITY_HEADERS` (CSP, X-Frame-Options, nosniff, Referrer-Policy on every response)",
    _UNIT + "test_every_response_carries_the_security_headers",
)
def _console_csp() -> None:
    _patch("fedgov.console.app:SECURITY_HEADERS", ())


@row(
    "console-errors",
    "`fedgov.console.app:guarded` (an unhandled exception becomes the console's own 500 page inside the gate; "
    "switched off: Starlette's bare 500 without the headers)",
    _UNIT + "test_an_unhandled_error_is_a_500_page_with_the_security_headers_and_no_traceback",
)
def _console_errors() -> None:
    async def bare(state: Any, app: Any, scope: Any, receive: Any, send: Any) -> None:
        await app(scope, receive, send)

    _patch("fedgov.console.app:guarded", bare)


@row(
    "console-roles",
    "`fedgov.console.pages:role_allowed` (a route and its nav entry exist only for the roles it lists)",
    _UNIT + "test_roles_decide_nav_and_access",
)
def _console_roles() -> None:
    _patch("fedgov.console.pages:role_allowed", lambda role, roles: True)


@row(
    "console-loopback",
    "`fedgov.console.app:loopback_host` (a request whose Host is not 127.0.0.1 / localhost / [::1] is refused)",
    _UNIT + "test_a_foreign_host_header_is_refused",
)
def _console_loopback() -> None:
    _patch("fedgov.console.app:loopback_host", lambda host: True)


@row(
    "console-approver-signs",
    "`fedgov.console.pages_approvals:_record` → `fedgov.node.approvals.decide` (the decision signed with the "
    "approver's kit key; switched off: the console stores the approval unsigned)",
    _BROWSER + "test_analyst_submits_approvers_approve_analyst_sees_roc",
    level="stack",
)
def _console_approver_signs() -> None:
    def unsigned(config: Any, job_id: str, kit: Any, *, approve: bool, reason: str) -> str:
        from fedgov.node.store import NodeStore
        from fedgov.transport.tls import TlsMaterial

        material = TlsMaterial.from_kit(kit)
        store = NodeStore(config.state_dir)
        try:
            store.add_approval(job_id, material.identity.name, approve, reason, material.cert, b"")
            have = len([a for a, ok, *_ in store.approvals(job_id) if ok])
            job = store.pending_job(job_id)
        finally:
            store.close()
        return f"{material.identity.name} approved {job_id} ({have} of {job.required if job else '?'} approvals)"

    _patch("fedgov.console.pages_approvals:_record", unsigned)
