"""Parameters of the ``eligibility-check`` job kind (docs/protocols/eligibility-check.md)."""

from __future__ import annotations

from fedgov.params.psi import WORKERS
from fedgov.params.schema import KindSchema, Param

#: keys of ``parameters.baseline``
BASELINE_FIELDS = (
    Param("field", "str"),
    Param("threshold", "str"),
    Param("per_capita", "bool"),
    Param("compare", "str", choices=("<", "<=", ">", ">=")),
)

SCHEMA = KindSchema(
    kind="eligibility-check",
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
)
