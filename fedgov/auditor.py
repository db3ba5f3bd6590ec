"""The auditor's SDK: the coordinator's ledger read over mutual TLS, every answer checked.

:class:`LedgerClient` is what ``fedgov ledger bundle`` and the console's
Ledger and Points pages use (no page has logic of its own):

* :meth:`LedgerClient.log_key` accepts the log key only with the
  coordinator's endorsement verified against the kit's federation CA (or
  equal to a pinned key);
* :meth:`LedgerClient.prove_entry` / :meth:`LedgerClient.prove_consistency`
  fetch an RFC 9162 proof and check it against a head whose signature they
  check, returning the list of what was checked;
* :meth:`LedgerClient.bundle` builds one job's evidence bundle
  (:mod:`fedgov.ledger.bundle`); :func:`points_view` turns CA-checked facts
  into points, budget shares and quality over time.

Filtered pages (:meth:`LedgerClient.query`) come from the coordinator's
index and are not evidence by themselves; what the caller relies on it proves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedgov.errors import CryptoError
from fedgov.ledger import bundle as _bundle
from fedgov.ledger import merkle
from fedgov.ledger.entries import FACT_TYPES, Entry, EntryError, parse_entry
from fedgov.ledger.facts import check_facts
from fedgov.ledger.log import SignedTreeHead, public_key_bytes
from fedgov.ledger.points import PointsRules, compute_points, points_report

__all__ = [
    "POINTS_QUERY_TYPES",
    "LedgerClient",
    "Proved",
    "key_statement_dict",
    "points_view",
    "prove_consistency",
    "prove_inclusion",
    "resolve_log_key",
]

#: entry types :func:`points_view` reads (points, facts' keys, quality)
POINTS_QUERY_TYPES = (
    "node_registered",
    "node_key",
    "dataset_published",
    "job_submitted",
    "job_approved",
    "contribution",
    "model_contribution",
    "job_completed",
    "points_rules",
    "points_awarded",
)


def key_statement_dict(msg: Any) -> dict[str, str]:
    """A ``LogKey`` message as the JSON the evidence bundle carries (hex key and endorsement, PEM)."""
    return {
        "public_key": bytes(msg.public_key).hex(),
        "endorsement": bytes(msg.endorsement).hex(),
        "coordinator_cert_pem": bytes(msg.coordinator_cert_pem).decode("ascii"),
    }


def resolve_log_key(statement: Mapping[str, str], ca: x509.Certificate) -> Ed25519PublicKey:
    """The log key of a bundle's ``log_key`` statement if the CA-certified coordinator endorsed it."""
    from fedgov.node.witness import verify_log_key
    from fedgov.v1 import ledger_pb2

    try:
        msg = ledger_pb2.LogKey(
            public_key=bytes.fromhex(statement["public_key"]),
            endorsement=bytes.fromhex(statement.get("endorsement", "")),
            coordinator_cert_pem=statement.get("coordinator_cert_pem", "").encode("ascii"),
        )
    except (KeyError, ValueError, AttributeError) as exc:
        raise CryptoError(f"malformed log key statement: {exc}", where="ledger key") from None
    if not msg.endorsement:
        raise CryptoError("the bundle carries no endorsement of its log key; pin it with --trusted-key",
                          where="ledger key")
    return verify_log_key(msg, ca)


@dataclass(frozen=True)
class Proved:
    """Outcome of a proof check: ``ok``, the checks (``(what, ok, detail)``) and the problem, if any."""

    ok: bool
    checks: list[tuple[str, bool, str]]
    problem: str = ""


