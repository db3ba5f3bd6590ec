"""Registry of job kinds a node can run.

A handler receives a :class:`~fedgov.node.context.TaskContext` and returns
the JSON-able result the node releases to the requester (``{}`` when it
releases nothing). Handlers never touch sockets or files directly: data comes
through ``ctx.load`` (only fields the manifest declared and the policy
allowed) and messages through ``ctx.channel``.
"""

from __future__ import annotations

from collections.abc import Callable

from fedgov.manifest import Manifest
from fedgov.node.context import Handler, TaskContext
from fedgov.node.kinds.cohort_count import run_cohort_count
from fedgov.node.kinds.eligibility import parse_job as _eligibility_job
from fedgov.node.kinds.eligibility import run_eligibility_check
from fedgov.node.kinds.he_stats import run_he_stats
from fedgov.node.kinds.horizontal_fl import run_horizontal_fl
from fedgov.node.kinds.psi import run_psi
from fedgov.node.kinds.vertical_lr import NODE_PARAMS as _VLR_NODE_PARAMS
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



def _vlr_params(m: Manifest) -> None:
    from fedgov.protocols.vertical_lr import VlrParams

    VlrParams.from_json({k: v for k, v in m.parameters.items() if k not in _VLR_NODE_PARAMS})


#: The protocol's own parameter checks, run by the node on the signed manifest before it asks
#: anyone to approve (the kind schema checks names and types; these check what only the protocol
#: knows: batch size against CKKS slots, the CKKS chain, mask budgets, the rules file). Each
#: raises ConfigError naming the parameter.
PRECHECKS: dict[str, Callable[[Manifest], object]] = {
    "vertical-lr": _vlr_params,
    "eligibility-check": _eligibility_job,
}

__all__ = ["HANDLERS", "PRECHECKS", "Handler", "TaskContext"]
