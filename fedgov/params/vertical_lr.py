"""Parameters of the ``vertical-lr`` and ``vertical-lr-score`` job kinds (docs/protocols/vertical-lr.md).

Defaults of the training hyper-parameters live in
:class:`fedgov.protocols.vertical_lr.VlrParams` (which also checks their
ranges and the absolute bounds below); this schema checks names, types and
absolute bounds at submit.

**Owner floors** (disclosure settings, ``policy.toml``
``[datasets.NAME.disclosure]``): each data party bounds the masks the
arbiter decrypts under, the precision of what the arbiter returns, and the
evaluation decryptions the guest may get. The safe defaults equal the
protocol's defaults, so an honest manifest that says nothing runs unchanged;
a manifest may only ask stricter (larger masks, more hiding, less precision,
fewer decryptions). A looser ask is refused at the node before approval.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedgov.errors import ConfigError
from fedgov.params.psi import WORKERS
from fedgov.params.schema import KindSchema, Param, Refusal, Setting, at_least, at_most

if TYPE_CHECKING:  # pragma: no cover
    from fedgov.manifest import Manifest, Participant

# -- absolute bounds (no policy can go below them; VlrParams.validate enforces them too) --
MASK_BITS_MIN = 20
MASK_BITS_MAX = 60
MIN_HIDING_BITS_MIN = 16
PRECISION_BITS_MIN = 4
PRECISION_BITS_MAX = 30
SCORE_BOUND_MIN = 1.0

# -- protocol defaults (equal to fedgov.protocols.vertical_lr.VlrParams; a test pins them) --
DEFAULT_MASK_BITS = 30
DEFAULT_MIN_HIDING_BITS = 24
DEFAULT_PRECISION_BITS = 12
DEFAULT_SCORE_BOUND = 64.0

_KINDS = ("vertical-lr", "vertical-lr-score")

MASK_FLOOR = Setting(
    "vlr_mask_bits_min", "int", DEFAULT_MASK_BITS,
    "smallest statistical mask 2^bits over every value the arbiter decrypts",
    kinds=_KINDS, min=MASK_BITS_MIN, max=MASK_BITS_MAX,
)
HIDING_FLOOR = Setting(
    "vlr_min_hiding_bits_min", "int", DEFAULT_MIN_HIDING_BITS,
    "smallest mask headroom (mask bits minus value bits) any decrypted value keeps",
    kinds=_KINDS, min=MIN_HIDING_BITS_MIN, max=MASK_BITS_MAX,
)
SCORE_BOUND_FLOOR = Setting(
    "vlr_score_bound_min", "float", DEFAULT_SCORE_BOUND,
    "smallest |total score| bound the scoring mask budget may assume (smaller claims more hiding)",
    kinds=_KINDS, min=SCORE_BOUND_MIN,
)
PRECISION_CEILING = Setting(
    "vlr_precision_bits_max", "int", DEFAULT_PRECISION_BITS,
    "most bits of precision the arbiter's flooded replies may keep (noise std 2^-(bits+4))",
    kinds=_KINDS, min=PRECISION_BITS_MIN, max=PRECISION_BITS_MAX,
)
SHAPLEY = Setting(
    "vlr_allow_shapley", "bool", True,
    "may the guest re-score every coalition of hosts on the held-out set "
    "(2^hosts - 2 more decryptions of per-row coalition scores)",
    kinds=_KINDS,
)
VALIDATION = Setting(
    "vlr_allow_validation_scores", "bool", True,
    "may the guest get the total validation scores decrypted once per epoch (early stopping, patience > 0)",
    kinds=_KINDS,
)
SETTINGS = (MASK_FLOOR, HIDING_FLOOR, SCORE_BOUND_FLOOR, PRECISION_CEILING, SHAPLEY, VALIDATION)

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
    Param("patience", "int", doc="epochs without improvement before stopping (0 = never)", min=0,
          governed_by=(VALIDATION.key,)),
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
    Param("mask_bits", "int", doc="statistical mask size over each decrypted value",
          min=MASK_BITS_MIN, max=MASK_BITS_MAX, governed_by=(MASK_FLOOR.key,)),
    Param("precision_bits", "int", doc="bits of precision kept under the mask",
          min=PRECISION_BITS_MIN, max=PRECISION_BITS_MAX, governed_by=(PRECISION_CEILING.key,)),
    Param("min_hiding_bits", "int", doc="smallest mask headroom any decrypted value keeps",
          min=MIN_HIDING_BITS_MIN, max=MASK_BITS_MAX, governed_by=(HIDING_FLOOR.key,)),
    Param("score_bound", "float", doc="|total score| bound assumed by the scoring mask budget",
          min=SCORE_BOUND_MIN, governed_by=(SCORE_BOUND_FLOOR.key,)),
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
        governed_by=(SHAPLEY.key,),
    ),
    WORKERS,
)


def mask_refusals(values: Mapping[str, Any], settings: Mapping[str, Any], *, source: str = "") -> list[Refusal]:
    """The mask/precision values (manifest parameters, or a stored model's) looser than the owner allows.

    Missing values take the protocol defaults. Used before approval
    (:func:`refusals`) and, for scoring, by a host on its stored model part.
    """
    out: list[Refusal] = []
    out += at_least(values.get("mask_bits", DEFAULT_MASK_BITS), settings.get(MASK_FLOOR.key),
                    "mask_bits", MASK_FLOOR.key, "mask over every value the arbiter decrypts")
    out += at_least(values.get("min_hiding_bits", DEFAULT_MIN_HIDING_BITS), settings.get(HIDING_FLOOR.key),
                    "min_hiding_bits", HIDING_FLOOR.key)
    out += at_least(values.get("score_bound", DEFAULT_SCORE_BOUND), settings.get(SCORE_BOUND_FLOOR.key),
                    "score_bound", SCORE_BOUND_FLOOR.key)
    out += at_most(values.get("precision_bits", DEFAULT_PRECISION_BITS), settings.get(PRECISION_CEILING.key),
                   "precision_bits", PRECISION_CEILING.key, "precision of the arbiter's replies")
    return [Refusal(r.setting, r.message, source) if source else r for r in out]


def refusals(manifest: Manifest, participant: Participant, settings: Mapping[str, Any]) -> list[Refusal]:
    """What a ``vertical-lr`` manifest asks of this data party beyond its owner's settings."""
    if participant.role == "arbiter":
        return []
    p = manifest.parameters
    out = mask_refusals(p, settings)
    guest_evals = any(q.extra.get("eval_dataset") for q in manifest.data_participants)
    if p.get("shapley") and guest_evals and not settings.get(SHAPLEY.key, True):
        out.append(Refusal(SHAPLEY.key, "parameters.shapley = true (coalition re-scoring) is not allowed "
                           "by this department"))
    if int(p.get("patience", 0) or 0) > 0 and not settings.get(VALIDATION.key, True):
        out.append(Refusal(VALIDATION.key, f"parameters.patience = {p.get('patience')} (validation scores "
                           "decrypted every epoch) is not allowed by this department"))
    return out


#: a training job id as the coordinator issues it (``job-`` + hex); nothing that can name a path
MODEL_ID = re.compile(r"^job-[0-9a-f]{6,64}$")


def check_model_id(value: Any) -> str:
    """``parameters.model`` must be a training job's id, never a path (ConfigError otherwise)."""
    s = str(value or "")
    if not MODEL_ID.match(s):
        raise ConfigError(
            f"parameters.model = {s!r} is not a training job id (job-<hex>); "
            "a model is named by the job that trained it, never by a path",
            where="manifest: parameters",
        )
    return s


def score_refusals(manifest: Manifest, participant: Participant, settings: Mapping[str, Any]) -> list[Refusal]:
    """``vertical-lr-score``: the model must be named by a job id (checked before approval)."""
    check_model_id(manifest.parameters.get("model"))
    return []


SCHEMA = KindSchema(kind="vertical-lr", params=_TRAINING, settings=SETTINGS, refusals=refusals)

SCORE_SCHEMA = KindSchema(
    kind="vertical-lr-score",
    params=(
        Param("model", "str", doc="job id of the vertical-lr training job whose model parts to use"),
        WORKERS,
    ),
    settings=SETTINGS,
    refusals=score_refusals,
)