class LedgerClient:
    """Read the coordinator's ledger as the kit's person; checks heads and proofs it hands out."""

    def __init__(self, kit: str | Path, coordinator: str, *, trusted_key: Ed25519PublicKey | None = None) -> None:
        from fedgov.transport.tls import TlsMaterial, secure_channel
        from fedgov.v1 import ledger_pb2_grpc

        material = TlsMaterial.from_kit(Path(kit))
        self.ca = x509.load_pem_x509_certificate(material.ca)
        self._channel: Any = secure_channel(material, coordinator)
        self._stub = ledger_pb2_grpc.LedgerStub(self._channel)
        self._pinned = trusted_key
        self._key: Ed25519PublicKey | None = None
        self._statement: dict[str, str] | None = None

    @classmethod
    def over(cls, channel: Any, ca_pem: bytes, *, trusted_key: Ed25519PublicKey | None = None) -> LedgerClient:
        """A client on an existing mTLS ``channel`` (the console shares its SDK client's); not closed by us."""
        from fedgov.v1 import ledger_pb2_grpc

        self = cls.__new__(cls)
        self.ca = x509.load_pem_x509_certificate(ca_pem)
        self._channel = None
        self._stub = ledger_pb2_grpc.LedgerStub(channel)
        self._pinned = trusted_key
        self._key = None
        self._statement = None
        return self

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, name: str, request: Any, timeout: float = 60) -> Any:
        import grpc

        from fedgov.transport.rpc import describe, with_retry

        fn = getattr(self._stub, name)
        try:
            return with_retry(lambda: fn(request, timeout=timeout), patience=15)
        except grpc.RpcError as exc:
            raise describe(exc) from None

    # ----------------------------------------------------------------- key/heads

    def head(self) -> SignedTreeHead:
        """The latest signed head, its signature checked with the endorsed (or pinned) log key."""
        from fedgov.node.witness import head_from_pb, verify_log_key
        from fedgov.v1 import ledger_pb2

        reply = self._call("GetHead", ledger_pb2.GetHeadRequest())
        key = verify_log_key(reply.key, self.ca)
        if self._pinned is not None and public_key_bytes(self._pinned) != public_key_bytes(key):
            raise CryptoError("the coordinator's log key is not the pinned one", where="ledger key")
        self._key, self._statement = key, key_statement_dict(reply.key)
        sth = head_from_pb(reply.head)
        sth.verify(key)
        return sth

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The log key (endorsement checked against the CA on first use)."""
        if self._key is None:
            self.head()
        assert self._key is not None
        return self._key

    @property
    def key_statement(self) -> dict[str, str]:
        if self._statement is None:
            self.head()
        assert self._statement is not None
        return self._statement

    def heads_page(self, *, before_ts: int | None = None, limit: int = 50) -> list[SignedTreeHead]:
        """Signed heads newest first (signatures not yet checked: see :meth:`check_head`)."""
        from fedgov.node.witness import head_from_pb
        from fedgov.v1 import ledger_pb2

        reply = self._call("ListHeads", ledger_pb2.ListHeadsRequest(before_ts=before_ts or 0, limit=limit))
        return [head_from_pb(h) for h in reply.heads]

    def check_head(self, sth: SignedTreeHead) -> bool:
        """True iff the log key signed ``sth``."""
        try:
            sth.verify(self.public_key)
        except CryptoError:
            return False
        return True

    def cosignatures(self, *, latest: bool = False, size: int = 0) -> list[tuple[str, SignedTreeHead, bytes]]:
        """Stored cosignatures ``(witness, head, signature)`` (unchecked: the bundle check checks them)."""
        from fedgov.node.witness import head_from_pb
        from fedgov.v1 import ledger_pb2

        reply = self._call("GetCosignatures", ledger_pb2.GetCosignaturesRequest(size=size, latest=latest))
        return [(c.witness, head_from_pb(c.head), bytes(c.signature)) for c in reply.cosignatures]

    # ------------------------------------------------------------------- entries

    def query(
        self,
        *,
        types: Sequence[str] = (),
        node: str | None = None,
        job: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        before: int | None = None,
        limit: int = 50,
        ascending: bool = False,
    ) -> tuple[list[tuple[int, bytes]], int | None, int]:
        """One page ``(rows, next cursor, log size)`` of the coordinator's filtered index (see module doc)."""
        from fedgov.v1 import ledger_pb2

        reply = self._call("QueryEntries", ledger_pb2.QueryEntriesRequest(
            types=list(types), node=node or "", job=job or "", since_ms=since_ms or 0, until_ms=until_ms or 0,
            before=before or 0, has_before=before is not None, limit=limit, ascending=ascending,
        ))
        rows = [(int(e.index), bytes(e.data)) for e in reply.entries]
        return rows, (int(reply.next) if reply.has_next else None), int(reply.size)

    def query_all(self, **filters: Any) -> list[tuple[int, bytes]]:
        """Every matching ``(index, bytes)`` in log order."""
        out: list[tuple[int, bytes]] = []
        cursor: int | None = None
        while True:
            page, cursor, _ = self.query(**filters, before=cursor, limit=10_000, ascending=True)
            out.extend(page)
            if cursor is None:
                return out

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 PATH (unchecked; :meth:`prove_entry` checks)."""
        return self._inclusion(index, size)[1]

    def _inclusion(self, index: int, size: int | None) -> tuple[bytes, list[bytes]]:
        from fedgov.v1 import ledger_pb2

        reply = self._call("GetInclusionProof", ledger_pb2.InclusionProofRequest(index=index, size=size or 0))
        return bytes(reply.entry), [bytes(h) for h in reply.hashes]

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 PROOF (unchecked; :meth:`prove_consistency` checks)."""
        from fedgov.v1 import ledger_pb2

        reply = self._call("GetConsistencyProof",
                           ledger_pb2.ConsistencyProofRequest(old_size=old_size, new_size=new_size or 0))
        return [bytes(h) for h in reply.hashes]

    # -------------------------------------------------------------------- proofs

    def prove_entry(self, index: int, head: SignedTreeHead | None = None) -> tuple[bytes, Proved]:
        """Entry ``index``'s bytes and the check that it is a leaf of ``head`` (default: the latest)."""
        sth = head or self.head()
        data, path = self._inclusion(index, sth.size)
        return data, prove_inclusion(self.public_key, sth, index, data, path)

    def prove_consistency(self, old: SignedTreeHead, new: SignedTreeHead) -> Proved:
        """Check that ``new`` extends ``old`` (both signatures and the RFC 9162 proof)."""
        lo, hi = (old, new) if old.size <= new.size else (new, old)
        return prove_consistency(self.public_key, lo, hi, self.consistency_proof(lo.size, hi.size))

    def bundle(self, job: str, **kw: Any) -> dict[str, Any]:
        """The evidence bundle of ``job`` (:func:`fedgov.ledger.bundle.build_bundle`)."""
        return _bundle.build_bundle(self, job, self.cosignatures(), key_statement=self.key_statement, **kw)

    def check_bundle(self, doc: Mapping[str, Any], **kw: Any) -> _bundle.BundleReport:
        """Check a bundle as ``fedgov ledger verify --bundle`` does, against this kit's CA."""
        return _bundle.check_bundle(doc, ca_cert=self.ca, log_key=self._pinned,
                                    resolve_log_key=lambda s: resolve_log_key(s, self.ca), **kw)


