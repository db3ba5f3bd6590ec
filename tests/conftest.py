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


# --------------------------------------------------------------------------- addresses


def routable_ipv4() -> str | None:
    """A non-loopback IPv4 address of this host, for tests of multi-host listening.

    The address of the default route if there is one; else, when running as
    root with iproute2, a dummy interface ``fedgovtest0`` with 198.18.0.1 (the
    benchmarking range, RFC 2544) that is removed when the test run ends; else
    ``None``.
    """
    import atexit
    import os
    import shutil
    import socket
    import subprocess

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # a UDP connect sends nothing
            ip = s.getsockname()[0]
            if not ip.startswith("127."):
                return ip
        except OSError:
            pass
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return None
    dev, addr = "fedgovtest0", "198.18.0.1"
    shown = subprocess.run(["ip", "-4", "addr", "show", "dev", dev], capture_output=True, text=True)
    if addr not in shown.stdout:
        for cmd in (["ip", "link", "add", dev, "type", "dummy"], ["ip", "addr", "add", f"{addr}/32", "dev", dev],
                    ["ip", "link", "set", dev, "up"]):
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                subprocess.run(["ip", "link", "del", dev], capture_output=True)
                return None
        atexit.register(subprocess.run, ["ip", "link", "del", dev], capture_output=True)
    return addr


# --------------------------------------------------------------------------- skip policy (keep last)
#
# In CI (CI=true) a skipped test is a failure unless its reason matches a line of
# tests/skip_allowlist.txt: a clean clone must test everything it claims to test.

SKIP_ALLOWLIST = Path(__file__).with_name("skip_allowlist.txt")


def allowed_skip_reasons(path: Path | None = None) -> list[str]:
    """The allow-listed skip reasons (regular expressions), comments and blank lines dropped.

    ``FEDGOV_SKIP_ALLOWLIST`` names another file (used by tests/test_skip_policy.py only).
    """
    import os

    path = path or Path(os.environ.get("FEDGOV_SKIP_ALLOWLIST") or SKIP_ALLOWLIST)
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def skip_reason(longrepr: object) -> str:
    """The reason of a skip report (``longrepr`` is ``(file, line, "Skipped: reason")``)."""
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return str(text).removeprefix("Skipped: ")


def _skip_is_allowed(reason: str) -> bool:
    import re

    return any(re.search(p, reason) for p in allowed_skip_reasons())


def _in_ci() -> bool:
    import os

    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    rep = outcome.get_result()
    if _in_ci() and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = skip_reason(rep.longrepr)
        if not _skip_is_allowed(reason):
            rep.outcome = "failed"
            rep.longrepr = (f"skipped in CI for a reason not on tests/skip_allowlist.txt: {reason!r} "
                            "(fix the test, or allow-list the reason with why)")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    outcome = yield
    rep = outcome.get_result()
    if _in_ci() and rep.skipped:
        reason = skip_reason(rep.longrepr)
        if not _skip_is_allowed(reason):
            rep.outcome = "failed"
            rep.longrepr = f"module skipped in CI for a reason not on tests/skip_allowlist.txt: {reason!r}"
