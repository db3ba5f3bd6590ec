"""``fedgov schema infer FILE``: draft a dataset schema from the data, for a person to edit.

The draft is a starting point, not a decision: types are guessed from the
values (resident ID, int, float, bool, date, category, string), ``required``
is true where no cell is empty, the key is the first ID-like column whose
values are all distinct, and observed ranges are written as *comments* (a
range copied from today's data would reject tomorrow's). Every field gets a
``description = "TODO"`` to fill in. The draft always loads with
:func:`fedgov.schema.load_schema` when the column names are valid field names.

Reads the file locally; nothing leaves the machine. The observed minimum and
maximum of numeric columns and the distinct values of category columns are
written into the draft — review them before sharing the schema (schemas are
published in the catalogue).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fedgov.errors import ConfigError, SchemaMismatch

#: a column with at most this many distinct values (and repeats) is drafted as a category
MAX_CATEGORY_VALUES = 20
_RESIDENT_ID = re.compile(r"^\d{17}[\dXx]$")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_BOOL = {"true", "false"}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class DraftField:
    name: str
    type: str
    required: bool
    id_like: bool
    distinct: int
    observed: str = ""
    values: tuple[str, ...] = ()


def _read_text(path: Path, where: str) -> pa.Table:
    if path.suffix.lower() == ".parquet":
        try:
            t = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SchemaMismatch(f"cannot read Parquet: {exc}", where=where) from None
        return pa.table({n: pc.cast(t.column(n), pa.string()) for n in t.column_names})
    from fedgov.datasources import _csv_header, _locate_csv_problem

    header = _csv_header(path, where)
    try:
        return pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types={h: pa.string() for h in header}, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as exc:
        located = _locate_csv_problem(path, where, len(header))
        raise (located or SchemaMismatch(f"malformed CSV: {str(exc).splitlines()[0]}", where=where)) from None


def _guess(name: str, col: list[str | None], rows: int) -> DraftField:
    vals = [v.strip() for v in col if v is not None and v.strip() != ""]
    required = len(vals) == rows and rows > 0
    distinct = len(set(vals))
    lname = name.lower()
    id_like = lname == "id" or lname.endswith("_id") or lname.endswith("id_no")
    observed = ""
    values: tuple[str, ...] = ()
    if vals and all(_RESIDENT_ID.match(v) for v in vals):
        kind, id_like = "resident_id", True
    elif vals and all(v.lower() in _BOOL for v in vals):
        kind = "bool"
    elif vals and all(_INT.match(v) for v in vals) and not (id_like and any(v.startswith("0") and len(v) > 1 for v in vals)):
        nums = [int(v) for v in vals]
        kind, observed = "int", f"{min(nums)} … {max(nums)}"
        if set(nums) <= {0, 1} and distinct == 2:
            observed += " (0/1: a flag? then type = \"bool\" for text sources, or keep int)"
    elif vals and all(_FLOAT.match(v) for v in vals):
        nums = [float(v) for v in vals]
        kind, observed = "float", f"{min(nums):g} … {max(nums):g}"
    elif vals and all(_DATE.match(v) for v in vals):
        kind, observed = "date", f"{min(vals)} … {max(vals)}"
    elif vals and not id_like and distinct <= MAX_CATEGORY_VALUES and distinct < len(vals):
        kind, values = "category", tuple(sorted(set(vals)))
    else:
        kind = "string"
    return DraftField(name, kind, required, id_like, distinct, observed, values)


def infer_schema(path: Path, *, name: str | None = None) -> tuple[str, list[str]]:
    """``(TOML draft, warnings)`` for the CSV or Parquet file ``path``.

    Raises :class:`SchemaMismatch` naming file and row for unreadable data.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ConfigError("file not found", where=where)
    table = _read_text(path, where)
    rows = table.num_rows
    warnings: list[str] = []
    ds_name = name or re.sub(r"[^a-z0-9_]", "_", path.stem.lower()).strip("_") or "dataset"
    if not _NAME.match(ds_name):
        ds_name = "d_" + ds_name
    fields = [_guess(n, table.column(n).to_pylist(), rows) for n in table.column_names]
    for f in fields:
        if not _NAME.match(f.name):
            warnings.append(
                f"column '{f.name}' is not a valid field name (lower case, digits, _): rename it in the data"
            )
    key_field = next((f for f in fields if f.id_like and f.required and f.distinct == rows), None) or next(
        (f for f in fields if f.id_like and f.required), None
    )
    key = key_field.name if key_field else None
    lines = [
        f"# Drafted by `fedgov schema infer` from {path.name} ({rows} rows). Review every field:",
        "# types are guessed, ranges are only what today's data shows (commented out), descriptions are TODO.",
        "[dataset]",
        f"name = {json.dumps(ds_name)}",
        'description = "TODO: what this dataset is, who keeps it"',
    ]
    if key_field:
        lines.append(f"key = {json.dumps(key)}")
        if key_field.distinct < rows:
            lines.append(f"# note: only {key_field.distinct} distinct values in {rows} rows (repeated IDs)")
    else:
        id_cols = [f.name for f in fields if f.id_like]
        lines.append(
            "# key = \"...\"  # no ID-like column without empty cells"
            + (f" (ID-like: {', '.join(id_cols)})" if id_cols else "")
        )
    lines.append('update_frequency = "adhoc"  # daily, weekly, monthly, quarterly, yearly or adhoc')
    for f in fields:
        lines += ["", "[[fields]]", f"name = {json.dumps(f.name)}", f'type = "{f.type}"',
                  f"required = {'true' if f.required else 'false'}"]
        note = " (ID-like)" if f.id_like else ""
        lines.append(f'description = "TODO{note}"')
        if f.type == "category":
            lines.append(f"values = {json.dumps(list(f.values), ensure_ascii=False)}")
        if f.observed:
            lo, _, hi = f.observed.partition(" … ")
            if f.type in ("int", "float"):
                lines.append(f"# min = {lo}")
                lines.append(f"# max = {hi.split(' ')[0]}")
                if "(" in hi:
                    lines.append(f"# note: {hi[hi.index('(') + 1:-1]}")
            else:
                lines.append(f"# observed {f.observed}")
        if not f.required and rows:
            lines.append("# some cells are empty: required = false")
    return "\n".join(lines) + "\n", warnings
