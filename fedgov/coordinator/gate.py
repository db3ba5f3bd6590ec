"""The coordinator's gate: what every RPC passes before its handler runs.

grpcio's Python server can neither refuse TLS 1.2 nor consult a revocation
list during the TLS handshake, so the checks the handshake cannot make are
made here, on **every** call (the standard gRPC health service excepted), in
this order:

1. the connection negotiated TLS 1.3 (``ssl_tls_version`` of the call's auth
   context), else ``UNAUTHENTICATED`` "TLS 1.3 required";
2. the caller's certificate is not on the federation CA's current revocation
   list (:class:`fedgov.crypto.revocation.Revocations`), else
   ``UNAUTHENTICATED`` naming the serial, date and reason;
3. for callers with role ``node``, on the calls that make a process *be* the
   node (:data:`SESSION_METHODS`: registering, publishing the catalogue,
   taking tasks, deciding, reporting, relaying, per-job keys): one live
   process per node identity. Each node process sends a random session id
   (``fedgov-session`` metadata). A second session of the same node is
   refused with ``ALREADY_EXISTS`` while the registered session is live (a
   call in progress, or one ended less than :data:`GRACE_SECONDS` ago); once
   it is silent, a new process may register and takes over. Reads open to
   every role (catalogue, key bundles, revocation list, ledger) and ledger
   cosignatures (whose authority is the node's signature, not its
   connection) are not tied to a session.

   Sessions live in memory, but after a coordinator restart the gate
   consults the session each node last *registered* (persisted in
   ``coordinator.db``, ``nodes.session``): for :data:`RESTART_GRACE_SECONDS`
   after the coordinator started, that process counts as live although it has
   not called yet (it is reconnecting with backoff), so another process with
   the same certificate identity but another session id is refused
   (``ALREADY_EXISTS``) instead of claiming the identity first and breaking the
   live node's jobs. After the grace a silent registered process may be taken
   over, as in the live rule.

What it does not do: the TLS handshake itself still completes for a revoked
certificate (no RPC runs on it); a process that omits the session metadata
counts as session ``""``; a process holding the identity's key and the live
process's session id is indistinguishable from it (the session id is a
liveness marker, not a credential).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509

from fedgov.crypto.pki import CertificateError, Identity, RevokedCertificate, identity_from_cert
from fedgov.crypto.revocation import Revocations
from fedgov.transport.tls import SESSION_METADATA, tls_version

log = logging.getLogger("fedgov.coordinator")

#: A node session with no call in progress counts as live this long after its last call.
GRACE_SECONDS = 5.0
#: After a coordinator (re)start, a node's persisted registered session counts as live this long
#: although it has not called yet: longer than a node's reconnect backoff (at most 15 s), shorter
#: than a new node process's patience with such a refusal (``fedgov.node.agent.RESTART_PATIENCE``).
RESTART_GRACE_SECONDS = 30.0
REGISTER_METHOD = "/fedgov.v1.Registry/Register"
#: The calls through which a process acts as the node: bound to its one live session.
SESSION_METHODS = frozenset({
    REGISTER_METHOD,
    "/fedgov.v1.Registry/PublishCatalog",
    "/fedgov.v1.Registry/PublishJobKey",
    "/fedgov.v1.Registry/GetJobKey",
    "/fedgov.v1.Jobs/PollTasks",
    "/fedgov.v1.Jobs/Decide",
    "/fedgov.v1.Jobs/Report",
    "/fedgov.v1.Relay/Send",
    "/fedgov.v1.Relay/Receive",
})
_UNGATED = ("/grpc.health.v1.Health/",)


class DuplicateSession(Exception):
    """Another process holds this node identity and is alive."""


@dataclass
class _Slot:
    session: str
    active: int
    last: float
    #: live until then even if quiet (a registered session carried over a coordinator restart)
    live_until: float = 0.0
    #: carried over from before the restart and not heard from since
    carried: bool = False


class Sessions:
    """Which process (session id) currently is each node, and whether it is alive."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, grace: float = GRACE_SECONDS, *,
        persisted: Callable[[str], str | None] | None = None, restart_grace: float = RESTART_GRACE_SECONDS,
    ) -> None:
        """``persisted(node)``: the session id ``node`` last registered with before this
        coordinator started (``None`` if none); it is live until ``restart_grace`` after now."""
        self._clock = clock
        self._grace = grace
        self._persisted = persisted
        self._started = clock()
        self._carried_until = self._started + restart_grace
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()

    def _carried_over(self, node: str, now: float) -> _Slot | None:
        """The registered session of ``node`` from before the restart, while it may still reconnect."""
        if self._persisted is None or now >= self._carried_until:
            return None
        saved = self._persisted(node)
        if not saved:
            return None
        return _Slot(saved, 0, self._started, live_until=self._carried_until, carried=True)

    def enter(self, node: str, session: str, *, registering: bool) -> None:
        """A call of ``node`` from ``session`` starts; raise DuplicateSession if another is live.

        A call that is not a registration, from a session that is not the
        registered one, is refused even when the registered one went quiet:
        the new process must register first.
        """
        now = self._clock()
        with self._lock:
            slot = self._slots.get(node)
            if slot is None:
                slot = self._carried_over(node, now)
                if slot is not None:
                    self._slots[node] = slot
            if slot is None or slot.session == session:
                if slot is None:
                    slot = self._slots[node] = _Slot(session, 0, now)
                slot.active += 1
                slot.last = now
                slot.carried = False
                return
            quiet = now - slot.last
            if slot.active > 0 or quiet < self._grace or now < slot.live_until:
                if slot.active > 0:
                    heard = "a call in progress"
                elif slot.carried:
                    heard = "registered before the coordinator restarted and not yet back"
                else:
                    heard = f"heard {quiet:.1f} s ago"
                raise DuplicateSession(
                    f"node '{node}' is already connected from another process ({heard}); refusing a "
                    "second process with the same identity: stop the other one (or revoke the kit if "
                    "it leaked)"
                )
            if not registering:
                raise DuplicateSession(
                    f"this process is not the registered process of node '{node}': register first"
                )
            log.warning("node %s: a new process took over the identity (the old one was silent %.0f s)",
                        node, quiet)
            self._slots[node] = _Slot(session, 1, now)

    def leave(self, node: str, session: str) -> None:
        """A call of ``node`` from ``session`` ended."""
        with self._lock:
            slot = self._slots.get(node)
            if slot is not None and slot.session == session:
                slot.active = max(0, slot.active - 1)
                slot.last = self._clock()


