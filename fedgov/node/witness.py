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
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedgov.crypto.envelope import ReplayedEnvelope
from fedgov.crypto.pki import verify_certificate
from fedgov.errors import ConfigError, CryptoError, FedgovError
from fedgov.ledger import merkle
from fedgov.ledger.entries import now_ms, parse_entry
from fedgov.ledger.facts import department
from fedgov.ledger.log import SignedTreeHead, cosignature_message, public_key_bytes
from fedgov.ledger.witness import LogForked, LogRewritten, Witness, WitnessError, majority, quorum_head
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
#: the node side of witnessing: alarms, quorum head, gossip, starvation clock
NODE_FILE = "ledger-node.json"
#: envelope job name of head gossip between nodes
GOSSIP_JOB = "ledger-gossip"
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
    # a temporary name of its own (mkstemp: 0600, O_EXCL), so two writers never share one
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, sort_keys=True, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class WitnessSettings:
    """The ``[ledger]`` table of node.toml (all optional).

    ``witness_interval`` seconds between checks (default 10); ``starve_after``
    seconds without a new tree head before the starvation alarm (default 900);
    ``witnesses``: the federation's departments whose cosignatures count (the
    *n*; default: the nodes the coordinator lists — its word, so set it);
    ``quorum``: cosignatures a head needs to count (the *k*; default a
    majority of *n*); ``gossip``: compare heads with peers (default true).
    """

    witness_interval: float = 10.0
    starve_after: float = 900.0
    witnesses: tuple[str, ...] = ()
    quorum: int = 0
    gossip: bool = True

    @classmethod
    def from_table(cls, table: Any, where: str) -> WitnessSettings:
        """Parse the table; :class:`ConfigError` naming the key on a bad value."""
        if not isinstance(table, dict):
            raise ConfigError("[ledger] must be a table", where=where)
        known = ("witness_interval", "starve_after", "witnesses", "quorum", "gossip")
        for key in table:
            if key not in known:
                raise ConfigError(f"unknown key {key!r} (expected one of {', '.join(known)})", where=where)

        def seconds(key: str, default: float, lo: float, hi: float) -> float:
            v = table.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                raise ConfigError(
                    f"{key!r} must be a number of seconds in [{lo}, {hi}], got {v!r}", where=where
                )
            return float(v)

        interval = seconds("witness_interval", 10.0, 0.2, 3600.0)
        starve = seconds("starve_after", 900.0, 1.0, 7 * 86400.0)
        if starve <= interval:
            raise ConfigError("'starve_after' must be longer than 'witness_interval'", where=where)
        names = table.get("witnesses", [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ConfigError("'witnesses' must be a list of department names", where=where)
        quorum = table.get("quorum", 0)
        if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 0:
            raise ConfigError(f"'quorum' must be a non-negative integer, got {quorum!r}", where=where)
        if names and quorum > len(names):
            raise ConfigError(f"'quorum' {quorum} exceeds the {len(names)} witnesses listed", where=where)
        gossip = table.get("gossip", True)
        if not isinstance(gossip, bool):
            raise ConfigError("'gossip' must be true or false", where=where)
        return cls(interval, starve, tuple(sorted(set(names))), quorum, gossip)

    def k(self, n: int) -> int:
        """Cosignatures a head needs among ``n`` witnesses."""
        return self.quorum or majority(n)


#: alarm kinds that halt the node (proof the coordinator forked or rewrote the log)
HALTING = frozenset({"forked", "rewritten", "split-view", "log-key"})


class _Increasing:
    """Gossip sequence rule: each peer's envelopes carry strictly increasing ``seq`` (a timestamp)."""

    def __init__(self, last: dict[str, int]) -> None:
        self.last = last

    def accept(self, header: Any) -> None:
        if header.seq <= self.last.get(header.sender, -1):
            raise ReplayedEnvelope("gossip already seen", where=header.where())
        self.last[header.sender] = header.seq


class NodeWitness:
    """Witness of the coordinator's ledger, run by a node (see the module docstring).

    ``stub`` is a ``fedgov.v1.ledger_pb2_grpc.LedgerStub`` on the node's mTLS
    channel; ``log_public_key`` may be ``None``, in which case the key is taken
    from ``kit_dir/ledger.pub``, else the pinned state, else the coordinator's
    endorsement verified against ``ca_cert`` (trust on first use, then pinned).
    ``sign`` is the node's Ed25519 signing callable (``NodeKeys.sign``).
    ``keys`` (the node's :class:`~fedgov.crypto.keys.NodeKeys`), ``peers`` (a
    callable name → verified :class:`~fedgov.crypto.keys.PeerKeys`, e.g. a
    :class:`~fedgov.node.channel.PeerDirectory`) and ``registry`` enable the
    quorum count, gossip and own-fact checks; without them the witness only
    checks consistency and cosigns (as before).
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
        interval: float | None = None,
        timeout: float = 10.0,
        settings: WitnessSettings | None = None,
        keys: Any = None,
        peers: Callable[[str], Any] | None = None,
        registry: Any = None,
    ) -> None:
        self.state_path = Path(state_dir) / STATE_FILE
        self.facts_path = Path(state_dir) / FACTS_FILE
        self.node_path = Path(state_dir) / NODE_FILE
        self.stub = stub
        self._sign = sign
        self.ca_cert = ca_cert
        self.settings = settings or WitnessSettings()
        self.interval = self.settings.witness_interval if interval is None else interval
        self.timeout = timeout
        self.keys = keys
        self.peers = peers
        self.registry = registry
        self._pinned = log_public_key
        if self._pinned is None and kit_dir is not None:
            self._pinned = load_pinned_key(Path(kit_dir) / PINNED_KEY_FILE)
        self._witness: Witness | None = None
        self._next = 0.0
        #: job threads (``expect``) and the witness loop read-modify-write the same files
        self._lock = threading.RLock()
        self._state = self._load_node()

    # ------------------------------------------------------------ node state

    def _load_node(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.node_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            doc = {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable witness state: {exc}", where=str(self.node_path)) from None
        if not isinstance(doc, dict):
            doc = {}
        doc.setdefault("alarms", [])
        doc.setdefault("gossip_seq", {})
        doc.setdefault("peers", {})
        if "last_new_head_ms" not in doc:
            doc["last_new_head_ms"] = now_ms()  # a fresh witness gets a full interval
        return doc

    def _save_node(self) -> None:
        with self._lock:
            write_private_json(self.node_path, self._state)

    def _alarm(self, kind: str, message: str, **evidence: Any) -> None:
        """Persist an alarm record and log it at ERROR (``ALARM: ...``)."""
        self._state["alarms"].append({"kind": kind, "message": message, "at": now_ms(), "evidence": evidence})
        del self._state["alarms"][:-100]
        self._save_node()
        log.error("ALARM (%s): %s", kind, message)

    def _error(self, message: str) -> None:
        """A witness step failed without proving misbehaviour: ERROR log, persisted as ``last_error``."""
        self._state["last_error"] = {"message": message, "at": now_ms()}
        self._save_node()
        log.error("ledger witness: %s", message)

    @property
    def alarms(self) -> list[dict[str, Any]]:
        """Every alarm this node raised (newest last): kind, message, time (ms), evidence."""
        return list(self._state["alarms"])

    @property
    def quorum(self) -> dict[str, Any] | None:
        """The latest head that counts (cosigned by k of n departments), with its cosigners."""
        return self._state.get("quorum_head")

    def status(self) -> dict[str, Any]:
        """What ``fedgov node witness`` shows: heads, quorum, alarms, pending own facts, last error."""
        head = self.last_head or (
            SignedTreeHead.from_dict(h) if (h := _read_json(self.state_path).get("head")) else None
        )
        return {
            "verified_head": head.to_dict() if head else None,
            "quorum_head": self.quorum,
            "halted": self.alarm,
            "alarms": self.alarms,
            "starving": bool(self._state.get("starving")),
            "last_new_head_ms": self._state.get("last_new_head_ms"),
            "last_error": self._state.get("last_error"),
            "pending_facts": len(self.pending_facts),
            "facts_included": self._facts().get("included", 0),
            "peers": self._state.get("peers", {}),
        }

    def _standing(self) -> tuple[str, str] | None:
        """``(kind, message)`` of the persisted alarm, if any."""
        alarm = _read_json(self.state_path).get("alarm")
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
        with self._lock:
            doc = self._facts()
            digest = hashlib.sha256(fact).hexdigest()
            signed = doc.setdefault("signed", [])
            if digest not in signed:
                signed.append(digest)
                del signed[:-100_000]
            if any(p.get("sha256") == digest for p in doc["pending"]) or digest in doc.get(
                "included_digests", []
            ):
                self._save_facts(doc)
                return
            head = self.last_head or (
                SignedTreeHead.from_dict(h) if (h := _read_json(self.state_path).get("head")) else None
            )
            doc["pending"].append(
                {
                    "sha256": digest,
                    "entry": fact.decode("utf-8"),
                    "since": now_ms(),
                    "from_size": head.size if head is not None else 0,
                }
            )
            self._save_facts(doc)

    def republish(self, key: str, content: Any, build: Callable[[], bytes]) -> bytes:
        """The fact this node signed for ``key`` if ``content`` is unchanged, else ``build()`` (expected).

        A node re-sends the same bytes on every reconnect (the coordinator logs
        a dataset only when it changed), so its inclusion check never waits
        for a fact that was rightly not logged again.
        """
        with self._lock:
            doc = self._facts()
            stamp = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode("utf-8")).hexdigest()
            old = doc.setdefault("published", {}).get(key)
            if isinstance(old, dict) and old.get("content") == stamp:
                return str(old["fact"]).encode("utf-8")
            fact = build()
            doc["published"][key] = {"content": stamp, "fact": fact.decode("utf-8")}
            self._save_facts(doc)
            self.expect(fact)
            return fact

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
        """One witness round: verify and cosign the latest head, count the quorum, check own facts.

        Raises a :class:`WitnessError` (``LogRewritten``, ``LogForked``,
        :class:`LedgerAlarm`) when the node must stop, and
        :class:`~fedgov.errors.FedgovError` / ``grpc.RpcError`` for transport problems.
        """
        self._raise_standing()
        max_age = int(self.settings.starve_after * 1000 / 3)
        reply = self.stub.GetHead(ledger_pb2.GetHeadRequest(max_age_ms=max_age), timeout=self.timeout)
        try:
            witness = self._resolve_key(reply)
        except LedgerAlarm as exc:
            self._alarm("log-key", exc.message)
            raise
        new = head_from_pb(reply.head)
        old = witness.last_head
        if old is None or old != new:
            proof: list[bytes] = []
            if old is not None and 0 < old.size < new.size:
                got = self.stub.GetConsistencyProof(
                    ledger_pb2.ConsistencyProofRequest(old_size=old.size, new_size=new.size),
                    timeout=self.timeout,
                )
                proof = [bytes(h) for h in got.hashes]
            try:
                signature = witness.observe(new, proof)
            except WitnessError as exc:
                if witness.alarm is not None:
                    self._alarm(
                        "rewritten" if isinstance(exc, LogRewritten) else "forked",
                        exc.message,
                        verified=old.to_dict() if old else None,
                        offered=new.to_dict(),
                    )
                raise
            except CryptoError as exc:  # bad signature on the head: the coordinator served something unsigned
                raise LedgerAlarm(f"tree head rejected: {exc.message}", where="ledger witness") from None
            if old is None or new.timestamp > old.timestamp or new.size > old.size:
                self._fresh_head()
            self.stub.AddCosignature(
                ledger_pb2.AddCosignatureRequest(head=head_to_pb(new), signature=signature),
                timeout=self.timeout,
            )
            log.debug("ledger head %d verified and cosigned", new.size)
        if self.peers is not None:
            self._count_quorum(witness)
            self._check_own_facts(witness)

    def _fresh_head(self) -> None:
        self._state["last_new_head_ms"] = now_ms()
        if self._state.get("starving"):
            self._state["starving"] = False
            log.warning("ledger witness: tree heads arrive again (starvation ended)")
        self._save_node()

    # ---------------------------------------------------------------- quorum

    def _witness_names(self) -> list[str]:
        if self.settings.witnesses:
            return list(self.settings.witnesses)
        if self.registry is None:
            return []
        from fedgov.v1 import registry_pb2

        reply = self.registry.ListNodes(registry_pb2.ListNodesRequest(), timeout=self.timeout)
        return sorted({n.name for n in reply.nodes})

    def _consistent(self, mine: SignedTreeHead, theirs: SignedTreeHead) -> bool:
        """Whether another department's log-signed head and this node's head are one history.

        :meth:`Witness.check_peer` decides, with the RFC 9162 consistency proof
        between the two (from the coordinator; equal sizes need equal roots).
        A ``False`` here is evidence of a split view (the caller raises it).
        """
        assert self._witness is not None and self._witness.last_head == mine
        small, big = (mine, theirs) if mine.size <= theirs.size else (theirs, mine)
        proof: list[bytes] = []
        if 0 < small.size < big.size:
            got = self.stub.GetConsistencyProof(
                ledger_pb2.ConsistencyProofRequest(old_size=small.size, new_size=big.size),
                timeout=self.timeout,
            )
            proof = [bytes(h) for h in got.hashes]
        try:
            self._witness.check_peer(theirs, proof)
        except LogForked:
            return False
        return True

    def _count_quorum(self, witness: Witness) -> None:
        """The latest head cosigned by k of n departments, each cosignature checked and consistent with mine.

        A valid cosignature by another department on a head that is *not*
        consistent with this node's head is proof of a split view: alarm, halt.
        """
        mine = witness.last_head
        if mine is None:
            return
        names = self._witness_names()
        k = self.settings.k(len(names))
        reply = self.stub.GetCosignatures(
            ledger_pb2.GetCosignaturesRequest(latest=True), timeout=self.timeout
        )
        latest: dict[str, SignedTreeHead] = {}
        for c in reply.cosignatures:
            name, sth = c.witness, head_from_pb(c.head)
            if name not in names or (name in latest and latest[name].size >= sth.size):
                continue
            try:
                sth.verify(witness.log_key)
                self.peers(name).verify(cosignature_message(sth), bytes(c.signature), what="cosignature")
            except FedgovError as exc:
                log.debug("cosignature by %s of head %d not counted: %s", name, sth.size, exc)
                continue  # a cosignature the coordinator made up counts for nothing
            latest[name] = sth
        vouched: dict[str, SignedTreeHead] = {}
        for name, sth in latest.items():
            if self._consistent(mine, sth):
                vouched[name] = sth
            else:
                self._split(name, sth, mine, "its cosigned head")
        got = quorum_head(vouched, k)
        if got is None:
            return
        head, cosigners = got
        self._state["quorum_head"] = {**head.to_dict(), "cosigners": cosigners, "k": k, "n": len(names)}
        self._save_node()

    def _split(self, peer: str, theirs: SignedTreeHead, mine: SignedTreeHead, via: str) -> None:
        msg = (
            f"split view: {peer} ({via}) holds a log-signed head of size {theirs.size} "
            f"(root {theirs.root.hex()[:16]}…) that is not one history with this node's head of size "
            f"{mine.size} (root {mine.root.hex()[:16]}…): the coordinator shows departments different logs"
        )
        self._alarm("split-view", msg, peer=peer, theirs=theirs.to_dict(), mine=mine.to_dict())
        assert self._witness is not None
        self._witness._alarm = {  # halt, with the evidence, like any fork
            "kind": "forked",
            "message": msg,
            "verified_head": mine.to_dict(),
            "offending_head": theirs.to_dict(),
        }
        self._witness._save()
        raise LogForked(msg, where="ledger witness")

    # ------------------------------------------------------ own facts included

    def _check_own_facts(self, witness: Witness) -> None:
        """Each fact this node signed must appear, byte for byte, under a head that counts (the quorum head).

        Inclusion is proved with an RFC 9162 proof against that head. A fact
        that legitimately never enters the log is dropped when the log shows
        why: its job ended ``failed``/``cancelled``/``rejected`` (a
        contribution is logged only for a job that succeeded; a decision only
        while the job awaited it). A fact still missing when its job
        *succeeded*, or after ``starve_after`` (checked once more against the
        whole log), raises a ``withheld-fact`` alarm (once per fact).

        Every new entry under the counted head is also read for facts *about
        this department* that it never signed (the coordinator's own words,
        or a signature by someone holding its key): a ``foreign-fact`` alarm.
        """
        with self._lock:
            doc = self._facts()
        seen = {p["sha256"] for p in doc["pending"]}
        pending = doc["pending"]
        q = self.quorum
        if q is not None:
            head = SignedTreeHead.from_dict(q)
            # first count: from the first fact this node signed (nothing about a new node precedes it)
            first = min([head.size, *(int(p.get("from_size", 0)) for p in pending)])
            doc.setdefault("scanned_to", first)
            start = min([int(doc["scanned_to"]), *(int(p.get("from_size", 0)) for p in pending)])
            pending = self._scan_for_facts(doc, pending, start, head)
            doc["scanned_to"] = max(int(doc["scanned_to"]), head.size)
        if not pending:
            self._save_checked(doc, pending, seen)
            return
        limit = self.settings.starve_after * 1000
        overdue = [p for p in pending if not p.get("alarmed") and now_ms() - int(p["since"]) > limit]
        if overdue and q is not None:  # one last look through the whole log before the alarm
            keep = self._scan_for_facts(doc, overdue, 0, SignedTreeHead.from_dict(q))
            gone = {p["sha256"] for p in overdue} - {p["sha256"] for p in keep}
            pending = [p for p in pending if p["sha256"] not in gone]
            overdue = keep
        late = {p["sha256"] for p in overdue}
        for p in pending:
            if p.get("withheld") or p["sha256"] in late:
                self._withheld(p)
        self._save_checked(doc, pending, seen)

    def _save_checked(self, doc: dict[str, Any], pending: list[dict[str, Any]], seen: set[str]) -> None:
        """Save a check's outcome, keeping facts that job threads signed while it looked (``expect``)."""
        with self._lock:
            now = self._facts()
            pending = pending + [p for p in now["pending"] if p["sha256"] not in seen]
            for key in ("signed", "published"):
                if key in now:
                    doc[key] = now[key]
            doc["pending"] = pending
            self._save_facts(doc)

    def _withheld(self, p: dict[str, Any]) -> None:
        if p.get("alarmed"):
            return
        p["alarmed"] = True
        fact = _read_fact(p["entry"])
        what = fact.get("type", "fact")
        why = p.get("withheld") or (
            f"not in the log under a cosigned head after {self.settings.starve_after:.0f} s"
        )
        self._alarm(
            "withheld-fact",
            f"the {what} this node signed{_about(fact)} is missing: {why} — the coordinator withheld "
            "it or logged other words in its place",
            sha256=p["sha256"],
        )

    def _scan_for_facts(
        self, doc: dict[str, Any], pending: list[dict[str, Any]], start: int, head: SignedTreeHead
    ) -> list[dict[str, Any]]:
        """Look for ``pending`` facts in entries ``[start, head.size)``; return those still pending."""
        want = {p["sha256"]: p for p in pending}
        jobs: dict[str, list[str]] = {}
        for p in pending:
            job = _read_fact(p["entry"]).get("job")
            if isinstance(job, str):
                jobs.setdefault(job, []).append(p["sha256"])
        if start < head.size:
            for e in self.stub.GetEntries(
                ledger_pb2.GetEntriesRequest(start=start, end=head.size), timeout=max(self.timeout, 60)
            ):
                data = bytes(e.data)
                digest = hashlib.sha256(data).hexdigest()
                if e.index >= int(doc.get("scanned_to", head.size)) and digest not in want:
                    self._foreign(doc, data, digest, e.index)
                if digest in want:
                    if self._proves(data, e.index, head):
                        want.pop(digest)
                        doc["included"] = int(doc.get("included", 0)) + 1
                        doc.setdefault("included_digests", []).append(digest)
                        del doc["included_digests"][:-10_000]
                    continue
                if jobs and b'"type":"job_completed"' in data:
                    done = _read_fact(data.decode("utf-8", "replace"))
                    for d in jobs.pop(str(done.get("job")), []):
                        if d not in want:
                            continue
                        if done.get("outcome") == "succeeded":
                            want[d]["withheld"] = (
                                f"its job {done['job']} succeeded (entry {e.index}) without it"
                            )
                        else:
                            want.pop(d)  # never logged, legitimately: the job did not succeed
        return [dict(p, from_size=max(int(p.get("from_size", 0)), head.size)) for p in want.values()]

    def _foreign(self, doc: dict[str, Any], data: bytes, digest: str, index: int) -> None:
        """Alarm on a fact about this department that it did not sign (one entry at ``index``)."""
        if self.keys is None or b'"type":"' not in data or digest in doc.get("signed", []):
            return
        try:
            e = parse_entry(data)
        except FedgovError:
            return
        if department(e) != self.keys.name and e.signer != self.keys.name:
            return
        how = (
            "unsigned — the coordinator's own words"
            if not e.signer
            else f"signed as {e.signer}, not by this node"
        )
        self._alarm(
            "foreign-fact",
            f"entry {index}: a {e.type} about this department that it never signed ({how})",
            entry=index,
            sha256=digest,
        )

    def _proves(self, data: bytes, index: int, head: SignedTreeHead) -> bool:
        got = self.stub.GetInclusionProof(
            ledger_pb2.InclusionProofRequest(index=index, size=head.size), timeout=self.timeout
        )
        try:
            merkle.verify_inclusion(
                merkle.leaf_hash(data), index, head.size, [bytes(h) for h in got.hashes], head.root
            )
        except merkle.ProofError as exc:
            self._alarm(
                "inclusion",
                f"own fact at entry {index} does not prove into the cosigned head of size {head.size} "
                f"({exc.message})",
                entry=index,
            )
            return False
        return True

    # ---------------------------------------------------------------- gossip

    def gossip(self) -> None:
        """Send this node's verified head, sealed and signed, to every peer; check the heads peers sent.

        The coordinator relays the envelopes but can neither read nor alter
        them. A peer's head that is not one history with this node's head
        raises the split-view alarm (:class:`LogForked`, halting).
        """
        from fedgov.crypto.envelope import Header, open_envelope, seal

        if self._witness is None or self.keys is None or self.peers is None:
            return
        mine = self._witness.last_head
        if mine is None:
            return
        me = self.keys.name
        seq = max(now_ms(), int(self._state.get("sent_seq", 0)) + 1)
        self._state["sent_seq"] = seq
        body = json.dumps({"head": mine.to_dict()}, sort_keys=True).encode("utf-8")
        names = self._witness_names()
        for peer in names:
            if peer == me:
                continue
            try:
                env = seal(Header(GOSSIP_JOB, "head", me, peer, seq), body, self.keys, self.peers(peer))
            except FedgovError as exc:
                self._error(f"gossip to {peer} not sent: {exc}")
                continue
            self.stub.SendGossip(ledger_pb2.GossipMessage(recipient=peer, envelope=env), timeout=self.timeout)
        reply = self.stub.GetGossip(ledger_pb2.GetGossipRequest(), timeout=self.timeout)
        tracker = _Increasing(self._state["gossip_seq"])
        for m in reply.messages:
            try:
                header, plain = open_envelope(bytes(m.envelope), self.keys, self.peers, tracker)
            except ReplayedEnvelope:
                continue  # the same latest message again
            except FedgovError as exc:
                self._error(f"gossip from {m.sender or '?'} refused: {exc}")
                continue
            try:
                theirs = SignedTreeHead.from_dict(json.loads(plain)["head"])
                theirs.verify(self._witness.log_key)
            except (ValueError, KeyError, TypeError, FedgovError) as exc:
                self._error(f"gossip from {header.sender}: not a log-signed head ({exc})")
                continue
            self._state["peers"][header.sender] = {
                "size": theirs.size,
                "root": theirs.root.hex(),
                "at": now_ms(),
            }
            if not self._consistent(mine, theirs):
                self._save_node()
                self._split(header.sender, theirs, mine, "by sealed gossip")
        self._save_node()
        self._check_gossip_starvation(names)

    # ------------------------------------------------------------------ loop

    def _check_starvation(self) -> None:
        quiet = (now_ms() - int(self._state["last_new_head_ms"])) / 1000
        if quiet > self.settings.starve_after and not self._state.get("starving"):
            self._state["starving"] = True
            self._alarm(
                "starved",
                f"no new tree head for {quiet:.0f} s (limit {self.settings.starve_after:.0f} s): the coordinator "
                "is withholding heads, so nothing it logs now is witnessed",
                last_new_head_ms=self._state["last_new_head_ms"],
            )

    def _check_gossip_starvation(self, names: list[str]) -> None:
        """Alarm (once per silence) for each peer whose sealed head has not arrived for ``starve_after``.

        Dropping gossip is how a coordinator would keep a split view hidden;
        it cannot tell which envelope would reveal one, so it has to drop them
        all — which this makes visible. A peer that is down looks the same.
        """
        if self.keys is None:
            return
        now = now_ms()
        since = self._state.setdefault("gossip_since", now)
        silent = self._state.setdefault("gossip_silent", [])
        for peer in names:
            if peer == self.keys.name:
                continue
            last = int(self._state["peers"].get(peer, {}).get("at", since))
            quiet = (now - last) / 1000
            if quiet > self.settings.starve_after and peer not in silent:
                silent.append(peer)
                self._alarm(
                    "gossip-starved",
                    f"no sealed head from {peer} for {quiet:.0f} s (limit {self.settings.starve_after:.0f} s): "
                    "the coordinator drops the departments' gossip (or the peer is down), so a split view "
                    "would go unseen",
                    peer=peer,
                )
            elif quiet <= self.settings.starve_after and peer in silent:
                silent.remove(peer)
                log.warning("ledger witness: gossip from %s arrives again", peer)
        self._save_node()

    def maybe_check(self) -> None:
        """:meth:`check` and :meth:`gossip` at most every ``interval`` seconds; a standing alarm raises every time.

        An unreachable coordinator raises ``grpc.RpcError`` (``UNAVAILABLE``)
        like any other call. Every other failure — a refused cosignature, an
        unimplemented ledger service, a malformed reply — is logged at ERROR
        and kept as ``last_error``; since no new head is verified meanwhile,
        the starvation alarm follows after ``starve_after``.
        """
        self._raise_standing()
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        for step in (self.check, self.gossip) if self.settings.gossip else (self.check,):
            try:
                step()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code == grpc.StatusCode.UNAVAILABLE:
                    raise
                self._error(f"{step.__name__} failed: {exc.details() if hasattr(exc, 'details') else exc}")
            except WitnessError:
                raise
            except FedgovError as exc:
                self._error(f"{step.__name__} failed: {exc}")
            except (
                ValueError,
                KeyError,
                TypeError,
                OSError,
            ) as exc:  # a malformed reply or state: never kill the node
                log.exception("ledger witness %s: unexpected error", step.__name__)
                self._error(f"{step.__name__} failed: {type(exc).__name__}: {exc}")
        self._check_starvation()


def _read_fact(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _about(fact: dict[str, Any]) -> str:
    parts = [f"{k} {fact[k]}" for k in ("job", "dataset") if isinstance(fact.get(k), str)]
    return f" ({', '.join(parts)})" if parts else ""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def print_status(config: Any, *, as_json: bool = False) -> None:
    """``fedgov node witness``: the witness's heads, quorum, alarms and own facts (read from the state files).

    Exits with :class:`WitnessError` (status 2) while an alarm halts the node.
    """
    nw = NodeWitness(config.state_dir, None, None, lambda _b: b"", settings=config.ledger)
    st = nw.status()
    if as_json:
        print(json.dumps(st, sort_keys=True))
    else:
        head, q = st["verified_head"], st["quorum_head"]
        shown = "none yet" if head is None else f"size {head['size']} at {head['timestamp']}"
        print(f"verified head: {shown}")
        if q:
            print(
                f"counted head:  size {q['size']} cosigned by {', '.join(q['cosigners'])} ({q['k']} of {q['n']})"
            )
        else:
            print("counted head:  none yet (no head has a quorum of cosignatures)")
        print(f"own facts: {st['facts_included']} included, {st['pending_facts']} pending")
        for a in st["alarms"]:
            print(f"ALARM {a['kind']} at {a['at']}: {a['message']}")
        if st["starving"]:
            print("STARVING: no new tree head within starve_after")
        if st["last_error"]:
            print(f"last error: {st['last_error']['message']}")
    if st["halted"]:
        raise WitnessError(f"witness halted: {st['halted']}", where=str(config.state_dir))
