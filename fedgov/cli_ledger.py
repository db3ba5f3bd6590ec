"""``fedgov ledger ...`` (auditors, finance offices) and ``fedgov quality check`` (node operators).

Wired into :func:`fedgov.cli.build_parser` with :func:`add_ledger_parser` and
:func:`add_quality_parser`. Every ledger command reads one **source**:

* ``--db PATH`` — the coordinator's ``ledger.db`` (offline, opened read-only;
  a copy or the live file);
* ``--export PATH`` — a file written by ``fedgov ledger export``;
* otherwise online: ``--kit`` and ``--coordinator`` (or ``FEDGOV_KIT`` /
  ``FEDGOV_COORDINATOR``); the log key is accepted only with the coordinator's
  endorsement verified against the kit's federation CA.

``--trusted-key`` (hex, or a ``ledger.pub`` file obtained out of band) pins
the log key: a source signed by another key fails verification. ``--crl`` (or
the kit's ``crl.pem``, or online the coordinator's list, whichever is newest)
is the federation CA's revocation list: a department fact signed with a key
whose certificate was revoked before the fact's time fails verification; one
signed before the revocation stays valid and is listed as such.
:func:`verify_db` is the library entry point (used by ``fedgov demo``).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedgov.crypto.revocation import RevocationList, load_crl
from fedgov.errors import ConfigError, CryptoError, FedgovError
from fedgov.ledger import merkle
from fedgov.ledger.entries import Entry, EntryError, parse_entry
from fedgov.ledger.facts import FactCheck, KeyRing, accepted_entries, check_facts
from fedgov.ledger.log import (
    EXPORT_FORMAT,
    ExportedLog,
    SignedTreeHead,
    TransparencyLog,
    VerifyReport,
    cosignature_message,
    entry_meta,
    load_export,
    public_key_bytes,
    verify_export,
)
from fedgov.ledger.points import (
    PointsRules,
    points_report,
    render_csv,
    render_json,
    render_png,
    render_table,
    verify_awards,
)
from fedgov.ledger.witness import majority, quorum_head

__all__ = ["add_ledger_parser", "add_quality_parser", "open_readonly", "points_table", "verify_db"]


# ------------------------------------------------------------------ read-only log


class _ReadOnlyLog(TransparencyLog):
    """A :class:`TransparencyLog` opened without the signing key, read-only.

    Reuses the log's own audit (:meth:`TransparencyLog.verify_all`); writing
    methods fail (there is no key and the connection is read-only).
    """

    def __init__(self, path: Path) -> None:  # noqa: D107 - deliberately not calling super().__init__
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError("no such ledger database", where=str(self.path))
        try:
            self._db = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
            row = self._db.execute("SELECT value FROM meta WHERE key='public_key'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"not a ledger database ({exc})", where=str(self.path)) from None
        if row is None:
            raise ConfigError("not a ledger database (no public key)", where=str(self.path))
        self._key = None  # type: ignore[assignment]
        self.public_key = Ed25519PublicKey.from_public_bytes(bytes(row[0]))
        self._lock = threading.RLock()
        self._damaged = None
        self._queue = []
        self._queue_lock = threading.Lock()
        self._committing = False
        self._size = 0
        self._frontier = {}
        self._load_state()
        self._temp_index()

    def _temp_index(self) -> None:
        """A TEMP ``entry_meta`` (in memory) when the file has none or an incomplete one (older logs)."""
        try:
            n = self._db.execute("SELECT COUNT(*) FROM entry_meta").fetchone()[0]
        except sqlite3.OperationalError:
            n = -1
        if n == self._size:
            return
        self._db.execute(
            "CREATE TEMP TABLE entry_meta (idx INTEGER PRIMARY KEY, type TEXT NOT NULL, node TEXT, job TEXT, "
            "ts INTEGER NOT NULL)"
        )
        rows = []
        for idx, data in self.iter_entries():
            try:
                rows.append((idx, *entry_meta(parse_entry(data))))
            except EntryError:
                rows.append((idx, "?", None, None, 0))
        self._db.executemany("INSERT INTO temp.entry_meta VALUES (?, ?, ?, ?, ?)", rows)
        self._db.execute("CREATE INDEX temp.entry_meta_job ON entry_meta (job, idx)")
        self._db.execute("CREATE INDEX temp.entry_meta_type ON entry_meta (type, idx)")


def open_readonly(path: Path) -> TransparencyLog:
    """Open a ``ledger.db`` for reading and auditing (no signing key needed)."""
    return _ReadOnlyLog(Path(path))


def _witness_heads(paths: Sequence[Path]) -> list[SignedTreeHead]:
    heads = []
    for p in paths:
        try:
            doc = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable witness state: {exc}", where=str(p)) from None
        if doc.get("head"):
            heads.append(SignedTreeHead.from_dict(doc["head"]))
    return heads


def _load_key(spec: str | None) -> Ed25519PublicKey | None:
    if not spec:
        return None
    text = spec
    if not all(c in "0123456789abcdefABCDEF" for c in spec.strip()) or len(spec.strip()) != 64:
        try:
            text = Path(spec).read_text(encoding="ascii")
        except OSError as exc:
            raise ConfigError(
                f"--trusted-key: neither 64 hex digits nor a readable file ({exc.strerror})"
            ) from None
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.strip()))
    except ValueError:
        raise ConfigError("--trusted-key: expected 64 hex digits (raw Ed25519 public key)") from None


def verify_db(
    path: Path | str,
    *,
    trusted_key: Ed25519PublicKey | None = None,
    witness_states: Sequence[Path] = (),
    ca_cert: x509.Certificate | Path | str | None = None,
    revocations: RevocationList | Path | str | None = None,
) -> dict[str, Any]:
    """Audit a ``ledger.db`` offline; ``{"size", "verified", "problems", ...}`` (never raises for tampering).

    Recomputes every leaf (an edited row is named by index), the tree, every
    signed head, cosignature and points award (:meth:`TransparencyLog.verify_all`);
    ``witness_states`` (nodes' ``ledger-witness.json``) add the heads those
    witnesses verified, so a rewritten database is caught even with fresh heads.
    With ``ca_cert`` (the federation CA or its PEM file) every department fact
    must carry its department's signature too (``facts`` in the result), as in
    ``fedgov ledger verify``; without it the facts are not checked (``facts``: None).
    ``revocations`` (a verified list, or a ``crl.pem`` checked against ``ca_cert``)
    also rejects facts signed by a key revoked before the fact's time.
    """
    log = open_readonly(Path(path))
    try:
        report = log.verify_all(known_heads=_witness_heads(witness_states))
        out = report.to_dict()
        out["public_key"] = public_key_bytes(log.public_key).hex()
        if trusted_key is not None and public_key_bytes(trusted_key) != public_key_bytes(log.public_key):
            out["problems"].insert(0, "the database is signed by a different log key than the trusted one")
            out["verified"] = False
        out["facts"] = None
        if ca_cert is not None:
            ca = ca_cert if isinstance(ca_cert, x509.Certificate) else x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
            crl = revocations
            if crl is not None and not isinstance(crl, RevocationList):
                crl = load_crl(Path(crl).read_bytes(), ca, where=str(crl))
            src = _Source("db", log.public_key, log.entries(), log.heads(), [], ca=ca, revocations=crl)
            out["problems"] += _check_department_facts(src, out)
            out["verified"] = not out["problems"]
        return out
    finally:
        log.close()


def _iso_ms(ts: int) -> str | None:
    """Epoch milliseconds as ISO-8601 UTC (CLI output never shows raw epoch numbers)."""
    from fedgov.opsview import iso

    return iso(ts, ms=True)


def points_table(
    path: Path | str,
    period: str = "all",
    budget: Decimal | int | str = 0,
    *,
    ca_cert: x509.Certificate | Path | str | None = None,
) -> list[dict[str, Any]]:
    """One row per department (``dept, points, share, budget_amount, rank, ...``) from a ``ledger.db``.

    Computed from the entries under the latest rule set the log published;
    with ``ca_cert`` (the federation CA, or its PEM file) only department-signed
    facts count (:mod:`fedgov.ledger.facts`), as in ``fedgov ledger points``.
    """
    log = open_readonly(Path(path))
    try:
        entries = log.parsed_entries()
    finally:
        log.close()
    if ca_cert is not None:
        ca = ca_cert if isinstance(ca_cert, x509.Certificate) else x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
        entries = accepted_entries(entries, ca)
    rules = _rules_in(entries) or PointsRules()
    return [r.to_dict() for r in points_report(entries, period, Decimal(str(budget)), rules)]


# ----------------------------------------------------------------------- sources


@dataclass
class _Source:
    """Entries, heads and cosignatures from a db, an export or the coordinator."""

    kind: str
    public_key: Ed25519PublicKey
    blobs: list[bytes]
    heads: list[SignedTreeHead]
    cosignatures: list[tuple[str, SignedTreeHead, bytes]]
    log: TransparencyLog | None = None
    witness_keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    #: the federation CA (departments' key bundles are checked against it)
    ca: x509.Certificate | None = None
    #: the CA's revocation list (verified against ``ca``), if one was given or fetched
    revocations: RevocationList | None = None
    #: a list fetched from the coordinator (DER; verified once the CA is known)
    fetched_crl: bytes = b""

    def entries(self) -> list[Entry]:
        return [parse_entry(b) for b in self.blobs]

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


@dataclass
class _Online:
    """A mutual-TLS session with the coordinator's Ledger and Registry services."""

    ca: x509.Certificate
    channel: Any
    ledger: Any
    registry: Any

    @classmethod
    def open(cls, ns: argparse.Namespace) -> _Online:
        from fedgov.transport.tls import TlsMaterial, secure_channel
        from fedgov.v1 import ledger_pb2_grpc, registry_pb2_grpc

        kit = ns.kit or os.environ.get("FEDGOV_KIT")
        coord = ns.coordinator or os.environ.get("FEDGOV_COORDINATOR")
        if not kit or not coord:
            raise FedgovError(
                "give --db PATH or --export PATH (offline), or --kit and --coordinator "
                "(or FEDGOV_KIT and FEDGOV_COORDINATOR)"
            )
        material = TlsMaterial.from_kit(Path(kit))
        channel = secure_channel(material, coord)
        return cls(
            x509.load_pem_x509_certificate(material.ca),
            channel,
            ledger_pb2_grpc.LedgerStub(channel),
            registry_pb2_grpc.RegistryStub(channel),
        )

    def call(self, fn: Any, request: Any, timeout: float = 60) -> Any:
        from fedgov.transport.rpc import with_retry

        return with_retry(lambda: fn(request, timeout=timeout), patience=15)

    def head(self) -> tuple[SignedTreeHead, Ed25519PublicKey]:
        from fedgov.node.witness import head_from_pb, verify_log_key
        from fedgov.v1 import ledger_pb2

        reply = self.call(self.ledger.GetHead, ledger_pb2.GetHeadRequest())
        key = verify_log_key(reply.key, self.ca)
        sth = head_from_pb(reply.head)
        sth.verify(key)
        return sth, key

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        from fedgov.transport.rpc import describe
        from fedgov.v1 import ledger_pb2

        pos = start
        while pos < end:
            got = 0
            try:
                for e in self.ledger.GetEntries(
                    ledger_pb2.GetEntriesRequest(start=pos, end=end), timeout=600
                ):
                    if e.index != pos:
                        raise CryptoError(
                            f"the coordinator sent entry {e.index} where {pos} was due", where="ledger"
                        )
                    yield pos, bytes(e.data)
                    pos += 1
                    got += 1
            except Exception as exc:
                import grpc

                if isinstance(exc, grpc.RpcError):
                    raise describe(exc) from None
                raise
            if not got:
                raise CryptoError(
                    f"the coordinator sent no entries from {pos} (head covers {end})", where="ledger"
                )

    def cosignatures(self) -> list[tuple[str, SignedTreeHead, bytes]]:
        from fedgov.node.witness import head_from_pb
        from fedgov.v1 import ledger_pb2

        reply = self.call(self.ledger.GetCosignatures, ledger_pb2.GetCosignaturesRequest())
        return [(c.witness, head_from_pb(c.head), bytes(c.signature)) for c in reply.cosignatures]

    def witness_keys(self, names: set[str]) -> dict[str, Ed25519PublicKey]:
        from fedgov.crypto.keys import verify_bundle
        from fedgov.v1 import registry_pb2

        keys = {}
        for n in sorted(names):
            try:
                bundle = self.call(
                    self.registry.GetKeyBundle, registry_pb2.GetKeyBundleRequest(node=n)
                ).bundle
                keys[n] = verify_bundle(bundle, self.ca, n).signing_key
            except FedgovError:
                continue  # reported as "witness key unknown" by the caller
        return keys

    def revocations(self) -> bytes:
        """The revocation list the coordinator relays (DER, unverified here; b"" if none)."""
        from fedgov.v1 import registry_pb2

        reply = self.call(self.registry.GetRevocations, registry_pb2.GetRevocationsRequest())
        return bytes(reply.crl_der)

    def close(self) -> None:
        self.channel.close()


def _load_ca(ns: argparse.Namespace) -> x509.Certificate | None:
    """The federation CA from ``--ca`` or ``--kit``/``FEDGOV_KIT`` (``ca.crt``), if given."""
    spec = getattr(ns, "ca", None)
    kit = getattr(ns, "kit", None) or os.environ.get("FEDGOV_KIT")
    path = Path(spec) if spec else (Path(kit) / "ca.crt" if kit else None)
    if path is None:
        return None
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"not a readable CA certificate (PEM): {exc}", where=str(path)) from None


