"""``fedgov demo``: the social-assistance story, end to end, on real processes.

A synthetic city is generated; six department nodes (civil affairs, tax,
social security, housing, vehicles, medical insurance) start as separate
processes next to their own data, each with its reference profile from
``nodes/<dept>/`` (schema, policy), and dial a coordinator over mutual TLS.
An analyst then runs joint jobs; the departments' own policies decide.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedgov.errors import ConfigError, FedgovError
from fedgov.runner import DatasetSpec, LocalFederation, NodeSpec
from fedgov.scenarios.social_assistance import generate

DEPARTMENTS = ("civil_affairs", "tax", "hrss", "housing", "vehicles", "medical")
REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "nodes"
DATA_PREFIX = (REPO / "data" / "social_assistance").resolve()
MEDICAL_APPROVERS = ["dr_wang", "ms_zhao"]


def _remap(source: str, base: Path, data_dir: Path) -> str:
    """Point a reference profile's data path at the freshly generated world."""
    sql = source.startswith("sqlite:///")
    raw = source.removeprefix("sqlite:///") if sql else source
    path = (base / raw).resolve()
    try:
        rel = path.relative_to(DATA_PREFIX)
    except ValueError:
        raise ConfigError(f"profile data path {source} is outside data/social_assistance", where=str(base)) from None
    new = str(data_dir / rel)
    return f"sqlite:///{new}" if sql else new


def node_specs(data_dir: Path) -> list[NodeSpec]:
    """The six reference department profiles, pointed at ``data_dir``."""
    if not PROFILES.is_dir():
        raise ConfigError(f"reference node profiles not found at {PROFILES}; run from a source checkout")
    specs = []
    for dept in DEPARTMENTS:
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


COUNT_MANIFEST = """
[job]
kind = "cohort-count"
purpose = "social-assistance-statistics"
description = "Each department counts its own records under its own filter"

[[participants]]
node = "civil_affairs"
dataset = "applications"
role = "aggregator"
fields = ["eligible"]
where = [{ field = "eligible", op = "==", value = 1 }]

[[participants]]
node = "tax"
dataset = "income"
fields = ["annual_income"]
where = [{ field = "annual_income", op = "<", value = 12000.0 }]

[[participants]]
node = "hrss"
dataset = "insurance"
fields = ["pension_monthly"]
where = [{ field = "pension_monthly", op = ">", value = 0.0 }]

[[participants]]
node = "housing"
dataset = "property"
fields = ["property_count"]
where = [{ field = "property_count", op = ">=", value = 2 }]

[[participants]]
node = "vehicles"
dataset = "vehicles"
fields = ["newest_vehicle_value_cny"]
where = [{ field = "newest_vehicle_value_cny", op = ">", value = 150000.0 }]

[[participants]]
node = "medical"
dataset = "claims"
fields = ["chronic_illness"]
where = [{ field = "chronic_illness", op = "==", value = true }]
"""

SMALL_CELL_MANIFEST = """
[job]
kind = "cohort-count"
purpose = "social-assistance-statistics"
description = "Eligible large households with a disabled member in Wuchuan (a small cell)"

[[participants]]
node = "civil_affairs"
dataset = "applications"
fields = ["district", "household_size", "has_disabled_member", "eligible"]
where = [
  { field = "district", op = "==", value = "wuchuan" },
  { field = "household_size", op = ">=", value = 5 },
  { field = "has_disabled_member", op = "==", value = true },
  { field = "eligible", op = "==", value = 1 },
]
"""

PSI_MANIFEST = """
[job]
kind = "psi"
purpose = "social-assistance-eligibility"
description = "Which applicants does each department know? (entity alignment)"

[parameters]
mode = "align"

[results]
recipients = ["requester", "tax", "hrss", "housing", "vehicles", "medical"]
""" + "".join(
    f"""
[[participants]]
node = "{node}"
dataset = "{dataset}"
fields = ["resident_id"]
id = "resident_id"
role = "{'guest' if node == 'civil_affairs' else 'host'}"
"""
    for node, dataset in (
        ("civil_affairs", "applications"),
        ("tax", "income"),
        ("hrss", "insurance"),
        ("housing", "property"),
        ("vehicles", "vehicles"),
        ("medical", "claims"),
    )
)

FORBIDDEN_MANIFEST = """
[job]
kind = "cohort-count"
purpose = "social-assistance-statistics"
description = "Chronic illness among applicants (asked of civil affairs' birth dates: not shared)"

[[participants]]
node = "civil_affairs"
dataset = "applications"
fields = ["birth_date"]
"""


