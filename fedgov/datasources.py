"""Read a department's dataset into a typed :class:`pyarrow.Table`.

One entry point, :func:`read_dataset`, for three kinds of source:

* a ``.csv`` file (read with ``pyarrow.csv`` and explicit column types),
* a ``.parquet`` file,
* an SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``), reading a
  ``table`` or a ``query`` in batches through SQLAlchemy Core.

Guarantees of the returned table:

* its columns are exactly the schema's fields (or the requested ``columns``), in
  schema (or request) order;
* types follow the schema: ``string``/``category``/``resident_id`` → ``string``,
  ``int`` → ``int64``, ``float`` → ``float64``, ``bool`` → ``bool``,
  ``date`` → ``date32``; an empty cell or SQL ``NULL`` → null;
* resident IDs are read as text and never pass through a number; values are
  not normalised, trimmed or range-checked — range, enumeration, pattern and
  check-digit violations are data-quality findings, not load errors;
* a **required ID** (a required field of type ``resident_id``, or the
  schema's required ``key`` field) is never empty: an empty or blank cell is a
  load error naming row and column (a record nobody can be matched to cannot
  enter a join, and a node must not start with it);
* a CSV row that is not UTF-8, or has fewer or more cells than the header, is
  a load error naming the 1-based row (and the byte offset of a bad byte).

Every load error is a :class:`SchemaMismatch` (or :class:`ConfigError` for a
malformed request) whose one-line message names the file or table, and where it
applies the column and 1-based data row (the header is not a row), e.g.
``tax/income.csv row 17 column annual_income: 'abc' is not a float``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fedgov.errors import ConfigError, SchemaMismatch
from fedgov.schema import DEFAULT_DATE_FORMAT, DatasetSchema, FieldSpec

__all__ = ["ARROW_TYPES", "arrow_schema", "read_dataset", "row_count"]

ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "category": pa.string(),
    "resident_id": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
}
_NOUN = {
    "int": "an int",
    "float": "a float",
    "bool": "a bool (true/false/1/0)",
    "date": "a date",
}
NULL_VALUES = ["", "NA", "N/A", "NULL", "null", "NaN", "nan", "None"]
TRUE_VALUES = ["true", "True", "TRUE", "1"]
FALSE_VALUES = ["false", "False", "FALSE", "0"]
SQL_BATCH_ROWS = 50_000


def arrow_schema(schema: DatasetSchema, columns: Sequence[str] | None = None) -> pa.Schema:
    """The Arrow schema :func:`read_dataset` returns for ``schema`` / ``columns``."""
    specs = _requested(schema, columns)
    return pa.schema([pa.field(f.name, ARROW_TYPES[f.type]) for f in specs])


def _requested(schema: DatasetSchema, columns: Sequence[str] | None) -> list[FieldSpec]:
    if columns is None:
        return list(schema.fields)
    seen: set[str] = set()
    out: list[FieldSpec] = []
    for name in columns:
        if name in seen:
            raise ConfigError(f"column {name!r} requested twice", where=f"dataset {schema.name}")
        seen.add(name)
        out.append(schema.field(name))
    return out


def _is_url(source: str) -> bool:
    return "://" in source


# --------------------------------------------------------------------------- checks


def _check_columns(present: Sequence[str], schema: DatasetSchema, where: str) -> None:
    dupes = sorted({c for c in present if list(present).count(c) > 1})
    if dupes:
        raise SchemaMismatch(f"column {dupes[0]} appears more than once", where=where)
    have = set(present)
    missing = [f for f in schema.field_names if f not in have]
    if missing:
        raise SchemaMismatch(
            f"schema field {missing[0]} is missing from the data"
            + (f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""),
            where=f"{where} column {missing[0]}",
        )
    known = set(schema.field_names)
    extra = [c for c in present if c not in known]
    if extra:
        raise SchemaMismatch(
            f"data column {extra[0]} is not in schema {schema.name}"
            + (f" (also: {', '.join(extra[1:])})" if len(extra) > 1 else ""),
            where=f"{where} column {extra[0]}",
        )


# ----------------------------------------------------------------------- conversion


def _first_bad(arr: pa.Array, convert: Any) -> int:
    """Index of the first element whose conversion fails (binary search on prefixes)."""
    lo, hi = 0, len(arr)  # invariant: arr[:lo] converts, arr[:hi] fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            convert(arr.slice(0, mid))
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            hi = mid
    return lo


def _string_converter(spec: FieldSpec) -> Any:
    target = ARROW_TYPES[spec.type]
    if spec.type == "date":
        fmt = spec.format or DEFAULT_DATE_FORMAT

        def conv_date(a: pa.Array) -> pa.Array:
            ts = pc.strptime(pc.utf8_trim_whitespace(a), format=fmt, unit="s")
            return pc.cast(ts, pa.date32(), safe=False)

        return conv_date
    if spec.type == "bool":

        def conv_bool(a: pa.Array) -> pa.Array:
            return pc.cast(pc.utf8_lower(pc.utf8_trim_whitespace(a)), pa.bool_())

        return conv_bool

    def conv(a: pa.Array) -> pa.Array:
        return pc.cast(pc.utf8_trim_whitespace(a), target)

    return conv


def _convert(arr: pa.Array | pa.ChunkedArray, spec: FieldSpec, where: str, row_offset: int = 0) -> pa.Array:
    """Convert one column to the schema type; errors name row and column."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    target = ARROW_TYPES[spec.type]
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    if arr.type == target:
        return arr
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), type=target)
    src = arr.type
    if target == pa.string():
        raise SchemaMismatch(
            f"stored as {src}, expected text for a {spec.type} field",
            where=f"{where} column {spec.name}",
        )
    if pa.types.is_string(src):
        convert = _string_converter(spec)
    elif spec.type == "date" and (pa.types.is_timestamp(src) or pa.types.is_date(src)):

        def convert(a: pa.Array) -> pa.Array:
            return pc.cast(a, pa.date32(), safe=False)

    elif spec.type in ("int", "float") and (
        pa.types.is_integer(src) or pa.types.is_floating(src) or pa.types.is_decimal(src)
    ):

        def convert(a: pa.Array) -> pa.Array:
            return pc.cast(a, target)

    elif spec.type == "bool" and pa.types.is_integer(src):

        def convert(a: pa.Array) -> pa.Array:
            bad = pc.and_(pc.not_equal(a, 0), pc.not_equal(a, 1))
            if pc.any(bad).as_py():
                raise pa.ArrowInvalid("bool out of 0/1")
            return pc.cast(a, pa.bool_())

    else:
        raise SchemaMismatch(
            f"stored as {src}, cannot hold a {spec.type} field",
            where=f"{where} column {spec.name}",
        )
    try:
        return convert(arr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        i = _first_bad(arr, convert)
        value = arr[i].as_py()
        noun = _NOUN.get(spec.type, spec.type)
        if spec.type == "date":
            noun += f" in format {spec.format or DEFAULT_DATE_FORMAT}"
        raise SchemaMismatch(
            f"{value!r} is not {noun}",
            where=f"{where} row {row_offset + i + 1} column {spec.name}",
        ) from None


def _assemble(
    cols: dict[str, pa.Array | pa.ChunkedArray],
    specs: Sequence[FieldSpec],
    where: str,
    row_offset: int = 0,
) -> pa.Table:
    arrays = [_convert(cols[f.name], f, where, row_offset) for f in specs]
    return pa.Table.from_arrays(
        arrays, schema=pa.schema([pa.field(f.name, ARROW_TYPES[f.type]) for f in specs])
    )


# ------------------------------------------------------------------------------ CSV


def _csv_header(path: Path, where: str) -> list[str]:
    with path.open("rb") as fh:
        first = fh.readline()
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SchemaMismatch(f"header is not UTF-8 text (byte {exc.start + 1})", where=where) from None
    header = next(csv.reader([text]), None)
    if not header:
        raise SchemaMismatch("empty file (no header row)", where=where)
    return header


def _locate_csv_problem(path: Path, where: str, width: int) -> SchemaMismatch | None:
    """The first row that is not UTF-8 or has a wrong number of cells, as an error naming it.

    Rows are physical lines (fedgov's CSVs have no newlines inside values), 1-based
    after the header. ``None`` when every row is well formed.
    """
    with path.open("rb") as fh:
        fh.readline()  # header
        for row, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return SchemaMismatch(
                    f"not UTF-8 text (byte {exc.start + 1} of the row is 0x{raw[exc.start]:02x}); "
                    "re-export the file as UTF-8",
                    where=f"{where} row {row}",
                )
            if not line.strip():
                continue
            cells = next(csv.reader([line]), [])
            if len(cells) != width:
                return SchemaMismatch(
                    f"{len(cells)} cell(s), the header has {width}"
                    + (" (a short row)" if len(cells) < width else ""),
                    where=f"{where} row {row}",
                )
    return None


def _csv_fast_type(spec: FieldSpec) -> pa.DataType:
    # Dates with a non-ISO format are parsed after reading, as text.
    if spec.type == "date" and (spec.format or DEFAULT_DATE_FORMAT) != DEFAULT_DATE_FORMAT:
        return pa.string()
    return ARROW_TYPES[spec.type]


def _read_csv(path: Path, where: str, schema: DatasetSchema, specs: list[FieldSpec]) -> pa.Table:
    header = _csv_header(path, where)
    _check_columns(header, schema, where)
    names = [f.name for f in specs]
    read_opts = pacsv.ReadOptions(use_threads=True, block_size=1 << 24)
    parse_opts = pacsv.ParseOptions(newlines_in_values=False)

    def convert_opts(types: dict[str, pa.DataType]) -> pacsv.ConvertOptions:
        return pacsv.ConvertOptions(
            column_types=types,
            include_columns=names,
            null_values=NULL_VALUES,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            true_values=TRUE_VALUES,
            false_values=FALSE_VALUES,
        )

    try:
        fast = pacsv.read_csv(
            path, read_opts, parse_opts, convert_opts({f.name: _csv_fast_type(f) for f in specs})
        )
        if all(fast.schema.field(f.name).type == ARROW_TYPES[f.type] for f in specs):
            return fast.select(names)
        cols = {n: fast.column(n) for n in names}
    except pa.ArrowInvalid as exc:
        if "CSV parse error" in str(exc) or "UTF8" in str(exc) or "UTF-8" in str(exc):
            located = _locate_csv_problem(path, where, len(header))
            if located is not None:
                raise located from None
            raise SchemaMismatch(f"malformed CSV: {str(exc).splitlines()[0]}", where=where) from None
        # Slow path: read as text, convert column by column to find the bad cell.
        text = pacsv.read_csv(path, read_opts, parse_opts, convert_opts({n: pa.string() for n in names}))
        cols = {n: text.column(n) for n in names}
    return _assemble(cols, specs, where)


# -------------------------------------------------------------------------- Parquet


def _read_parquet(path: Path, where: str, schema: DatasetSchema, specs: list[FieldSpec]) -> pa.Table:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaMismatch(f"not a readable Parquet file: {exc}", where=where) from None
    _check_columns(pf.schema_arrow.names, schema, where)
    table = pf.read(columns=[f.name for f in specs])
    return _assemble({f.name: table.column(f.name) for f in specs}, specs, where)


# ------------------------------------------------------------------------------ SQL


def _engine_url(source: str, base_dir: Path, where: str) -> Any:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(source)
    except ArgumentError as exc:
        raise ConfigError(f"not a database URL: {exc}", where=where) from None
    if url.get_backend_name() == "sqlite":
        db = url.database
        if not db or db == ":memory:" or db.startswith("file:"):
            raise ConfigError("an SQLite source must name a database file", where=where)
        p = Path(db)
        if not p.is_absolute():
            p = base_dir / p
        if not p.is_file():
            raise SchemaMismatch(f"database file not found (resolved to {p})", where=where)
        url = url.set(database=str(p))
    return url


def _create_engine(source: str, base_dir: Path, where: str) -> Any:
    import sqlalchemy as sa
    from sqlalchemy.exc import NoSuchModuleError

    url = _engine_url(source, base_dir, where)
    try:
        return sa.create_engine(url)
    except NoSuchModuleError as exc:
        raise ConfigError(f"unknown database dialect: {exc}", where=where) from None
    except ImportError as exc:
        raise ConfigError(
            f"database driver not installed: {exc.name or exc} "
            "(for PostgreSQL: pip install 'fedgov[postgres]')",
            where=where,
        ) from None


def _sql_where(source: str, table: str | None, query: str | None) -> str:
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(source).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        shown = "<database URL>"
    if table is not None:
        return f"{shown} table {table}"
    return f"{shown} query" if query is not None else shown


def _sql_batches(
    source: str,
    base_dir: Path,
    where: str,
    table: str | None,
    query: str | None,
    wanted: Sequence[str] | None,
) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
    """Yield ``(column names, rows)`` batches; the first batch may be empty."""
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    engine = _create_engine(source, base_dir, where)
    try:
        with engine.connect() as conn:
            if table is not None:
                insp = sa.inspect(conn)
                if not insp.has_table(table):
                    raise SchemaMismatch("table not found", where=where)
                all_cols = [c["name"] for c in insp.get_columns(table)]
                yield all_cols, []
                # Untyped columns: raw driver values, no result processors that could
                # raise on a malformed cell; conversion errors are reported by row.
                names = list(wanted) if wanted is not None else all_cols
                stmt: Any = sa.select(*[sa.column(n) for n in names]).select_from(sa.table(table))
            else:
                assert query is not None
                stmt = sa.text(query)
            result = conn.execution_options(stream_results=True, yield_per=SQL_BATCH_ROWS).execute(stmt)
            keys = list(result.keys())
            if table is None:
                yield keys, []
            for part in result.partitions(SQL_BATCH_ROWS):
                yield keys, [tuple(r) for r in part]
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0]
        raise SchemaMismatch(f"database error: {first}", where=where) from None
    finally:
        engine.dispose()


