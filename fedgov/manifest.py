"""Job manifests: what an analyst asks the federation to compute.

A manifest is TOML::

    [job]
    kind = "cohort-count"                 # a registered job kind
    purpose = "social-assistance-statistics"
    description = "Applicants per district"
    requester = "analyst"                 # optional; must equal the signer's certificate name

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
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
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
    check_keys(job, ("kind", "purpose", "description", "requester"), wj, required=("kind", "purpose"))
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
    )
