"""Job manifests: what an analyst asks the federation to compute.

A manifest is TOML::

    [job]
    kind = "cohort-count"                 # a registered job kind
    purpose = "social-assistance-statistics"
    description = "Applicants per district"
    requester = "analyst"                 # optional; must equal the signer's certificate name
    # added by Client.submit (before signing) when absent; nodes require them:
    nonce = "5f0c9e..."                   # unique per submission: a node runs a manifest once
    not_before = 2025-06-01T08:00:00Z     # validity window (UTC offset required);
    not_after = 2025-06-08T08:00:00Z      #   at most MAX_VALIDITY long
    result_key = "base64..."              # the requester's per-job HPKE public key: every
                                          #   node seals its result to it

    [[participants]]
    node = "civil_affairs"
    dataset = "applications"
    fields = ["district", "eligible"]     # every field the job will touch at this node
    role = "aggregator"                   # kind-specific, optional
    where = [{ field = "eligible", op = "==", value = 1 }]   # kind-specific, optional

    [parameters]                          # kind-specific
    [results]
    recipients = ["requester"]            # "requester" and/or participant node names

Parsing is strict and pure; a node re-parses the manifest itself (it never
trusts the coordinator's reading) and checks the analyst's signature over the
exact bytes.

Replay: the analyst signs the text, so nonce, window and result key are
signed too. :func:`check_fresh` is the node's rule (refuse a manifest with no
nonce, outside its window, or with a window longer than :data:`MAX_VALIDITY`);
the node's store refuses a digest it has already taken for another job. A
coordinator resubmitting an old signed manifest therefore gets refused by
every node, and cannot keep one alive beyond its window.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fedgov.errors import ConfigError
from fedgov.tomlutil import check_keys, get_str, get_str_list, get_table, parse_toml

KINDS = (
    "cohort-count",
    "psi",
    "vertical-lr",
    "vertical-lr-score",
    "he-stats",
    "eligibility-check",
    "horizontal-fl",
)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
PURPOSE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,80}$")
WHERE_OPS = ("==", "!=", "<", "<=", ">", ">=", "in")
#: participant keys some job kinds use (id column, label column, held-out dataset)
KIND_PARTICIPANT_KEYS = ("id", "label", "eval_dataset")
PARTICIPANT_KEYS = ("node", "dataset", "fields", "role", "where", *KIND_PARTICIPANT_KEYS)
#: keys of [job] that make a signed manifest single-use (see check_fresh / stamp_manifest)
FRESHNESS_KEYS = ("nonce", "not_before", "not_after", "result_key")
JOB_KEYS = ("kind", "purpose", "description", "requester", *FRESHNESS_KEYS)
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
#: longest validity window a node accepts (a manual dual-post approval can take days)
MAX_VALIDITY = timedelta(days=31)
#: window Client.submit gives a manifest that names none
DEFAULT_VALIDITY = timedelta(days=7)
#: tolerated clock difference between the analyst's machine and a node
CLOCK_SKEW = timedelta(minutes=5)
#: raw length of a result key (ML-KEM-768 1184 bytes + X25519 32 bytes)
RESULT_KEY_BYTES = 1216


@dataclass(frozen=True)
class Condition:
    """A row filter ``field op value`` used by counting/statistics kinds."""

    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class Participant:
    node: str
    dataset: str
    fields: tuple[str, ...]
    role: str = ""
    where: tuple[Condition, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    kind: str
    purpose: str
    description: str
    requester: str | None
    participants: tuple[Participant, ...]
    parameters: dict[str, Any]
    recipients: tuple[str, ...]
    text: str
    nonce: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    #: the requester's per-job result public key (raw ML-KEM-768 || X25519), if given
    result_key: bytes | None = None

    @property
    def digest(self) -> str:
        """sha256 hex of the exact manifest bytes (what the analyst signed)."""
        return manifest_digest(self.text)

    @property
    def data_participants(self) -> tuple[Participant, ...]:
        """Participants that bring data (everyone but an arbiter)."""
        return tuple(p for p in self.participants if p.role != "arbiter")

    @property
    def arbiter(self) -> str | None:
        """The participant that holds a job's decryption key, if any."""
        return next((p.node for p in self.participants if p.role == "arbiter"), None)

    def participant(self, node: str) -> Participant:
        for p in self.participants:
            if p.node == node:
                return p
        raise ConfigError(f"node '{node}' is not a participant of this job", where="manifest")

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(p.node for p in self.participants)


