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

import numpy as np

from fedgov.cli_ledger import points_table, verify_db
from fedgov.errors import ConfigError, FedgovError
from fedgov.ledger.entries import parse_coalition_key
from fedgov.ledger.points import shapley_values
from fedgov.runner import DatasetSpec, LocalFederation, NodeSpec
from fedgov.scenarios.social_assistance import generate
from fedgov.scenarios.social_assistance_jobs import (
    decisions_changed,
    eligibility_manifest,
    stats_lines,
    stats_manifest,
)

DEPARTMENTS = ("civil_affairs", "tax", "hrss", "housing", "vehicles", "medical")
#: the data-less key holder for training jobs (runs at the big-data bureau)
ARBITER = "arbiter"
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
        raise ConfigError(
            f"profile data path {source} is outside data/social_assistance", where=str(base)
        ) from None
    new = str(data_dir / rel)
    return f"sqlite:///{new}" if sql else new


def node_specs(data_dir: Path) -> list[NodeSpec]:
    """The six reference department profiles, pointed at ``data_dir``."""
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

[parameters]
dp = { epsilon = 1.0 }   # each department noises its own count (DP is every owner's default)
"""

SMALL_CELL_MANIFEST = """
[job]
kind = "cohort-count"
purpose = "social-assistance-statistics"
description = "Eligible households of four or more in Togtoh (a small cell)"

[[participants]]
node = "civil_affairs"
dataset = "applications"
fields = ["district", "household_size", "eligible"]
where = [
  { field = "district", op = "==", value = "togtoh" },
  { field = "household_size", op = ">=", value = 4 },
  { field = "eligible", op = "==", value = 1 },
]

[parameters]
dp = { epsilon = 1.0 }
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
role = "{"guest" if node == "civil_affairs" else "host"}"
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

GUEST_FEATURES = [
    "district",
    "household_size",
    "declared_monthly_income",
    "has_disabled_member",
    "has_elderly_member",
]
HOST_FEATURES = {
    "tax": ("income", ["annual_income", "employer_count"]),
    "hrss": ("insurance", ["wage_base_monthly", "pension_monthly", "months_contributed"]),
    "housing": ("property", ["property_count", "total_floor_area_m2", "assessed_value_cny"]),
    "vehicles": ("vehicles", ["vehicle_count", "newest_vehicle_value_cny"]),
    "medical": ("claims", ["annual_oop_expense_cny"]),
}
MODEL_PARAMS = {
    "join": "left",
    "shapley": True,  # opt-in model-contribution re-scoring (see docs/protocols/vertical-lr.md)
    "epochs": 30,
    "learning_rate": 0.1,
    "l2": 0.001,
    "seed": 11,
    "precision_bits": 11,
}

MODEL_MANIFEST = (
    """
[job]
kind = "vertical-lr"
purpose = "social-assistance-eligibility"
description = "Eligibility model: civil affairs' labels, five departments' features, nobody's records exposed"

[[participants]]
node = "civil_affairs"
role = "guest"
dataset = "applications"
eval_dataset = "applications_holdout"
id = "resident_id"
label = "eligible"
"""
    + f"fields = {json.dumps(['resident_id', 'eligible', *GUEST_FEATURES])}\n"
    + "".join(
        f"""
[[participants]]
node = "{node}"
role = "host"
dataset = "{ds}"
eval_dataset = "{ds}"
id = "resident_id"
fields = {json.dumps(["resident_id", *fields])}
"""
        for node, (ds, fields) in HOST_FEATURES.items()
    )
    + f"""
[[participants]]
node = "{ARBITER}"
role = "arbiter"

[parameters]
"""
    + "".join(f"{k} = {json.dumps(v)}\n" for k, v in MODEL_PARAMS.items())
)


def civil_affairs_alone(data_dir: Path) -> float:
    """AUC civil affairs reaches with its own data only (same algorithm, same split)."""
    from fedgov.datasources import read_dataset
    from fedgov.node.kinds.vertical_lr import feature_matrix
    from fedgov.protocols import vertical_lr as vlr
    from fedgov.schema import load_schema

    base = PROFILES / "civil_affairs"
    types: dict[str, tuple[str, tuple]] = {}
    mats = []
    for name in ("applications", "applications_holdout"):
        schema = load_schema(base / "schemas" / f"{name}.toml")
        types = {f.name: (f.type, tuple(f.values or ())) for f in schema.fields}
        table = read_dataset(str(data_dir / "civil_affairs" / f"{name}.csv"), schema, base_dir=data_dir)
        x, _ = feature_matrix(table, GUEST_FEATURES, types)
        y = np.array(table.column("eligible").to_pylist(), dtype=float)
        mats.append((x, y))
    params = vlr.VlrParams(
        **{k: v for k, v in MODEL_PARAMS.items() if k not in ("join", "precision_bits", "shapley")}
    )
    model = vlr.fit_plain(mats[0][0], mats[0][1], {}, params)
    return vlr.auc(mats[1][1], model.scores(mats[1][0], {}))


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


