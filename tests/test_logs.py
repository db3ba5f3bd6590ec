"""Logs (issue 14, finding 4): --log-file with rotation, --log-format json, start and stop
lines for coordinator and node, ISO-8601 times, and no traceback when stdout is a closed pipe."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedgov.runner import LocalFederation
from tests.test_federation import build_world

pytestmark = pytest.mark.slow

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _wait_for(pred, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_coordinator_and_node_log_to_rotated_json_files(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path / "federation", build_world(tmp_path)[:1])
    fed.workdir.mkdir(parents=True)
    fed.provision()
    cfg = fed.coordinator_config()
    log = tmp_path / "logs" / "coordinator.log"
    coord = subprocess.Popen(
        [sys.executable, "-m", "fedgov", "coordinator", "start", "--config", str(cfg), "--log-file", str(log),
         "--log-format", "json", "--log-max-bytes", "400", "--log-backups", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    node = None
    try:
        addr = fed.workdir / "state" / "coordinator" / "coordinator.addr"
        _wait_for(addr.exists, "the coordinator address")
        fed.address = addr.read_text().strip()
        node_log = tmp_path / "logs" / "alpha.log"
        node = subprocess.Popen(
            [sys.executable, "-m", "fedgov", "node", "start", "--config", str(fed.node_config(fed.nodes[0])),
             "--log-file", str(node_log)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        _wait_for(lambda: node_log.exists() and "registered" in node_log.read_text(), "the node to register")
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=60) == 0
        text = node_log.read_text().splitlines()
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO fedgov.node: node alpha starting", text[0])
        assert text[-1].endswith("node alpha stopped (SIGTERM)"), text[-1]
    finally:
        if node is not None and node.poll() is None:
            node.kill()
        coord.send_signal(signal.SIGTERM)
        assert coord.wait(timeout=60) == 0
    out, err = coord.communicate()
    assert err == "" and out == ""  # everything went to the file
    # rotated: at most 3 backups kept, each line a JSON object with an ISO-8601 time
    files = sorted(log.parent.glob("coordinator.log*"))
    assert log.with_name("coordinator.log.1").exists() and len(files) <= 4
    records = [r for f in files for r in _lines(f)]
    assert all(ISO_MS.match(r["time"]) and r["level"] and r["logger"] for r in records)
    assert _lines(log)[-1]["message"] == "coordinator stopped"
    assert all(os.path.getsize(f) < 2000 for f in files)


def test_coordinator_start_line_goes_to_stderr_by_default(tmp_path: Path) -> None:
    cfg = tmp_path / "coordinator.toml"
    cfg.write_text('[coordinator]\nlisten = "127.0.0.1:0"\nkit = "nokit"\nstate_dir = "state"\n')
    out = subprocess.run([sys.executable, "-m", "fedgov", "coordinator", "start", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert re.search(r"^\d{4}-\d\d-\d\dT[\d:.]+Z INFO fedgov.coordinator: coordinator starting", out.stderr, re.M)
    assert re.search(r"ERROR fedgov.coordinator: coordinator stopped: ", out.stderr)


def test_output_piped_into_head_ends_without_a_traceback(tmp_path: Path) -> None:
    # a wide file: the schema draft is ~300 kB, far more than a pipe buffer
    cols = [f"c{i}" for i in range(4000)]
    (tmp_path / "wide.csv").write_text(",".join(cols) + "\n" + ",".join("1" for _ in cols) + "\n")
    shell = f"{sys.executable} -m fedgov schema infer {tmp_path / 'wide.csv'} | head -n 2; echo \"rc=${{PIPESTATUS[0]}}\" >&2"
    out = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines()[0].startswith("# Drafted by `fedgov schema infer`")
    assert len(out.stdout.splitlines()) == 2
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    assert "rc=141" in out.stderr
