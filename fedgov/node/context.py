"""What a job handler gets from the node: the task, its data, its channel."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from fedgov.errors import FedgovError
from fedgov.manifest import Manifest, Participant
from fedgov.node.channel import JobChannel
from fedgov.policy import Decision


@dataclass
class TaskContext:
    job_id: str
    me: str
    manifest: Manifest
    participant: Participant
    decision: Decision
    channel: JobChannel
    abort: threading.Event
    #: reads the participant's dataset (or ``dataset=`` another one the policy
    #: allowed for this task), only fields the manifest declared
    load: Callable[..., pa.Table]
    #: writes a table to this node's private output area for this job; returns its path
    save_output: Callable[[str, pa.Table], str]
    #: writes JSON to the private output area; reads it back from an earlier job
    save_json: Callable[[str, Any], str]
    load_json: Callable[[str, str], Any]
    #: peers' policy facts are not known here; each node enforces its own
    notes: dict[str, Any] = field(default_factory=dict)
    #: facts this node lets the public ledger record about its part (records
    #: contributed, metrics its policy allows); the requester's result is
    #: separate and never reaches the ledger. Left empty, the node publishes
    #: :func:`default_public_facts` of its result.
    public: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[TaskContext], dict[str, Any]]

#: Summary figures a node publishes by default (when its handler sets no ``ctx.public``).
PUBLIC_KEYS = ("intersection_size", "total_released", "scored", "epochs", "best_epoch", "rows", "records",
               "rounds")


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def default_public_facts(result: dict[str, Any] | None) -> dict[str, Any]:
    """The summary figures of a result a node lets the ledger record by default.

    Top-level :data:`PUBLIC_KEYS` that are numbers, and the numeric entries
    (plus a ``coalitions`` table) of an ``eval`` table. Handlers whose owners'
    policies restrict what may be published set ``ctx.public`` themselves.
    """
    if not isinstance(result, dict):
        return {}
    out: dict[str, Any] = {k: result[k] for k in PUBLIC_KEYS if _number(result.get(k))}
    ev = result.get("eval")
    if isinstance(ev, dict):
        pub = {k: v for k, v in ev.items() if _number(v)}
        co = ev.get("coalitions")
        if isinstance(co, dict):
            pub["coalitions"] = {k: v for k, v in co.items() if _number(v)}
            if isinstance(ev.get("coalition_metric"), str):
                pub["coalition_metric"] = ev["coalition_metric"]
        if pub:
            out["eval"] = pub
    return out


def numeric(values: list[Any]) -> np.ndarray:
    """A column's values as float64, ``None``/NaN as NaN (callers decide how to fill)."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def id_column(ctx: TaskContext) -> str:
    """The participant's id column (``id = ...``, else its first field)."""
    col = ctx.participant.extra.get("id") or (ctx.participant.fields[0] if ctx.participant.fields else "")
    if col not in ctx.participant.fields:
        raise FedgovError(f"id column '{col}' must be listed in this participant's fields", where=ctx.job_id)
    return str(col)
