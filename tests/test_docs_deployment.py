"""docs/deployment.md walks an operator from nothing to a job, and README's commands work
from a clean clone (issue 14, findings 3 and 7).

Every ```bash block of docs/deployment.md is extracted and run, in order, as one bash
script in a copy of the repository's tracked files (what a clean clone holds) — with
the background processes it starts stopped by the doc itself and, whatever happens,
by this test. The only change made to the copy: the coordinator and metrics ports are
replaced by free ones (other processes on this machine may hold 50051).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_copy(dest: Path) -> Path:
    """The repository's tracked files (working-tree versions), as a fresh clone has them."""
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot tell which files a clean clone holds")
    for name in files.decode().split("\0"):
        if not name:
            continue
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    assert not (dest / "data").exists() and not (dest / "federation").exists()
    return dest


def bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", markdown, re.S | re.M)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGOV_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.timeout(900)
def test_deployment_walkthrough_runs_from_a_clean_clone(tmp_path: Path) -> None:
    root = clean_copy(tmp_path / "clone")
    doc = (root / "docs" / "deployment.md").read_text()
    blocks = bash_blocks(doc)
    assert len(blocks) >= 4, "the walkthrough's bash blocks are gone"
    coord, metrics = str(_free_port()), str(_free_port())
    for cfg in (root / "nodes").glob("*/node.toml"):
        cfg.write_text(cfg.read_text().replace("127.0.0.1:50051", f"127.0.0.1:{coord}"))
    script = "set -euo pipefail\n" + "\n".join(blocks)
    script = script.replace("127.0.0.1:50051", f"127.0.0.1:{coord}").replace("127.0.0.1:9464", f"127.0.0.1:{metrics}")
    # output to files, not pipes: a background process the doc left running would hold a pipe open
    with (tmp_path / "out.txt").open("w") as fo, (tmp_path / "err.txt").open("w") as fe:
        proc = subprocess.Popen(["bash", "-c", script], cwd=root, env=_env(), stdout=fo, stderr=fe,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=800)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything the doc left running (same process group)
            proc.wait()
    out, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert proc.returncode == 0, f"stdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert re.search(r"pending approvals:\n\s+medical\s+1: job-", out), out
    assert "job succeeded" in out
    result = next(json.loads(line) for line in out.splitlines() if line.startswith("{") and "counts" in line)
    assert set(result["civil_affairs"]["counts"]) == {"civil_affairs", "tax", "hrss", "housing", "vehicles",
                                                     "medical"}
    assert "total_released" not in result["civil_affairs"]  # six departments' counts are never summed
    assert 'fedgov_jobs{state="succeeded"} 1.0' in out
    assert "coordinator stopped" in out and "node tax stopped (SIGTERM)" in out
    assert re.search(r"civil_affairs\s+online\s+last contact \d{4}-\d\d-\d\dT", out)


def _readme_runs() -> list[str]:
    readme = (REPO / "README.md").read_text()
    return [line.split("#")[0].strip() for block in bash_blocks(readme) for line in block.splitlines()
            if line.startswith("fedgov run ")]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("command", _readme_runs())
def test_readme_commands_run_verbatim_from_a_clean_clone(tmp_path: Path, command: str) -> None:
    root = clean_copy(tmp_path / "clone")
    out = subprocess.run(["bash", "-c", "set -euo pipefail\n" + command], cwd=root, env=_env(),
                         capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True


def test_readme_shows_the_fate_examples() -> None:
    runs = _readme_runs()
    assert any("breast_psi.toml" in r for r in runs) and any("default_credit_vlr.toml" in r for r in runs)
