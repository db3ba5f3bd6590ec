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


Handler = Callable[[TaskContext], dict[str, Any]]


def numeric(values: list[Any]) -> np.ndarray:
    """A column's values as float64, ``None``/NaN as NaN (callers decide how to fill)."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def id_column(ctx: TaskContext) -> str:
    """The participant's id column (``id = ...``, else its first field)."""
    col = ctx.participant.extra.get("id") or (ctx.participant.fields[0] if ctx.participant.fields else "")
    if col not in ctx.participant.fields:
        raise FedgovError(f"id column '{col}' must be listed in this participant's fields", where=ctx.job_id)
    return str(col)