def _source(ns: argparse.Namespace) -> _Source:
    src = _source_raw(ns)
    if src.ca is None:
        src.ca = _load_ca(ns)
    src.revocations = _load_revocations(ns, src)
    return src


def _load_revocations(ns: argparse.Namespace, src: _Source) -> RevocationList | None:
    """The newest revocation list among ``--crl``, the kit's ``crl.pem`` and the coordinator's.

    Each is verified against the federation CA (:func:`load_crl`; a list that
    does not verify is an error naming its file). The coordinator can withhold
    a newer list; give ``--crl`` from the CA's admin to be sure.
    """
    kit = getattr(ns, "kit", None) or os.environ.get("FEDGOV_KIT")
    spec = getattr(ns, "crl", None)
    found: list[tuple[bytes, str]] = []
    if spec:
        try:
            found.append((Path(spec).read_bytes(), str(spec)))
        except OSError as exc:
            raise ConfigError(f"cannot read the revocation list: {exc.strerror}", where=str(spec)) from None
    if kit and (Path(kit) / "crl.pem").is_file():
        found.append(((Path(kit) / "crl.pem").read_bytes(), str(Path(kit) / "crl.pem")))
    if src.fetched_crl:
        found.append((src.fetched_crl, "revocation list from the coordinator"))
    if not found:
        return None
    if src.ca is None:
        raise ConfigError("a revocation list is checked against the federation CA: give --ca CA_CERT (or --kit)")
    lists = [load_crl(data, src.ca, where=where) for data, where in found]
    return max(lists, key=lambda r: r.number)