class PeerGate(grpc.ServerInterceptor):
    """Server interceptor applying the checks of this module to every handler."""

    def __init__(self, revocations: Revocations, sessions: Sessions | None = None) -> None:
        self.revocations = revocations
        self.sessions = sessions or Sessions()
        self._idents: OrderedDict[bytes, tuple[x509.Certificate, Identity]] = OrderedDict()
        self._lock = threading.Lock()

    def _peer(self, pem: bytes) -> tuple[x509.Certificate, Identity]:
        with self._lock:
            hit = self._idents.get(pem)
            if hit is not None:
                self._idents.move_to_end(pem)
                return hit
        cert = x509.load_pem_x509_certificate(pem)
        out = (cert, identity_from_cert(cert))
        with self._lock:
            self._idents[pem] = out
            while len(self._idents) > 1024:
                self._idents.popitem(last=False)
        return out

    def _admit(self, context: grpc.ServicerContext, method: str, session: str) -> tuple[str, str] | None:
        version = tls_version(context)
        if version and version != "TLSv1.3":
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"TLS 1.3 required: this connection negotiated {version}")
        pem = context.auth_context().get("x509_pem_cert")
        if not pem:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "client certificate required")
        try:
            cert, ident = self._peer(pem[0])
        except (CertificateError, ValueError) as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"unusable client certificate: {exc}")
        self._refuse_revoked(context, cert, method)
        if ident.role != "node" or method not in SESSION_METHODS:
            return None
        try:
            self.sessions.enter(ident.name, session, registering=method == REGISTER_METHOD)
        except DuplicateSession as exc:
            log.warning("refused %s: %s", method, exc)
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        return ident.name, session

    def _refuse_revoked(self, context: grpc.ServicerContext, cert: x509.Certificate, method: str) -> None:
        """Abort the call (UNAUTHENTICATED, naming serial, date and reason) if ``cert`` is revoked."""
        try:
            self.revocations.check(cert)
        except RevokedCertificate as exc:
            log.warning("refused a call to %s: %s", method, exc.message)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)

    def _release(self, token: tuple[str, str] | None) -> None:
        if token is not None:
            self.sessions.leave(*token)

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        method = details.method
        if handler is None or method.startswith(_UNGATED):
            return handler
        session = next((str(v) for k, v in (details.invocation_metadata or ()) if k == SESSION_METADATA), "")
        admit = lambda context: self._admit(context, method, session)  # noqa: E731
        return _wrap(handler, admit, self._release)


def _wrap(handler: Any, admit: Callable[[Any], Any], release: Callable[[Any], None]) -> Any:
    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        def uu(request: Any, context: Any) -> Any:
            token = admit(context)
            try:
                return inner_uu(request, context)
            finally:
                release(token)

        return grpc.unary_unary_rpc_method_handler(uu, **kw)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        def us(request: Any, context: Any) -> Iterator[Any]:
            token = admit(context)
            try:
                yield from inner_us(request, context)
            finally:
                release(token)

        return grpc.unary_stream_rpc_method_handler(us, **kw)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        def su(request_iterator: Any, context: Any) -> Any:
            token = admit(context)
            try:
                return inner_su(request_iterator, context)
            finally:
                release(token)

        return grpc.stream_unary_rpc_method_handler(su, **kw)
    inner_ss = handler.stream_stream

    def ss(request_iterator: Any, context: Any) -> Iterator[Any]:
        token = admit(context)
        try:
            yield from inner_ss(request_iterator, context)
        finally:
            release(token)

    return grpc.stream_stream_rpc_method_handler(ss, **kw)
