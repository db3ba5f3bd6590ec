"""Parameters of the ``eligibility-check`` job kind (docs/protocols/eligibility-check.md),
and the department owner's disclosure settings for it.

Settings (``[datasets.NAME.disclosure]`` of a department's ``policy.toml``):

- ``elig_max_rules_per_figure`` (default 1): the most rules (threshold or
  fact) of one job that may read one of the dataset's fields. Each rule is one
  more bit per applicant about the figure; ten rules ``income < 300*2^k``
  would bracket every income within a factor of two. A looser job is refused
  at the node before any computation, naming this key.
- ``elig_checks_per_applicant`` (default 2) per ``elig_check_period``
  (default ``quarter``): the most checks of one field per applicant record,
  counted durably by the department on its aligned side
  (:mod:`fedgov.node.check_budget`); once spent, jobs including that applicant
  are refused. Bounds a binary search across jobs to that many bits per period.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedgov.errors import ConfigError
from fedgov.params.psi import WORKERS
from fedgov.params.schema import KindSchema, Param, Refusal, Setting
from fedgov.tomlutil import parse_toml

if TYPE_CHECKING:  # pragma: no cover
    from fedgov.manifest import Manifest, Participant

KIND = "eligibility-check"
#: the protocol module's own default (fedgov.protocols.eligibility.DEFAULT_MAX_RULES_PER_FIGURE)
DEFAULT_MAX_RULES_PER_FIGURE = 1

SETTINGS = (
    Setting(
        "elig_max_rules_per_figure",
        "int",
        DEFAULT_MAX_RULES_PER_FIGURE,
        "most rules of one eligibility job that may read one field of this dataset",
        (KIND,),
        min=1,
    ),
    Setting(
        "elig_checks_per_applicant",
        "int",
        2,
        "most eligibility checks of one field per applicant record per elig_check_period",
        (KIND,),
        min=1,
    ),
    Setting(
        "elig_check_period",
        "str",
        "quarter",
        "period over which elig_checks_per_applicant is counted (UTC calendar)",
        (KIND,),
        choices=("month", "quarter", "year"),
    ),
)


def figure_uses(rules_doc: Any, node: str) -> dict[str, list[str]]:
    """``field -> rule names`` reading ``node``'s field, from the raw rules document
    (light: no numpy; the protocol module's :func:`fedgov.protocols.eligibility.figure_uses`
    is the same count on parsed rules). Malformed entries are skipped (the job
    fails later with the parser's message)."""
    doc = parse_toml(rules_doc, "parameters.rules") if isinstance(rules_doc, str) else rules_doc
    out: dict[str, list[str]] = {}
    raw = doc.get("rules", []) if isinstance(doc, dict) else []
    for i, r in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(r, dict):
            continue
        name = str(r.get("name", f"rules[{i}]"))
        if r.get("kind") == "threshold":
            terms = r.get("terms", [])
            fields = {str(t.get("field")) for t in terms if isinstance(t, dict) and t.get("node") == node} \
                if isinstance(terms, list) else set()
        elif r.get("node") == node:
            fields = {str(r.get("field"))}
        else:
            fields = set()
        for f in sorted(fields):
            out.setdefault(f, []).append(name)
    return out


def refusals(manifest: Manifest, participant: Participant, settings: Mapping[str, Any]) -> list[Refusal]:
    """The eligibility-check refusals of one participant (rule ladders)."""
    return ladder_refusals(manifest, participant, settings)


def ladder_refusals(manifest: Manifest, participant: Participant, settings: Mapping[str, Any]) -> list[Refusal]:
    """A department refuses rules that read one of its fields in more rules than its
    owner allows (``elig_max_rules_per_figure``)."""
    if participant.role == "arbiter":
        return []
    raw = manifest.parameters.get("rules")
    if not isinstance(raw, str | dict):
        return []
    try:
        uses = figure_uses(raw, participant.node)
    except ConfigError:
        return []
    limit = int(settings.get("elig_max_rules_per_figure", DEFAULT_MAX_RULES_PER_FIGURE))
    return [
        Refusal(
            "elig_max_rules_per_figure",
            f"{len(names)} rules ({', '.join(names)}) read {participant.node}.{f}; this department "
            f"allows at most {limit} rule(s) on one figure per job",
        )
        for f, names in uses.items()
        if len(names) > limit
    ]


#: keys of ``parameters.baseline``
BASELINE_FIELDS = (
    Param("field", "str"),
    Param("threshold", "str"),
    Param("per_capita", "bool"),
    Param("compare", "str", choices=("<", "<=", ">", ">=")),
)

SCHEMA = KindSchema(
    kind=KIND,
    params=(
        Param("rules", "str|table", doc="the rules file (TOML text or table)"),
        Param(
            "baseline",
            "table",
            doc="{field, threshold, per_capita, compare}: civil affairs' own "
            "decision on a declared figure, for comparison",
            fields=BASELINE_FIELDS,
        ),
        Param(
            "alignment",
            "str",
            "fresh",
            "fresh ECDH-PSI, or the standing alignment each department's policy may allow",
            choices=("fresh", "standing"),
        ),
        WORKERS,
    ),
    settings=SETTINGS,
    refusals=lambda m, part, s: refusals(m, part, s),  # late-bound: the check looks up the module's functions
)
