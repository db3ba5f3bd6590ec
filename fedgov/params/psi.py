"""Parameters of the ``psi`` job kind (protocol: docs/protocols/psi.md)."""

from __future__ import annotations

from fedgov.params.schema import KindSchema, Param

WORKERS = Param("psi_workers", "int", None, "local worker processes for masking (0 = one per core)", min=0)

SCHEMA = KindSchema(
    kind="psi",
    params=(
        Param(
            "mode",
            "str",
            "align",
            "align: parties named in [results] learn the aligned order; "
            "cardinality: only the intersection size",
            choices=("align", "cardinality"),
        ),
        WORKERS,
    ),
)
