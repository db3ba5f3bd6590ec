"""The building blocks of a job kind's parameter schema and of the owner's disclosure settings.

Two things are declared per job kind (one module each under :mod:`fedgov.params`):

- :class:`Param` — a key a manifest's ``[parameters]`` may hold: its type,
  default, allowed values and bounds. The coordinator checks a manifest
  against it at submit, and every node again before anyone is asked to
  approve (:func:`fedgov.params.check_parameters`): an unknown key is refused
  with a did-you-mean, never ignored.
- :class:`Setting` — a *disclosure setting*: a key of a department's
  ``policy.toml`` (``[defaults.disclosure]`` / ``[datasets.NAME.disclosure]``)
  that bounds what any party can learn from a job on that dataset (masks,
  precision, DP, cohort minima, who receives what). Each has a safe default
  that holds when the policy says nothing. A kind's ``refusals`` function
  compares the manifest's ask with the owner's settings; a looser ask is
  refused *naming the policy key* (:class:`Refusal`).

Pure: no I/O.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedgov.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from fedgov.manifest import Manifest, Participant

#: Value types a Param or Setting may declare.
TYPES = ("int", "float", "bool", "str", "list[str]", "list[int]", "list[float]", "table", "str|table", "any")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def type_error(value: Any, type_: str) -> str | None:
    """Why ``value`` is not of ``type_`` (None when it is)."""
    ok = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": _is_number,
        "bool": lambda v: isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "list[int]": lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
        "list[float]": lambda v: isinstance(v, list) and all(_is_number(x) for x in v),
        "table": lambda v: isinstance(v, dict),
        "str|table": lambda v: isinstance(v, str | dict),
        "any": lambda v: True,
    }[type_]
    if ok(value):
        return None
    words = {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "str": "a string",
        "list[str]": "a list of strings",
        "list[int]": "a list of integers",
        "list[float]": "a list of numbers",
        "table": "a table",
        "str|table": "a string or a table",
    }
    return f"must be {words[type_]}, got {value!r}"


@dataclass(frozen=True)
class Param:
    """One manifest parameter of a job kind."""

    key: str
    type: str
    default: Any = None
    doc: str = ""
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    #: disclosure settings (policy keys) that bound this parameter, for approvers' views
    governed_by: tuple[str, ...] = ()
    #: for a table (or the table form of ``str|table``): its keys; unknown ones are refused.
    #: Empty means the table is free-form (checked by the protocol module).
    fields: tuple[Param, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"unknown param type {self.type!r}")
        if self.fields and "table" not in self.type:
            raise ValueError(f"param {self.key!r}: only tables have fields")

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable for this parameter (None when it is)."""
        err = type_error(value, self.type)
        if err:
            return err
        if self.fields and isinstance(value, dict):
            known = [f.key for f in self.fields]
            for k, v in value.items():
                if k not in known:
                    hint = difflib.get_close_matches(k, known, n=1)
                    extra = f"did you mean '{hint[0]}'?" if hint else f"allowed: {', '.join(known)}"
                    return f"has unknown key '{k}' ({extra})"
                sub = next(f for f in self.fields if f.key == k).problem(v)
                if sub:
                    return f"key '{k}' {sub}"
        if self.choices and isinstance(value, list):  # a list: each element is one of the choices
            bad = [v for v in value if v not in self.choices]
            if bad:
                hint = difflib.get_close_matches(str(bad[0]), [str(c) for c in self.choices], n=1)
                extra = f" (did you mean '{hint[0]}'?)" if hint else ""
                return f"may hold only {', '.join(repr(c) for c in self.choices)}, got {bad[0]!r}{extra}"
        elif self.choices and value not in self.choices:
            return f"must be one of {', '.join(repr(c) for c in self.choices)}, got {value!r}"
        if _is_number(value):
            if self.min is not None and value < self.min:
                return f"must be >= {self.min:g}, got {value!r}"
            if self.max is not None and value > self.max:
                return f"must be <= {self.max:g}, got {value!r}"
        return None


