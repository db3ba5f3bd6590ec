"""Canonical, versioned ledger entries.

Every leaf of the transparency log is the UTF-8 bytes of one JSON object in
**canonical form**: keys sorted, no whitespace (``separators=(",", ":")``),
non-ASCII characters kept as UTF-8, no NaN/Infinity, integers without a
fraction, floats in Python's shortest round-trip ``repr``. Envelope keys:

``v``     format version, currently ``1``;
``type``  one of :data:`ENTRY_TYPES`;
``ts``    milliseconds since 1970-01-01T00:00:00Z (as in RFC 9162 timestamps);

plus exactly the fields the type defines (see :data:`ENTRY_TYPES`).

Guarantees:

* :func:`parse_entry` is strict: invalid UTF-8, invalid JSON, duplicate keys,
  a non-canonical encoding (so every entry has exactly one byte form), an
  unknown ``v``, an unknown ``type``, a missing or unknown field, or a value of
  the wrong shape raises :class:`EntryError` (a :class:`ConfigError`) whose
  one-line message names the field.
* ``parse_entry(e.encode()) == e`` for every entry the constructors build, and
  ``parse_entry(b).encode() == b`` for every ``b`` it accepts.
* Set-like lists (approvers, fields, participants) are stored sorted and
  without repeats; the constructors sort, the parser rejects unsorted lists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fedgov.errors import ConfigError

__all__ = [
    "ENTRY_TYPES",
    "ENTRY_VERSION",
    "FACT_TYPES",
    "JOB_OUTCOMES",
    "Entry",
    "EntryError",
    "canonical_json",
    "coalition_key",
    "contribution",
    "cosignature",
    "dataset_published",
    "job_approved",
    "job_completed",
    "job_started",
    "job_submitted",
    "model_contribution",
    "node_key",
    "node_registered",
    "now_ms",
    "parse_coalition_key",
    "parse_entry",
    "points_awarded",
    "points_rules",
    "policy_refusal",
]

ENTRY_VERSION = 1
JOB_OUTCOMES = ("succeeded", "failed", "rejected", "cancelled")
MAX_NAME = 200
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")


class EntryError(ConfigError):
    """A ledger entry is malformed, non-canonical or of an unknown type."""


def canonical_json(obj: Any) -> bytes:
    """Canonical UTF-8 JSON: sorted keys, no whitespace, no NaN/Infinity."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except ValueError as exc:
        raise EntryError(f"not encodable as canonical JSON: {exc}") from None


