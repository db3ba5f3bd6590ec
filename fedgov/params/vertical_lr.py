"""Parameters of the ``vertical-lr`` and ``vertical-lr-score`` job kinds (docs/protocols/vertical-lr.md).

Defaults of the training hyper-parameters live in
:class:`fedgov.protocols.vertical_lr.VlrParams` (which also checks their
ranges); this schema checks names and types at submit.
"""

from __future__ import annotations

from fedgov.params.psi import WORKERS
from fedgov.params.schema import KindSchema, Param

#: keys of ``parameters.ckks`` (CkksParams.validate checks the combination)
CKKS_FIELDS = (
    Param("poly_modulus_degree", "int", min=1024),
    Param("coeff_mod_bit_sizes", "list[int]"),
    Param("scale_bits", "int", min=1),
    Param("decrypt_primes", "int", min=1),
)

_TRAINING = (
    Param("epochs", "int", doc="passes over the training rows", min=1),
    Param("batch_size", "int", doc="rows per batch (at most the CKKS slots)", min=1),
    Param("learning_rate", "float", doc="step size", min=0),
    Param("optimizer", "str", doc="adam | sgd", choices=("adam", "sgd")),
    Param("l2", "float", doc="L2 penalty", min=0),
    Param("validation_fraction", "float", doc="rows held out for early stopping", min=0, max=0.9),
    Param("patience", "int", doc="epochs without improvement before stopping (0 = never)", min=0),
    Param("min_delta", "float", doc="smallest improvement that counts"),
    Param("class_weight", "any", doc="null | 'balanced' | [w0, w1]"),
    Param("sigmoid_degree", "int", doc="1 or 3", choices=(1, 3)),
    Param("sigmoid_range", "float", doc="range of the sigmoid fit"),
    Param("clip", "float", doc="standardised features are clipped to [-clip, clip]", min=0),
    Param("seed", "int", doc="fixes the validation split and batch order"),
    Param(
        "ckks",
        "table",
        doc="CKKS parameters {poly_modulus_degree, coeff_mod_bit_sizes, scale_bits, decrypt_primes}",
        fields=CKKS_FIELDS,
    ),
    Param("mask_bits", "int", doc="statistical mask size over each decrypted value"),
    Param("precision_bits", "int", doc="bits of precision kept under the mask"),
    Param("min_hiding_bits", "int", doc="smallest mask headroom any decrypted value keeps"),
    Param("score_bound", "float", doc="|total score| bound assumed by the scoring mask budget"),
    Param(
        "join",
        "str",
        "inner",
        "inner: rows every party holds; left: all the guest's rows",
        choices=("inner", "left"),
    ),
    Param(
        "shapley",
        "bool",
        False,
        "re-score every coalition of departments on the held-out set "
        "(exact Shapley contribution; each coalition is one more decryption of scores)",
    ),
    WORKERS,
)

SCHEMA = KindSchema(kind="vertical-lr", params=_TRAINING)

SCORE_SCHEMA = KindSchema(
    kind="vertical-lr-score",
    params=(
        Param("model", "str", doc="job id of the vertical-lr training job whose model parts to use"),
        WORKERS,
    ),
)
