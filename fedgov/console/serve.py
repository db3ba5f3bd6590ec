"""Serving the console on loopback: a bound socket, uvicorn, the printed sign-in URL."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedgov.errors import FedgovError

#: the only address the console listens on (docs/console.md: loopback only)
HOST = "127.0.0.1"


def bind(port: int = 0) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:``port`` (0: a free random port); FedgovError if taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise FedgovError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def serve(
    app: Any, sock: socket.socket, *, on_ready: Callable[[str], None] | None = None, log_level: str = "warning"
) -> None:
    """Serve ``app`` on ``sock`` until SIGINT/SIGTERM; ``on_ready(url)`` gets the sign-in URL first."""
    import uvicorn

    port = sock.getsockname()[1]
    token = app.state.console.token
    url = f"http://{HOST}:{port}/?token={token}"
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off",
                            server_header=False, date_header=False)
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(url)
    server.run(sockets=[sock])


def run_console(
    kit: Path, coordinator: str, *, port: int = 0, lang: str = "en", node_config: Path | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Check the kit, build the app, bind loopback and serve (what ``fedgov console`` does)."""
    from fedgov.console.app import create_app
    from fedgov.crypto.kits import check_kit

    status = check_kit(kit)  # a broken or expired kit fails here, with the file named
    if status.identity.role not in ("analyst", "approver", "auditor", "admin"):
        raise FedgovError(f"'{status.identity.name}' is a {status.identity.role}: the console is for people "
                          "(analyst, approver, auditor, admin)", where=str(kit))
    if node_config is not None and status.identity.role != "approver":
        raise FedgovError("--node-config is for an approver's console (the approval inbox)", where=str(kit))
    app = create_app(kit, coordinator, node_config=node_config, lang=lang)
    sock = bind(port)
    try:
        serve(app, sock, on_ready=on_ready)
    finally:
        sock.close()
        app.state.console.client.close()
