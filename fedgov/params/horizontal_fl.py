"""Parameters of the ``horizontal-fl`` job kind (docs/protocols/horizontal-fl.md).

Flower's run-config spelling (``local-steps``) is accepted for every key.

**Owner settings** (``policy.toml`` ``[datasets.NAME.disclosure]``): each
region decides whether its updates may travel unencrypted, the fewest
regions a round may aggregate, the differential privacy its updates get,
and whether its validation data may be a training dataset of the same job.
Safe defaults: encryption required, at least 2 regions per round, no DP
demanded, validation data distinct from training data. A manifest may only
be stricter; a looser ask is refused at the node before approval.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedgov.params.schema import KindSchema, Param, Refusal, Setting, at_least

if TYPE_CHECKING:  # pragma: no cover
    from fedgov.manifest import Manifest, Participant

#: fewest region updates any round may add up (the key holder refuses smaller sums too)
MIN_CLIENTS_FLOOR = 2
#: the run's defaults (equal to fedgov.hfl.deployment.DEFAULT_PARAMS; a test pins them)
DEFAULT_MIN_CLIENTS = 2

_KINDS = ("horizontal-fl",)

REQUIRE_ENCRYPTION = Setting(
    "hfl_require_encryption", "bool", True,
    "this region's updates travel only CKKS-encrypted to a key holder (encrypted = false is refused)",
    kinds=_KINDS,
)
MIN_CLIENTS = Setting(
    "hfl_min_clients_min", "int", DEFAULT_MIN_CLIENTS,
    "fewest regions whose updates a round may aggregate",
    kinds=_KINDS, min=MIN_CLIENTS_FLOOR,
)
DP_NOISE = Setting(
    "hfl_dp_noise_min", "float", 0.0,
    "smallest Gaussian noise multiplier on this region's clipped updates (0 = no DP demanded)",
    kinds=_KINDS, min=0.0,
)
DP_CLIP = Setting(
    "hfl_dp_clip_max", "float", 0.0,
    "largest L2 clip of this region's updates (0 = no clipping demanded)",
    kinds=_KINDS, min=0.0,
)
EVAL_ON_TRAINING = Setting(
    "hfl_eval_on_training_data", "bool", False,
    "may this region's eval_dataset be the dataset it trains on in the same job",
    kinds=_KINDS,
)
SETTINGS = (REQUIRE_ENCRYPTION, MIN_CLIENTS, DP_NOISE, DP_CLIP, EVAL_ON_TRAINING)


def _get(p: Mapping[str, Any], key: str, default: Any) -> Any:
    return p.get(key, p.get(key.replace("_", "-"), default))


def refusals(manifest: Manifest, participant: Participant, settings: Mapping[str, Any]) -> list[Refusal]:
    """What a ``horizontal-fl`` manifest asks of this region beyond its owner's settings."""
    if participant.role == "arbiter":
        return []
    p = manifest.parameters
    out: list[Refusal] = []
    encrypted = bool(_get(p, "encrypted", True))
    if not encrypted and settings.get(REQUIRE_ENCRYPTION.key, True):
        out.append(Refusal(REQUIRE_ENCRYPTION.key, "parameters.encrypted = false (updates in the clear to the "
                           "aggregator) is not allowed by this department"))
    out += at_least(int(_get(p, "min_clients", DEFAULT_MIN_CLIENTS)),
                    max(int(settings.get(MIN_CLIENTS.key, DEFAULT_MIN_CLIENTS)), MIN_CLIENTS_FLOOR),
                    "min_clients", MIN_CLIENTS.key, "regions per aggregated round")
    clip = float(_get(p, "dp_clip", 0.0))
    noise = float(_get(p, "dp_noise", 0.0))
    noise_min = float(settings.get(DP_NOISE.key, 0.0))
    clip_max = float(settings.get(DP_CLIP.key, 0.0))
    if noise_min > 0:
        if clip <= 0:
            out.append(Refusal(DP_NOISE.key, "parameters.dp_clip = 0 (no clipping, so no DP noise) but this "
                               f"department demands noise multiplier >= {noise_min:g}"))
        else:
            out += at_least(noise, noise_min, "dp_noise", DP_NOISE.key, "Gaussian noise multiplier")
    if clip_max > 0 and not 0 < clip <= clip_max:
        out.append(Refusal(DP_CLIP.key, f"parameters.dp_clip = {clip:g} is outside this department's "
                           f"limit (0, {clip_max:g}]"))
    eval_ds = participant.extra.get("eval_dataset")
    if eval_ds and str(eval_ds) == participant.dataset and not settings.get(EVAL_ON_TRAINING.key, False):
        out.append(Refusal(EVAL_ON_TRAINING.key, f"eval_dataset '{eval_ds}' is the dataset this region "
                           "trains on in the same job"))
    return out


SCHEMA = KindSchema(
    kind="horizontal-fl",
    hyphen_aliases=True,
    settings=SETTINGS,
    refusals=refusals,
    params=(
        Param("aggregator", "str", doc="the data-less node that runs the SuperLink and aggregates"),
        Param("key_holder", "str", doc="the data-less node that decrypts only sums (never the aggregator)"),
        Param("encrypted", "bool", doc="CKKS-encrypted aggregation", governed_by=(REQUIRE_ENCRYPTION.key,)),
        Param("rounds", "int", min=1),
        Param("local_steps", "int", min=1),
        Param("lr", "float", min=0),
        Param("l2", "float", min=0),
        Param("min_clients", "int", doc="rounds with fewer valid region updates fail the job",
              min=MIN_CLIENTS_FLOOR, governed_by=(MIN_CLIENTS.key,)),
        Param("round_timeout", "float", min=0),
        Param("node_wait_timeout", "float", min=0),
        Param("contribution", "bool", doc="leave-one-out AUC drop per region"),
        Param("dp_clip", "float", doc="clip each local update to this L2 norm (0 = off)", min=0,
              governed_by=(DP_CLIP.key,)),
        Param("dp_noise", "float", doc="Gaussian noise multiplier (std = dp_noise * dp_clip)", min=0,
              governed_by=(DP_NOISE.key,)),
        Param("seed", "int"),
    ),
)
