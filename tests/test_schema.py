"""Catalogue schemas: strict loading, canonical form, digests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedgov.errors import ConfigError
from fedgov.schema import FIELD_TYPES, DatasetSchema, FieldSpec, load_schema, schema_from_dict

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = sorted((ROOT / "nodes").glob("*/schemas/*.toml"))

GOOD = """\
[dataset]
name = "income"
description = "Annual income"
key = "resident_id"
update_frequency = "yearly"

[[fields]]
name = "resident_id"
type = "resident_id"
required = true

[[fields]]
name = "annual_income"
type = "float"
unit = "CNY/year"
min = 0
max = 1e7

[[fields]]
name = "sector"
type = "category"
values = ["public", "private"]

[[fields]]
name = "filed"
type = "date"
"""


def write(tmp_path: Path, text: str, name: str = "income.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def load_error(tmp_path: Path, text: str) -> str:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_schema(p)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: ")
    return msg[len(f"{p}: ") :]


def test_reference_schemas_exist() -> None:
    names = {p.parent.parent.name + "/" + p.stem for p in REFERENCE}
    assert names == {
        "civil_affairs/applications",
        "civil_affairs/applications_holdout",
        "tax/income",
        "hrss/insurance",
        "housing/property",
        "vehicles/vehicles",
        "medical/claims",
    }


@pytest.mark.parametrize("path", REFERENCE, ids=lambda p: p.parent.parent.name)
def test_reference_schema_loads_and_roundtrips(path: Path) -> None:
    s = load_schema(path)
    assert s.name == path.stem
    assert s.key == "resident_id"
    assert s.field("resident_id").type == "resident_id"
    assert all(f.description for f in s.fields)
    again = schema_from_dict(json.loads(json.dumps(s.to_dict())), "roundtrip")
    assert again == s
    assert again.digest() == s.digest()


def test_good_schema(tmp_path: Path) -> None:
    s = load_schema(write(tmp_path, GOOD))
    assert isinstance(s, DatasetSchema)
    assert s.field_names == ("resident_id", "annual_income", "sector", "filed")
    inc = s.field("annual_income")
    assert inc == FieldSpec(name="annual_income", type="float", unit="CNY/year", min=0.0, max=1e7)
    assert isinstance(inc.min, float)
    assert s.field("sector").values == ("public", "private")
    assert s.field("filed").format == "%Y-%m-%d"
    assert s.field("resident_id").required is True
    assert s.update_frequency == "yearly"
    assert set(FIELD_TYPES) == {"string", "int", "float", "bool", "date", "category", "resident_id"}


def test_digest_is_canonical(tmp_path: Path) -> None:
    a = load_schema(write(tmp_path, GOOD, "a.toml"))
    # Same meaning, different spelling: explicit defaults, int vs float literals.
    b_text = GOOD.replace("min = 0\n", "min = 0.0\n").replace(
        'type = "date"\n', 'type = "date"\nformat = "%Y-%m-%d"\nrequired = false\n'
    )
    b = load_schema(write(tmp_path, b_text, "b.toml"))
    assert a.digest() == b.digest()
    assert len(a.digest()) == 64
    c = load_schema(write(tmp_path, GOOD.replace("max = 1e7", "max = 2e7"), "c.toml"))
    assert c.digest() != a.digest()


def test_unknown_field_names_dataset(tmp_path: Path) -> None:
    s = load_schema(write(tmp_path, GOOD))
    with pytest.raises(ConfigError) as exc:
        s.field("anual_income")
    assert str(exc.value) == ("dataset income: unknown field 'anual_income' (did you mean 'annual_income'?)")


def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    text = GOOD + '\n[[fields]]\nname = "x"\ntpye = "int"\n'
    assert load_error(tmp_path, text) == "fields[4].tpye: unknown key (did you mean 'type'?)"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('name = "income"', 'name = "Income"'), "dataset.name: 'Income' must match"),
        (('name = "income"', "name = 3"), "dataset.name: expected a string, got integer"),
        (
            ('update_frequency = "yearly"', 'update_frequency = "yearli"'),
            "dataset.update_frequency: unknown frequency 'yearli' (did you mean 'yearly'?)",
        ),
        (
            ('description = "Annual income"', 'descripton = "x"'),
            "dataset.descripton: unknown key (did you mean 'description'?)",
        ),
        (
            ('key = "resident_id"', 'key = "resident"'),
            "dataset.key: 'resident' is not a field (did you mean 'resident_id'?)",
        ),
        (
            ('type = "float"', 'type = "flaot"'),
            "fields[1].type: unknown type 'flaot' (did you mean 'float'?)",
        ),
        (('type = "float"', "type = 1"), "fields[1].type: expected a string, got integer"),
        (("required = true", 'required = "yes"'), "fields[0].required: expected true or false, got string"),
        (("min = 0\n", 'min = "0"\n'), "fields[1].min: expected a number, got string"),
        (("min = 0\n", "min = 1e8\n"), "fields[1].min: min 100000000.0 is greater than max 10000000.0"),
        (('values = ["public", "private"]', 'values = ["a", "a"]'), "fields[2].values: duplicate value 'a'"),
        (('values = ["public", "private"]', "values = []"), "fields[2].values: expected a non-empty array"),
        (('values = ["public", "private"]', ""), "fields[2].values: required for category field 'sector'"),
        (
            ('name = "sector"', 'name = "annual_income"'),
            "fields[2].name: duplicate field name 'annual_income' (first at fields[1])",
        ),
        (
            ('unit = "CNY/year"', 'unit = "CNY/year"\nvalues = ["a"]'),
            "fields[1].values: not allowed for type 'float'",
        ),
        (('type = "date"', 'type = "date"\nformat = "YYYY"'), "fields[3].format: 'YYYY' has no strftime"),
        (
            (
                'name = "resident_id"\ntype = "resident_id"\nrequired = true',
                'name = "resident_id"\ntype = "resident_id"',
            ),
            "dataset.key: key field 'resident_id' must have required = true",
        ),
    ],
)
def test_strict_errors(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in GOOD
    msg = load_error(tmp_path, GOOD.replace(old, new, 1))
    assert msg.startswith(expected), msg


def test_int_field_rejects_float_bounds(tmp_path: Path) -> None:
    text = GOOD + '\n[[fields]]\nname = "n"\ntype = "int"\nmin = 0.5\n'
    assert load_error(tmp_path, text).startswith("fields[4].min: expected an integer for an int field")


def test_pattern_must_compile(tmp_path: Path) -> None:
    text = GOOD + '\n[[fields]]\nname = "s"\ntype = "string"\npattern = "^(a"\n'
    assert load_error(tmp_path, text).startswith("fields[4].pattern: invalid regular expression")


def test_pattern_only_for_strings(tmp_path: Path) -> None:
    text = GOOD + '\n[[fields]]\nname = "s"\ntype = "int"\npattern = "^a$"\n'
    assert load_error(tmp_path, text).startswith("fields[4].pattern: not allowed for type 'int'")


def test_missing_sections(tmp_path: Path) -> None:
    assert load_error(tmp_path, "x = 1\n").startswith("x: unknown key")
    assert load_error(tmp_path, "[dataset]\nname = 'a'\n").startswith("fields: missing required")
    assert load_error(tmp_path, "[[fields]]\nname = 'a'\ntype = 'int'\n").startswith("dataset: missing")
    assert load_error(tmp_path, "[dataset]\n[[fields]]\nname = 'a'\ntype = 'int'\n").startswith(
        "dataset.name: missing required key"
    )
    assert load_error(tmp_path, "[dataset]\nname='a'\n[[fields]]\nname = 'a'\n").startswith(
        "fields[0].type: missing required key"
    )


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    text = GOOD.replace('unit = "CNY/year"', 'unit = "CNY/year')
    msg = load_error(tmp_path, text)
    line = GOOD.splitlines().index('unit = "CNY/year"') + 1
    assert msg.startswith(f"line {line}, column "), msg
    assert "TOML syntax error" in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="schema file not found"):
        load_schema(tmp_path / "nope.toml")


def test_schema_from_dict_names_where() -> None:
    d: dict[str, Any] = {"dataset": {"name": "a"}, "fields": [{"name": "x", "type": "int", "mn": 1}]}
    with pytest.raises(ConfigError) as exc:
        schema_from_dict(d, "catalog/a")
    assert str(exc.value) == "catalog/a: fields[0].mn: unknown key (did you mean 'min'?)"
    d["fields"][0].pop("mn")
    s = schema_from_dict(d, "catalog/a")
    assert s.update_frequency == "adhoc" and s.key is None and s.description == ""


# -- `fedgov schema infer` (issue 14, finding 8) -------------------------------------------


def test_schema_infer_drafts_a_loadable_schema(tmp_path: Path) -> None:
    import subprocess
    import sys

    from fedgov.datasources import read_dataset

    rows = ["resident_id,district,annual_income,children,filed_on,notes,verified"]
    for i in range(40):
        rows.append(
            f"11010119900101{i:03d}X,{['saihan', 'xincheng', 'huimin'][i % 3]},{1000 + i * 10.5},{i % 4},"
            f"2024-01-{1 + i % 28:02d},{'' if i % 5 else 'note ' + str(i)},{'true' if i % 2 else 'false'}"
        )
    data = tmp_path / "Income 2024.csv"
    data.write_text("\n".join(rows) + "\n")
    out = subprocess.run([sys.executable, "-m", "fedgov", "schema", "infer", str(data)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (tmp_path / "draft.toml").write_text(out.stdout)
    schema = load_schema(tmp_path / "draft.toml")
    types = {f.name: (f.type, f.required) for f in schema.fields}
    assert schema.name == "income_2024" and schema.key == "resident_id"
    assert types == {
        "resident_id": ("resident_id", True), "district": ("category", True), "annual_income": ("float", True),
        "children": ("int", True), "filed_on": ("date", True), "notes": ("string", False),
        "verified": ("bool", True),
    }
    assert next(f for f in schema.fields if f.name == "district").values == ("huimin", "saihan", "xincheng")
    assert "# min = 1000" in out.stdout and "TODO" in out.stdout  # ranges as comments only
    # the draft reads its own data
    assert read_dataset(str(data), schema, base_dir=tmp_path).num_rows == 40
    # --out, and no overwrite without --force
    dest = tmp_path / "s.toml"
    ok = subprocess.run([sys.executable, "-m", "fedgov", "schema", "infer", str(data), "--out", str(dest)],
                        capture_output=True, text=True, timeout=60)
    again = subprocess.run([sys.executable, "-m", "fedgov", "schema", "infer", str(data), "--out", str(dest)],
                           capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and dest.exists() and again.returncode == 2 and "--force" in again.stderr


def test_schema_infer_names_a_bad_row(tmp_path: Path) -> None:
    import subprocess
    import sys

    data = tmp_path / "d.csv"
    data.write_bytes(b"id,x\n1,2\n2\n")
    out = subprocess.run([sys.executable, "-m", "fedgov", "schema", "infer", str(data)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "row 2: 1 cell(s)" in out.stderr and "Traceback" not in out.stderr
