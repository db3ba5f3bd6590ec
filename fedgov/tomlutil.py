"""Strict TOML reading: syntax errors and unknown keys become one-line errors.

Every configuration file in fedgov (node config, policy, schema, manifest,
run spec) is read through these helpers so that a typo is reported with the
file and the dotted key, e.g. ``policy.toml: datasets.income.rules[0].kind:
unknown key (did you mean 'kinds'?)``.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedgov.errors import ConfigError


def load_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; ConfigError names the file (and line) on failure."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", where=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read file: {exc}", where=str(path)) from None
    return parse_toml(text, str(path))


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """Parse TOML text; ConfigError carries ``where`` and the parser's message."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", where=where) from None


def check_keys(
    table: dict[str, Any], allowed: Iterable[str], where: str, *, required: Iterable[str] = ()
) -> None:
    """Reject unknown keys (with a suggestion) and missing required keys."""
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else f" (allowed: {', '.join(allowed)})"
            raise ConfigError(f"unknown key '{key}'{extra}", where=where)
    for key in required:
        if key not in table:
            raise ConfigError(f"missing required key '{key}'", where=where)


def get_str(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        if value is None:
            raise ConfigError(f"missing required key '{key}'", where=where)
        raise ConfigError(f"'{key}' must be a non-empty string, got {value!r}", where=where)
    return value


def get_int(table: dict[str, Any], key: str, where: str, default: int, *, minimum: int = 0) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"'{key}' must be an integer >= {minimum}, got {value!r}", where=where)
    return value


def get_str_list(table: dict[str, Any], key: str, where: str, default: list[str] | None = None) -> list[str]:
    value = table.get(key, default)
    if value is None:
        raise ConfigError(f"missing required key '{key}'", where=where)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"'{key}' must be a list of strings, got {value!r}", where=where)
    return list(value)


def get_table(table: dict[str, Any], key: str, where: str, *, required: bool = False) -> dict[str, Any]:
    value = table.get(key)
    if value is None:
        if required:
            raise ConfigError(f"missing required table [{key}]", where=where)
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"'{key}' must be a table", where=where)
    return value
