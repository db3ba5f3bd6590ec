"""Evidence bundle for one job: everything an auditor needs to check it offline (pure: no network).

A bundle (JSON, :data:`BUNDLE_FORMAT`) holds

* ``entries``: every ledger entry of the job (``job`` field) and every
  ``node_key`` entry (the departments' CA-certified key bundles, which check
  the department-signed facts and the cosignatures), each with its stored
  bytes and its RFC 9162 inclusion proof against the **anchor** head;
* ``anchor``: the largest signed tree head that k of n departments vouch for
  (:func:`~fedgov.ledger.witness.quorum_head`) and that covers every entry;
* ``heads``: each department's latest cosigned head at least as large as the
  anchor, with its ``cosignatures`` and the RFC 9162 ``consistency`` proof
  from the anchor to it (a cosignature of a larger head vouches for every
  prefix of one history);
* ``log_key``: the log's Ed25519 public key and, when built online, the
  coordinator's endorsement of it (checked against the federation CA).

:func:`check_bundle` re-checks all of it against keys the auditor pinned —
the log key (``--trusted-key`` or the CA-checked endorsement) and the
federation CA — and returns a :class:`BundleReport` listing every check and
every failure as a typed :class:`BundleError` naming the entry or head;
:func:`verify_bundle` raises the first. Guarantees: a bundle verifies only
if every entry is byte for byte a leaf of a head the log signed, that head
is one history with heads k of n CA-certified departments cosigned, and
every department fact carries its department's valid signature. What it
leaks: the job's entries and the departments' public key bundles — what the
ledger shows any reader; nothing else of the log.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedgov.errors import ConfigError, CryptoError, FedgovError
from fedgov.ledger import merkle
from fedgov.ledger.entries import Entry, EntryError, parse_entry
from fedgov.ledger.facts import KeyRing, check_facts
from fedgov.ledger.log import SignedTreeHead, cosignature_message, public_key_bytes
from fedgov.ledger.witness import majority, quorum_head

__all__ = [
    "BUNDLE_FORMAT",
    "BundleCheck",
    "BundleError",
    "BundleReport",
    "BundleSource",
    "ConsistencyFailed",
    "CosignatureFailed",
    "EntryProofFailed",
    "FactFailed",
    "HeadSignatureFailed",
    "LogKeyFailed",
    "QuorumNotMet",
    "build_bundle",
    "check_bundle",
    "dumps",
    "loads",
    "verify_bundle",
]

BUNDLE_FORMAT = "fedgov-evidence-bundle/1"


# ------------------------------------------------------------------------- errors


class BundleError(CryptoError):
    """An evidence bundle does not verify; ``kind`` and ``subject`` say what failed."""

    kind = "bundle"

    def __init__(self, message: str, *, subject: str = "") -> None:
        super().__init__(message, where="evidence bundle")
        self.subject = subject


class LogKeyFailed(BundleError):
    """The bundle's log key is not the pinned one / not endorsed by the CA-certified coordinator."""

    kind = "log_key"


class HeadSignatureFailed(BundleError):
    """A tree head's signature does not verify with the log key (``subject``: ``head N``)."""

    kind = "head"


class ConsistencyFailed(BundleError):
    """A cosigned head is not an extension of the anchor (``subject``: ``head N``)."""

    kind = "consistency"


class CosignatureFailed(BundleError):
    """A department's cosignature does not verify (``subject``: ``head N``)."""

    kind = "cosignature"


class QuorumNotMet(BundleError):
    """Fewer than k of n departments vouch for the anchor head (``subject``: ``head N``)."""

    kind = "quorum"


class EntryProofFailed(BundleError):
    """An entry is not the leaf its inclusion proof claims (``subject``: ``entry I``)."""

    kind = "entry"


class FactFailed(BundleError):
    """A department fact is unsigned, forged, altered or replayed (``subject``: ``entry I``)."""

    kind = "fact"


@dataclass(frozen=True)
class BundleCheck:
    """One check :func:`check_bundle` ran: what, on which entry/head, and whether it held."""

    kind: str
    subject: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "ok": self.ok, "detail": self.detail}


