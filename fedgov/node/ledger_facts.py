"""The ledger facts a node signs about itself (see :mod:`fedgov.ledger.facts`).

Each builder returns the canonical bytes of one entry signed with the node's
identity key; the coordinator appends them verbatim. What they state is what
the node itself decided or published: its dataset's schema digest, row count
and public quality scores; its approval (and the people who gave it) or its
refusal and reasons; the records and fields it brought to a job that succeeded,
and the coalition metrics it measured (the vertical-LR guest, the horizontal-FL aggregator).
Nothing else leaves through them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedgov.ledger import entries as le
from fedgov.ledger.facts import sign_fact
from fedgov.manifest import Manifest

__all__ = ["dataset_fact", "decision_fact", "report_facts", "validation_of"]

Sign = Callable[[bytes], bytes]


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def validation_of(manifest: Manifest) -> str:
    """The held-out validation set a manifest names: ``node/eval_dataset`` (guest first), or ''.

    Same rule as the coordinator's ``job_submitted`` entry, so the model
    contribution the guest signs names the set the job fixed.
    """
    named = [p for p in manifest.data_participants if p.extra.get("eval_dataset")]
    named.sort(key=lambda p: (p.role != "guest", "label" not in p.extra))
    return f"{named[0].node}/{named[0].extra['eval_dataset']}" if named else ""


def dataset_fact(
    me: str, sign: Sign, dataset: str, schema_digest: str, rows: int, quality: Mapping[str, Any]
) -> bytes:
    """Signed ``dataset_published`` (numeric quality scores only)."""
    scores = {k: float(v) for k, v in quality.items() if _number(v)}
    return sign_fact(
        le.dataset_published(me, dataset, schema_digest, max(int(rows), 0), scores), me, sign
    ).encode()


def decision_fact(
    me: str, sign: Sign, job_id: str, approve: bool, reason: str, approvers: Sequence[str]
) -> bytes:
    """Signed ``job_approved`` (approve) or ``policy_refusal`` (with the reason and approvers)."""
    if approve:
        entry = le.job_approved(job_id, me, approvers)
    else:
        reasons = [reason or "refused"] + ([f"approvers: {', '.join(approvers)}"] if approvers else [])
        entry = le.policy_refusal(job_id, me, reasons)
    return sign_fact(entry, me, sign).encode()


def report_facts(
    me: str,
    sign: Sign,
    job_id: str,
    manifest: Manifest,
    public: Mapping[str, Any],
    rows: Mapping[str, int],
) -> list[bytes]:
    """Signed ``contribution`` of this node to a job it completed, plus its ``model_contribution``.

    ``records``: the ``records`` its own public facts state, else (vertical
    models) its own ``intersection_size``, else the rows it published for the
    dataset (``rows``). A ``coalitions`` table in its own public ``eval``
    facts (this node measured the coalitions on the job's validation set)
    becomes a ``model_contribution``.
    """
    part = next((p for p in manifest.data_participants if p.node == me), None)
    out: list[bytes] = []
    if part is not None and part.dataset:
        if _number(public.get("records")) and int(public["records"]) >= 0:
            records = int(public["records"])
        elif manifest.kind == "vertical-lr" and _number(public.get("intersection_size")):
            records = int(public["intersection_size"])
        else:
            records = int(rows.get(part.dataset, 0) or 0)
        entry = le.contribution(job_id, me, part.dataset, records, part.fields)
        out.append(sign_fact(entry, me, sign).encode())
    ev = public.get("eval")
    coalitions = ev.get("coalitions") if isinstance(ev, Mapping) else None
    validation = validation_of(manifest)
    if isinstance(coalitions, Mapping) and validation:
        metric = str(ev.get("coalition_metric", "auc")) if isinstance(ev, Mapping) else "auc"
        values = {le.parse_coalition_key(k): float(v) for k, v in coalitions.items() if _number(v)}
        entry = le.model_contribution(job_id, metric, validation, values)
        out.append(sign_fact(entry, me, sign).encode())
    return out
