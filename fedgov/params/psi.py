"""Parameters of the ``psi`` job kind (protocol: docs/protocols/psi.md), and the owner's
disclosure settings for intersection sizes and aligned IDs.

Settings (``[datasets.NAME.disclosure]`` of every participating department):

- ``psi_size_release`` (default ``"none"``): what the requester may receive of
  intersection sizes (``intersection_size``, ``pairwise_sizes``) from a job on
  this dataset: ``"none"`` (nothing), ``"rounded"`` (rounded to a multiple of
  ``psi_size_rounding``, suppressed below ``psi_size_min``) or ``"exact"``.
- ``psi_size_rounding`` (default 10), ``psi_size_min`` (default 11): the
  coarsest rounding / smallest released size the owner accepts (a manifest
  may ask coarser / larger).
- ``psi_size_ledger`` (default false): whether the released size may also be
  written to the public ledger.
- ``psi_id_recipients`` (default ``[]``): other nodes that may receive the
  aligned IDs (the intersection in canonical order; in cardinality mode, the
  size) of a job on this dataset; ``"*"`` = any participant. ``[results] recipients`` may only
  narrow it.

A manifest asks with ``parameters.size_release`` / ``size_rounding`` /
``size_min`` / ``size_on_ledger`` and ``[results] recipients``; each
participant refuses a looser ask before any computation, naming its policy
key. The job releases what the manifest asked (every participant approved it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedgov.params.schema import KindSchema, Param, Refusal, Setting

if TYPE_CHECKING:  # pragma: no cover
    from fedgov.manifest import Manifest, Participant

WORKERS = Param("psi_workers", "int", None, "local worker processes for masking (0 = one per core)", min=0)

KIND = "psi"
#: release levels, loosest last
SIZE_RELEASE = ("none", "rounded", "exact")

SETTINGS = (
    Setting("psi_size_release", "str", "none",
            "intersection sizes the requester may receive: none | rounded | exact", (KIND,),
            choices=SIZE_RELEASE),
    Setting("psi_size_rounding", "int", 10, "released sizes are rounded to a multiple of at least this",
            (KIND,), min=1),
    Setting("psi_size_min", "int", 11, "released sizes below this are suppressed", (KIND,), min=1),
    Setting("psi_size_ledger", "bool", False, "the released size may be written to the public ledger",
            (KIND,)),
    Setting("psi_id_recipients", "list[str]", [],
            "other nodes that may receive the aligned IDs ('*' = any participant)", (KIND,)),
)


def asked_release(parameters: Mapping[str, Any]) -> str:
    """The size release a manifest asks: ``size_release``, else ``"rounded"`` in
    cardinality mode (whose only output is the size) and ``"none"`` in align mode."""
    v = parameters.get("size_release")
    if v is not None:
        return str(v)
    return "rounded" if parameters.get("mode", "align") == "cardinality" else "none"


def refusals(manifest: Manifest, participant: Participant, settings: Mapping[str, Any]) -> list[Refusal]:
    """Every participant refuses asks looser than its owner's settings (sizes, recipients)."""
    return size_refusals(manifest, participant, settings) + recipient_refusals(manifest, participant, settings)


def size_refusals(manifest: Manifest, participant: Participant, settings: Mapping[str, Any]) -> list[Refusal]:
    """Sizes asked (``size_release``, rounding, minimum, ledger) looser than the owner allows."""
    p = manifest.parameters
    out: list[Refusal] = []
    ask = asked_release(p)
    allowed = str(settings.get("psi_size_release", "none"))
    if SIZE_RELEASE.index(ask) > SIZE_RELEASE.index(allowed):
        what = " (mode 'cardinality' releases only the size)" if p.get("mode") == "cardinality" else ""
        out.append(Refusal("psi_size_release",
                           f"parameters.size_release = {ask!r}{what} is looser than this department "
                           f"allows ({allowed!r})"))
    if ask == "rounded" and allowed == "rounded":
        rnd, floor_ = int(p.get("size_rounding", 10)), int(settings.get("psi_size_rounding", 10))
        if rnd < floor_:
            out.append(Refusal("psi_size_rounding",
                               f"parameters.size_rounding = {rnd} is finer than this department's {floor_}"))
        mn, floor_m = int(p.get("size_min", 11)), int(settings.get("psi_size_min", 11))
        if mn < floor_m:
            out.append(Refusal("psi_size_min",
                               f"parameters.size_min = {mn} is below this department's {floor_m}"))
    if p.get("size_on_ledger") and ask != "none" and not settings.get("psi_size_ledger", False):
        out.append(Refusal("psi_size_ledger",
                           "parameters.size_on_ledger = true: this department does not let the ledger "
                           "record intersection sizes"))
    return out


def recipient_refusals(manifest: Manifest, participant: Participant, settings: Mapping[str, Any]) -> list[Refusal]:
    """Other nodes named to receive the result (the aligned IDs; in cardinality mode the
    size) that the owner does not allow (``psi_id_recipients``)."""
    ok = list(settings.get("psi_id_recipients", []))
    what = "the intersection size" if manifest.parameters.get("mode") == "cardinality" else "the aligned IDs"
    return [
        Refusal("psi_id_recipients",
                f"[results] recipients names '{r}': this department does not let '{r}' receive {what}")
        for r in manifest.recipients
        if r in manifest.nodes and r != participant.node and "*" not in ok and r not in ok
    ]


SCHEMA = KindSchema(
    kind=KIND,
    params=(
        Param(
            "mode",
            "str",
            "align",
            "align: parties named in [results] learn the aligned order; "
            "cardinality: only the intersection size",
            choices=("align", "cardinality"),
        ),
        Param("size_release", "str", None,
              "intersection sizes for the requester: none | rounded | exact (default: none in align "
              "mode, rounded in cardinality mode)", choices=SIZE_RELEASE, governed_by=("psi_size_release",)),
        Param("size_rounding", "int", None, "rounded sizes: multiple of (default 10)", min=1,
              governed_by=("psi_size_rounding",)),
        Param("size_min", "int", None, "rounded sizes below this are suppressed (default 11)", min=1,
              governed_by=("psi_size_min",)),
        Param("size_on_ledger", "bool", None, "write the released size to the public ledger",
              governed_by=("psi_size_ledger",)),
        WORKERS,
    ),
    settings=SETTINGS,
    refusals=lambda m, part, s: refusals(m, part, s),  # late-bound: the check looks up the module's functions
)
