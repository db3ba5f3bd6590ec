"""fedgov: usable-but-invisible computation across government departments."""

import os

__version__ = "0.1.0"

#: TLS 1.2 cipher suites gRPC may use: ECDHE key exchange, AEAD only. grpcio's
#: Python server cannot refuse TLS 1.2, so this is how 1.2 stays forward-secret.
#: gRPC reads the variable once, when its core first initialises, so it is set
#: here, before any fedgov module imports grpc — and forced, not defaulted, so
#: an inherited environment cannot widen it. TLS 1.3 suites are unaffected.
TLS12_SUITES = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ]
)
os.environ["GRPC_SSL_CIPHER_SUITES"] = TLS12_SUITES
