"""Run examples/horizontal_fl/job.toml on loopback: ``python examples/horizontal_fl/run.py [DATA_DIR]``.

Generates the regional social-assistance split into DATA_DIR (default: a
temporary directory) if it is not there yet, runs the job through the real
Flower deployment engine and prints the result JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
import tomllib
from pathlib import Path

from fedgov.hfl.deployment import run_horizontal_job
from fedgov.scenarios.regional import generate_regional


def main() -> None:
    spec = tomllib.loads((Path(__file__).parent / "job.toml").read_text())
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="hfl-"))
    if not (data / "regional_summary.json").exists():
        generate_regional(data)
    job = spec["job"]
    res = run_horizontal_job(
        data / "job", {r: data / v["data"] for r, v in spec["regions"].items()},
        spec["params"], validation=data / job["validation"],
        key_holder=job.get("key_holder"), encrypted=bool(job.get("encrypted", True)))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
