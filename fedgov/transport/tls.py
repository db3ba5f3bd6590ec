"""Mutual-TLS channels and servers, and caller identity from certificates.

Guarantees:
- every server requires a client certificate chaining to the federation CA
  (``require_client_auth=True``); a peer without one, or with one from another
  CA, fails the TLS handshake before any RPC runs;
- TLS 1.3 is what grpcio clients negotiate. grpcio's Python server cannot
  refuse TLS 1.2 in the handshake, so 1.2 is limited to forward-secret AEAD
  suites through ``GRPC_SSL_CIPHER_SUITES`` (set in ``fedgov/__init__.py``
  before any credentials are created), and the coordinator's gate refuses
  every RPC that arrives over anything but TLS 1.3 (:func:`tls_version`);
- identity is the certificate subject (see :mod:`fedgov.crypto.pki`), never a
  request field;
- grpcio's server cannot consult a revocation list during the handshake
  either: revocation is checked on every RPC by the coordinator's gate
  (``fedgov.coordinator.gate``), against :func:`peer_certificate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from fedgov import TLS12_SUITES  # noqa: F401  (applied in fedgov/__init__.py, before grpc loads)
from fedgov.crypto.pki import Identity, identity_from_cert
from fedgov.errors import ConfigError

#: Largest single gRPC message either side accepts. Relay payloads larger than
#: this travel as chunks of :data:`CHUNK_SIZE`.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
CHUNK_SIZE = 1024 * 1024

GRPC_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

#: Client side: reconnect within a few seconds once the coordinator is back (gRPC's
#: default backoff grows to two minutes), so jobs resume soon after a restart.
CLIENT_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 4_000),
]

SERVER_OPTIONS: list[tuple[str, int | str]] = [
    *GRPC_OPTIONS,
    ("grpc.so_reuseport", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes of a startup kit: CA certificate, own certificate and key."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_kit(cls, kit_dir: Path) -> TlsMaterial:
        """Read ``ca.crt``, ``tls.crt`` and ``tls.key`` from a startup kit."""
        parts = {}
        for name in ("ca.crt", "tls.crt", "tls.key"):
            path = kit_dir / name
            try:
                parts[name] = path.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read {name} ({exc.strerror}); run `fedgov provision` first",
                    where=str(kit_dir),
                ) from None
        return cls(ca=parts["ca.crt"], cert=parts["tls.crt"], key=parts["tls.key"])

    @property
    def identity(self) -> Identity:
        return identity_from_cert(x509.load_pem_x509_certificate(self.cert))


def server_credentials(material: TlsMaterial) -> grpc.ServerCredentials:
    """Server credentials that demand a client certificate from the CA."""
    return grpc.ssl_server_credentials(
        [(material.key, material.cert)],
        root_certificates=material.ca,
        require_client_auth=True,
    )


#: Metadata key a node process sends on every call: its random per-process session id,
#: so the coordinator can tell a second process with the same identity from the first.
SESSION_METADATA = "fedgov-session"


def secure_channel(material: TlsMaterial, target: str, *, session: str | None = None) -> grpc.Channel:
    """A mutual-TLS channel to ``target`` (``host:port``).

    With ``session``, every call carries it as ``fedgov-session`` metadata
    (node processes do; see ``fedgov.coordinator.gate``).
    """
    creds = grpc.ssl_channel_credentials(
        root_certificates=material.ca,
        private_key=material.key,
        certificate_chain=material.cert,
    )
    channel = grpc.secure_channel(target, creds, options=[*GRPC_OPTIONS, *CLIENT_OPTIONS])
    if session:
        channel = grpc.intercept_channel(channel, _MetadataInterceptor(((SESSION_METADATA, session),)))
    return channel


class _Details(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, base: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class _MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata to every call of a channel."""

    def __init__(self, extra: tuple[tuple[str, str], ...]) -> None:
        self._extra = extra

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _Details(details, [*(details.metadata or ()), *self._extra])

    def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001, ANN201
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # noqa: ANN001, ANN201
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):  # noqa: ANN001, ANN201
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):  # noqa: ANN001, ANN201
        return continuation(self._details(details), request_iterator)


def caller_identity(context: grpc.ServicerContext) -> Identity:
    """Identity of the peer of a server call, from its verified certificate.

    The TLS layer has already checked the chain to the federation CA; this
    only parses the leaf. Aborts the call with UNAUTHENTICATED if there is no
    certificate (which ``require_client_auth`` makes impossible in practice).
    """
    return identity_from_cert(peer_certificate(context))


def peer_certificate(context: grpc.ServicerContext) -> x509.Certificate:
    """The verified client certificate of a server call (UNAUTHENTICATED if there is none)."""
    pem = context.auth_context().get("x509_pem_cert")
    if not pem:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "client certificate required")
    return x509.load_pem_x509_certificate(pem[0])


def tls_version(context: grpc.ServicerContext) -> str:
    """The TLS version a server call's connection negotiated (e.g. ``TLSv1.3``), '' if unknown."""
    v = context.auth_context().get("ssl_tls_version")
    return v[0].decode() if v else ""