def prove_inclusion(
    key: Ed25519PublicKey, sth: SignedTreeHead, index: int, data: bytes, path: Sequence[bytes]
) -> Proved:
    """Check head signature and inclusion of ``data`` at ``index``; every step listed."""
    checks: list[tuple[str, bool, str]] = []
    try:
        sth.verify(key)
        checks.append((f"head {sth.size}", True, "log signature verifies with the endorsed log key"))
    except CryptoError as exc:
        checks.append((f"head {sth.size}", False, exc.message))
        return Proved(False, checks, f"head {sth.size}: {exc.message}")
    leaf = merkle.leaf_hash(data)
    checks.append((f"entry {index}", True, f"leaf hash SHA-256(0x00 || entry) = {leaf.hex()[:16]}…"))
    try:
        merkle.verify_inclusion(leaf, index, sth.size, path, sth.root)
    except merkle.ProofError as exc:
        checks.append((f"entry {index}", False, exc.message))
        return Proved(False, checks, f"entry {index}: {exc.message}")
    checks.append((f"entry {index}", True,
                   f"RFC 9162 inclusion proof: {len(path)} hashes lead to root {sth.root.hex()[:16]}…"))
    try:
        parse_entry(data)
    except EntryError as exc:
        checks.append((f"entry {index}", False, str(exc)))
        return Proved(False, checks, f"entry {index}: {exc}")
    return Proved(True, checks)