class Story:
    """Prints the narrative unless quiet; collects the JSON summary."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()

    def say(self, text: str = "") -> None:
        if not self.quiet:
            print(text, flush=True)


def _approve_when_pending(fed: LocalFederation, dept: str, approvers: list[str], story: Story) -> Callable[[str], None]:
    cfg = fed.workdir / "nodes" / dept / "node.toml"

    def approve(job_id: str) -> None:
        deadline = time.monotonic() + 60
        while True:
            out = subprocess.run(
                [sys.executable, "-m", "fedgov", "node", "pending", "--json", "--config", str(cfg)],
                capture_output=True, text=True, timeout=60,
            )
            if out.returncode == 0 and any(r["job_id"] == job_id for r in json.loads(out.stdout or "[]")):
                break
            if time.monotonic() > deadline:
                raise FedgovError(f"job {job_id} never reached {dept}'s approval queue")
            time.sleep(0.3)
        for name in approvers:
            r = subprocess.run(
                [sys.executable, "-m", "fedgov", "node", "approve", job_id, "--config", str(cfg),
                 "--kit", str(fed.kits / name), "--reason", "reviewed: aggregate counts only"],
                capture_output=True, text=True, timeout=60,
            )
            if r.returncode != 0:
                raise FedgovError(f"approval by {name} failed: {r.stderr.strip()}")
            story.say(f"   {r.stdout.strip()}")

    return approve


def _submit(fed: LocalFederation, manifest: str, approve: Callable[[str], None] | None = None) -> dict[str, Any]:
    with fed.client("analyst") as c:
        job = c.submit(manifest)
        if approve is not None:
            approve(job.job_id)
        st = c.wait(job.job_id, timeout=600)
        out: dict[str, Any] = {"job": st.to_dict()}
        if st.state == "succeeded":
            out["result"] = c.result(job.job_id)
        return out


def run_demo(*, keep: Path | None = None, households: int = 6000, quiet: bool = False) -> dict[str, Any]:
    story = Story(quiet)
    with tempfile.TemporaryDirectory(prefix="fedgov-demo-") as tmp:
        root = (keep or Path(tmp)).resolve()
        data_dir = root / "data"
        story.say("fedgov demo — social-assistance eligibility across six departments")
        story.say("=" * 68)
        world = generate(data_dir, households=households)
        story.say(
            f"1. A synthetic city: {world['households']} households, {world['persons']} residents, "
            f"{world['applicants']} assistance applications."
        )
        fed = LocalFederation(root / "federation", node_specs(data_dir), approvers={"medical": MEDICAL_APPROVERS})
        with fed:
            story.say(
                f"2. Coordinator and {len(fed.nodes)} department nodes started as separate processes; "
                f"every link is mutual TLS (coordinator at {fed.address}). Nodes dial out; none listens."
            )
            with fed.client("analyst") as c:
                catalog = c.nodes()
            story.say("3. The catalogue holds metadata only — schemas and row counts, never records:")
            for n in catalog:
                for d in n["datasets"]:
                    story.say(f"   {n['name']:<14} {d['name']:<13} {d['rows']:>7} rows  ({len(d['fields'])} fields)")

            story.say("4. A joint count, each department filtering its own records: eligible past applicants,")
            story.say("   low taxable income, pensioners, multi-property owners, costly cars, chronic illness.")
            story.say("   Medical insurance requires two approvers (dual-post review); both sign at their node:")
            counts = _submit(fed, COUNT_MANIFEST, _approve_when_pending(fed, "medical", MEDICAL_APPROVERS, story))
            if counts["job"]["state"] != "succeeded":
                raise FedgovError(f"count job {counts['job']['state']}: {counts['job']['reason']}")
            res = counts["result"]["civil_affairs"]
            for node, n in res["counts"].items():
                story.say(f"   {node:<14} {'suppressed' if n is None else n}")

            small = _submit(fed, SMALL_CELL_MANIFEST)
            sres = small.get("result", {}).get("civil_affairs", {})
            story.say(
                "5. A tiny cohort (large Wuchuan households with a disabled member): "
                + ("suppressed by civil affairs' policy (fewer than 11 people)." if sres.get("suppressed")
                   else f"{sres.get('total_released')} households (large enough to release).")
            )
            story.say("6. Private set intersection: civil affairs aligns its applicants with every department;")
            story.say("   no department learns anyone outside the overlap. Medical's approvers sign again:")
            aligned = _submit(fed, PSI_MANIFEST, _approve_when_pending(fed, "medical", MEDICAL_APPROVERS, story))
            if aligned["job"]["state"] != "succeeded":
                raise FedgovError(f"PSI job {aligned['job']['state']}: {aligned['job']['reason']}")
            pres = aligned["result"]["civil_affairs"]
            for node, n in sorted(pres["pairwise_sizes"].items()):
                story.say(f"   applicants known to {node:<9} {n:>6}")
            story.say(f"   known to all six departments: {pres['intersection_size']}")
            refused = _submit(fed, FORBIDDEN_MANIFEST)
            story.say(f"7. A request for a field civil affairs does not share is {refused['job']['state']}:")
            story.say(f"   {refused['job']['reason']}")
            summary: dict[str, Any] = {
                "ok": True,
                "nodes": len(fed.nodes),
                "world": {k: world[k] for k in ("households", "persons", "applicants") if k in world},
                "catalog": {n["name"]: {d["name"]: d["rows"] for d in n["datasets"]} for n in catalog},
                "cohort_count": res,
                "small_cell": sres,
                "psi": {"pairwise_sizes": pres["pairwise_sizes"], "intersection_size": pres["intersection_size"]},
                "refused": {"state": refused["job"]["state"], "reason": refused["job"]["reason"]},
            }
        if refused["job"]["state"] != "rejected":
            raise FedgovError("the forbidden request was not refused")
        summary["seconds"] = round(time.monotonic() - story.t0, 1)
        story.say(f"Done in {summary['seconds']} s; every process stopped.")
        if keep:
            story.say(f"World, configs, audit logs and process logs kept in {root}")
        return summary
