"""Parameters of the ``horizontal-fl`` job kind (docs/protocols/horizontal-fl.md).

Flower's run-config spelling (``local-steps``) is accepted for every key.
"""

from __future__ import annotations

from fedgov.params.schema import KindSchema, Param

SCHEMA = KindSchema(
    kind="horizontal-fl",
    hyphen_aliases=True,
    params=(
        Param("aggregator", "str", doc="the data-less node that runs the SuperLink and aggregates"),
        Param("key_holder", "str", doc="the data-less node that decrypts only sums (never the aggregator)"),
        Param("encrypted", "bool", doc="CKKS-encrypted aggregation"),
        Param("rounds", "int", min=1),
        Param("local_steps", "int", min=1),
        Param("lr", "float", min=0),
        Param("l2", "float", min=0),
        Param("min_clients", "int", doc="rounds with fewer valid region updates fail the job", min=1),
        Param("round_timeout", "float", min=0),
        Param("node_wait_timeout", "float", min=0),
        Param("contribution", "bool", doc="leave-one-out AUC drop per region"),
        Param("dp_clip", "float", doc="clip each local update to this L2 norm (0 = off)", min=0),
        Param("dp_noise", "float", doc="Gaussian noise multiplier (std = dp_noise * dp_clip)", min=0),
        Param("seed", "int"),
    ),
)
