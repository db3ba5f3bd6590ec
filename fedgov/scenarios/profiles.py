"""The reference department profiles (``nodes/<dept>/``) as runner specs.

Shared by ``fedgov demo``, the scenario helpers, the stack tests and the
benches; it sits below the demo so ``fedgov/scenarios`` never imports the
CLI-level demo module.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from fedgov.errors import ConfigError
from fedgov.runner import DatasetSpec, NodeSpec

DEPARTMENTS = ("civil_affairs", "tax", "hrss", "housing", "vehicles", "medical")
#: the data-less key holder for training jobs (runs at the big-data bureau)
ARBITER = "arbiter"
REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "nodes"
DATA_PREFIX = (REPO / "data" / "social_assistance").resolve()


def _remap(source: str, base: Path, data_dir: Path) -> str:
    """Point a reference profile's data path at a freshly generated world."""
    sql = source.startswith("sqlite:///")
    raw = source.removeprefix("sqlite:///") if sql else source
    path = (base / raw).resolve()
    try:
        rel = path.relative_to(DATA_PREFIX)
    except ValueError:
        raise ConfigError(
            f"profile data path {source} is outside data/social_assistance", where=str(base)
        ) from None
    new = str(data_dir / rel)
    return f"sqlite:///{new}" if sql else new


def node_specs(data_dir: Path) -> list[NodeSpec]:
    """The six reference department profiles and the arbiter, pointed at ``data_dir``."""
    if not PROFILES.is_dir():
        raise ConfigError(f"reference node profiles not found at {PROFILES}; run from a source checkout")
    specs = []
    for dept in (*DEPARTMENTS, ARBITER):
        base = PROFILES / dept
        doc = tomllib.loads((base / "node.toml").read_text())
        datasets = [
            DatasetSpec(
                name=d["name"],
                schema=base / d["schema"],
                source=_remap(d["source"], base, data_dir),
                table=d.get("table"),
                query=d.get("query"),
            )
            for d in doc.get("datasets", [])
        ]
        specs.append(NodeSpec(dept, base / doc["node"]["policy"], datasets))
    return specs