def _source_raw(ns: argparse.Namespace) -> _Source:
    if getattr(ns, "db", None):
        log = open_readonly(ns.db)
        return _Source(
            "db",
            log.public_key,
            log.entries(),
            log.heads(),
            [(c.witness, c.sth, c.signature) for c in log.cosignatures()],
            log=log,
        )
    if getattr(ns, "export", None):
        exp = load_export(Path(ns.export))
        return _Source("export", exp.public_key, exp.blobs, exp.heads, exp.cosignatures)
    online = _Online.open(ns)
    try:
        sth, key = online.head()
        blobs = [b for _, b in online.entries(0, sth.size)]
        cos = online.cosignatures()
        wkeys = online.witness_keys({w for w, _, _ in cos})
        crl = online.revocations()
    finally:
        online.close()
    return _Source("online", key, blobs, [sth], cos, witness_keys=wkeys, ca=online.ca, fetched_crl=crl)


def _check_trusted(src: _Source, trusted: Ed25519PublicKey | None) -> list[str]:
    if trusted is not None and public_key_bytes(trusted) != public_key_bytes(src.public_key):
        return [f"the {src.kind} is signed by a different log key than the trusted one"]
    return []


def _verify_source(src: _Source, ns: argparse.Namespace) -> dict[str, Any]:
    trusted = _load_key(ns.trusted_key)
    if src.kind == "db":
        assert src.log is not None
        report = src.log.verify_all(
            known_heads=_witness_heads(ns.witness_state or []), witness_keys=src.witness_keys
        )
        out = report.to_dict()
    else:
        exp = ExportedLog(src.public_key, src.heads, src.cosignatures, src.blobs)
        problems = verify_export(exp)
        problems += _check_cosignatures(src)
        known = _witness_heads(ns.witness_state or [])
        if known:
            tree = merkle.MerkleTree()
            for b in src.blobs:
                tree.append(b)
            for sth in known:
                try:
                    sth.verify(src.public_key)
                except CryptoError:
                    problems.append(
                        f"known head of size {sth.size}: signature does not verify with the log key"
                    )
                    continue
                if sth.size > tree.size:
                    problems.append(
                        f"known head of size {sth.size}: the log now holds only {tree.size} entries"
                    )
                elif tree.root(sth.size) != sth.root:
                    problems.append(f"known head of size {sth.size}: root differs — history rewritten")
        out = VerifyReport(
            size=len(src.blobs),
            heads_checked=len(src.heads) + len(known),
            cosignatures_checked=len(src.cosignatures),
            awards_checked=sum(1 for b in src.blobs if b'"type":"points_awarded"' in b),
            problems=problems,
        ).to_dict()
    out["problems"][:0] = _check_trusted(src, trusted)
    out["problems"] += _check_department_facts(src, out)
    out["problems"] += _check_quorum(src, out, ns)
    out["verified"] = not out["problems"]
    out["source"] = src.kind
    out["public_key"] = public_key_bytes(src.public_key).hex()
    return out


