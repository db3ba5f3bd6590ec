"""Parameters of the ``he-stats`` job kind (docs/protocols/he-stats.md)."""

from __future__ import annotations

from fedgov.params.psi import WORKERS
from fedgov.params.schema import KindSchema, Param

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
        Param("dp", "table", doc="{mechanism, epsilon, delta}: owner-side noise", fields=DP_FIELDS),
        Param("mask_bits", "int", doc="statistical mask size over each decrypted slot"),
        Param("key_holder", "str", doc="horizontal: the data-less node that decrypts totals"),
        Param("combiner", "str", doc="horizontal: the data-less node that adds the regions' parts"),
        WORKERS,
    ),
)
