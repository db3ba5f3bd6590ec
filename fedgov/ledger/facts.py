"""Department-signed facts: what a department did, in its own words (pure: no network).

A **fact** is a ledger entry of one of :data:`~fedgov.ledger.entries.FACT_TYPES`
(``dataset_published``, ``job_approved``, ``policy_refusal``, ``contribution``,
``model_contribution``). The department it is about — its **department**,
:func:`department` — builds the entry itself, signs it with its node identity
key (Ed25519, the key its CA-certified key bundle carries) and hands the bytes
to the coordinator, which appends them verbatim. The entry then carries two
more envelope keys: ``signer`` (the department) and ``sig`` (hex signature over
:func:`fact_message`: the domain tag ``b"fedgov/v1 ledger-fact\\0"`` followed by
the canonical JSON of the entry without ``sig``).

The keys a verifier uses come from ``node_key`` entries (the coordinator logs
each bundle a node registers with); each bundle is checked against the
federation CA at the fact's timestamp, so the coordinator can neither invent a
key nor sign a fact for a department.

:func:`check_facts` sorts every fact into *accepted* or a named problem: unsigned
(the coordinator's word only), signed by someone other than its department, no
certified key for the department, a signature that does not verify (forged or
altered), a replay of a fact already in the log, or — given the federation
CA's revocation list — a signature by a key whose certificate was revoked
before the fact's time. Guarantees: a fact is accepted only if the
department's certified key signed exactly these bytes, at most once, and (with
a revocation list) while that key's certificate was not revoked. A fact signed
*before* its certificate was revoked stays valid (a key retired or leaked later
does not undo what the department said while it held it); such facts are
listed in :attr:`FactCheck.notes`. The fact's time is its own ``ts``, which the
signer chose, so a leaked key could backdate a fact: when signed tree heads are
given, a fact that is missing from a head the log signed *after* the
revocation entered the log after it and is rejected too (a backdated fact
logged before the next head remains possible; the department's own witness
raises ``foreign-fact`` for any fact it never signed). What it leaks: nothing
beyond the entries themselves.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedgov.errors import FedgovError
from fedgov.ledger.entries import FACT_TYPES, Entry, EntryError, canonical_json

if TYPE_CHECKING:
    from fedgov.crypto.revocation import RevocationList

__all__ = [
    "FACT_DOMAIN",
    "FactCheck",
    "KeyRing",
    "accepted_entries",
    "check_facts",
    "department",
    "fact_message",
    "sign_fact",
]

FACT_DOMAIN = b"fedgov/v1 ledger-fact\x00"
_MAX_LISTED = 20


def department(entry: Entry) -> str | None:
    """The department a fact is about (``None`` for entries that are no department's fact).

    ``node`` for most facts; for ``model_contribution`` the participant that
    measured the coalitions and signed it (the vertical-LR guest, the
    horizontal-FL aggregator) — :func:`check_facts` accepts it only from a
    department that approved that job — or, unsigned, the validation set's node.
    """
    if entry.type not in FACT_TYPES:
        return None
    if entry.type == "model_contribution":
        if entry.signer:
            return entry.signer
        node, _, _ = str(entry["validation"]).partition("/")
        return node or None
    return str(entry["node"])


def fact_message(entry: Entry) -> bytes:
    """The bytes a department signs: :data:`FACT_DOMAIN` + canonical JSON of the entry without ``sig``."""
    body = entry.to_dict()
    body.pop("sig", None)
    body["signer"] = entry.signer
    return FACT_DOMAIN + canonical_json(body)


def sign_fact(entry: Entry, signer: str, sign: Callable[[bytes], bytes]) -> Entry:
    """``entry`` signed by ``signer`` (its department) with the Ed25519 callable ``sign``.

    Raises :class:`EntryError` if ``entry`` is no fact or is about another department.
    """
    dept = signer if entry.type == "model_contribution" else department(entry)
    if dept is None:
        raise EntryError(f"{entry.type} is not a department fact", where="ledger fact")
    if dept != signer:
        raise EntryError(f"{signer} cannot sign a {entry.type} fact about {dept}", where="ledger fact")
    unsigned = Entry(type=entry.type, ts=entry.ts, fields=dict(entry.fields), signer=signer, sig="0" * 128)
    signed = Entry(
        type=entry.type,
        ts=entry.ts,
        fields=dict(entry.fields),
        signer=signer,
        sig=sign(fact_message(unsigned)).hex(),
    )
    signed.encode()  # validates
    return signed


@dataclass
class KeyRing:
    """Departments' certified signing keys, learnt from ``node_key`` entries (and given bundles).

    Every bundle is verified against ``ca_cert`` at the time of the fact being
    checked (a bundle that was valid then still vouches for the fact). Without
    a CA certificate the ring holds nothing and every fact is "no certified key".
    """

    ca_cert: x509.Certificate | None
    bundles: dict[str, list[bytes]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def add_bundle(self, node: str, bundle: bytes) -> None:
        """Remember ``bundle`` as one ``node`` registered with (checked when used)."""
        got = self.bundles.setdefault(node, [])
        if bundle not in got:
            got.append(bundle)

    def keys(self, node: str, at_ms: int) -> list[Ed25519PublicKey]:
        """``node``'s signing keys whose bundles verify against the CA at ``at_ms``."""
        return [k for k, _ in self.certified(node, at_ms)]

    def certified(self, node: str, at_ms: int) -> list[tuple[Ed25519PublicKey, x509.Certificate | None]]:
        """``node``'s signing keys whose bundles verify against the CA at ``at_ms``, with their certificates."""
        from fedgov.crypto.keys import verify_bundle

        if self.ca_cert is None:
            return []
        when = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
        out = []
        for b in self.bundles.get(node, []):
            try:
                peer = verify_bundle(b, self.ca_cert, node, now=when)
            except FedgovError as exc:
                self.errors[node] = exc.message
                continue
            out.append((peer.signing_key, peer.signing_cert))
        return out


@dataclass
class FactCheck:
    """Outcome of :func:`check_facts`: accepted fact indices and named problems."""

    facts: int = 0
    accepted: list[int] = field(default_factory=list)
    unsigned: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: accepted facts signed before their certificate was revoked (still valid; said so)
    notes: list[str] = field(default_factory=list)
    #: the revocation list consulted (its CRL number), None if none was given
    revocation_list: int | None = None

    @property
    def ok(self) -> bool:
        """True iff every fact is signed by its department and appears once."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "facts": self.facts,
            "accepted": len(self.accepted),
            "unsigned": self.unsigned,
            "rejected": self.rejected,
            "revocation_list": self.revocation_list,
            "signed_before_revocation": self.notes,
        }


def check_facts(
    indexed: Iterable[tuple[int, Entry]],
    ca_cert: x509.Certificate | None,
    revocations: RevocationList | None = None,
    *,
    head_times: Sequence[tuple[int, int]] = (),
) -> FactCheck:
    """Check every department fact among ``indexed`` (``(log index, entry)``, in log order).

    Keys come from the ``node_key`` entries seen *before* each fact. Each
    problem line names the index, the kind and the department.

    ``revocations`` (a list verified against the CA, :func:`fedgov.crypto.revocation.load_crl`):
    a fact whose verifying key's certificate was revoked at or before the fact's
    ``ts`` is rejected, naming the certificate (serial), its revocation date and
    reason; one signed before the revocation is accepted and noted.
    ``head_times`` (``(size, timestamp ms)`` of the log's *verified* signed
    heads) date a fact's arrival: a fact not yet in a head signed after the
    revocation is rejected as backdated, whatever its ``ts`` says.
    """
    ring = KeyRing(ca_cert)
    out = FactCheck(revocation_list=revocations.number if revocations is not None else None)
    seen: dict[bytes, int] = {}
    approved: set[tuple[str, str]] = set()  # (job, department) with an accepted job_approved
    listed = 0

    def problem(i: int, text: str) -> None:
        nonlocal listed
        listed += 1
        if listed <= _MAX_LISTED:
            out.problems.append(text)
        elif listed == _MAX_LISTED + 1:
            out.problems.append("... further fact problems not listed")

    for i, e in indexed:
        if e.type == "node_key":
            ring.add_bundle(e["node"], base64.b64decode(e["bundle"]))
            continue
        dept = department(e)
        if e.type not in FACT_TYPES:
            continue
        out.facts += 1
        label = f"entry {i}: {e.type} about {dept or '?'}"
        if not e.signer:
            out.unsigned.append(i)
            problem(i, f"{label} is unsigned (the coordinator's word only; not counted)")
            continue
        if e.signer != dept:
            out.rejected.append(i)
            problem(i, f"{label} is signed by {e.signer}, not by {dept} (forged)")
            continue
        keys = ring.certified(dept, e.ts)
        if not keys:
            out.rejected.append(i)
            why = ring.errors.get(dept, "no node_key entry for it before this fact")
            problem(i, f"{label}: no certified key of {dept} to check it ({why})")
            continue
        msg = fact_message(e)
        try:
            sig = bytes.fromhex(e.sig)
        except ValueError:  # pragma: no cover - parse_entry checked the hex
            sig = b""
        certs = [c for k, c in keys if _verifies(k, sig, msg)]
        if not certs:
            out.rejected.append(i)
            problem(i, f"{label}: signature by {dept} does not verify (forged or altered by the coordinator)")
            continue
        if revocations is not None:
            verdict = _revocation_verdict(i, e, certs, revocations, head_times)
            if verdict is not None and verdict[0]:
                out.rejected.append(i)
                problem(i, f"{label}: {verdict[1]}")
                continue
            if verdict is not None:
                out.notes.append(f"{label}: {verdict[1]}")
        if msg in seen:
            out.rejected.append(i)
            problem(i, f"{label} repeats entry {seen[msg]} (a replayed fact; counted once)")
            continue
        if e.type == "model_contribution" and (e["job"], dept) not in approved:
            out.rejected.append(i)
            problem(i, f"{label}: {dept} did not approve job {e['job']}, so cannot vouch for its model")
            continue
        if e.type == "job_approved":
            approved.add((e["job"], dept))
        seen[msg] = i
        out.accepted.append(i)
    return out


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _revocation_verdict(
    i: int,
    e: Entry,
    certs: Sequence[x509.Certificate | None],
    revocations: RevocationList,
    head_times: Sequence[tuple[int, int]],
) -> tuple[bool, str] | None:
    """``(rejected, text)`` for a fact whose verifying certificate(s) ``certs`` are on ``revocations``;
    None when one of them is not revoked at all.

    Rejected when every verifying certificate was revoked at or before the fact's
    time — its own ``ts``, or later if a head the log signed after the
    revocation does not contain it yet (it arrived after, whatever it claims).
    """
    hits = []
    for c in certs:
        hit = revocations.reason(c.serial_number) if c is not None else None
        if hit is None:
            return None
        hits.append((c, hit))
    claimed = datetime.fromtimestamp(e.ts / 1000, tz=UTC)
    # the latest moment the log vouched the fact was not in it yet
    absent = max((ts for size, ts in head_times if size <= i), default=None)
    arrived = datetime.fromtimestamp(absent / 1000, tz=UTC) if absent is not None else None
    kept, refused = [], []
    for c, (since, reason) in hits:
        assert c is not None
        cert = f"certificate {c.serial_number:x} of {e.signer}"
        when = f"{_iso(since)} ({reason}; revocation list #{revocations.number})"
        if claimed >= since:
            refused.append(f"signed at {_iso(claimed)} with {cert}, revoked on {when}: a revoked key's "
                           "signature counts for nothing (not counted)")
        elif arrived is not None and arrived >= since:
            refused.append(f"claims {_iso(claimed)}, but the log's head of {_iso(arrived)} did not contain it yet: "
                           f"it arrived after {cert} was revoked on {when} (backdated; not counted)")
        else:
            kept.append(f"{cert} was revoked on {when}")
    if kept:
        return False, f"signed at {_iso(claimed)}, before {'; '.join(kept)}: still valid"
    return True, refused[0]


def _verifies(key: Ed25519PublicKey, sig: bytes, msg: bytes) -> bool:
    try:
        key.verify(sig, msg)
    except InvalidSignature:
        return False
    return True


def accepted_entries(
    entries: Sequence[Entry], ca_cert: x509.Certificate | None, check: FactCheck | None = None
) -> list[Entry]:
    """``entries`` without the department facts :func:`check_facts` did not accept (order kept)."""
    result = check if check is not None else check_facts(enumerate(entries), ca_cert)
    ok = set(result.accepted)
    return [e for i, e in enumerate(entries) if e.type not in FACT_TYPES or i in ok]


def facts_by_department(check: FactCheck, entries: Mapping[int, Entry]) -> dict[str, int]:
    """Accepted facts per department (for reports)."""
    out: dict[str, int] = {}
    for i in check.accepted:
        d = department(entries[i]) or "?"
        out[d] = out.get(d, 0) + 1
    return out
