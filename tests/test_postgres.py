"""PostgreSQL data source through the same SQLAlchemy code path as SQLite.

Uses the server named by ``FEDGOV_TEST_POSTGRES`` (a SQLAlchemy URL; ``.ci/run``
starts Debian's cluster and sets it), else starts a throwaway PostgreSQL server
on loopback when its binaries are on this machine (Debian's postgresql
package). Without either it is skipped — except under ``CI=true``, where a
missing server is a failure: CI must read from a real database.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedgov.datasources import read_dataset
from fedgov.errors import SchemaMismatch
from fedgov.schema import load_schema

ROOT = Path(__file__).resolve().parents[1]


def _bin(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}: CI must run this test against a real PostgreSQL server (.ci/run starts one)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed")
    given = os.environ.get("FEDGOV_TEST_POSTGRES")
    if given:
        import sqlalchemy as sa

        engine = sa.create_engine(given)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure to reach the named server
            pytest.fail(f"FEDGOV_TEST_POSTGRES={given} is unreachable: {exc}")
        finally:
            engine.dispose()
        yield given
        return
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        _unavailable("PostgreSQL server binaries not installed")
    base = Path(tempfile.mkdtemp(prefix="fedgov-pg-", dir="/tmp"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(base, "nobody")
        prefix = ["runuser", "-u", "nobody", "--"]
    port = _free_port()
    data = base / "data"
    try:
        subprocess.run(
            [*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "fedgov"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                *prefix,
                pg_ctl,
                "-D",
                str(data),
                "-w",
                "-l",
                str(base / "log"),
                "-o",
                f"-p {port} -k {base} -c listen_addresses=127.0.0.1",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield f"postgresql+psycopg://fedgov@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60
        )
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_source_reads_like_the_csv(postgres: str, tmp_path: Path) -> None:
    import sqlalchemy as sa

    from fedgov.scenarios.social_assistance import generate

    generate(tmp_path, households=300)
    schema = load_schema(ROOT / "nodes" / "tax" / "schemas" / "income.toml")
    from_csv = read_dataset(str(tmp_path / "tax" / "income.csv"), schema, base_dir=tmp_path)
    engine = sa.create_engine(postgres)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS income"))
        conn.execute(
            sa.text(
                "CREATE TABLE income (resident_id text, tax_year integer, annual_income double precision, "
                "employer_count integer, filed_on date)"
            )
        )
        rows = from_csv.to_pylist()
        conn.execute(
            sa.text(
                "INSERT INTO income VALUES (:resident_id, :tax_year, :annual_income, :employer_count, :filed_on)"
            ),
            rows,
        )
    engine.dispose()
    from_pg = read_dataset(postgres, schema, base_dir=tmp_path, table="income")
    assert from_pg.num_rows == from_csv.num_rows
    assert from_pg.schema == from_csv.schema
    key = "resident_id"
    assert sorted(from_pg.column(key).to_pylist(), key=str) == sorted(
        from_csv.column(key).to_pylist(), key=str
    )
    q = read_dataset(
        postgres, schema, base_dir=tmp_path, query="SELECT * FROM income WHERE annual_income > 50000"
    )
    assert q.num_rows == sum(1 for r in rows if (r["annual_income"] or 0) > 50000)
    with pytest.raises(SchemaMismatch):
        read_dataset(postgres, schema, base_dir=tmp_path, query="SELECT resident_id FROM income")