@dataclass
class BundleReport:
    """Every check and every failure; ``ok`` iff no failure."""

    job: str = ""
    checks: list[BundleCheck] = field(default_factory=list)
    problems: list[BundleError] = field(default_factory=list)
    anchor: SignedTreeHead | None = None
    cosigners: list[str] = field(default_factory=list)
    k: int = 0
    n: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def _ok(self, kind: str, subject: str, detail: str) -> None:
        self.checks.append(BundleCheck(kind, subject, True, detail))

    def _fail(self, err: BundleError) -> None:
        self.problems.append(err)
        self.checks.append(BundleCheck(err.kind, err.subject, False, err.message))

    def to_dict(self) -> dict[str, Any]:
        return {
            "verified": self.ok,
            "job": self.job,
            "anchor": self.anchor.to_dict() if self.anchor else None,
            "quorum": {"k": self.k, "n": self.n, "cosigners": self.cosigners},
            "checks": len(self.checks),
            "entries_checked": sum(c.kind == "entry" and c.ok for c in self.checks),
            "problems": [f"{p.subject}: {p.message}" if p.subject else p.message for p in self.problems],
        }


# -------------------------------------------------------------------------- build


class BundleSource(Protocol):
    """What :func:`build_bundle` reads: a ledger.db (:class:`~fedgov.ledger.log.TransparencyLog`) or the coordinator."""

    public_key: Ed25519PublicKey

    def query_all(self, **filters: Any) -> list[tuple[int, bytes]]: ...

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]: ...

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]: ...


def build_bundle(
    source: BundleSource,
    job: str,
    cosignatures: Sequence[tuple[str, SignedTreeHead, bytes]],
    *,
    key_statement: Mapping[str, str] | None = None,
    witnesses: Sequence[str] | None = None,
    quorum: int | None = None,
) -> dict[str, Any]:
    """The evidence bundle of ``job`` (a JSON-able dict; see the module docstring).

    ``cosignatures`` are the log's stored ``(witness, head, signature)``; the
    anchor is the largest head ``quorum`` (default: a majority) of the
    ``witnesses`` (default: every department with a ``node_key`` entry) cosigned.
    The builder checks nothing it need not (the verifier does); it raises
    :class:`FedgovError` when the job has no entries or its entries are not
    yet under a head cosigned by the quorum.
    """
    job_rows = source.query_all(job=job)
    if not job_rows:
        raise FedgovError(f"no ledger entries for job {job!r}", where="evidence bundle")
    key_rows = source.query_all(types=["node_key"])
    names = sorted(set(witnesses)) if witnesses else sorted(
        {parse_entry(b)["node"] for _, b in key_rows}
    )
    k = quorum or majority(len(names))
    latest: dict[str, tuple[SignedTreeHead, bytes]] = {}
    for w, sth, sig in cosignatures:
        if w in names and (w not in latest or (sth.size, sth.timestamp) > (latest[w][0].size, latest[w][0].timestamp)):
            latest[w] = (sth, sig)
    got = quorum_head({w: h for w, (h, _) in latest.items()}, k)
    if got is None:
        raise FedgovError(
            f"no head is cosigned by {k} of the {len(names)} departments yet", where="evidence bundle"
        )
    anchor = got[0]
    last = max(i for i, _ in job_rows)
    if last >= anchor.size:
        raise FedgovError(
            f"job {job!r} has entries up to {last}, but the head cosigned by {k} of {len(names)} "
            f"departments covers {anchor.size}; wait for the witnesses and retry",
            where="evidence bundle",
        )
    heads: dict[tuple[int, int], dict[str, Any]] = {}
    for w in sorted(latest):
        sth, sig = latest[w]
        if sth.size < anchor.size:
            continue
        slot = heads.setdefault((sth.size, sth.timestamp), {
            "head": sth.to_dict(),
            "consistency": [h.hex() for h in source.consistency_proof(anchor.size, sth.size)],
            "cosignatures": [],
        })
        slot["cosignatures"].append({"witness": w, "signature": sig.hex()})
    rows = sorted({*job_rows, *(r for r in key_rows if r[0] < anchor.size)})
    return {
        "format": BUNDLE_FORMAT,
        "job": job,
        "log_key": dict(key_statement or {"public_key": public_key_bytes(source.public_key).hex()}),
        "anchor": anchor.to_dict(),
        "witnesses": names,
        "quorum": k,
        "heads": [heads[key] for key in sorted(heads)],
        "entries": [
            {
                "index": i,
                "data": data.decode("utf-8"),
                "proof": [h.hex() for h in source.inclusion_proof(i, anchor.size)],
            }
            for i, data in rows
        ],
    }


