"""Parameters of the ``cohort-count`` job kind (protocol: docs/protocols/cohort-count.md).

Shares the owner's ``stats_*`` disclosure settings with he-stats (DP on by
default, ε range, budget per dataset and period, minimum cell).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedgov.params.he_stats import COUNT_SETTINGS, epsilon_refusals
from fedgov.params.schema import KindSchema, Param, Refusal

if TYPE_CHECKING:  # pragma: no cover
    from fedgov.manifest import Manifest, Participant


def refusals(manifest: Manifest, participant: Participant, settings: Mapping[str, Any]) -> list[Refusal]:
    return epsilon_refusals(manifest, settings)


SCHEMA = KindSchema(
    kind="cohort-count",
    params=(
        Param("dp", "table", doc="{epsilon}: the ε this count spends (within each owner's range)",
              governed_by=("stats_epsilon_min", "stats_epsilon_max", "stats_dp"),
              fields=(Param("epsilon", "float", min=0),)),
    ),
    settings=COUNT_SETTINGS,
    refusals=refusals,
)