def _py_column(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Mixed Python types (SQLite is dynamically typed): compare as text.
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _read_sql(
    source: str,
    base_dir: Path,
    schema: DatasetSchema,
    specs: list[FieldSpec],
    table: str | None,
    query: str | None,
) -> pa.Table:
    if (table is None) == (query is None):
        raise ConfigError(
            "an SQL source needs exactly one of table or query",
            where=_sql_where(source, None, None),
        )
    where = _sql_where(source, table, query)
    wanted = [f.name for f in specs]
    batches = _sql_batches(source, base_dir, where, table, query, wanted)
    parts: list[pa.Table] = []
    try:
        all_cols, _ = next(batches)
        _check_columns(all_cols, schema, where)
        offset = 0
        for keys, rows in batches:
            if not rows:
                continue
            index = {k: i for i, k in enumerate(keys)}
            cols = {n: _py_column([r[index[n]] for r in rows]) for n in wanted}
            parts.append(_check_required_ids(_assemble(cols, specs, where, offset), schema, where, offset))
            offset += len(rows)
    finally:
        batches.close()  # closes the cursor and disposes of the engine
    if not parts:
        return arrow_schema(schema, wanted).empty_table()
    return pa.concat_tables(parts)


# ------------------------------------------------------------------------------ API


def _resolve_file(source: str, base_dir: Path) -> tuple[Path, str]:
    p = Path(source)
    if not p.is_absolute():
        p = Path(base_dir) / p
    if not p.is_file():
        raise SchemaMismatch(f"file not found (resolved to {p})", where=source)
    return p, source


def read_dataset(
    source: str,
    schema: DatasetSchema,
    *,
    base_dir: Path,
    table: str | None = None,
    query: str | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Read ``source`` as ``schema`` (optionally only ``columns``) into a typed table.

    ``source`` is a ``.csv`` / ``.parquet`` path (relative paths are resolved
    against ``base_dir``) or an SQLAlchemy URL; a relative SQLite database path
    is also resolved against ``base_dir`` and must exist (it is never created).
    SQL sources need exactly one of ``table`` / ``query`` and are fetched in
    batches of :data:`SQL_BATCH_ROWS` rows.

    The whole source must have exactly the schema's columns, even when only a
    subset is requested. See the module docstring for the typing guarantees.
    """
    specs = _requested(schema, columns)
    if _is_url(source):
        return _read_sql(source, Path(base_dir), schema, specs, table, query)
    if table is not None or query is not None:
        raise ConfigError("table / query apply only to SQL sources", where=source)
    suffix = Path(source).suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ConfigError(
            "unsupported source: expected a .csv or .parquet file or a database URL",
            where=source,
        )
    path, where = _resolve_file(source, Path(base_dir))
    if suffix == ".csv":
        return _check_required_ids(_read_csv(path, where, schema, specs), schema, where)
    return _check_required_ids(_read_parquet(path, where, schema, specs), schema, where)


def required_id_fields(schema: DatasetSchema) -> list[str]:
    """Fields that must never be empty: required ``resident_id`` fields and a required key."""
    return [
        f.name for f in schema.fields if f.required and (f.type == "resident_id" or f.name == schema.key)
    ]


def _check_required_ids(table: pa.Table, schema: DatasetSchema, where: str, row_offset: int = 0) -> pa.Table:
    """Raise SchemaMismatch naming the first empty (null or blank) required ID; else return ``table``."""
    for name in required_id_fields(schema):
        if name not in table.column_names:
            continue
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            empty = pc.or_kleene(pc.is_null(col), pc.equal(pc.utf8_trim_whitespace(col), ""))
        else:
            empty = pc.is_null(col)
        empty = pc.fill_null(empty, True)
        if pc.any(empty).as_py():
            i = int(pc.index(empty, True).as_py())
            raise SchemaMismatch(
                f"empty value in required ID field {name} (the schema marks it required)",
                where=f"{where} row {row_offset + i + 1} column {name}",
            )
    return table


def row_count(
    source: str,
    *,
    base_dir: Path,
    table: str | None = None,
    query: str | None = None,
) -> int:
    """Number of data rows in ``source`` without converting values.

    Parquet reads only metadata; CSV streams the first column as text; SQL runs
    ``SELECT count(*)`` over the table or the query.
    """
    if _is_url(source):
        import sqlalchemy as sa
        from sqlalchemy.exc import SQLAlchemyError

        if (table is None) == (query is None):
            raise ConfigError("an SQL source needs exactly one of table or query", where=source)
        where = _sql_where(source, table, query)
        engine = _create_engine(source, Path(base_dir), where)
        try:
            with engine.connect() as conn:
                if table is not None:
                    if not sa.inspect(conn).has_table(table):
                        raise SchemaMismatch("table not found", where=where)
                    stmt = sa.select(sa.func.count()).select_from(sa.table(table))
                else:
                    assert query is not None
                    sub = sa.text(query).columns().subquery()
                    stmt = sa.select(sa.func.count()).select_from(sub)
                return int(conn.execute(stmt).scalar_one())
        except SQLAlchemyError as exc:
            raise SchemaMismatch(f"database error: {str(exc).splitlines()[0]}", where=where) from None
        finally:
            engine.dispose()
    path, where = _resolve_file(source, Path(base_dir))
    if path.suffix.lower() == ".parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    header = _csv_header(path, where)
    reader = pacsv.open_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            include_columns=[header[0]], column_types={header[0]: pa.string()}
        ),
    )
    return sum(batch.num_rows for batch in reader)
