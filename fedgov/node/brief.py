"""The approver's brief: everything a department's approver needs to see before signing a job.

Built by the node, from the *signed* manifest, this node's own policy decision
and the kind's protocol page (:mod:`fedgov.params.pages`), when the job enters
the approval queue; stored with the pending job and shown by
``fedgov node show JOB`` (text or ``--json``). A future web console renders the
same :meth:`Brief.to_dict`.

It shows: the full manifest (kind, purpose, description, requester, validity
window, this node's dataset, fields and ``where`` filters, every parameter with
its value and whether the manifest set it or the schema default applies); each
parameter next to this department's floor or limit (the disclosure settings
that govern it, and the minimum cohort); what leaves this node (message kinds,
sizes as bounded or estimated from the row count, recipients by name); who
receives which result; the other participants with their datasets, fields and
filters; and what the protocol page says each party learns.

Pure: no I/O. Leaks nothing the node does not already hold (the manifest is
the analyst's, the floors are this node's own policy).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedgov.manifest import Manifest, Participant
from fedgov.params import Param, Setting
from fedgov.params import schema as kind_schema
from fedgov.params.pages import PAGES
from fedgov.policy import Decision

#: version of the brief's dict layout (bump when a key changes meaning)
BRIEF_VERSION = 1


@dataclass(frozen=True)
class Brief:
    """One job as one node's approvers see it. ``to_dict`` is the stable, JSON-ready form."""

    job_id: str
    node: str
    data: Mapping[str, Any]
    approvals: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.data)
        out["approvals"] = dict(self.approvals)
        return out

    @property
    def digest(self) -> str:
        """sha256 hex of the brief without its (changing) approval count."""
        body = json.dumps(dict(self.data), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(body.encode("utf-8")).hexdigest()

    def with_approvals(self, required: int, approved_by: Sequence[str], status: str = "pending") -> Brief:
        return Brief(
            self.job_id,
            self.node,
            self.data,
            {"required": required, "approved_by": list(approved_by), "status": status,
             "summary": f"{len(approved_by)} of {required}"},
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Brief:
        data = {k: v for k, v in d.items() if k != "approvals"}
        return cls(str(d["job_id"]), str(d["node"]), data, dict(d.get("approvals") or {}))

    def summary(self) -> str:
        """The one line ``fedgov node pending`` prints."""
        d = self.data
        me = d["this_node"]
        params = ", ".join(f"{p['key']}={_short(p['value'])}" for p in d["parameters"] if p["source"] == "manifest")
        where = "; ".join(me["where"]) or "none"
        a = self.approvals
        return (
            f"{self.job_id}  {d['kind']}  purpose={d['purpose']}  requester={d['requester']}  "
            f"dataset={me['dataset']} fields={','.join(me['fields'])}  where={where}  "
            f"params={params or 'defaults'}  others={','.join(o['node'] for o in d['others']) or 'none'}  "
            f"approvals {a.get('summary', '?')}"
        )

    def text(self) -> str:
        """The full brief as ``fedgov node show`` prints it."""
        d = self.data
        me = d["this_node"]
        lines = [
            f"job {self.job_id} at {self.node}: {d['kind']} for purpose '{d['purpose']}'",
            f"  requested by: {d['requester']}",
            f"  description: {d['description'] or '(none)'}",
            f"  manifest sha256: {d['manifest_sha256']}",
            f"  valid: {d['not_before']} .. {d['not_after']}",
            f"  protocol page: {d['page']}",
            "",
            f"this node ({self.node}, role {me['role']}):",
            f"  dataset: {me['dataset'] or '(none: data-less)'}",
            f"  fields: {', '.join(me['fields']) or '(none)'}",
            f"  where: {'; '.join(me['where']) or '(no filter: every row)'}",
            f"  extra: {json.dumps(me['extra'], sort_keys=True) if me['extra'] else '(none)'}",
            "",
            "parameters (value | set by | this department's floor/limit):",
        ]
        for p in d["parameters"]:
            limits = "; ".join(f"{lim['key']} = {_short(lim['value'])}" for lim in p["limits"]) or "-"
            lines.append(f"  {p['key']} = {_short(p['value'])}  | {p['source']} | {limits}")
        if not d["parameters"]:
            lines.append("  (this kind takes none)")
        lines += ["", f"this department's floors ({d['policy']['source'] or 'policy defaults'}):"]
        for f in d["floors"]:
            lines.append(f"  {f['key']} = {_short(f['value'])}  ({f['doc']})")
        pol = d["policy"]
        lines += [
            "",
            f"policy decision: {'allowed' if pol['allowed'] else 'refused: ' + '; '.join(pol['reasons'])}; "
            f"approval {pol['approval']}, {pol['approvers_required']} approver(s) needed"
            + (f" from {', '.join(pol['approvers'])}" if pol["approvers"] else ""),
            "",
            "what leaves this node (every message sealed to its recipient; the coordinator sees sizes):",
        ]
        for s in d["sends"]:
            est = f", ~{s['estimate_bytes']} bytes" if s.get("estimate_bytes") else ""
            lines.append(f"  {s['step']} -> {', '.join(s['to']) or '(nobody)'}: {s['size']} ({s['when']}{est})")
        lines += ["", "who receives which result:"]
        lines += [f"  {r}" for r in d["results"]["lines"]]
        lines += ["", "other participants:"]
        for o in d["others"]:
            lines.append(
                f"  {o['node']} (role {o['role']}): dataset={o['dataset'] or '-'} "
                f"fields={','.join(o['fields']) or '-'} where={'; '.join(o['where']) or 'none'}"
            )
        if not d["others"]:
            lines.append("  (none)")
        lines += ["", f"what each party learns ({d['page']}):"]
        lines += [f"  {x['party']}: {x['learns']}" for x in d["learns"]]
        a = self.approvals
        if a:
            lines += ["", f"approvals: {a['summary']}" + (f" ({', '.join(a['approved_by'])})" if a["approved_by"]
                                                          else "")]
        return "\n".join(lines)


def _short(v: Any, n: int = 80) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
    return s if len(s) <= n else s[: n - 3] + "..."


def _governing(p: Param, settings: Mapping[str, Setting]) -> list[str]:
    """The disclosure settings that bound parameter ``p``: its declared ``governed_by``, else every
    setting of the kind whose key names the parameter (``vlr_mask_bits_min`` governs ``mask_bits``)."""
    if p.governed_by:
        return list(p.governed_by)
    return [k for k in settings if f"_{p.key}_" in f"_{k}_"]


def _where(p: Participant) -> list[str]:
    return [f"{c.field} {c.op} {json.dumps(c.value)}" for c in p.where]


def build_brief(
    manifest: Manifest,
    node: str,
    decision: Decision,
    *,
    job_id: str,
    requester: str,
    rows: int | None = None,
) -> Brief:
    """The approver's brief of ``manifest`` at ``node`` under ``decision`` (this node's own policy check).

    ``requester`` is the name on the certificate that signed the manifest;
    ``rows`` this node's row count of the dataset, for size estimates.
    """
    sch = kind_schema(manifest.kind)
    pg = PAGES[manifest.kind]
    me = manifest.participant(node)
    settings = {s.key: s for s in sch.settings}
    disclosure = dict(decision.disclosure)

    params = []
    for p in sch.params:
        given = p.key in manifest.parameters
        value = manifest.parameters.get(p.key, p.default)
        limits = [{"key": k, "value": disclosure.get(k, settings[k].default if k in settings else None)}
                  for k in _governing(p, settings)]
        params.append({"key": p.key, "value": value, "source": "manifest" if given else "default",
                       "doc": p.doc, "limits": limits})

    floors: list[dict[str, Any]] = []
    if me.role != "arbiter":
        floors.append({"key": "min_cohort", "value": decision.min_cohort,
                       "doc": "smallest count this department releases"})
    for key, s in settings.items():
        floors.append({"key": key, "value": disclosure.get(key, s.default), "doc": s.doc})

    roles = {p.node: pg.role_of(manifest, p.node) for p in manifest.participants}
    my_role = roles[node]
    sends = []
    for msg in pg.sends.get(my_role, ()):
        if not msg.applies(manifest.parameters, me.extra):
            continue
        if msg.to == "requester":
            to = [requester]
        else:
            to = [n for n, r in roles.items() if r == msg.to and n != node]
        est = None
        if msg.bytes_per_row is not None and rows is not None:
            est = msg.bytes_per_row * rows
        elif msg.fixed_bytes is not None:
            est = msg.fixed_bytes
        sends.append({"step": msg.step, "to": to, "size": msg.size, "when": msg.when, "estimate_bytes": est})

    named = [r for r in manifest.recipients if r != "requester"]
    lines = [f"every node's own result is sealed to the requester ({requester}); "
             "the coordinator relays it and learns only its size"]
    if "requester" in manifest.recipients:
        lines.append(f"the job's result goes to the requester ({requester})")
    if named:
        lines.append(f"[results] recipients also receive the result: {', '.join(named)}")
    results = {"recipients": list(manifest.recipients), "requester": requester, "named_nodes": named,
               "lines": lines}

    others = [
        {"node": p.node, "role": roles[p.node], "dataset": p.dataset, "fields": list(p.fields),
         "where": _where(p), "extra": dict(p.extra)}
        for p in manifest.participants if p.node != node
    ]
    data: dict[str, Any] = {
        "version": BRIEF_VERSION,
        "job_id": job_id,
        "node": node,
        "kind": manifest.kind,
        "purpose": manifest.purpose,
        "description": manifest.description,
        "requester": requester,
        "manifest_sha256": manifest.digest,
        "not_before": manifest.not_before.isoformat() if manifest.not_before else None,
        "not_after": manifest.not_after.isoformat() if manifest.not_after else None,
        "page": pg.page,
        "this_node": {"role": my_role, "dataset": me.dataset, "fields": list(me.fields), "where": _where(me),
                      "extra": dict(me.extra), "rows": rows},
        "parameters": params,
        "floors": floors,
        "policy": {"allowed": decision.allowed, "reasons": list(decision.reasons), "approval": decision.approval,
                   "approvers_required": decision.approvers_required, "approvers": list(decision.approvers),
                   "source": decision.disclosure_source},
        "sends": sends,
        "results": results,
        "others": others,
        "learns": [{"party": party, "learns": text} for party, text in pg.learns],
    }
    return Brief(job_id, node, json.loads(json.dumps(data, default=str)))
