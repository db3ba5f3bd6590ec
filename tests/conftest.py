from __future__ import annotations

import random
import tomllib
from pathlib import Path

import pyarrow as pa
import pytest

from fedgov.datasources import read_dataset
from fedgov.scenarios.social_assistance import DATASETS
from fedgov.schema import load_schema

NODES = Path(__file__).resolve().parents[1] / "nodes"


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.fixture
def small_csvs(tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(5)
    a = write_csv(
        tmp_path / "a.csv", ["id", "y", "x0"], [[i, i % 2, round(rng.random(), 3)] for i in range(100)]
    )
    b = write_csv(tmp_path / "b.csv", ["id", "x1"], [[i, round(rng.random(), 3)] for i in range(50, 150)])
    return a, b


def load_world_dataset(out: Path, dept: str, columns: list[str] | None = None) -> pa.Table:
    """Read a generated dataset the way its node would, per nodes/<dept>/node.toml."""
    node_dir = NODES / dept
    cfg = tomllib.loads((node_dir / "node.toml").read_text())
    assert cfg["node"]["name"] == dept
    ds = cfg["datasets"][0]  # the primary dataset (civil affairs also has a holdout)
    schema = load_schema(node_dir / ds["schema"])
    source: str = ds["source"]
    marker = "data/social_assistance/"
    assert marker in source
    rel = source.split(marker, 1)[1]
    assert rel == DATASETS[dept][ds["name"]]
    src = f"sqlite:///{out / rel}" if source.startswith("sqlite:") else str(out / rel)
    return read_dataset(
        src, schema, base_dir=node_dir, table=ds.get("table"), query=ds.get("query"), columns=columns
    )
