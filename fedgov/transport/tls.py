"""Mutual-TLS channels and servers, and caller identity from certificates.

Guarantees:
- every server requires a client certificate chaining to the federation CA
  (``require_client_auth=True``); a peer without one, or with one from another
  CA, fails the TLS handshake before any RPC runs;
- TLS 1.3 is what grpcio clients negotiate. grpcio's Python server cannot
  refuse TLS 1.2, so 1.2 is limited to forward-secret AEAD suites through
  ``GRPC_SSL_CIPHER_SUITES`` (set here before any credentials are created);
- identity is the certificate subject (see :mod:`fedgov.crypto.pki`), never a
  request field.
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


def secure_channel(material: TlsMaterial, target: str) -> grpc.Channel:
    """A mutual-TLS channel to ``target`` (``host:port``)."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=material.ca,
        private_key=material.key,
        certificate_chain=material.cert,
    )
    return grpc.secure_channel(target, creds, options=GRPC_OPTIONS)


def caller_identity(context: grpc.ServicerContext) -> Identity:
    """Identity of the peer of a server call, from its verified certificate.

    The TLS layer has already checked the chain to the federation CA; this
    only parses the leaf. Aborts the call with UNAUTHENTICATED if there is no
    certificate (which ``require_client_auth`` makes impossible in practice).
    """
    auth = context.auth_context()
    pem = auth.get("x509_pem_cert")
    if not pem:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "client certificate required")
    cert = x509.load_pem_x509_certificate(pem[0])
    return identity_from_cert(cert)