def prove_consistency(
    key: Ed25519PublicKey, old: SignedTreeHead, new: SignedTreeHead, proof: Sequence[bytes]
) -> Proved:
    """Check both heads' signatures and the RFC 9162 consistency proof from ``old`` to ``new``."""
    checks: list[tuple[str, bool, str]] = []
    for sth in (old, new):
        try:
            sth.verify(key)
            checks.append((f"head {sth.size}", True, "log signature verifies"))
        except CryptoError as exc:
            checks.append((f"head {sth.size}", False, exc.message))
            return Proved(False, checks, f"head {sth.size}: {exc.message}")
    try:
        merkle.verify_consistency(old.size, new.size, old.root, new.root, proof)
    except merkle.ProofError as exc:
        checks.append((f"head {new.size}", False, exc.message))
        return Proved(False, checks, f"head {new.size} does not extend head {old.size}: {exc.message}")
    checks.append((f"head {new.size}", True,
                   f"RFC 9162 consistency proof: {len(proof)} hashes, head {new.size} extends head {old.size}"))
    return Proved(True, checks)


# -------------------------------------------------------------------- points


def points_view(
    indexed: Iterable[tuple[int, bytes]],
    ca: x509.Certificate,
    *,
    period: str = "all",
    budget: Decimal | int | str = 0,
) -> dict[str, Any]:
    """Points, budget shares and quality over time from ``(index, bytes)`` entries, as ``ledger points``.

    Only department facts :func:`~fedgov.ledger.facts.check_facts` accepts
    count; every figure carries the log indices behind it. Pure; costs one
    Ed25519 verification per fact.
    """
    pairs: list[tuple[int, Entry]] = []
    invalid: list[int] = []
    for i, b in indexed:
        try:
            pairs.append((i, parse_entry(b)))
        except EntryError:
            invalid.append(i)
    check = check_facts(pairs, ca)
    ok = set(check.accepted)
    kept = [(i, e) for i, e in pairs if e.type not in FACT_TYPES or i in ok]
    entries = [e for _, e in kept]
    rules: PointsRules | None = None
    for e in entries:
        if e.type == "points_rules":
            rules = PointsRules.from_dict(e["rules"])
    rules = rules or PointsRules()
    rows = points_report(entries, period, Decimal(str(budget)), rules)
    detail = compute_points(entries, period, rules, indices=[i for i, _ in kept])
    quality: dict[str, list[dict[str, Any]]] = {}
    for i, e in kept:
        if e.type == "dataset_published":
            quality.setdefault(f"{e['node']}/{e['dataset']}", []).append(
                {"index": i, "ts": e.ts, "scores": dict(e["quality"])})
    return {
        "period": period,
        "rules": {"version": rules.version, "digest": rules.digest()},
        "rows": [r.to_dict() for r in rows],
        "detail": {
            n: {"terms": b.terms, "sources": b.sources, "jobs": b.jobs}
            for n, b in detail.items() if any(r.dept == n for r in rows)
        },
        "quality": quality,
        "facts": check.to_dict(),
        "not_counted": list(check.problems),
        "invalid": invalid,
    }