def _check_department_facts(src: _Source, out: dict[str, Any]) -> list[str]:
    """Every department fact must carry its department's valid signature (:mod:`fedgov.ledger.facts`).

    Problems name index, kind and department; awards are recomputed from the
    accepted facts alone, so points resting on a forged fact are named too.
    With a revocation list, a fact signed by a key revoked before its time is
    a problem naming the certificate; ``facts.signed_before_revocation`` lists
    the facts signed before their certificate was revoked (still valid).
    """
    entries = _parse_all(src.blobs)
    if src.ca is None:
        out["facts"] = None
        return ["department signatures not checked: give --ca CA_CERT (or --kit) to check them"]
    check = check_facts(((i, e) for i, e in entries.items()), src.ca, src.revocations,
                        head_times=[(h.size, h.timestamp) for h in src.heads])
    out["facts"] = check.to_dict()
    problems = list(check.problems)
    if not check.ok:
        ordered = [entries[i] for i in sorted(entries)]
        kept = accepted_entries(ordered, src.ca, _reindexed(check, sorted(entries)))
        problems += [f"points from signed facts only: {p}" for p in verify_awards(kept)]
    return problems


def _check_quorum(src: _Source, out: dict[str, Any], ns: argparse.Namespace) -> list[str]:
    """Which head counts: the largest cosigned by k of n departments (each cosignature checked).

    A cosignature counts only if it verifies with the department's key from
    a CA-checked ``node_key`` entry and its head's root matches the entries.
    ``--require-quorum`` fails verification while entries lie beyond the
    counted head (not yet witnessed by a quorum).
    """
    entries = _parse_all(src.blobs)
    ring = KeyRing(src.ca)
    for i in sorted(entries):
        e = entries[i]
        if e.type == "node_key":
            ring.add_bundle(e["node"], base64.b64decode(e["bundle"]))
    names = sorted(set(ns.witnesses.split(","))) if getattr(ns, "witnesses", None) else sorted(ring.bundles)
    k = getattr(ns, "quorum", None) or majority(len(names))
    tree = merkle.MerkleTree()
    for b in src.blobs:
        tree.append(b)
    latest: dict[str, SignedTreeHead] = {}
    # each witness's largest valid cosigned head (largest first, so few roots are recomputed)
    for witness, sth, sig in sorted(src.cosignatures, key=lambda c: (-c[1].size, -c[1].timestamp)):
        if witness not in names or witness in latest or sth.size > tree.size:
            continue
        try:
            sth.verify(src.public_key)
        except CryptoError:
            continue
        if tree.root(sth.size) != sth.root:
            continue
        if not any(_sig_ok(key, sig, cosignature_message(sth)) for key in ring.keys(witness, sth.timestamp)):
            continue
        latest[witness] = sth
    got = quorum_head(latest, k)
    counted = got[0].size if got else 0
    out["quorum"] = {
        "k": k,
        "n": len(names),
        "witnesses": names,
        "counted_size": counted,
        "cosigners": got[1] if got else [],
        "unwitnessed": len(src.blobs) - counted,
    }
    if getattr(ns, "require_quorum", False) and counted < len(src.blobs):
        return [
            f"entries {counted}..{len(src.blobs) - 1} are under no head cosigned by {k} of the "
            f"{len(names)} departments ({', '.join(names) or 'none known'})"
        ]
    return []


