"""The node's witness loop over the coordinator's ledger (gRPC side of :mod:`fedgov.ledger.witness`).

:class:`NodeWitness` is what the node agent calls from its poll loop. Each
:meth:`NodeWitness.check`:

1. fetches the latest signed tree head and the log key statement (``GetHead``);
2. checks the **log key** (see below) — a different key than the one this node
   pinned raises :class:`LedgerAlarm`;
3. asks for an RFC 9162 consistency proof from the last head this node
   verified (``GetConsistencyProof``) and hands both to
   :class:`fedgov.ledger.witness.Witness` (signature, time order, truncation,
   fork, consistency; the alarm is persisted in ``<state_dir>/ledger-witness.json``);
4. counter-signs the verified head with the node's Ed25519 signing key and
   files the cosignature (``AddCosignature``).

On :class:`~fedgov.ledger.witness.LogRewritten`, :class:`~fedgov.ledger.witness.LogForked`
or :class:`LedgerAlarm` (all :class:`~fedgov.ledger.witness.WitnessError`) it
raises; the agent must stop taking tasks. A persisted alarm makes every later
check raise again, also after a node restart, until an operator clears it.

**How the node learns the log key.** The log's Ed25519 public key is never
taken on the coordinator's word alone:

* the coordinator *endorses* the key: an ECDSA P-256 signature by its TLS key
  over ``"fedgov/v1 ledger-key\\0" || raw public key``; the node verifies the
  endorsing certificate against the federation CA and requires role
  ``coordinator`` (so nobody but the certified coordinator can introduce a
  log key, and the statement is evidence of which key the coordinator used);
* the key is **pinned**: from ``<kit>/ledger.pub`` when the federation admin
  provisioned one (hex of the 32 raw bytes — the strongest option), otherwise
  on first use in the witness state file. A coordinator that later presents a
  different key (e.g. it started a fresh log to hide history) raises
  :class:`LedgerAlarm` at every check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedgov.crypto.pki import verify_certificate
from fedgov.errors import ConfigError, CryptoError, FedgovError
from fedgov.ledger.entries import now_ms
from fedgov.ledger.log import SignedTreeHead, public_key_bytes
from fedgov.ledger.witness import LogForked, LogRewritten, Witness, WitnessError
from fedgov.v1 import ledger_pb2

__all__ = [
    "LOG_KEY_DOMAIN",
    "STATE_FILE",
    "LedgerAlarm",
    "LogForked",
    "LogRewritten",
    "NodeWitness",
    "WitnessError",
    "endorse_log_key",
    "head_from_pb",
    "head_to_pb",
    "load_pinned_key",
    "verify_log_key",
]

log = logging.getLogger("fedgov.node.witness")

LOG_KEY_DOMAIN = b"fedgov/v1 ledger-key\x00"
STATE_FILE = "ledger-witness.json"
#: facts this node signed and has not yet seen included (``NodeWitness.expect``)
FACTS_FILE = "ledger-facts.json"
PINNED_KEY_FILE = "ledger.pub"


class LedgerAlarm(WitnessError):
    """The coordinator presented a log key or head this node cannot accept."""


# ---------------------------------------------------------------- wire helpers


def head_to_pb(sth: SignedTreeHead) -> ledger_pb2.TreeHead:
    """A :class:`SignedTreeHead` as its protobuf message."""
    return ledger_pb2.TreeHead(size=sth.size, root=sth.root, timestamp=sth.timestamp, signature=sth.signature)


def head_from_pb(msg: ledger_pb2.TreeHead) -> SignedTreeHead:
    """The :class:`SignedTreeHead` carried by a protobuf message (not verified)."""
    return SignedTreeHead(int(msg.size), bytes(msg.root), int(msg.timestamp), bytes(msg.signature))


def endorse_log_key(tls_key_pem: bytes, public_key: Ed25519PublicKey) -> bytes:
    """The coordinator's ECDSA P-256 signature (its TLS key) over the log key statement."""
    key = serialization.load_pem_private_key(tls_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the coordinator TLS key is not an ECDSA key", where="ledger key")
    return key.sign(LOG_KEY_DOMAIN + public_key_bytes(public_key), ec.ECDSA(hashes.SHA256()))


def verify_log_key(msg: ledger_pb2.LogKey, ca_cert: x509.Certificate) -> Ed25519PublicKey:
    """The log key from ``msg`` if the CA-certified coordinator endorsed it; else :class:`CryptoError`."""
    where = "ledger key"
    try:
        cert = x509.load_pem_x509_certificate(bytes(msg.coordinator_cert_pem))
        key = Ed25519PublicKey.from_public_bytes(bytes(msg.public_key))
    except ValueError as exc:
        raise CryptoError(f"malformed log key statement: {exc}", where=where) from None
    ident = verify_certificate(cert, ca_cert)
    if ident.role != "coordinator":
        raise CryptoError(
            f"log key endorsed by '{ident.name}' (role {ident.role}), not the coordinator", where=where
        )
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise CryptoError("the endorsing certificate has no ECDSA key", where=where)
    try:
        pub.verify(bytes(msg.endorsement), LOG_KEY_DOMAIN + bytes(msg.public_key), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CryptoError(
            "the coordinator's endorsement of the log key does not verify", where=where
        ) from None
    return key


def load_pinned_key(path: Path) -> Ed25519PublicKey | None:
    """A provisioned log key (64 hex digits, the raw Ed25519 key) or ``None`` if the file is absent."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"unreadable pinned ledger key: {exc}", where=str(path)) from None
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ValueError:
        raise ConfigError("expected 64 hex digits (raw Ed25519 public key)", where=str(path)) from None


def _state_key(path: Path) -> str | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"unreadable witness state: {exc}", where=str(path)) from None
    key = doc.get("log_key") if isinstance(doc, dict) else None
    return key if isinstance(key, str) else None


def write_private_json(path: Path, doc: Any) -> None:
    """Write ``doc`` atomically (fsync'd) as a 0600 JSON file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, sort_keys=True, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------- the loop


class NodeWitness:
    """Witness of the coordinator's ledger, run by a node (see the module docstring).

    ``stub`` is a ``fedgov.v1.ledger_pb2_grpc.LedgerStub`` on the node's mTLS
    channel; ``log_public_key`` may be ``None``, in which case the key is taken
    from ``kit_dir/ledger.pub``, else the pinned state, else the coordinator's
    endorsement verified against ``ca_cert`` (trust on first use, then pinned).
    ``sign`` is the node's Ed25519 signing callable (``NodeKeys.sign``).
    """

    def __init__(
        self,
        state_dir: Path,
        stub: Any,
        log_public_key: Ed25519PublicKey | None,
        sign: Callable[[bytes], bytes],
        *,
        ca_cert: x509.Certificate | None = None,
        kit_dir: Path | None = None,
        interval: float = 10.0,
        timeout: float = 10.0,
    ) -> None:
        self.state_path = Path(state_dir) / STATE_FILE
        self.facts_path = Path(state_dir) / FACTS_FILE
        self.stub = stub
        self._sign = sign
        self.ca_cert = ca_cert
        self.interval = interval
        self.timeout = timeout
        self._pinned = log_public_key
        if self._pinned is None and kit_dir is not None:
            self._pinned = load_pinned_key(Path(kit_dir) / PINNED_KEY_FILE)
        self._witness: Witness | None = None
        self._next = 0.0
        self._warned = False

    def _standing(self) -> tuple[str, str] | None:
        """``(kind, message)`` of the persisted alarm, if any."""
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        alarm = doc.get("alarm") if isinstance(doc, dict) else None
        if not isinstance(alarm, dict) or "message" not in alarm:
            return None
        return str(alarm.get("kind", "rewritten")), str(alarm["message"])

    @property
    def alarm(self) -> str | None:
        """The persisted alarm message, if this node's witness has halted."""
        standing = self._standing()
        return None if standing is None else standing[1]

    def _raise_standing(self) -> None:
        standing = self._standing()
        if standing is not None:
            kind, message = standing
            raise (LogForked if kind == "forked" else LogRewritten)(
                f"witness halted: {message} (clear the alarm after investigating)", where="ledger witness"
            )

    # ------------------------------------------------------------ own facts

    def _facts(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.facts_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"pending": []}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable witness facts: {exc}", where=str(self.facts_path)) from None
        return doc if isinstance(doc, dict) and isinstance(doc.get("pending"), list) else {"pending": []}

    def _save_facts(self, doc: dict[str, Any]) -> None:
        write_private_json(self.facts_path, doc)

    def expect(self, fact: bytes) -> None:
        """Remember a fact this node signed: the witness checks it is included (``pending_facts``)."""
        doc = self._facts()
        digest = hashlib.sha256(fact).hexdigest()
        if any(p.get("sha256") == digest for p in doc["pending"]):
            return
        head = self.last_head
        doc["pending"].append(
            {
                "sha256": digest,
                "entry": fact.decode("utf-8"),
                "since": now_ms(),
                "from_size": head.size if head is not None else 0,
            }
        )
        self._save_facts(doc)

    @property
    def pending_facts(self) -> list[dict[str, Any]]:
        """Facts this node signed whose inclusion under a verified head it has not yet seen."""
        return list(self._facts()["pending"])

    @property
    def last_head(self) -> SignedTreeHead | None:
        """The last head this node verified."""
        return self._witness.last_head if self._witness is not None else None

    def _resolve_key(self, reply: ledger_pb2.GetHeadReply) -> Witness:
        offered = bytes(reply.key.public_key)
        if self.ca_cert is not None:
            try:
                endorsed = verify_log_key(reply.key, self.ca_cert)
            except CryptoError as exc:
                raise LedgerAlarm(
                    f"log key statement rejected: {exc.message}", where="ledger witness"
                ) from None
            offered = public_key_bytes(endorsed)
        if self._witness is not None:
            pinned_hex = public_key_bytes(self._witness.log_key).hex()
        elif self._pinned is not None:
            pinned_hex = public_key_bytes(self._pinned).hex()
        else:
            pinned_hex = _state_key(self.state_path) or ""
        if pinned_hex and offered.hex() != pinned_hex:
            raise LedgerAlarm(
                f"the coordinator's log key changed: pinned {pinned_hex[:16]}…, offered {offered.hex()[:16]}… "
                "(a new log would hide the old history)",
                where="ledger witness",
            )
        if self._witness is None:
            if not pinned_hex and self.ca_cert is None:
                raise ConfigError(
                    "no log key: give log_public_key, kit_dir/ledger.pub or ca_cert", where="ledger witness"
                )
            key = Ed25519PublicKey.from_public_bytes(offered)
            self._witness = Witness(self.state_path, key, sign=self._sign)
        return self._witness

    def check(self) -> None:
        """Verify the latest head against the last verified one and cosign it.

        Raises a :class:`WitnessError` (``LogRewritten``, ``LogForked``,
        :class:`LedgerAlarm`) when the node must stop, and
        :class:`~fedgov.errors.FedgovError` / ``grpc.RpcError`` for transport problems.
        """
        self._raise_standing()
        reply = self.stub.GetHead(ledger_pb2.GetHeadRequest(), timeout=self.timeout)
        witness = self._resolve_key(reply)
        new = head_from_pb(reply.head)
        old = witness.last_head
        if old is not None and old == new:
            return  # nothing new to vouch for
        proof: list[bytes] = []
        if old is not None and 0 < old.size < new.size:
            got = self.stub.GetConsistencyProof(
                ledger_pb2.ConsistencyProofRequest(old_size=old.size, new_size=new.size), timeout=self.timeout
            )
            proof = [bytes(h) for h in got.hashes]
        try:
            signature = witness.observe(new, proof)
        except WitnessError:
            raise
        except CryptoError as exc:  # bad signature on the head: the coordinator served something unsigned
            raise LedgerAlarm(f"tree head rejected: {exc.message}", where="ledger witness") from None
        self.stub.AddCosignature(
            ledger_pb2.AddCosignatureRequest(head=head_to_pb(new), signature=signature), timeout=self.timeout
        )
        log.debug("ledger head %d verified and cosigned", new.size)

    def maybe_check(self) -> None:
        """:meth:`check` at most every ``interval`` seconds; a standing alarm raises every time.

        Errors that do not prove misbehaviour (coordinator without a ledger
        service, a refused cosignature) are logged and skipped; an unreachable
        coordinator raises ``grpc.RpcError`` like any other call.
        """
        self._raise_standing()
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        try:
            self.check()
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise
            if not self._warned or code != grpc.StatusCode.UNIMPLEMENTED:
                log.warning(
                    "ledger witness check skipped: %s", exc.details() if hasattr(exc, "details") else exc
                )
                self._warned = True
        except WitnessError:
            raise
        except FedgovError as exc:
            log.warning("ledger witness check skipped: %s", exc)
