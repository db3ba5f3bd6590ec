"""Reading CSV, Parquet and SQL sources against a schema."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedgov.datasources import arrow_schema, read_dataset, row_count
from fedgov.errors import ConfigError, FedgovError, SchemaMismatch
from fedgov.schema import DatasetSchema, schema_from_dict

SCHEMA: DatasetSchema = schema_from_dict(
    {
        "dataset": {"name": "income", "key": "resident_id", "update_frequency": "yearly"},
        "fields": [
            {"name": "resident_id", "type": "resident_id", "required": True},
            {"name": "annual_income", "type": "float", "min": 0},
            {"name": "employers", "type": "int"},
            {"name": "insured", "type": "bool"},
            {"name": "filed", "type": "date"},
            {"name": "sector", "type": "category", "values": ["public", "private"]},
            {"name": "month", "type": "date", "format": "%Y-%m"},
        ],
    },
    "test",
)
HEADER = "resident_id,annual_income,employers,insured,filed,sector,month\n"
ROWS = [
    "11010519491231002X,52000.5,1,true,2024-03-01,public,2024-02\n",
    "110105194912310021,-3,0,false,2024-03-02,nonsense,2024-01\n",  # range/enum/check: values
    "15010219800101001x,,,,,,\n",
]
EXPECTED = {
    "resident_id": ["11010519491231002X", "110105194912310021", "15010219800101001x"],
    "annual_income": [52000.5, -3.0, None],
    "employers": [1, 0, None],
    "insured": [True, False, None],
    "filed": [date(2024, 3, 1), date(2024, 3, 2), None],
    "sector": ["public", "nonsense", None],
    "month": [date(2024, 2, 1), date(2024, 1, 1), None],
}


def write_csv(dir_: Path, text: str, name: str = "income.csv") -> Path:
    (dir_ / "tax").mkdir(exist_ok=True)
    p = dir_ / "tax" / name
    p.write_text(text, encoding="utf-8")
    return p


def error(source: str, base: Path, **kw: object) -> str:
    with pytest.raises(SchemaMismatch) as exc:
        read_dataset(source, SCHEMA, base_dir=base, **kw)  # type: ignore[arg-type]
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_csv_reads_typed(tmp_path: Path) -> None:
    write_csv(tmp_path, HEADER + "".join(ROWS))
    t = read_dataset("tax/income.csv", SCHEMA, base_dir=tmp_path)
    assert t.schema == arrow_schema(SCHEMA)
    assert t.to_pydict() == EXPECTED
    assert row_count("tax/income.csv", base_dir=tmp_path) == 3


def test_csv_column_order_and_subset(tmp_path: Path) -> None:
    cols = ["employers", "month", "filed", "sector", "insured", "resident_id", "annual_income"]
    rows = [dict(zip(EXPECTED, vals, strict=True)) for vals in zip(*EXPECTED.values(), strict=True)]
    lines = [",".join(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            if v is None:
                cells.append("")
            elif isinstance(v, bool):
                cells.append(str(v).lower())
            elif c == "month":
                cells.append(f"{v:%Y-%m}")
            else:
                cells.append(str(v))
        lines.append(",".join(cells))
    write_csv(tmp_path, "\n".join(lines) + "\n")
    t = read_dataset("tax/income.csv", SCHEMA, base_dir=tmp_path)
    assert t.column_names == list(SCHEMA.field_names)
    assert t.to_pydict() == EXPECTED
    sub = read_dataset("tax/income.csv", SCHEMA, base_dir=tmp_path, columns=["employers", "resident_id"])
    assert sub.column_names == ["employers", "resident_id"]
    assert sub.column("resident_id").to_pylist() == EXPECTED["resident_id"]


def test_resident_ids_stay_strings(tmp_path: Path) -> None:
    ids = ["150102198001010011", "150102198001010038", "000000000000000123"]
    write_csv(tmp_path, HEADER + "".join(f"{i},1,1,true,2024-01-01,public,2024-01\n" for i in ids))
    t = read_dataset("tax/income.csv", SCHEMA, base_dir=tmp_path)
    assert t.schema.field("resident_id").type == pa.string()
    assert t.column("resident_id").to_pylist() == ids


def test_missing_file(tmp_path: Path) -> None:
    msg = error("tax/income.csv", tmp_path)
    assert msg.startswith("tax/income.csv: file not found (resolved to ")


def test_missing_schema_field(tmp_path: Path) -> None:
    write_csv(
        tmp_path, "resident_id,annual_income,employers,insured,filed,month\n1,2,3,true,2024-01-01,2024-01\n"
    )
    msg = error("tax/income.csv", tmp_path)
    assert msg == "tax/income.csv column sector: schema field sector is missing from the data"


def test_extra_data_column(tmp_path: Path) -> None:
    write_csv(tmp_path, HEADER.strip() + ",secret\n" + ROWS[0].strip() + ",x\n")
    msg = error("tax/income.csv", tmp_path)
    assert msg == "tax/income.csv column secret: data column secret is not in schema income"
    # ...even when only a subset is requested
    msg = error("tax/income.csv", tmp_path, columns=["resident_id"])
    assert "column secret" in msg


def test_duplicate_header(tmp_path: Path) -> None:
    write_csv(tmp_path, HEADER.strip() + ",sector\n")
    assert "column sector appears more than once" in error("tax/income.csv", tmp_path)


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("annual_income", "abc", "'abc' is not a float"),
        ("employers", "1.5", "'1.5' is not an int"),
        ("insured", "maybe", "'maybe' is not a bool (true/false/1/0)"),
        ("filed", "2024-13-01", "'2024-13-01' is not a date in format %Y-%m-%d"),
        ("month", "2024/01", "'2024/01' is not a date in format %Y-%m"),
    ],
)
def test_bad_value_names_row_and_column(tmp_path: Path, column: str, value: str, expected: str) -> None:
    good = ROWS[0]
    cells = good.strip().split(",")
    cells[list(SCHEMA.field_names).index(column)] = value
    text = HEADER + good * 16 + ",".join(cells) + "\n" + good * 3
    write_csv(tmp_path, text)
    msg = error("tax/income.csv", tmp_path)
    assert msg == f"tax/income.csv row 17 column {column}: {expected}"


def test_unknown_requested_column(tmp_path: Path) -> None:
    write_csv(tmp_path, HEADER + ROWS[0])
    with pytest.raises(ConfigError, match="dataset income: unknown field 'salary'"):
        read_dataset("tax/income.csv", SCHEMA, base_dir=tmp_path, columns=["salary"])


def test_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported source"):
        read_dataset("tax/income.xlsx", SCHEMA, base_dir=tmp_path)


def test_absolute_path_ignores_base_dir(tmp_path: Path) -> None:
    p = write_csv(tmp_path, HEADER + ROWS[0])
    t = read_dataset(str(p), SCHEMA, base_dir=Path("/nonexistent"))
    assert t.num_rows == 1


# ----------------------------------------------------------------------- Parquet


def expected_table() -> pa.Table:
    return pa.table(EXPECTED, schema=arrow_schema(SCHEMA))


def test_parquet(tmp_path: Path) -> None:
    (tmp_path / "tax").mkdir()
    # Store narrower / different physical types: int32, float32, timestamp, dictionary.
    t = expected_table()
    stored = t.set_column(2, "employers", t.column("employers").cast(pa.int32()))
    stored = stored.set_column(4, "filed", t.column("filed").cast(pa.timestamp("ms")))
    stored = stored.set_column(5, "sector", t.column("sector").dictionary_encode())
    pq.write_table(stored.select(list(reversed(stored.column_names))), tmp_path / "tax" / "i.parquet")
    got = read_dataset("tax/i.parquet", SCHEMA, base_dir=tmp_path)
    assert got.equals(t)
    assert row_count("tax/i.parquet", base_dir=tmp_path) == 3


def test_parquet_numeric_resident_id_rejected(tmp_path: Path) -> None:
    t = expected_table()
    t = t.set_column(0, "resident_id", pa.array([1, 2, 3], pa.int64()))
    pq.write_table(t, tmp_path / "i.parquet")
    msg = error("i.parquet", tmp_path)
    assert msg == "i.parquet column resident_id: stored as int64, expected text for a resident_id field"


def test_parquet_text_number_names_row(tmp_path: Path) -> None:
    t = expected_table()
    t = t.set_column(1, "annual_income", pa.array(["1.5", "2", "x"]))
    pq.write_table(t, tmp_path / "i.parquet")
    assert error("i.parquet", tmp_path) == "i.parquet row 3 column annual_income: 'x' is not a float"


def test_parquet_missing_column(tmp_path: Path) -> None:
    pq.write_table(expected_table().drop_columns(["month"]), tmp_path / "i.parquet")
    assert (
        error("i.parquet", tmp_path) == "i.parquet column month: schema field month is missing from the data"
    )


# --------------------------------------------------------------------------- SQL


def make_db(path: Path, rows: list[tuple[object, ...]], extra: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE income (resident_id TEXT, annual_income REAL, employers INTEGER, "
        f"insured INTEGER, filed DATE, sector TEXT, month TEXT{extra})"
    )
    con.executemany(f"INSERT INTO income VALUES ({','.join('?' * (7 + bool(extra)))})", rows)
    con.commit()
    con.close()


SQL_ROWS = [
    ("11010519491231002X", 52000.5, 1, 1, "2024-03-01", "public", "2024-02"),
    ("110105194912310021", -3, 0, 0, "2024-03-02", "nonsense", "2024-01"),
    ("15010219800101001x", None, None, None, None, None, None),
]


def test_sqlite_table_relative_to_base_dir(tmp_path: Path) -> None:
    make_db(tmp_path / "db" / "tax.db", SQL_ROWS)
    url = "sqlite:///db/tax.db"
    t = read_dataset(url, SCHEMA, base_dir=tmp_path, table="income")
    assert t.equals(expected_table())
    assert row_count(url, base_dir=tmp_path, table="income") == 3


def test_sqlite_query_and_subset(tmp_path: Path) -> None:
    make_db(tmp_path / "tax.db", SQL_ROWS)
    url = f"sqlite:///{tmp_path / 'tax.db'}"
    q = "SELECT * FROM income WHERE employers IS NOT NULL"
    t = read_dataset(url, SCHEMA, base_dir=Path("."), query=q, columns=["employers", "resident_id"])
    assert t.to_pydict() == {"employers": [1, 0], "resident_id": EXPECTED["resident_id"][:2]}
    assert row_count(url, base_dir=Path("."), query=q) == 2


def test_sqlite_streams_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fedgov.datasources as ds

    monkeypatch.setattr(ds, "SQL_BATCH_ROWS", 2)
    rows = SQL_ROWS * 3 + [("1", 1.0, "7x", 1, "2024-01-01", "public", "2024-01")]
    make_db(tmp_path / "tax.db", rows)
    msg = error("sqlite:///tax.db", tmp_path, table="income")
    assert msg == "sqlite:///tax.db table income row 10 column employers: '7x' is not an int"
    ok = read_dataset("sqlite:///tax.db", SCHEMA, base_dir=tmp_path, query="SELECT * FROM income LIMIT 9")
    assert ok.num_rows == 9


def test_sqlite_missing_file_is_not_created(tmp_path: Path) -> None:
    msg = error("sqlite:///nope.db", tmp_path, table="income")
    assert msg.startswith("sqlite:///nope.db table income: database file not found")
    assert not (tmp_path / "nope.db").exists()


def test_sqlite_missing_table(tmp_path: Path) -> None:
    make_db(tmp_path / "tax.db", SQL_ROWS)
    assert error("sqlite:///tax.db", tmp_path, table="incomes") == (
        "sqlite:///tax.db table incomes: table not found"
    )


def test_sqlite_extra_column(tmp_path: Path) -> None:
    make_db(tmp_path / "tax.db", [(*r, "x") for r in SQL_ROWS], extra=", secret TEXT")
    assert error("sqlite:///tax.db", tmp_path, table="income") == (
        "sqlite:///tax.db table income column secret: data column secret is not in schema income"
    )


def test_sqlite_bad_query(tmp_path: Path) -> None:
    make_db(tmp_path / "tax.db", SQL_ROWS)
    msg = error("sqlite:///tax.db", tmp_path, query="SELEC nonsense")
    assert msg.startswith("sqlite:///tax.db query: database error:")


def test_sql_needs_table_or_query(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of table or query"):
        read_dataset("sqlite:///tax.db", SCHEMA, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="apply only to SQL sources"):
        read_dataset("tax.csv", SCHEMA, base_dir=tmp_path, table="income")


def test_password_not_shown(tmp_path: Path) -> None:
    # Without a PostgreSQL driver installed this is a ConfigError; with one, a
    # connection failure (SchemaMismatch). Either way: one line, no password.
    with pytest.raises(FedgovError) as exc:
        read_dataset("postgresql+psycopg://user:s3cret@127.0.0.1:1/db", SCHEMA, base_dir=tmp_path, table="t")
    assert "s3cret" not in str(exc.value)
    assert "\n" not in str(exc.value)


# -- bad data named by file and row (issue 14, finding 6) -------------------------------

_ID_SCHEMA = {
    "dataset": {"name": "d", "key": "rid"},
    "fields": [
        {"name": "rid", "type": "resident_id", "required": True},
        {"name": "x", "type": "float"},
    ],
}


def _bad_csv(tmp_path: Path, body: bytes) -> pytest.ExceptionInfo[SchemaMismatch]:
    (tmp_path / "bad.csv").write_bytes(b"rid,x\n" + body)
    with pytest.raises(SchemaMismatch) as info:
        read_dataset("bad.csv", schema_from_dict(_ID_SCHEMA, "t"), base_dir=tmp_path)
    return info


def test_non_utf8_bytes_are_named_by_row(tmp_path: Path) -> None:
    info = _bad_csv(tmp_path, b"110101199001011234,1.5\n11010119900101123X,2\n11010119900101\xe9234,3\n")
    assert str(info.value).startswith("bad.csv row 3: not UTF-8 text (byte 15 of the row is 0xe9)")


def test_short_rows_are_named_by_row(tmp_path: Path) -> None:
    info = _bad_csv(tmp_path, b"110101199001011234,1.5\n11010119900101123X\n")
    assert str(info.value) == "bad.csv row 2: 1 cell(s), the header has 2 (a short row)"


def test_empty_required_id_is_a_load_error(tmp_path: Path) -> None:
    info = _bad_csv(tmp_path, b"110101199001011234,1.5\n,2\n")
    assert str(info.value).startswith("bad.csv row 2 column rid: empty value in required ID field rid")
    info = _bad_csv(tmp_path, b"110101199001011234,1.5\n11010119900101123X,2\n   ,3\n")
    assert "row 3 column rid" in str(info.value)


def test_empty_required_id_in_sql_and_parquet(tmp_path: Path) -> None:
    schema = schema_from_dict(_ID_SCHEMA, "t")
    pq.write_table(pa.table({"rid": ["110101199001011234", None], "x": [1.0, 2.0]}), tmp_path / "d.parquet")
    with pytest.raises(SchemaMismatch, match=r"d.parquet row 2 column rid: empty value"):
        read_dataset("d.parquet", schema, base_dir=tmp_path)
    con = sqlite3.connect(tmp_path / "d.db")
    con.execute("CREATE TABLE t (rid TEXT, x REAL)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [("110101199001011234", 1.0), ("", 2.0)])
    con.commit()
    con.close()
    with pytest.raises(SchemaMismatch, match=r"row 2 column rid: empty value"):
        read_dataset("sqlite:///d.db", schema, base_dir=tmp_path, table="t")


def test_optional_ids_may_be_empty(tmp_path: Path) -> None:
    doc = {**_ID_SCHEMA, "dataset": {"name": "d"},
           "fields": [{"name": "rid", "type": "resident_id", "required": False}, {"name": "x", "type": "float"}]}
    (tmp_path / "ok.csv").write_text("rid,x\n,1\n")
    t = read_dataset("ok.csv", schema_from_dict(doc, "t"), base_dir=tmp_path)
    assert t.column("rid").to_pylist() == [None]