def _sig_ok(key: Ed25519PublicKey, sig: bytes, msg: bytes) -> bool:
    try:
        key.verify(sig, msg)
    except InvalidSignature:
        return False
    return True


def _parse_all(blobs: Sequence[bytes]) -> dict[int, Entry]:
    out = {}
    for i, b in enumerate(blobs):
        try:
            out[i] = parse_entry(b)
        except EntryError:
            continue  # named by the structural checks
    return out


def _reindexed(check: FactCheck, order: Sequence[int]) -> FactCheck:
    """``check`` with log indices mapped to positions in ``order`` (for :func:`accepted_entries`)."""
    pos = {i: k for k, i in enumerate(order)}
    return FactCheck(facts=check.facts, accepted=[pos[i] for i in check.accepted])


def _check_cosignatures(src: _Source) -> list[str]:
    problems = []
    tree = merkle.MerkleTree()
    for b in src.blobs:
        tree.append(b)
    for witness, sth, sig in src.cosignatures:
        label = f"cosignature by {witness} of head {sth.size}"
        try:
            sth.verify(src.public_key)
        except CryptoError:
            problems.append(f"{label}: the head's log signature does not verify")
            continue
        key = src.witness_keys.get(witness)
        if key is not None:
            try:
                key.verify(sig, cosignature_message(sth))
            except InvalidSignature:
                problems.append(f"{label}: witness signature does not verify")
        if sth.size > tree.size:
            problems.append(f"{label}: the witnessed head covers more entries than the log holds (truncated)")
        elif tree.root(sth.size) != sth.root:
            problems.append(f"{label}: witnessed root differs from the entries (history rewritten)")
    return problems


# ---------------------------------------------------------------------- commands


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False))


