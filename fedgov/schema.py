"""Catalogue-style dataset schemas, read from TOML.

A schema describes one dataset the way a national government data-resource
catalogue does: dataset name, description, unique key, update frequency, and
per field its type, unit, allowed range / values / pattern / date format, and
whether it is required.

Guarantees:

* Loading is **strict**: an unknown key, a value of the wrong type, an unknown
  field type, a key that does not apply to the field's type, a duplicate field
  name, a bad regular expression or ``min > max`` raises :class:`ConfigError`
  whose one-line message names the file and the key, e.g.
  ``schemas/income.toml: fields[2].tpye: unknown key (did you mean 'type'?)``
  (field indices are 0-based). TOML syntax errors name file, line and column.
* :class:`DatasetSchema` and :class:`FieldSpec` are immutable.
  ``schema_from_dict(s.to_dict(), where) == s`` for every loaded schema.
* :meth:`DatasetSchema.to_dict` is canonical (defaults filled in, absent
  optional keys omitted, numbers of float fields as floats) and JSON-able;
  :meth:`DatasetSchema.digest` is the SHA-256 of its canonical JSON encoding, so
  two files that mean the same schema have the same digest.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgov.errors import ConfigError

__all__ = [
    "FIELD_TYPES",
    "UPDATE_FREQUENCIES",
    "DatasetSchema",
    "FieldSpec",
    "load_schema",
    "schema_from_dict",
]

FIELD_TYPES: tuple[str, ...] = (
    "string",
    "int",
    "float",
    "bool",
    "date",
    "category",
    "resident_id",
)
UPDATE_FREQUENCIES: tuple[str, ...] = (
    "daily",
    "weekly",
    "monthly",
    "quarterly",
    "yearly",
    "adhoc",
)
DEFAULT_DATE_FORMAT = "%Y-%m-%d"

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_DATASET_KEYS = ("name", "description", "key", "update_frequency")
_FIELD_KEYS = (
    "name",
    "type",
    "required",
    "description",
    "unit",
    "min",
    "max",
    "values",
    "pattern",
    "format",
)
# Optional keys that only make sense for some types.
_KEYS_FOR_TYPE: dict[str, frozenset[str]] = {
    "unit": frozenset({"int", "float"}),
    "min": frozenset({"int", "float"}),
    "max": frozenset({"int", "float"}),
    "values": frozenset({"category"}),
    "pattern": frozenset({"string"}),
    "format": frozenset({"date"}),
}


@dataclass(frozen=True)
class FieldSpec:
    """One column of a dataset.

    ``min``/``max``/``unit`` only for int and float; ``values`` only (and always)
    for category; ``pattern`` only for string; ``format`` only for date, where it
    defaults to ``%Y-%m-%d`` (a ``strftime`` pattern for text sources).
    """

    name: str
    type: str
    required: bool = False
    description: str = ""
    unit: str | None = None
    min: int | float | None = None
    max: int | float | None = None
    values: tuple[str, ...] | None = None
    pattern: str | None = None
    format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form: optional keys that are ``None`` are omitted."""
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "required": self.required,
            "description": self.description,
        }
        for key in ("unit", "min", "max", "pattern", "format"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.values is not None:
            out["values"] = list(self.values)
        return out


@dataclass(frozen=True)
class DatasetSchema:
    """A dataset: name, description, optional unique key, update frequency, fields."""

    name: str
    description: str
    key: str | None
    update_frequency: str
    fields: tuple[FieldSpec, ...]

    @property
    def field_names(self) -> tuple[str, ...]:
        """Field names in declaration order."""
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> FieldSpec:
        """The field called ``name``; :class:`ConfigError` naming the dataset if unknown."""
        for f in self.fields:
            if f.name == name:
                return f
        raise ConfigError(
            f"unknown field {name!r}{_suggest(name, self.field_names)}",
            where=f"dataset {self.name}",
        )

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form, accepted back by :func:`schema_from_dict`."""
        dataset: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "update_frequency": self.update_frequency,
        }
        if self.key is not None:
            dataset["key"] = self.key
        return {"dataset": dataset, "fields": [f.to_dict() for f in self.fields]}

    def digest(self) -> str:
        """SHA-256 hex digest of the canonical JSON of :meth:`to_dict`."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8"
        )
        return hashlib.sha256(blob).hexdigest()


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


