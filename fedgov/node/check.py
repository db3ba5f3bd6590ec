"""``fedgov node check``: validate a node's whole configuration without starting it.

Checks, in order, and collects **every** problem rather than stopping at the
first: node.toml (syntax, keys), the policy file, each dataset's schema, the
data itself (read as the node would, so bad rows are named), the policy's
references to datasets and fields, and the startup kit (certificates, keys,
CA, expiry, that it is a node kit for this node's name). Nothing is sent
anywhere; the coordinator is not contacted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedgov.errors import FedgovError


@dataclass
class CheckReport:
    """Problems (each one line naming file, row, key) and what was checked."""

    config: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "config": str(self.config), "problems": self.problems,
                "warnings": self.warnings, "checked": self.checked}


def _try(report: CheckReport, what: str, fn: Any) -> Any:
    try:
        out = fn()
    except FedgovError as exc:
        report.problems.append(str(exc))
        return None
    report.checked.append(what)
    return out


def check_node(path: Path) -> CheckReport:
    """Check ``path`` (node.toml) and everything it names; never raises for bad input."""
    from fedgov.crypto.kits import KitError, check_kit
    from fedgov.datasources import read_dataset
    from fedgov.node.config import NodeConfig
    from fedgov.policy import load_policy
    from fedgov.schema import load_schema
    from fedgov.tomlutil import load_toml

    path = Path(path)
    report = CheckReport(path)
    doc = _try(report, f"{path}: TOML", lambda: load_toml(path))
    if doc is None:
        return report
    base = path.parent.resolve()
    node = doc.get("node") if isinstance(doc.get("node"), dict) else {}
    # 1. the file as a whole (keys, types, values); its first error, then the parts one by one
    try:
        NodeConfig.load(path)
        report.checked.append(f"{path}: node configuration")
    except FedgovError as exc:
        first = str(exc)
    else:
        first = ""
    # 2. policy
    policy = None
    if isinstance(node.get("policy"), str):
        policy = _try(report, "policy", lambda: load_policy(base / node["policy"]))
    else:
        report.problems.append(f"{path}: node.policy: missing (the policy file this node enforces)")
    # 3. datasets: schema, data
    schemas: dict[str, Any] = {}
    raw = doc.get("datasets", [])
    for i, d in enumerate(raw if isinstance(raw, list) else []):
        w = f"{path}: datasets[{i}]"
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in ("name", "schema", "source")):
            report.problems.append(f"{w}: needs name, schema and source (strings)")
            continue
        schema = _try(report, f"schema {d['schema']}", lambda d=d: load_schema(base / d["schema"]))
        if schema is None:
            continue
        if schema.name != d["name"]:
            report.problems.append(f"{w}: schema describes dataset '{schema.name}', not '{d['name']}'")
        schemas[d["name"]] = schema
        table = _try(
            report,
            f"data of {d['name']}",
            lambda d=d, schema=schema: read_dataset(
                d["source"], schema, base_dir=base, table=d.get("table"), query=d.get("query")
            ),
        )
        if table is not None:
            report.checked[-1] += f" ({table.num_rows} rows)"
            if table.num_rows == 0:
                report.warnings.append(f"{w}: dataset {d['name']} has no rows")
    # 4. the policy's references
    if policy is not None:
        for name, dp in policy.datasets.items():
            if name not in schemas and name != "*":
                report.problems.append(
                    f"{base / node['policy']}: datasets.{name}: node.toml lists no dataset '{name}'"
                )
                continue
            known = set(schemas[name].field_names) if name in schemas else set()
            for k, rule in enumerate(dp.rules):
                unknown = sorted(f for f in rule.fields if f != "*" and known and f not in known)
                if unknown:
                    report.problems.append(
                        f"{base / node['policy']}: datasets.{name}.rules[{k}].fields: "
                        f"{', '.join(unknown)} not in schema {name}"
                    )
    # 5. the kit
    if isinstance(node.get("kit"), str):
        kit = (base / node["kit"]).resolve()
        try:
            status = check_kit(kit, role="node", name=node.get("name") if isinstance(node.get("name"), str) else None)
            report.checked.append(f"kit {kit}")
            report.warnings.extend(f"kit {kit}: {w}" for w in status.warnings)
        except KitError as exc:
            hint = "" if kit.is_dir() else (
                " (no such directory: issue the kit with `fedgov provision kit` or "
                "`fedgov provision federation`, docs/deployment.md sections 0 and 2)"
            )
            report.problems.append(f"kit {kit}: {exc}{hint}")
        except FedgovError as exc:
            report.problems.append(str(exc))
    else:
        report.problems.append(f"{path}: node.kit: missing (the node's startup kit directory)")
    if first and not any(first == p or first in p or p in first for p in report.problems):
        report.problems.insert(0, first)
    return report
