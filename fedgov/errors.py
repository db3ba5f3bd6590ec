"""Error types shared by every layer.

Every error a user can cause derives from :class:`FedgovError`. Its ``str()``
is one line that names *what* is wrong and *where* (file, field, node, job),
so the CLI can print it without a traceback.
"""

from __future__ import annotations


class FedgovError(Exception):
    """Base class for expected, user-facing failures."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(FedgovError):
    """A configuration, schema, policy or manifest file is malformed."""


class SchemaMismatch(FedgovError):
    """Data does not match the dataset schema that describes it."""


class PolicyDenied(FedgovError):
    """A node's policy refuses a task; the reasons are user-visible."""


class CryptoError(FedgovError):
    """A signature, certificate or envelope failed verification."""


class TransportError(FedgovError):
    """The coordinator or a peer could not be reached, or refused a call."""


class PayloadTooLarge(FedgovError):
    """A payload exceeds a configured size limit."""


class JobFailed(FedgovError):
    """A job ended in failure; ``message`` carries the reason."""
