"""Parameters of the ``he-stats`` job kind and the statistics disclosure settings
(docs/protocols/he-stats.md).

The ``stats_*`` settings are the data owner's (and the cohort holder's), per
dataset, in ``policy.toml`` ``[defaults.disclosure]`` /
``[datasets.NAME.disclosure]``; ``cohort-count`` shares them. A manifest may
ask for stricter (a smaller ε, larger masks, a larger minimum cell), never
looser: :func:`refusals` names the key, and the node refuses before any
computation. The protocol module (:class:`fedgov.protocols.he_stats.Disclosure`)
enforces the same bounds again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedgov.params.psi import WORKERS
from fedgov.params.schema import KindSchema, Param, Refusal, Setting, at_least

if TYPE_CHECKING:  # pragma: no cover
    from fedgov.manifest import Manifest, Participant

_KINDS = ("he-stats", "cohort-count")
STATS_DP = Setting("stats_dp", "bool", True, "DP noise (OpenDP discrete Laplace) on every released "
                   "statistic; false only if the owner says so", kinds=_KINDS)
STATS_EPSILON_MIN = Setting("stats_epsilon_min", "float", 0.05, "smallest ε one query may ask",
                            kinds=_KINDS, min=1e-6)
STATS_EPSILON_MAX = Setting("stats_epsilon_max", "float", 1.0, "largest ε one query may spend",
                            kinds=_KINDS, min=1e-6, max=10.0)
STATS_BUDGET_EPSILON = Setting("stats_budget_epsilon", "float", 3.0, "ε budget of the dataset per "
                               "period, shared by all requesters and fields", kinds=_KINDS, min=1e-6)
STATS_BUDGET_PERIOD = Setting("stats_budget_period", "str", "quarter", "the budget's period",
                              kinds=_KINDS, choices=("day", "month", "quarter", "year", "forever"))
STATS_MIN_CELL = Setting("stats_min_cell", "int", 11, "smallest noisy count released (and the "
                         "auditor's smallest isolable set)", kinds=_KINDS, min=1)
STATS_MASK_BITS_MIN = Setting("stats_mask_bits_min", "int", 40, "smallest statistical mask (bits "
                              "over each slot's bound) the cohort holder uses", kinds=("he-stats",),
                              min=32, max=60)
SETTINGS = (STATS_DP, STATS_EPSILON_MIN, STATS_EPSILON_MAX, STATS_BUDGET_EPSILON, STATS_BUDGET_PERIOD,
            STATS_MIN_CELL, STATS_MASK_BITS_MIN)
COUNT_SETTINGS = SETTINGS[:-1]


def epsilon_refusals(manifest: Manifest, settings: Mapping[str, Any]) -> list[Refusal]:
    """The manifest's ``parameters.dp.epsilon`` against the owner's ε range."""
    dp = manifest.parameters.get("dp")
    if not isinstance(dp, dict) or "epsilon" not in dp:
        return []
    e = dp["epsilon"]
    if isinstance(e, bool) or not isinstance(e, int | float):
        return []
    out = []
    hi = settings.get("stats_epsilon_max", STATS_EPSILON_MAX.default)
    lo = settings.get("stats_epsilon_min", STATS_EPSILON_MIN.default)
    if e > hi:
        out.append(Refusal("stats_epsilon_max", f"parameters.dp.epsilon = {e!r} is above this "
                           f"department's limit {hi!r}"))
    if e < lo:
        out.append(Refusal("stats_epsilon_min", f"parameters.dp.epsilon = {e!r} is below this "
                           f"department's floor {lo!r}"))
    return out


def refusals(manifest: Manifest, participant: Participant, settings: Mapping[str, Any]) -> list[Refusal]:
    """he-stats asks looser than this participant's settings (checked by every data participant)."""
    out = epsilon_refusals(manifest, settings)
    mb = manifest.parameters.get("mask_bits")
    if isinstance(mb, int) and not isinstance(mb, bool):
        out += at_least(mb, settings.get("stats_mask_bits_min", STATS_MASK_BITS_MIN.default),
                        "mask_bits", "stats_mask_bits_min")
    return out


#: statistics a he-stats job may ask (fedgov.protocols.he_stats.STATS; the params stay import-light)
STATS = ("count", "sum", "mean", "variance", "histogram")

#: keys of ``parameters.dp`` (the protocol's DPConfig checks the combination)
DP_FIELDS = (
    Param("mechanism", "str", choices=("laplace", "gaussian")),
    Param("epsilon", "float", min=0),
    Param("delta", "float", min=0, max=1),
)

SCHEMA = KindSchema(
    kind="he-stats",
    params=(
        Param("field", "str", doc="the data owner's value field"),
        Param("group_by", "str", doc="the cohort holder's categorical field"),
        Param("groups", "list[str]", doc="group labels (required for horizontal queries)"),
        Param("stats", "list[str]", doc="count sum mean variance histogram", choices=STATS),
        Param("clip", "list[float]", doc="[lo, hi]: values are clipped by the owner"),
        Param("bins", "list[float]", doc="histogram edges"),
        Param("include_total", "bool", doc="release the margin over all groups too"),
        Param("dp", "table", doc="{mechanism = 'laplace', epsilon}: the ε this query spends "
              "(within the owner's range; DP is on unless the owner switched it off)",
              governed_by=("stats_epsilon_min", "stats_epsilon_max", "stats_dp"), fields=DP_FIELDS),
        Param("mask_bits", "int", doc="statistical mask size over each decrypted slot",
              governed_by=("stats_mask_bits_min",)),
        Param("min_cell", "int", doc="raise the owners' minimum cell (never lower it)", min=1,
              governed_by=("stats_min_cell",)),
        Param("key_holder", "str", doc="horizontal: the data-less node that decrypts totals"),
        Param("combiner", "str", doc="horizontal: the data-less node that adds the regions' parts"),
        WORKERS,
    ),
    settings=SETTINGS,
    refusals=refusals,
)
