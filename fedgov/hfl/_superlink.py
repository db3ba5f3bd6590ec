"""``python -m fedgov.hfl._superlink <flower-superlink args>``: SuperLink with a loopback guard.

In Flower 1.42 the SuperLink serves the Fleet API (``/v1/fleet``), the
Control API (``/v1/control``) and the ServerApp Runtime API (``/v1/runtime``)
from one FastAPI app on one ``--host``/``--port``, and the open-source
Control API has no authentication. SuperNodes on other hosts must reach the
Fleet API, so the port cannot simply be bound to loopback in a multi-host
federation. This wrapper runs the unmodified ``flower-superlink`` entry
point with one extra outermost ASGI middleware that answers 403 to every
request that is not for ``/v1/fleet/`` unless it comes from a loopback
address (i.e. from the coordinator host itself). Guarantee: with this
wrapper, only processes on the coordinator host can start, stop or inspect
runs, register SuperNodes or act as a ServerApp.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: Paths any SuperNode may use; everything else is coordinator-only.
PUBLIC_PREFIXES = ("/v1/fleet/",)
#: What a SuperLink may bind: loopback (one host) or every interface (other hosts' SuperNodes).
LOOPBACK_LISTEN = ("127.0.0.1", "::1", "localhost")
WILDCARD_LISTEN = ("0.0.0.0", "::")


def listen_addresses(listen: str, advertise: str | None, *, where: str = "hfl") -> tuple[str, str]:
    """Check a SuperLink's bind address; return ``(listen, advertise)``.

    ``advertise`` (what SuperNodes and the key holder dial, and what the
    SuperLink's certificate names) defaults to ``listen``; a wildcard bind
    needs it spelled out. Raises :class:`~fedgov.errors.ConfigError`.
    """
    from fedgov.errors import ConfigError

    if listen not in (*LOOPBACK_LISTEN, *WILDCARD_LISTEN):
        raise ConfigError(
            f"listen = {listen!r}: use 127.0.0.1 (one host) or 0.0.0.0 / :: (SuperNodes on other hosts)",
            where=where,
        )
    advertise = advertise or listen
    if advertise in WILDCARD_LISTEN:
        raise ConfigError(
            "listening on all interfaces needs an advertised host name or address for SuperNodes to dial",
            where=where,
        )
    return listen, advertise


def is_allowed(path: str, client_host: str | None) -> bool:
    """True if a request for ``path`` from ``client_host`` may pass the guard."""
    if any(path.startswith(p) for p in PUBLIC_PREFIXES) or path == "/health":
        return True
    if client_host is None:
        return False
    extra = {h for h in os.environ.get("FEDGOV_HFL_CONTROL_ALLOW", "").split(",") if h}
    if client_host in extra:
        return True
    try:
        return ipaddress.ip_address(client_host.split("%")[0]).is_loopback
    except ValueError:
        return False


class LoopbackOnlyControl:
    """ASGI middleware: non-Fleet paths only from loopback peers."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "http":
            client = scope.get("client")
            host = client[0] if client else None
            if not is_allowed(str(scope.get("path", "")), host):
                body = json.dumps({"detail": "fedgov: this API is reachable only from the "
                                             "coordinator host"}).encode()
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def main() -> None:
    """Patch the SuperLink's middleware list, then run ``flower-superlink``."""
    import flwr.superlink.main as sl_main
    from flwr.superlink.cli import flower_superlink
    from starlette.middleware import Middleware

    original = sl_main._get_middleware

    def _patched() -> list[Middleware]:
        return [Middleware(LoopbackOnlyControl), *original()]

    sl_main._get_middleware = _patched
    flower_superlink()


if __name__ == "__main__":
    main()