def dumps(bundle: Mapping[str, Any]) -> str:
    """The bundle as one JSON document (sorted keys, UTF-8 text)."""
    return json.dumps(bundle, sort_keys=True, ensure_ascii=False, indent=1) + "\n"


def loads(text: str | bytes) -> dict[str, Any]:
    """Parse a bundle file; :class:`ConfigError` when it is no bundle."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"not JSON: {exc}", where="evidence bundle") from None
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ConfigError(f"format is {got!r}, expected {BUNDLE_FORMAT!r}", where="evidence bundle")
    return doc


# ------------------------------------------------------------------------- verify


def _hexes(values: Any, what: str) -> list[bytes]:
    if not isinstance(values, list):
        raise ConfigError(f"{what}: expected a list of hex hashes", where="evidence bundle")
    try:
        return [bytes.fromhex(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: expected hex hashes", where="evidence bundle") from None


def _sig_ok(key: Ed25519PublicKey, sig: bytes, msg: bytes) -> bool:
    try:
        key.verify(sig, msg)
    except InvalidSignature:
        return False
    return True


def check_bundle(
    bundle: Mapping[str, Any],
    *,
    ca_cert: x509.Certificate,
    log_key: Ed25519PublicKey | None = None,
    resolve_log_key: Callable[[Mapping[str, str]], Ed25519PublicKey] | None = None,
    witnesses: Sequence[str] | None = None,
    quorum: int | None = None,
) -> BundleReport:
    """Check every proof and signature in ``bundle``; never raises for a bad bundle (see :class:`BundleReport`).

    The log key is ``log_key`` when the auditor pinned one (the bundle's must
    equal it), else ``resolve_log_key(bundle["log_key"])`` (e.g. the
    coordinator's endorsement checked against the CA); with neither the
    bundle fails. Departments' keys come from the bundle's ``node_key``
    entries, each checked against ``ca_cert``. ``witnesses``/``quorum``
    override the bundle's own witness list and k (an auditor may pin them).
    Raises :class:`ConfigError` only for a structurally malformed bundle.
    """
    rep = BundleReport(job=str(bundle.get("job", "")))
    try:
        stated = bytes.fromhex(bundle["log_key"]["public_key"])
        anchor = SignedTreeHead.from_dict(bundle["anchor"])
        heads = [
            (SignedTreeHead.from_dict(h["head"]), _hexes(h["consistency"], "consistency"), h["cosignatures"])
            for h in bundle["heads"]
        ]
        rows = [(int(e["index"]), str(e["data"]).encode("utf-8"), _hexes(e["proof"], f"entry {e['index']}"))
                for e in bundle["entries"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"malformed bundle: {exc}", where="evidence bundle") from None
    rep.anchor = anchor
    # 1. the log key
    key: Ed25519PublicKey | None = None
    if log_key is not None:
        if public_key_bytes(log_key) != stated:
            rep._fail(LogKeyFailed("the bundle is signed by a different log key than the pinned one",
                                   subject="log key"))
            return rep
        key = log_key
        rep._ok("log_key", "log key", "equals the pinned log key")
    elif resolve_log_key is not None:
        try:
            key = resolve_log_key(bundle["log_key"])
        except (FedgovError, KeyError, ValueError) as exc:
            rep._fail(LogKeyFailed(f"log key not accepted: {exc}", subject="log key"))
            return rep
        if public_key_bytes(key) != stated:
            rep._fail(LogKeyFailed("the endorsed log key differs from the bundle's", subject="log key"))
            return rep
        rep._ok("log_key", "log key", "endorsed by the CA-certified coordinator")
    else:
        rep._fail(LogKeyFailed("no pinned log key and no endorsement to check", subject="log key"))
        return rep
    # 2. the anchor and each cosigned head: log signature, consistency with the anchor
    for sth, label in [(anchor, "anchor")] + [(h, "cosigned head") for h, _, _ in heads]:
        try:
            sth.verify(key)
            rep._ok("head", f"head {sth.size}", f"{label}: log signature verifies")
        except CryptoError:
            rep._fail(HeadSignatureFailed(f"{label} of size {sth.size}: log signature does not verify",
                                          subject=f"head {sth.size}"))
    # 3. entries: strict parse + inclusion under the anchor
    parsed: dict[int, Entry] = {}
    for i, data, proof in rows:
        subject = f"entry {i}"
        try:
            merkle.verify_inclusion(merkle.leaf_hash(data), i, anchor.size, proof, anchor.root)
        except merkle.ProofError as exc:
            rep._fail(EntryProofFailed(f"entry {i} is not in the log under head {anchor.size}: {exc.message}",
                                       subject=subject))
            continue
        try:
            parsed[i] = parse_entry(data)
        except EntryError as exc:
            rep._fail(EntryProofFailed(f"entry {i} is not a valid entry: {exc}", subject=subject))
            continue
        rep._ok("entry", subject, f"inclusion proof ({len(proof)} hashes) to head {anchor.size}")
    for i, e in sorted(parsed.items()):
        if e.type != "node_key" and e.fields.get("job") != rep.job:
            rep._fail(EntryProofFailed(f"entry {i} is about job {e.fields.get('job')!r}, not {rep.job!r}",
                                       subject=f"entry {i}"))
    # 4. cosignatures by CA-certified departments, quorum on the anchor
    ring = KeyRing(ca_cert)
    for _i, e in sorted(parsed.items()):
        if e.type == "node_key":
            ring.add_bundle(e["node"], base64.b64decode(e["bundle"]))
    names = sorted(set(witnesses)) if witnesses else sorted(set(bundle.get("witnesses") or ring.bundles))
    rep.n = len(names)
    rep.k = quorum or int(bundle.get("quorum") or 0) or majority(len(names))
    if witnesses is None and quorum is None and rep.k < majority(len(names)):
        rep.k = majority(len(names))  # a bundle cannot lower the bar below a majority
    vouched: dict[str, SignedTreeHead] = {}
    for sth, proof, cos in heads:
        subject = f"head {sth.size}"
        try:
            merkle.verify_consistency(anchor.size, sth.size, anchor.root, sth.root, proof)
            rep._ok("consistency", subject, f"extends the anchor (size {anchor.size}): {len(proof)} hashes")
        except merkle.ProofError as exc:
            rep._fail(ConsistencyFailed(f"head {sth.size} is not an extension of head {anchor.size}: "
                                        f"{exc.message}", subject=subject))
            continue
        for c in cos:
            w = str(c.get("witness", ""))
            try:
                sig = bytes.fromhex(c["signature"])
            except (KeyError, TypeError, ValueError):
                sig = b""
            if w not in names:
                rep._fail(CosignatureFailed(f"cosignature by {w!r}, who is not one of the witnesses",
                                            subject=subject))
                continue
            keys = ring.keys(w, sth.timestamp)
            if not any(_sig_ok(k, sig, cosignature_message(sth)) for k in keys):
                why = "no certified key" if not keys else "signature does not verify"
                rep._fail(CosignatureFailed(f"cosignature by {w} of head {sth.size}: {why}", subject=subject))
                continue
            rep._ok("cosignature", subject, f"cosigned by {w} (CA-certified key)")
            vouched[w] = sth
    got = quorum_head(vouched, rep.k)
    if got is None or got[0].size < anchor.size:
        have = sorted(vouched)
        rep._fail(QuorumNotMet(
            f"head {anchor.size} is cosigned by {len(have)} of {rep.n} departments "
            f"({', '.join(have) or 'none'}), needs {rep.k}", subject=f"head {anchor.size}"))
    else:
        rep.cosigners = got[1]
        rep._ok("quorum", f"head {anchor.size}", f"cosigned by {len(got[1])} of {rep.n}: {', '.join(got[1])}")
    # 5. department facts
    facts = check_facts(sorted(parsed.items()), ca_cert)
    bad = set(facts.unsigned) | set(facts.rejected)
    for line in facts.problems:
        idx = line.split(":", 1)[0].removeprefix("entry ").strip()
        rep._fail(FactFailed(line, subject=f"entry {idx}" if idx.isdigit() else "facts"))
    for i in facts.accepted:
        if i not in bad:
            rep._ok("fact", f"entry {i}", f"{parsed[i].type} signed by {parsed[i].signer}")
    return rep


def verify_bundle(bundle: Mapping[str, Any], **kw: Any) -> BundleReport:
    """:func:`check_bundle`, raising its first :class:`BundleError` (the report when everything held)."""
    rep = check_bundle(bundle, **kw)
    if rep.problems:
        raise rep.problems[0]
    return rep