def _cmd_verify_bundle(ns: argparse.Namespace) -> None:
    """``ledger verify --bundle FILE``: offline, against the pinned log key or the CA-checked endorsement."""
    from fedgov.auditor import resolve_log_key
    from fedgov.ledger import bundle as B

    try:
        doc = B.loads(Path(ns.bundle).read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the bundle: {exc.strerror}", where=str(ns.bundle)) from None
    ca = _load_ca(ns)
    if ca is None:
        raise ConfigError("a bundle is checked against the federation CA: give --ca CA_CERT (or --kit)")
    witnesses = sorted(set(ns.witnesses.split(","))) if ns.witnesses else None
    rep = B.check_bundle(doc, ca_cert=ca, log_key=_load_key(ns.trusted_key),
                         resolve_log_key=lambda s: resolve_log_key(s, ca), witnesses=witnesses, quorum=ns.quorum)
    out = rep.to_dict()
    if ns.json:
        _print_json(out)
    elif rep.ok:
        a = rep.anchor
        assert a is not None
        print(f"evidence bundle of job {rep.job} verified: {out['entries_checked']} entries under head {a.size} "
              f"(root {a.root.hex()[:16]}…), cosigned by {len(rep.cosigners)} of {rep.n} "
              f"({', '.join(rep.cosigners)}); {len(rep.checks)} checks")
    else:
        print(f"evidence bundle of job {rep.job} FAILED:")
        for p in out["problems"]:
            print(f"  - {p}")
    if not rep.ok:
        raise rep.problems[0]


def _cmd_bundle(ns: argparse.Namespace) -> None:
    """``ledger bundle JOB --out FILE`` from a ledger.db (offline) or the coordinator (mTLS)."""
    from fedgov.ledger import bundle as B

    witnesses = sorted(set(ns.witnesses.split(","))) if ns.witnesses else None
    if getattr(ns, "db", None):
        log = open_readonly(ns.db)
        try:
            doc = B.build_bundle(log, ns.job, [(c.witness, c.sth, c.signature) for c in log.cosignatures()],
                                 witnesses=witnesses, quorum=ns.quorum)
        finally:
            log.close()
    else:
        from fedgov.auditor import LedgerClient

        kit = ns.kit or os.environ.get("FEDGOV_KIT")
        coord = ns.coordinator or os.environ.get("FEDGOV_COORDINATOR")
        if not kit or not coord:
            raise FedgovError("give --db PATH (offline), or --kit and --coordinator (or FEDGOV_KIT and "
                              "FEDGOV_COORDINATOR)")
        with LedgerClient(kit, coord) as client:
            doc = client.bundle(ns.job, witnesses=witnesses, quorum=ns.quorum)
    text = B.dumps(doc)
    if ns.out is None or str(ns.out) == "-":
        sys.stdout.write(text)
        return
    tmp = Path(str(ns.out) + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(ns.out)
    summary = {"out": str(ns.out), "job": ns.job, "entries": len(doc["entries"]), "anchor": doc["anchor"]["size"]}
    if ns.json:
        _print_json(summary)
    else:
        print(f"evidence bundle of job {ns.job}: {summary['entries']} entries under head {summary['anchor']} "
              f"written to {ns.out}; check it with `fedgov ledger verify --bundle {ns.out}`")


def _cmd_verify(ns: argparse.Namespace) -> None:
    if getattr(ns, "bundle", None):
        _cmd_verify_bundle(ns)
        return
    src = _source(ns)
    try:
        out = _verify_source(src, ns)
    finally:
        src.close()
    if ns.json:
        _print_json(out)
    elif out["verified"]:
        print(
            f"ledger verified ({out['source']}): {out['size']} entries, {out['heads_checked']} signed heads, "
            f"{out['cosignatures_checked']} cosignatures, {out['awards_checked']} points awards"
        )
        print(f"log key {out['public_key']} — compare with the ledger.pub published out of band")
    else:
        print("ledger verification FAILED:")
        for p in out["problems"]:
            print(f"  - {p}")
    if not ns.json:
        _print_revocation_summary(out)
    if not out["verified"]:
        first = out["problems"][0]
        more = len(out["problems"]) - 1
        raise CryptoError(f"ledger verification failed: {first}" + (f" (and {more} more)" if more else ""))


def _print_revocation_summary(out: dict[str, Any]) -> None:
    facts = out.get("facts")
    if not facts:
        return
    number = facts.get("revocation_list")
    if number is None:
        print("revocations not checked: no revocation list (give --crl CRL_FILE, or a kit with crl.pem)")
        return
    if out["verified"]:
        print(f"revocation list #{number} consulted: no fact is signed by a key revoked before it")
    else:
        print(f"revocation list #{number} consulted: a fact signed after its key's certificate was revoked fails")
    for note in facts.get("signed_before_revocation", []):
        print(f"  note: {note}")


def _cmd_head(ns: argparse.Namespace) -> None:
    if getattr(ns, "db", None) or getattr(ns, "export", None):
        src = _source(ns)
        src.close()
        if not src.heads:
            raise FedgovError("the log has issued no signed head yet")
        sth = max(src.heads, key=lambda h: (h.timestamp, h.size))
        key = src.public_key
    else:
        online = _Online.open(ns)
        try:
            sth, key = online.head()
        finally:
            online.close()
    out = {**sth.to_dict(), "public_key": public_key_bytes(key).hex()}
    if ns.json:
        _print_json(out)
    else:
        from fedgov.opsview import iso

        print(f"size {sth.size}  root {sth.root.hex()}  signed {iso(sth.timestamp, ms=True)}")
        print(f"signature {sth.signature.hex()}")
        print(f"log key {out['public_key']}")


def _cmd_proof(ns: argparse.Namespace) -> None:
    index = ns.entry
    if getattr(ns, "db", None) or getattr(ns, "export", None):
        src = _source(ns)
        src.close()
        if not src.heads:
            raise FedgovError("the log has issued no signed head to prove against")
        sth = max(src.heads, key=lambda h: (h.timestamp, h.size))
        if sth.size > len(src.blobs):
            raise CryptoError(f"the latest head covers {sth.size} entries but the log holds {len(src.blobs)}")
        if not 0 <= index < sth.size:
            raise FedgovError(f"no entry {index} under the latest signed head (size {sth.size})")
        tree = merkle.MerkleTree()
        for b in src.blobs[: sth.size]:
            tree.append(b)
        data = src.blobs[index]
        path = tree.inclusion_proof(index, sth.size)
        key = src.public_key
    else:
        from fedgov.v1 import ledger_pb2

        online = _Online.open(ns)
        try:
            sth, key = online.head()
            if not 0 <= index < sth.size:
                raise FedgovError(f"no entry {index} under the latest signed head (size {sth.size})")
            reply = online.call(
                online.ledger.GetInclusionProof, ledger_pb2.InclusionProofRequest(index=index, size=sth.size)
            )
        finally:
            online.close()
        data, path = bytes(reply.entry), [bytes(h) for h in reply.hashes]
    sth.verify(key)
    merkle.verify_inclusion(merkle.leaf_hash(data), index, sth.size, path, sth.root)
    try:
        entry = json.loads(data)
    except ValueError:
        entry = data.decode("utf-8", "replace")
    out = {
        "index": index,
        "entry": entry,
        "leaf_hash": merkle.leaf_hash(data).hex(),
        "head": sth.to_dict(),
        "proof": [h.hex() for h in path],
        "verified": True,
    }
    if ns.json:
        _print_json(out)
    else:
        print(f"entry {index}: {data.decode('utf-8', 'replace')}")
        print(
            f"included in the signed head of size {sth.size} (root {sth.root.hex()}, "
            f"signed {_iso_ms(sth.timestamp)})"
        )
        for i, h in enumerate(path):
            print(f"  proof[{i}] {h.hex()}")
        print("inclusion proof verified")


def _cmd_show(ns: argparse.Namespace) -> None:
    src = _source(ns)
    src.close()
    end = len(src.blobs) if ns.end is None else min(ns.end, len(src.blobs))
    rows = []
    for i in range(max(ns.start, 0), end):
        blob = src.blobs[i]
        try:
            e = parse_entry(blob)
        except EntryError as exc:
            rows.append({"index": i, "invalid": str(exc), "raw": blob.decode("utf-8", "replace")})
            continue
        if ns.type and e.type != ns.type:
            continue
        if ns.job and e.fields.get("job") != ns.job:
            continue
        if ns.node and e.fields.get("node") != ns.node:
            continue
        rows.append({"index": i, **e.to_dict()})
    if ns.json:
        _print_json(rows)
        return
    for r in rows:
        rest = {k: v for k, v in r.items() if k not in ("index", "type", "ts", "v")}
        when = _iso_ms(r["ts"]) if isinstance(r.get("ts"), int) else "?"
        print(
            f"#{r['index']:<6} {when} {r.get('type', 'INVALID'):<18} "
            f"{json.dumps(rest, sort_keys=True, ensure_ascii=False)}"
        )


def _cmd_export(ns: argparse.Namespace) -> None:
    src = _source(ns)
    try:
        buf = io.StringIO()
        if src.log is not None:
            n = src.log.export(buf)
        else:
            header = {
                "format": EXPORT_FORMAT,
                "public_key": public_key_bytes(src.public_key).hex(),
                "size": len(src.blobs),
                "heads": [h.to_dict() for h in src.heads],
                "cosignatures": [
                    {"witness": w, "head": h.to_dict(), "signature": s.hex()} for w, h, s in src.cosignatures
                ],
            }
            buf.write(json.dumps(header, sort_keys=True) + "\n")
            for b in src.blobs:
                buf.write(b.decode("utf-8") + "\n")
            n = len(src.blobs)
    finally:
        src.close()
    if ns.out is None or str(ns.out) == "-":
        sys.stdout.write(buf.getvalue())
        return
    tmp = Path(str(ns.out) + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(ns.out)
    if ns.json:
        _print_json({"out": str(ns.out), "entries": n})
    else:
        print(f"{n} entries exported to {ns.out}")


def _rules_in(entries: Sequence[Entry]) -> PointsRules | None:
    rules = None
    for e in entries:
        if e.type == "points_rules":
            rules = PointsRules.from_dict(e["rules"])
    return rules


def _cmd_points(ns: argparse.Namespace) -> None:
    try:
        budget = Decimal(ns.budget)
    except InvalidOperation:
        raise ConfigError(f"--budget must be an amount, got {ns.budget!r}") from None
    src = _source(ns)
    src.close()
    entries = src.entries()
    # only facts signed by the department they are about count (fedgov.ledger.facts)
    if src.ca is None:
        raise ConfigError("points count only department-signed facts: give --ca CA_CERT (or --kit)")
    check = check_facts(enumerate(entries), src.ca, src.revocations,
                        head_times=[(h.size, h.timestamp) for h in src.heads])
    for line in check.problems:
        print(f"fedgov: not counted: {line}", file=sys.stderr)
    entries = accepted_entries(entries, src.ca, check)
    rules = _rules_in(entries) or PointsRules()
    rows = points_report(entries, ns.period, budget, rules)
    if ns.png:
        render_png(rows, ns.png, title=f"Contribution points, {ns.period}")
    if ns.json:
        print(render_json(rows, period=ns.period, rules=rules))
    elif ns.csv:
        sys.stdout.write(render_csv(rows))
    else:
        sys.stdout.write(render_table(rows))
        print(f"period {ns.period}; rules {rules.version} ({rules.digest()[:16]}…); budget {budget:,.2f}")
        if ns.png:
            print(f"chart written to {ns.png}")


def cmd_ledger(ns: argparse.Namespace) -> None:
    """Dispatch ``fedgov ledger ACTION``."""
    {
        "verify": _cmd_verify,
        "head": _cmd_head,
        "proof": _cmd_proof,
        "show": _cmd_show,
        "export": _cmd_export,
        "points": _cmd_points,
        "bundle": _cmd_bundle,
    }[ns.action](ns)


def cmd_quality(ns: argparse.Namespace) -> None:
    """``fedgov quality check``: score datasets locally; nothing leaves the machine."""
    from fedgov.node.config import NodeConfig
    from fedgov.node.quality_publish import assess_dataset

    config = NodeConfig.load(ns.config)
    names = [ns.dataset] if ns.dataset else list(config.datasets)
    reports = [assess_dataset(config, n) for n in names]
    if ns.json:
        _print_json(
            {
                r.dataset: {**r.to_dict(), "public_scores": r.public_scores(), "worst": r.worst(ns.worst)}
                for r in reports
            }
        )
        return
    for r in reports:
        print(f"{config.name}/{r.dataset}  {r.rows} rows  overall {r.overall:.4f}")
        scores = "  ".join(f"{d} {'n/a' if s is None else f'{s:.4f}'}" for d, s in r.scores.items())
        print(f"  {scores}")
        for line in r.worst(ns.worst):
            print(f"  {line}")
    print("only the scores above are published (with the catalogue); findings and row numbers stay here")


# ------------------------------------------------------------------------ parsers


def _source_opts(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("source (one of)")
    g.add_argument("--db", type=Path, help="the coordinator's ledger.db (offline, read-only)")
    g.add_argument("--export", type=Path, help="a file written by `fedgov ledger export`")
    g.add_argument("--kit", help="online: your startup kit (or FEDGOV_KIT)")
    g.add_argument("--coordinator", help="online: host:port (or FEDGOV_COORDINATOR)")
    p.add_argument(
        "--ca", type=Path, help="federation CA certificate to check departments' signed facts (default: the kit's)"
    )
    p.add_argument(
        "--crl", type=Path,
        help="the federation CA's revocation list (crl.pem): facts signed after their key was revoked fail "
        "(default: the newest of the kit's crl.pem and, online, the coordinator's)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def add_ledger_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``fedgov ledger verify|head|proof|show|export|points`` to the top-level subparsers."""
    p = sub.add_parser("ledger", help="audit the contribution ledger (transparency log) and its points")
    lsub = p.add_subparsers(dest="action", required=True)
    q = lsub.add_parser(
        "verify",
        help="re-check the whole log: leaves, tree, signed heads, cosignatures, recomputed points",
        description="Offline (--db) an edited or deleted row is named by its index. Exit status 2 on any problem.",
    )
    _source_opts(q)
    q.add_argument(
        "--trusted-key", help="the log key obtained out of band (64 hex digits or a ledger.pub file)"
    )
    q.add_argument(
        "--witness-state",
        type=Path,
        action="append",
        help="a node's ledger-witness.json: its verified head must still match (repeatable)",
    )
    q.add_argument(
        "--witnesses", help="the federation's departments whose cosignatures count (default: all with a node_key)"
    )
    q.add_argument("--quorum", type=int, help="cosignatures a head needs to count (default: a majority)")
    q.add_argument(
        "--require-quorum",
        action="store_true",
        help="fail unless every entry lies under a head cosigned by the quorum",
    )
    q.add_argument(
        "--bundle", type=Path,
        help="check one job's evidence bundle (from `fedgov ledger bundle`) offline, against --trusted-key or "
        "the log key's endorsement checked against the CA (--ca or the kit's)",
    )
    q = lsub.add_parser(
        "bundle",
        help="one job's evidence bundle: its entries, inclusion and consistency proofs, cosigned heads",
        description="Checked offline by `fedgov ledger verify --bundle FILE`.",
    )
    q.add_argument("job", help="job id")
    _source_opts(q)
    q.add_argument("--out", type=Path, help="output file (default: stdout)")
    q.add_argument("--witnesses", help="departments whose cosignatures count (default: all with a node_key)")
    q.add_argument("--quorum", type=int, help="cosignatures the anchor head needs (default: a majority)")
    q = lsub.add_parser("head", help="the latest signed tree head")
    _source_opts(q)
    q = lsub.add_parser("proof", help="inclusion proof of one entry against the latest signed head")
    q.add_argument("entry", type=int, help="entry index (0-based)")
    _source_opts(q)
    q = lsub.add_parser("show", help="list entries")
    _source_opts(q)
    q.add_argument("--start", type=int, default=0)
    q.add_argument("--end", type=int)
    q.add_argument("--type", help="only entries of this type (e.g. contribution)")
    q.add_argument("--job", help="only entries of this job")
    q.add_argument("--node", help="only entries naming this node")
    q = lsub.add_parser("export", help="write the log (header + canonical entries, JSON lines)")
    _source_opts(q)
    q.add_argument("--out", type=Path, help="output file (default: stdout)")
    q = lsub.add_parser(
        "points",
        help="each department's points, budget share and rank",
        description="Points recomputed from the ledger entries under the rule set published in the log.",
    )
    _source_opts(q)
    q.add_argument(
        "--period", default="all", help="all | 2024 | 2024-Q2 | 2024-06 | 2024-01-01..2024-03-31 (UTC)"
    )
    q.add_argument("--budget", default="0", help="budget pool to split by share (exact cents)")
    fmt = q.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    fmt.add_argument("--table", action="store_true", help="print a table (default)")
    q.add_argument(
        "--png", type=Path, help="also write a bar chart of points per department (PNG)"
    )
    p.set_defaults(func=cmd_ledger)
    return p


def add_quality_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``fedgov quality check`` to the top-level subparsers."""
    p = sub.add_parser("quality", help="data-quality scores of a node's datasets (computed locally)")
    p.add_argument("action", choices=["check"])
    p.add_argument("--config", type=Path, required=True, help="node.toml")
    p.add_argument("--dataset", help="only this dataset")
    p.add_argument("--worst", type=int, default=5, help="explain this many worst findings (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON (full local report)")
    p.set_defaults(func=cmd_quality)
    return p