def now_ms() -> int:
    """Current time in milliseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1_000_000


# ------------------------------------------------------------------ value checkers

_Check = Callable[[Any, str], None]


def _fail(where: str, msg: str) -> EntryError:
    return EntryError(msg, where=where)


def _name(v: Any, w: str) -> None:
    if not isinstance(v, str) or not v or len(v) > MAX_NAME or v != v.strip():
        raise _fail(w, f"expected a non-empty name (at most {MAX_NAME} characters, no surrounding spaces)")


def _text(v: Any, w: str) -> None:
    if not isinstance(v, str):
        raise _fail(w, "expected a string")


def _hex64(v: Any, w: str) -> None:
    if not isinstance(v, str) or not _HEX64.match(v):
        raise _fail(w, "expected 64 lower-case hex digits (a SHA-256 digest)")


def _hex128(v: Any, w: str) -> None:
    if not isinstance(v, str) or not _HEX128.match(v):
        raise _fail(w, "expected 128 lower-case hex digits (an Ed25519 signature)")


def _count(v: Any, w: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _fail(w, "expected a non-negative integer")


def _number(v: Any, w: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _fail(w, "expected a finite number")


def _names(v: Any, w: str) -> None:
    if not isinstance(v, list):
        raise _fail(w, "expected a list of names")
    for i, x in enumerate(v):
        _name(x, f"{w}[{i}]")
    if v != sorted(set(v)):
        raise _fail(w, "names must be sorted and unique")


def _texts(v: Any, w: str) -> None:
    if not isinstance(v, list):
        raise _fail(w, "expected a list of strings")
    for i, x in enumerate(v):
        _text(x, f"{w}[{i}]")


def _outcome(v: Any, w: str) -> None:
    if v not in JOB_OUTCOMES:
        raise _fail(w, f"expected one of {', '.join(JOB_OUTCOMES)}")


def _map_of(check_key: _Check, check_value: _Check, what: str) -> _Check:
    def check(v: Any, w: str) -> None:
        if not isinstance(v, dict):
            raise _fail(w, f"expected an object of {what}")
        for k, x in v.items():
            check_key(k, f"{w}.{k}")
            check_value(x, f"{w}.{k}")

    return check


def _participant(v: Any, w: str) -> None:
    if not isinstance(v, dict) or set(v) != {"dataset", "fields"}:
        raise _fail(w, 'expected {"dataset": name, "fields": [names]}')
    _name(v["dataset"], f"{w}.dataset")
    _names(v["fields"], f"{w}.fields")


def _coalition(k: Any, w: str) -> None:
    parse_coalition_key(k, w)


def _b64(v: Any, w: str) -> None:
    if not isinstance(v, str) or not v:
        raise _fail(w, "expected non-empty standard base64")
    try:
        raw = base64.b64decode(v, validate=True)
    except (ValueError, binascii.Error):
        raise _fail(w, "expected standard base64") from None
    if base64.b64encode(raw).decode("ascii") != v:
        raise _fail(w, "base64 is not in canonical form")


def _json_object(v: Any, w: str) -> None:
    if not isinstance(v, dict):
        raise _fail(w, "expected an object")


_scores = _map_of(_name, _number, "name: number")

#: type → {field: checker}. The envelope keys v, type and ts come on top.
ENTRY_TYPES: dict[str, dict[str, _Check]] = {
    "node_registered": {"node": _name, "cert_sha256": _hex64},
    "node_key": {"node": _name, "bundle": _b64},
    "dataset_published": {
        "node": _name,
        "dataset": _name,
        "schema_digest": _hex64,
        "rows": _count,
        "quality": _scores,
    },
    "job_submitted": {
        "job": _name,
        "kind": _name,
        "purpose": _text,
        "requester": _name,
        "manifest_digest": _hex64,
        "participants": _map_of(_name, _participant, "node: participant"),
        "validation": _text,
    },
    "job_approved": {"job": _name, "node": _name, "approvers": _names},
    "job_started": {"job": _name},
    "job_completed": {"job": _name, "outcome": _outcome, "metrics": _scores},
    "contribution": {
        "job": _name,
        "node": _name,
        "dataset": _name,
        "records": _count,
        "fields": _names,
    },
    "model_contribution": {
        "job": _name,
        "metric": _name,
        "validation": _name,
        "coalitions": _map_of(_coalition, _number, "coalition: metric value"),
    },
    "points_rules": {"version": _name, "digest": _hex64, "rules": _json_object},
    "points_awarded": {"period": _name, "rules_digest": _hex64, "points": _scores},
    "policy_refusal": {"job": _name, "node": _name, "reasons": _texts},
    "cosignature": {
        "witness": _name,
        "tree_size": _count,
        "root": _hex64,
        "sth_timestamp": _count,
        "signature": _hex128,
    },
}


#: Entry types that state what one department did; in the ledger they carry that
#: department's signature (``signer``, ``sig``; see :mod:`fedgov.ledger.facts`).
FACT_TYPES = frozenset(
    {"dataset_published", "job_approved", "policy_refusal", "contribution", "model_contribution"}
)


def coalition_key(members: Iterable[str]) -> str:
    """Canonical text key of a coalition: sorted member names joined by ``+`` (``""`` = empty)."""
    names = sorted(set(members))
    for n in names:
        if not n or "+" in n:
            raise EntryError(f"coalition member {n!r} must be non-empty and contain no '+'")
    return "+".join(names)


def parse_coalition_key(key: Any, where: str = "coalition") -> frozenset[str]:
    """Members of a coalition key; :class:`EntryError` unless it is canonical."""
    if not isinstance(key, str):
        raise _fail(where, "coalition key must be a string")
    members = key.split("+") if key else []
    if key and (any(not m for m in members) or members != sorted(set(members))):
        raise _fail(where, f"coalition key {key!r} must be sorted unique names joined by '+'")
    return frozenset(members)


@dataclass(frozen=True, eq=True)
class Entry:
    """One parsed ledger entry: ``type``, ``ts`` (ms) and the type's ``fields``."""

    type: str
    ts: int
    fields: Mapping[str, Any]
    v: int = ENTRY_VERSION
    #: the department that signed this fact (:mod:`fedgov.ledger.facts`); "" if unsigned
    signer: str = ""
    #: hex Ed25519 signature of that department over :func:`fedgov.ledger.facts.fact_message`
    sig: str = ""

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (envelope + fields, plus ``signer``/``sig`` on a signed fact)."""
        out = {"v": self.v, "type": self.type, "ts": self.ts, **self.fields}
        if self.signer or self.sig:
            out["signer"] = self.signer
            out["sig"] = self.sig
        return out

    def encode(self) -> bytes:
        """Canonical bytes — what the log hashes and stores (validated first)."""
        blob = canonical_json(self.to_dict())
        parse_entry(blob)
        return blob

    def __hash__(self) -> int:
        return hash(canonical_json(self.to_dict()))


def parse_entry(data: bytes) -> Entry:
    """Strictly parse canonical entry bytes (see the module docstring)."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise EntryError("not UTF-8", where="entry") from None
    try:
        # Duplicate keys and NaN/Infinity are caught by the canonical re-encoding check below.
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EntryError(f"not JSON: {exc}", where="entry") from None
    if not isinstance(obj, dict):
        raise EntryError("expected a JSON object", where="entry")
    if obj.get("v") != ENTRY_VERSION or isinstance(obj.get("v"), bool):
        raise EntryError(f"unsupported version {obj.get('v')!r} (expected {ENTRY_VERSION})", where="entry.v")
    etype = obj.get("type")
    if etype not in ENTRY_TYPES:
        known = ", ".join(sorted(ENTRY_TYPES))
        raise EntryError(f"unknown entry type {etype!r}; expected one of {known}", where="entry.type")
    where = f"{etype} entry"
    _count(obj.get("ts"), f"{where}.ts")
    spec = ENTRY_TYPES[etype]
    signed = etype in FACT_TYPES and ("signer" in obj or "sig" in obj)
    envelope = ("v", "type", "ts", "signer", "sig") if signed else ("v", "type", "ts")
    for key in obj:
        if key not in spec and key not in envelope:
            raise EntryError(f"unknown field {key!r}", where=where)
    if signed:
        for key, check in (("signer", _name), ("sig", _hex128)):
            if key not in obj:
                raise EntryError(f"a signed fact needs both 'signer' and 'sig' (missing {key!r})", where=where)
            check(obj[key], f"{where}.{key}")
    for key, check in spec.items():
        if key not in obj:
            raise EntryError(f"missing field {key!r}", where=where)
        check(obj[key], f"{where}.{key}")
    if etype == "points_rules" and hashlib.sha256(canonical_json(obj["rules"])).hexdigest() != obj["digest"]:
        raise EntryError("digest is not the SHA-256 of the canonical rules", where=f"{where}.digest")
    if canonical_json(obj) != bytes(data):
        raise EntryError("not in canonical form (sorted keys, no whitespace)", where=where)
    fields = {k: obj[k] for k in spec}
    if signed:
        return Entry(type=etype, ts=obj["ts"], fields=fields, signer=obj["signer"], sig=obj["sig"])
    return Entry(type=etype, ts=obj["ts"], fields=fields)


