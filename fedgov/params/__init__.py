"""One parameter schema per job kind, and the data owner's disclosure settings.

- :func:`check_parameters` — a manifest's ``[parameters]`` against its kind's
  schema. The coordinator calls it at submit; every node calls it again before
  it asks anyone to approve (it never trusts the coordinator's reading).
- :func:`parse_disclosure` — the ``disclosure`` tables of a department's
  ``policy.toml``: every key is a :class:`~fedgov.params.schema.Setting`
  declared by some job kind, with a safe default that holds when the policy
  says nothing.
- :func:`disclosure_refusals` — what a manifest asks of one participant,
  compared with that participant's effective settings; each looser ask is a
  :class:`~fedgov.params.schema.Refusal` naming the policy key. The node
  refuses the task with these reasons before any computation.

Pure and light (no cryptography, no numpy): the coordinator imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedgov.errors import ConfigError
from fedgov.params import cohort_count, eligibility, he_stats, horizontal_fl, psi, vertical_lr
from fedgov.params.schema import KindSchema, Param, Refusal, Setting
from fedgov.tomlutil import check_keys

if TYPE_CHECKING:  # pragma: no cover
    from fedgov.manifest import Manifest, Participant

__all__ = [
    "SCHEMAS",
    "KindSchema",
    "Param",
    "Refusal",
    "Setting",
    "all_settings",
    "check_parameters",
    "default_disclosure",
    "disclosure_refusals",
    "parse_disclosure",
    "schema",
]

SCHEMAS: dict[str, KindSchema] = {
    s.kind: s
    for s in (
        cohort_count.SCHEMA,
        psi.SCHEMA,
        vertical_lr.SCHEMA,
        vertical_lr.SCORE_SCHEMA,
        he_stats.SCHEMA,
        eligibility.SCHEMA,
        horizontal_fl.SCHEMA,
    )
}


def schema(kind: str) -> KindSchema:
    try:
        return SCHEMAS[kind]
    except KeyError:
        raise ConfigError(
            f"unknown job kind '{kind}' (known: {', '.join(SCHEMAS)})", where="manifest"
        ) from None


def check_parameters(
    kind: str, parameters: Mapping[str, Any], where: str = "manifest: parameters"
) -> dict[str, Any]:
    """Validate a manifest's parameters for ``kind``; returns them with schema defaults filled in."""
    return schema(kind).check(parameters, where)


def all_settings() -> dict[str, Setting]:
    """Every disclosure setting any job kind declares, by policy key."""
    out: dict[str, Setting] = {}
    for s in SCHEMAS.values():
        for setting in s.settings:
            prior = out.get(setting.key)
            if prior is not None and prior != setting:
                raise RuntimeError(f"disclosure setting {setting.key!r} declared twice, differently")
            out[setting.key] = setting
    return out


def default_disclosure() -> dict[str, Any]:
    """The safe defaults: what holds when a policy says nothing."""
    return {k: s.default for k, s in all_settings().items()}


def parse_disclosure(table: Mapping[str, Any], base: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``base`` overlaid with a policy's ``disclosure`` table (strict: unknown keys are errors)."""
    settings = all_settings()
    check_keys(dict(table), list(settings), where)
    out = dict(base)
    for key, value in table.items():
        out[key] = settings[key].parse(value, where)
    return out


def disclosure_refusals(
    manifest: Manifest, participant: Participant, settings: Mapping[str, Any], source: str = ""
) -> list[Refusal]:
    """The manifest's asks that are looser than ``participant``'s owner allows.

    ``settings`` are the effective disclosure settings of the participant's
    dataset (:attr:`fedgov.policy.Decision.disclosure`); ``source`` names where
    they live (``policy.toml: datasets.income.disclosure``) for the message.
    """
    check = schema(manifest.kind).refusals
    if check is None:
        return []
    found = check(manifest, participant, settings)
    return [Refusal(r.setting, r.message, r.source or source) for r in found]
