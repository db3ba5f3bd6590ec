from __future__ import annotations

import random
from pathlib import Path

import pytest


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