# -------------------------------------------------------------------- constructors


def _make(etype: str, ts: int | None, **fields: Any) -> Entry:
    entry = Entry(type=etype, ts=now_ms() if ts is None else ts, fields=fields)
    entry.encode()  # validates
    return entry


def node_registered(node: str, cert_sha256: str, *, ts: int | None = None) -> Entry:
    """A node joined the federation with the certificate whose SHA-256 is given."""
    return _make("node_registered", ts, node=node, cert_sha256=cert_sha256)


def node_key(node: str, bundle: bytes, *, ts: int | None = None) -> Entry:
    """The CA-certified key bundle ``node`` registered with (verifiers check its facts with it)."""
    return _make("node_key", ts, node=node, bundle=base64.b64encode(bytes(bundle)).decode("ascii"))


def dataset_published(
    node: str,
    dataset: str,
    schema_digest: str,
    rows: int,
    quality: Mapping[str, float],
    *,
    ts: int | None = None,
) -> Entry:
    """A node published a dataset's schema digest, row count and quality scores."""
    return _make(
        "dataset_published",
        ts,
        node=node,
        dataset=dataset,
        schema_digest=schema_digest,
        rows=rows,
        quality=dict(quality),
    )


def job_submitted(
    job: str,
    kind: str,
    purpose: str,
    requester: str,
    manifest_digest: str,
    participants: Mapping[str, tuple[str, Iterable[str]]],
    *,
    validation: str = "",
    ts: int | None = None,
) -> Entry:
    """A job was submitted; ``participants`` maps node → (dataset, fields).

    ``validation`` names the held-out validation set the manifest fixes (empty
    if the job trains no model); model-contribution points need it.
    """
    parts = {n: {"dataset": d, "fields": sorted(set(f))} for n, (d, f) in participants.items()}
    return _make(
        "job_submitted",
        ts,
        job=job,
        kind=kind,
        purpose=purpose,
        requester=requester,
        manifest_digest=manifest_digest,
        participants=parts,
        validation=validation,
    )