class _Ctx:
    """Builds :class:`ConfigError` s that name the file."""

    def __init__(self, where: str) -> None:
        self.where = where

    def err(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{key}: {message}", where=self.where)

    def check_keys(self, table: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.err(f"{prefix}.{key}", f"unknown key{_suggest(str(key), allowed)}")

    def string(
        self,
        table: Mapping[str, Any],
        key: str,
        prefix: str,
        *,
        default: str | None = None,
        required: bool = False,
    ) -> str | None:
        if key not in table:
            if required:
                raise self.err(f"{prefix}.{key}", "missing required key")
            return default
        value = table[key]
        if not isinstance(value, str):
            raise self.err(f"{prefix}.{key}", f"expected a string, got {_type_name(value)}")
        return value

    def name(self, table: Mapping[str, Any], prefix: str) -> str:
        value = self.string(table, "name", prefix, required=True)
        assert value is not None
        if not _NAME.match(value):
            raise self.err(f"{prefix}.name", f"{value!r} must match ^[a-z][a-z0-9_]*$")
        return value


def _number(ctx: _Ctx, value: object, ftype: str, key: str) -> int | float:
    if ftype == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.err(key, f"expected an integer for an int field, got {_type_name(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ctx.err(key, f"expected a number, got {_type_name(value)}")
    return float(value)


def _field_from_dict(ctx: _Ctx, raw: object, index: int) -> FieldSpec:
    prefix = f"fields[{index}]"
    if not isinstance(raw, dict):
        raise ctx.err(prefix, f"expected a table, got {_type_name(raw)}")
    ctx.check_keys(raw, _FIELD_KEYS, prefix)
    name = ctx.name(raw, prefix)
    ftype = ctx.string(raw, "type", prefix, required=True)
    assert ftype is not None
    if ftype not in FIELD_TYPES:
        raise ctx.err(
            f"{prefix}.type",
            f"unknown type {ftype!r}{_suggest(ftype, FIELD_TYPES)}; expected one of {', '.join(FIELD_TYPES)}",
        )
    for key, types in _KEYS_FOR_TYPE.items():
        if key in raw and ftype not in types:
            raise ctx.err(f"{prefix}.{key}", f"not allowed for type {ftype!r} (field {name!r})")
    required = raw.get("required", False)
    if not isinstance(required, bool):
        raise ctx.err(f"{prefix}.required", f"expected true or false, got {_type_name(required)}")
    description = ctx.string(raw, "description", prefix, default="") or ""
    unit = ctx.string(raw, "unit", prefix)
    lo = _number(ctx, raw["min"], ftype, f"{prefix}.min") if "min" in raw else None
    hi = _number(ctx, raw["max"], ftype, f"{prefix}.max") if "max" in raw else None
    if lo is not None and hi is not None and lo > hi:
        raise ctx.err(f"{prefix}.min", f"min {lo} is greater than max {hi} (field {name!r})")
    values: tuple[str, ...] | None = None
    if ftype == "category":
        if "values" not in raw:
            raise ctx.err(f"{prefix}.values", f"required for category field {name!r}")
        vals = raw["values"]
        if not isinstance(vals, list) or not vals or not all(isinstance(v, str) for v in vals):
            raise ctx.err(f"{prefix}.values", "expected a non-empty array of strings")
        dupes = sorted({v for v in vals if vals.count(v) > 1})
        if dupes:
            raise ctx.err(f"{prefix}.values", f"duplicate value {dupes[0]!r}")
        values = tuple(vals)
    pattern = ctx.string(raw, "pattern", prefix)
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ctx.err(f"{prefix}.pattern", f"invalid regular expression: {exc}") from None
    fmt: str | None = None
    if ftype == "date":
        fmt = ctx.string(raw, "format", prefix, default=DEFAULT_DATE_FORMAT)
        assert fmt is not None
        if "%" not in fmt:
            raise ctx.err(f"{prefix}.format", f"{fmt!r} has no strftime directives")
    return FieldSpec(
        name=name,
        type=ftype,
        required=required,
        description=description,
        unit=unit,
        min=lo,
        max=hi,
        values=values,
        pattern=pattern,
        format=fmt,
    )


def schema_from_dict(d: Mapping[str, Any], where: str) -> DatasetSchema:
    """Validate a parsed schema document strictly and build a :class:`DatasetSchema`.

    ``where`` (usually the file path) prefixes every error message.
    """
    ctx = _Ctx(where)
    if not isinstance(d, Mapping):
        raise ConfigError(f"expected a table, got {_type_name(d)}", where=where)
    for key in d:
        if key not in ("dataset", "fields"):
            raise ctx.err(str(key), f"unknown key{_suggest(str(key), ('dataset', 'fields'))}")
    if "dataset" not in d:
        raise ctx.err("dataset", "missing required table [dataset]")
    ds = d["dataset"]
    if not isinstance(ds, dict):
        raise ctx.err("dataset", f"expected a table, got {_type_name(ds)}")
    ctx.check_keys(ds, _DATASET_KEYS, "dataset")
    name = ctx.name(ds, "dataset")
    description = ctx.string(ds, "description", "dataset", default="") or ""
    key = ctx.string(ds, "key", "dataset")
    freq = ctx.string(ds, "update_frequency", "dataset", default="adhoc")
    assert freq is not None
    if freq not in UPDATE_FREQUENCIES:
        raise ctx.err(
            "dataset.update_frequency",
            f"unknown frequency {freq!r}{_suggest(freq, UPDATE_FREQUENCIES)}; "
            f"expected one of {', '.join(UPDATE_FREQUENCIES)}",
        )
    if "fields" not in d:
        raise ctx.err("fields", "missing required array [[fields]]")
    raw_fields = d["fields"]
    if not isinstance(raw_fields, list) or not raw_fields:
        raise ctx.err("fields", "expected a non-empty array of tables [[fields]]")
    fields: list[FieldSpec] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_fields):
        spec = _field_from_dict(ctx, raw, i)
        if spec.name in seen:
            raise ctx.err(
                f"fields[{i}].name",
                f"duplicate field name {spec.name!r} (first at fields[{seen[spec.name]}])",
            )
        seen[spec.name] = i
        fields.append(spec)
    if key is not None:
        if key not in seen:
            names = tuple(seen)
            raise ctx.err("dataset.key", f"{key!r} is not a field{_suggest(key, names)}")
        if not fields[seen[key]].required:
            raise ctx.err("dataset.key", f"key field {key!r} must have required = true")
    return DatasetSchema(
        name=name,
        description=description,
        key=key,
        update_frequency=freq,
        fields=tuple(fields),
    )


def load_schema(path: Path) -> DatasetSchema:
    """Read and strictly validate a schema TOML file (errors name the file)."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("schema file not found", where=where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read schema file: {exc}", where=where) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if m:
            reason = msg[: m.start()].strip()
            raise ConfigError(
                f"line {m.group(1)}, column {m.group(2)}: TOML syntax error: {reason}",
                where=where,
            ) from None
        raise ConfigError(f"TOML syntax error: {msg}", where=where) from None
    return schema_from_dict(doc, where)
