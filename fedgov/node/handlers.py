"""Registry of job kinds a node can run.

A handler receives a :class:`~fedgov.node.context.TaskContext` and returns
the JSON-able result the node releases to the requester (``{}`` when it
releases nothing). Handlers never touch sockets or files directly: data comes
through ``ctx.load`` (only fields the manifest declared and the policy
allowed) and messages through ``ctx.channel``.
"""

from __future__ import annotations

from fedgov.node.context import Handler, TaskContext
from fedgov.node.kinds.cohort_count import run_cohort_count
from fedgov.node.kinds.eligibility import run_eligibility_check
from fedgov.node.kinds.he_stats import run_he_stats
from fedgov.node.kinds.horizontal_fl import run_horizontal_fl
from fedgov.node.kinds.psi import run_psi
from fedgov.node.kinds.vertical_lr import run_vertical_lr, run_vertical_lr_score

HANDLERS: dict[str, Handler] = {
    "cohort-count": run_cohort_count,
    "horizontal-fl": run_horizontal_fl,
    "psi": run_psi,
    "vertical-lr": run_vertical_lr,
    "vertical-lr-score": run_vertical_lr_score,
    "he-stats": run_he_stats,
    "eligibility-check": run_eligibility_check,
}

__all__ = ["HANDLERS", "Handler", "TaskContext"]