def job_approved(job: str, node: str, approvers: Iterable[str] = (), *, ts: int | None = None) -> Entry:
    """``node`` approved ``job``; ``approvers`` are the people (empty: automatic policy)."""
    return _make("job_approved", ts, job=job, node=node, approvers=sorted(set(approvers)))


def job_started(job: str, *, ts: int | None = None) -> Entry:
    """Every participant approved and the job started."""
    return _make("job_started", ts, job=job)


def job_completed(
    job: str, outcome: str, metrics: Mapping[str, float] | None = None, *, ts: int | None = None
) -> Entry:
    """The job ended with ``outcome`` (one of :data:`JOB_OUTCOMES`) and metrics."""
    return _make("job_completed", ts, job=job, outcome=outcome, metrics=dict(metrics or {}))


def contribution(
    job: str, node: str, dataset: str, records: int, fields: Iterable[str], *, ts: int | None = None
) -> Entry:
    """``records`` rows of ``dataset`` with ``fields`` actually entered ``job`` from ``node``."""
    return _make(
        "contribution", ts, job=job, node=node, dataset=dataset, records=records, fields=sorted(set(fields))
    )


def model_contribution(
    job: str,
    metric: str,
    validation: str,
    coalitions: Mapping[frozenset[str], float],
    *,
    ts: int | None = None,
) -> Entry:
    """Held-out ``metric`` of every coalition of feature holders (all ``2**n`` subsets)."""
    values = {coalition_key(c): float(v) for c, v in coalitions.items()}
    return _make("model_contribution", ts, job=job, metric=metric, validation=validation, coalitions=values)


def points_rules(version: str, rules: Mapping[str, Any], *, ts: int | None = None) -> Entry:
    """Publish a points rule set; ``digest`` = SHA-256 of its canonical JSON."""
    body = dict(rules)
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    return _make("points_rules", ts, version=version, digest=digest, rules=body)


def points_awarded(
    period: str, rules_digest: str, points: Mapping[str, float], *, ts: int | None = None
) -> Entry:
    """Points per department for ``period`` under the rule set ``rules_digest``."""
    return _make("points_awarded", ts, period=period, rules_digest=rules_digest, points=dict(points))


def policy_refusal(job: str, node: str, reasons: Iterable[str], *, ts: int | None = None) -> Entry:
    """``node``'s policy refused ``job`` for the given reasons."""
    return _make("policy_refusal", ts, job=job, node=node, reasons=list(reasons))


def cosignature(
    witness: str,
    tree_size: int,
    root: bytes,
    sth_timestamp: int,
    signature: bytes,
    *,
    ts: int | None = None,
) -> Entry:
    """A witness's counter-signature of a tree head, recorded as a leaf."""
    return _make(
        "cosignature",
        ts,
        witness=witness,
        tree_size=tree_size,
        root=root.hex(),
        sth_timestamp=sth_timestamp,
        signature=signature.hex(),
    )