def _approve_when_pending(
    fed: LocalFederation, dept: str, approvers: list[str], story: Story
) -> Callable[[str], None]:
    cfg = fed.workdir / "nodes" / dept / "node.toml"

    def approve(job_id: str) -> None:
        deadline = time.monotonic() + 60
        while True:
            out = subprocess.run(
                [sys.executable, "-m", "fedgov", "node", "pending", "--json", "--config", str(cfg)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if out.returncode == 0 and any(r["job_id"] == job_id for r in json.loads(out.stdout or "[]")):
                break
            if time.monotonic() > deadline:
                raise FedgovError(f"job {job_id} never reached {dept}'s approval queue")
            time.sleep(0.3)
        for name in approvers:
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fedgov",
                    "node",
                    "approve",
                    job_id,
                    "--config",
                    str(cfg),
                    "--kit",
                    str(fed.kits / name),
                    "--reason",
                    "reviewed: aggregate counts only",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if r.returncode != 0:
                raise FedgovError(f"approval by {name} failed: {r.stderr.strip()}")
            story.say(f"   {r.stdout.strip()}")

    return approve


def _submit(
    fed: LocalFederation,
    manifest: str,
    approve: Callable[[str], None] | None = None,
    *,
    must_succeed: str | None = None,
) -> dict[str, Any]:
    """Submit as the analyst and wait; with ``must_succeed`` (the job's name in the
    message) a job that did not succeed raises FedgovError with its state and reason."""
    with fed.client("analyst") as c:
        job = c.submit(manifest)
        if approve is not None:
            approve(job.job_id)
        st = c.wait(job.job_id, timeout=600)
        out: dict[str, Any] = {"job": st.to_dict()}
        if st.state == "succeeded":
            out["result"] = c.result(job.job_id)
        elif must_succeed:
            raise FedgovError(f"{must_succeed} job {st.state}: {st.reason}")
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
        fed = LocalFederation(
            root / "federation", node_specs(data_dir), approvers={"medical": MEDICAL_APPROVERS}
        )
        with fed:
            story.say(
                f"2. Coordinator, {len(DEPARTMENTS)} department nodes and an arbiter started as separate processes; "
                f"every link is mutual TLS (coordinator at {fed.address}). Nodes dial out; none listens."
            )
            with fed.client("analyst") as c:
                catalog = c.nodes()
            story.say("3. The catalogue holds metadata only — schemas and row counts, never records:")
            for n in catalog:
                for d in n["datasets"]:
                    story.say(
                        f"   {n['name']:<14} {d['name']:<13} {d['rows']:>7} rows  ({len(d['fields'])} fields)"
                    )

            story.say(
                "4. A joint count, each department filtering its own records: eligible past applicants,"
            )
            story.say(
                "   low taxable income, pensioners, multi-property owners, costly cars, chronic illness."
            )
            story.say(
                "   Medical insurance requires two approvers (dual-post review); both sign at their node:"
            )
            counts = _submit(
                fed, COUNT_MANIFEST, _approve_when_pending(fed, "medical", MEDICAL_APPROVERS, story),
                must_succeed="count",
            )
            res = counts["result"]["civil_affairs"]
            for node, n in res["counts"].items():
                story.say(f"   {node:<14} {'suppressed' if n is None else n}")

            small = _submit(fed, SMALL_CELL_MANIFEST)
            sres = small.get("result", {}).get("civil_affairs", {})
            story.say(
                "5. A tiny cohort (eligible households of four or more in Togtoh): "
                + (
                    "suppressed by civil affairs' policy (noisy count below 11)."
                    if sres.get("suppressed")
                    else f"{sres.get('total_released')} households (large enough to release)."
                )
            )
            story.say(
                "6. Private set intersection: civil affairs aligns its applicants with every department;"
            )
            story.say("   no department learns anyone outside the overlap. Medical's approvers sign again:")
            aligned = _submit(
                fed, PSI_MANIFEST, _approve_when_pending(fed, "medical", MEDICAL_APPROVERS, story),
                must_succeed="PSI",
            )
            pres = aligned["result"]["civil_affairs"]
            for node, n in sorted(pres["pairwise_sizes"].items()):
                story.say(f"   applicants known to {node:<9} {n:>6}")
            story.say(f"   known to all six departments: {pres['intersection_size']}")
            story.say(
                "7. The eligibility model: civil affairs' past verification outcomes (labels) with five"
            )
            story.say(
                "   departments' facts, trained under homomorphic encryption (CKKS); each party keeps its"
            )
            story.say("   own weights, the arbiter only ever decrypts masked numbers. Medical signs again:")
            model = _submit(
                fed, MODEL_MANIFEST, _approve_when_pending(fed, "medical", MEDICAL_APPROVERS, story),
                must_succeed="model",
            )
            mres = model["result"]["civil_affairs"]
            auc_alone = civil_affairs_alone(data_dir)
            story.say(
                f"   AUC on this year's held-out applications: joint model {mres['eval']['auc']:.3f}, "
                f"civil affairs' data alone {auc_alone:.3f}"
            )
            story.say(
                f"   ({mres['epochs']} epochs, {mres['seconds_per_epoch']:.2f} s each; recall of eligible "
                f"households {mres['eval']['recall']:.0%} at 0.5)"
            )
            coalitions = {parse_coalition_key(k): v for k, v in mres["eval"]["coalitions"].items()}
            phi = shapley_values(sorted(HOST_FEATURES), coalitions)
            story.say(
                "   Each department's contribution to that AUC (exact Shapley, by re-scoring coalitions):"
            )
            story.say(
                "   "
                + ", ".join(f"{d} {float(v):+.3f}" for d, v in sorted(phi.items(), key=lambda kv: -kv[1]))
            )
            story.say("8. A statistical question across departments, computed under homomorphic encryption:")
            story.say(
                "   average pension (HRSS) of applicants rejected in past verification (civil affairs),"
            )
            story.say(
                "   by district. HRSS holds the key, checks every cell itself and suppresses small ones:"
            )
            stats = _submit(fed, stats_manifest(dp_epsilon=1.0), must_succeed="statistics")
            for line in stats_lines(stats["result"]):
                story.say(f"   {line}")
            story.say(
                "9. A private eligibility check of the applicants: income, floor-area, property and vehicle"
            )
            story.say(
                "   rules over five departments, compared on blinded ciphertexts; civil affairs learns only"
            )
            story.say("   eligible / not eligible and which rule failed. Medical signs again:")
            check = _submit(
                fed, eligibility_manifest(), _approve_when_pending(fed, "medical", MEDICAL_APPROVERS, story),
                must_succeed="eligibility",
            )
            cres = check["result"]["civil_affairs"]
            changed = decisions_changed(check["result"])
            story.say(
                f"   {cres['applicants']} applicants: {cres['eligible']} eligible, {cres['not_eligible']} not;"
            )
            story.say(
                f"   {changed} decisions differ from civil affairs' declared income alone "
                f"({cres['compared_with_baseline']['now_not_eligible']} now not eligible, "
                f"{cres['compared_with_baseline']['now_eligible']} now eligible)"
            )
            refused = _submit(fed, FORBIDDEN_MANIFEST)
            story.say(f"10. A request for a field civil affairs does not share is {refused['job']['state']}:")
            story.say(f"   {refused['job']['reason']}")
            summary: dict[str, Any] = {
                "ok": True,
                "nodes": len([n for n in fed.nodes if n.name in DEPARTMENTS]),
                "model": {
                    "auc_joint": round(mres["eval"]["auc"], 4),
                    "auc_civil_affairs_only": round(auc_alone, 4),
                    "eval_rows": mres["eval"]["rows"],
                    "epochs": mres["epochs"],
                    "seconds_per_epoch": mres["seconds_per_epoch"],
                    "shapley_auc": {d: round(float(v), 4) for d, v in phi.items()},
                },
                "world": {k: world[k] for k in ("households", "persons", "applicants") if k in world},
                "catalog": {n["name"]: {d["name"]: d["rows"] for d in n["datasets"]} for n in catalog},
                "cohort_count": res,
                "small_cell": sres,
                "he_stats": {
                    "cells": stats["result"]["hrss"]["cells"],
                    "suppressed": sorted(stats["result"]["hrss"]["suppressed"]),
                },
                "eligibility": {
                    **{k: cres[k] for k in ("applicants", "eligible", "not_eligible", "failed_by_rule")},
                    "decisions_changed_vs_declared_income": changed,
                },
                "psi": {
                    "pairwise_sizes": pres["pairwise_sizes"],
                    "intersection_size": pres["intersection_size"],
                },
                "refused": {"state": refused["job"]["state"], "reason": refused["job"]["reason"]},
            }
            # the contribution ledger, verified as an auditor would
            db = fed.workdir / "state" / "coordinator" / "ledger.db"
            verified = verify_db(db)
            summary["ledger"] = {"size": verified["size"], "verified": verified["verified"]}
            summary["points"] = points_table(db, period="all", budget=1000)
            if keep:
                subprocess.run(
                    [sys.executable, "-m", "fedgov", "ledger", "points", "--db", str(db), "--period", "all",
                     "--budget", "1000", "--png", str(root / "points.png")],
                    capture_output=True, text=True, timeout=120,
                )
            story.say(
                f"11. The ledger holds {verified['size']} entries (RFC 9162 Merkle log, signed heads, "
                f"witnessed by every node); verified: {verified['verified']}. Contribution points:"
            )
            for row in summary["points"]:
                story.say(
                    f"   {row['rank']}. {row['dept']:<14} {float(row['points']):>10.1f} points  "
                    f"{float(row['share']):6.1%}  -> {row['budget_amount']} of a 1000 budget pool"
                )
        if refused["job"]["state"] != "rejected":
            raise FedgovError("the forbidden request was not refused")
        summary["seconds"] = round(time.monotonic() - story.t0, 1)
        story.say(f"Done in {summary['seconds']} s; every process stopped.")
        if keep:
            story.say(f"World, configs, audit logs and process logs kept in {root}")
        return summary