@dataclass(frozen=True)
class Setting:
    """One disclosure setting: a policy key the data owner sets per dataset."""

    key: str
    type: str
    default: Any
    doc: str
    #: job kinds whose leakage this setting bounds
    kinds: tuple[str, ...]
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None

    def parse(self, value: Any, where: str) -> Any:
        """Validate a policy value for this setting (ConfigError naming the key)."""
        err = type_error(value, self.type)
        if err is None and self.choices:
            bad = [v for v in (value if isinstance(value, list) else [value]) if v not in self.choices]
            if bad:
                err = f"must be among {', '.join(repr(c) for c in self.choices)}, got {bad[0]!r}"
        if err is None and _is_number(value):
            if self.min is not None and value < self.min:
                err = f"must be >= {self.min:g}, got {value!r}"
            elif self.max is not None and value > self.max:
                err = f"must be <= {self.max:g}, got {value!r}"
        if err:
            raise ConfigError(f"'{self.key}' {err}", where=where)
        return float(value) if self.type == "float" else value


@dataclass(frozen=True)
class Refusal:
    """A manifest ask looser than the owner allows. ``str()`` is the line an analyst reads."""

    setting: str  # disclosure key, e.g. "vlr_mask_bits_min"
    message: str
    source: str = ""  # where the effective value came from, e.g. "policy.toml: datasets.income.disclosure"

    def __str__(self) -> str:
        src = f"{self.source}." if self.source else "disclosure."
        return f"{self.message} (policy key {src}{self.setting})"


#: ``refusals(manifest, participant, settings) -> [Refusal]`` for one kind
RefusalCheck = Callable[["Manifest", "Participant", Mapping[str, Any]], list[Refusal]]


@dataclass(frozen=True)
class KindSchema:
    """Everything a job kind declares about its parameters."""

    kind: str
    params: tuple[Param, ...]
    settings: tuple[Setting, ...] = ()
    refusals: RefusalCheck | None = None
    doc: str = ""
    #: what the protocol page says each role learns (for approvers): role -> sentence
    learns: Mapping[str, str] = field(default_factory=dict)
    #: accept Flower's run-config spelling (``local-steps``) for ``local_steps``
    hyphen_aliases: bool = False

    def param(self, key: str) -> Param:
        for p in self.params:
            if p.key == key:
                return p
        raise KeyError(key)

    def check(self, parameters: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Validate ``parameters``; returns them with defaults filled in.

        Raises ConfigError naming the key: unknown keys (with a suggestion),
        wrong types, values outside choices or bounds.
        """
        known = [p.key for p in self.params]
        out: dict[str, Any] = {}
        for key, value in parameters.items():
            canon = key.replace("-", "_") if self.hyphen_aliases else key
            if canon in known and canon != key:
                if canon in parameters:
                    raise ConfigError(f"'{key}' and '{canon}' name the same parameter", where=where)
                key = canon
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                extra = (
                    f" (did you mean '{hint[0]}'?)" if hint else f" (allowed: {', '.join(known) or 'none'})"
                )
                raise ConfigError(f"unknown {self.kind} parameter '{key}'{extra}", where=where)
            problem = self.param(key).problem(value)
            if problem:
                raise ConfigError(f"'{key}' {problem}", where=where)
            out[key] = value
        for p in self.params:
            if p.key not in out and p.default is not None:
                out[p.key] = p.default
        return out


# -- helpers for the kinds' refusal checks ------------------------------------------------


def at_least(ask: Any, floor: Any, param: str, setting: str, what: str = "") -> list[Refusal]:
    """Refuse when the manifest's ``param`` (``ask``) is below the owner's floor."""
    if ask is None or floor is None or ask >= floor:
        return []
    w = f" ({what})" if what else ""
    return [Refusal(setting, f"parameters.{param} = {ask!r}{w} is below this department's floor {floor!r}")]


def at_most(ask: Any, ceiling: Any, param: str, setting: str, what: str = "") -> list[Refusal]:
    """Refuse when the manifest's ``param`` (``ask``) is above the owner's ceiling."""
    if ask is None or ceiling is None or ask <= ceiling:
        return []
    w = f" ({what})" if what else ""
    return [Refusal(setting, f"parameters.{param} = {ask!r}{w} is above this department's limit {ceiling!r}")]


def names(items: Sequence[Setting | Param]) -> list[str]:
    return [i.key for i in items]