def manifest_digest(text: str) -> str:
    """sha256 hex of the exact manifest text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _parse_where(raw: Any, where: str) -> tuple[Condition, ...]:
    if not isinstance(raw, list):
        raise ConfigError("'where' must be a list of {field, op, value} tables", where=where)
    out = []
    for i, cond in enumerate(raw):
        w = f"{where}.where[{i}]"
        if not isinstance(cond, dict):
            raise ConfigError("must be a table {field, op, value}", where=w)
        check_keys(cond, ("field", "op", "value"), w, required=("field", "op", "value"))
        op = get_str(cond, "op", w)
        if op not in WHERE_OPS:
            raise ConfigError(f"unknown op '{op}' (allowed: {' '.join(WHERE_OPS)})", where=w)
        if op == "in" and not isinstance(cond["value"], list):
            raise ConfigError("op 'in' needs a list value", where=w)
        out.append(Condition(get_str(cond, "field", w), op, cond["value"]))
    return tuple(out)


def parse_manifest(text: str, where: str = "manifest") -> Manifest:
    """Parse and validate a manifest. Raises ConfigError naming the key."""
    doc = parse_toml(text, where)
    check_keys(doc, ("job", "participants", "parameters", "results"), where, required=("job",))
    job = get_table(doc, "job", where, required=True)
    wj = f"{where}: job"
    check_keys(job, JOB_KEYS, wj, required=("kind", "purpose"))
    nonce, not_before, not_after, result_key = _parse_freshness(job, wj)
    kind = get_str(job, "kind", wj)
    if kind not in KINDS:
        raise ConfigError(f"unknown job kind '{kind}' (known: {', '.join(KINDS)})", where=wj)
    purpose = get_str(job, "purpose", wj)
    if not PURPOSE_RE.match(purpose):
        raise ConfigError(
            f"purpose '{purpose}' must be a lower-case tag like 'social-assistance-eligibility'", where=wj
        )
    requester = job.get("requester")
    if requester is not None:
        requester = get_str(job, "requester", wj)

    raw_parts = doc.get("participants")
    if not isinstance(raw_parts, list) or not raw_parts:
        raise ConfigError("at least one [[participants]] table is required", where=where)
    parts: list[Participant] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_parts):
        w = f"{where}: participants[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError("must be a table", where=w)
        arbiter = raw.get("role") == "arbiter"
        check_keys(raw, PARTICIPANT_KEYS, w, required=("node",) if arbiter else ("node", "dataset", "fields"))
        if arbiter and (raw.get("dataset") or raw.get("fields")):
            raise ConfigError("an arbiter holds no data: give it no dataset and no fields", where=w)
        node = get_str(raw, "node", w)
        if not NAME_RE.match(node):
            raise ConfigError(f"invalid node name '{node}'", where=w)
        if node in seen:
            raise ConfigError(f"node '{node}' listed twice", where=w)
        seen.add(node)
        extra = {k: v for k, v in raw.items() if k in KIND_PARTICIPANT_KEYS}
        fields = get_str_list(raw, "fields", w, default=[])
        if len(set(fields)) != len(fields):
            raise ConfigError("duplicate entries in 'fields'", where=w)
        conds = _parse_where(raw.get("where", []), w)
        for c in conds:
            if c.field not in fields:
                raise ConfigError(f"where uses field '{c.field}' that is not listed in 'fields'", where=w)
        parts.append(
            Participant(
                node=node,
                dataset="" if arbiter else get_str(raw, "dataset", w),
                fields=tuple(fields),
                role=str(raw.get("role", "")),
                where=conds,
                extra=extra,
            )
        )

    params = get_table(doc, "parameters", where)
    results = get_table(doc, "results", where)
    check_keys(results, ("recipients",), f"{where}: results")
    recipients = get_str_list(results, "recipients", f"{where}: results", default=["requester"])
    for r in recipients:
        if r != "requester" and r not in seen:
            raise ConfigError(
                f"result recipient '{r}' is neither 'requester' nor a participant", where=f"{where}: results"
            )
    return Manifest(
        kind=kind,
        purpose=purpose,
        description=str(job.get("description", "")),
        requester=requester,
        participants=tuple(parts),
        parameters=params,
        recipients=tuple(recipients),
        text=text,
        nonce=nonce,
        not_before=not_before,
        not_after=not_after,
        result_key=result_key,
    )


def _parse_freshness(
    job: dict[str, Any], wj: str
) -> tuple[str | None, datetime | None, datetime | None, bytes | None]:
    nonce = job.get("nonce")
    if nonce is not None and (not isinstance(nonce, str) or not NONCE_RE.match(nonce)):
        raise ConfigError("nonce must be 16-64 characters of A-Z a-z 0-9 _ -", where=wj)
    window: list[datetime | None] = []
    for key in ("not_before", "not_after"):
        value = job.get(key)
        if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
            raise ConfigError(
                f"'{key}' must be a TOML date-time with a UTC offset, e.g. 2025-06-01T08:00:00Z", where=wj
            )
        window.append(value)
    if window[0] is not None and window[1] is not None and window[1] <= window[0]:
        raise ConfigError("not_after must be later than not_before", where=wj)
    raw = job.get("result_key")
    key: bytes | None = None
    if raw is not None:
        try:
            key = base64.b64decode(raw, validate=True) if isinstance(raw, str) else None
        except ValueError:
            key = None
        if key is None or len(key) != RESULT_KEY_BYTES:
            raise ConfigError(
                f"result_key must be the base64 of a {RESULT_KEY_BYTES}-byte result public key", where=wj
            )
    return nonce, window[0], window[1], key


def _toml_datetime(value: datetime) -> str:
    return value.astimezone(_dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


_JOB_HEADER = re.compile(r"^[ \t]*\[[ \t]*job[ \t]*\][ \t]*(#[^\r\n]*)?(?=\r?\n|\Z)", re.MULTILINE)


def stamp_manifest(
    text: str,
    *,
    result_key: bytes,
    now: datetime | None = None,
    valid_for: timedelta = DEFAULT_VALIDITY,
    where: str = "manifest",
) -> str:
    """The manifest text with a fresh nonce, a validity window and ``result_key`` added to [job].

    Keys the text already has are kept (an explicit nonce or window is the
    analyst's choice; an explicit ``result_key`` is refused, because the
    client must hold its private half). The new lines go right under the
    ``[job]`` header, so the rest of the text is byte-for-byte what the analyst
    wrote. Raises ConfigError if the manifest has no ``[job]`` header line
    (e.g. an inline ``job = {...}`` table) or the result is not a valid manifest.
    """
    m = parse_manifest(text, where)
    if m.result_key is not None:
        raise ConfigError(
            "remove [job] result_key: the client adds a fresh one per job and keeps its private half",
            where=f"{where}: job",
        )
    if not timedelta(0) < valid_for <= MAX_VALIDITY:
        raise ConfigError(f"a manifest may be valid for at most {MAX_VALIDITY.days} days", where=where)
    now = now if now is not None else datetime.now(_dt.UTC)
    lines = []
    if m.nonce is None:
        lines.append(f'nonce = "{secrets.token_hex(16)}"')
    if m.not_before is None and m.not_after is None:
        lines.append(f"not_before = {_toml_datetime(now - CLOCK_SKEW)}")
        lines.append(f"not_after = {_toml_datetime(now + valid_for)}")
    elif m.not_before is None or m.not_after is None:
        raise ConfigError("give both not_before and not_after, or neither", where=f"{where}: job")
    lines.append(f'result_key = "{base64.b64encode(result_key).decode()}"')
    match = _JOB_HEADER.search(text)
    if match is None:
        raise ConfigError("the [job] table must start with a '[job]' line (so nonce and window can be added)",
                          where=where)
    end = match.end()
    nl = "\r\n" if text[end:end + 2] == "\r\n" else "\n"
    stamped = text[:end] + nl + nl.join(lines) + (nl if end == len(text) else "") + text[end:]
    again = parse_manifest(stamped, where)
    if again.result_key != result_key or again.nonce is None or again.not_after is None:
        raise ConfigError("could not add nonce and validity window to [job]", where=where)
    return stamped


def check_fresh(m: Manifest, now: datetime | None = None) -> None:
    """The node's replay rule for one manifest; raises ConfigError naming what is wrong.

    Requires a nonce, a validity window of at most :data:`MAX_VALIDITY`
    containing ``now`` (±:data:`CLOCK_SKEW`) and a result key. Does not
    remember anything: refusing a digest already taken for another job is the
    node store's part (``NodeStore.claim_manifest``).
    """
    w = "manifest: job"
    now = now if now is not None else datetime.now(_dt.UTC)
    if m.nonce is None:
        raise ConfigError("manifest has no nonce: nodes run only single-use manifests "
                          "(submit it through fedgov.client, which adds one)", where=w)
    if m.not_before is None or m.not_after is None:
        raise ConfigError("manifest has no validity window (not_before / not_after)", where=w)
    if m.not_after - m.not_before > MAX_VALIDITY:
        raise ConfigError(f"manifest validity window exceeds {MAX_VALIDITY.days} days", where=w)
    if now + CLOCK_SKEW < m.not_before:
        raise ConfigError(f"manifest is not valid before {m.not_before.isoformat()} "
                          f"(now {_toml_datetime(now)})", where=w)
    if now - CLOCK_SKEW > m.not_after:
        raise ConfigError(f"manifest expired at {m.not_after.isoformat()} (now {_toml_datetime(now)})",
                          where=w)
    if m.result_key is None:
        raise ConfigError("manifest has no result_key: results are sealed to the requester "
                          "(submit it through fedgov.client, which adds one)", where=w)
