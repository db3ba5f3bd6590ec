"""``fedgov demo``: the social-assistance story, end to end, on real processes.

A synthetic city is generated; six department nodes (civil affairs, tax,
social security, housing, vehicles, medical insurance) start as separate
processes next to their own data, each with its reference profile from
``nodes/<dept>/`` (schema, policy), and dial a coordinator over mutual TLS.
An analyst then runs joint jobs; the departments' own policies decide.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedgov.cli_ledger import points_table, verify_db
from fedgov.errors import FedgovError
from fedgov.ledger.entries import parse_coalition_key
from fedgov.ledger.points import shapley_values
from fedgov.runner import LocalFederation
from fedgov.scenarios.profiles import ARBITER, DEPARTMENTS, PROFILES, node_specs
from fedgov.scenarios.social_assistance import generate
from fedgov.scenarios.social_assistance_jobs import (
    DEMO_PENSION_CLIP,
    decisions_changed,
    eligibility_manifest,
    stats_lines,
    stats_manifest,
)

MEDICAL_APPROVERS = ["dr_wang", "ms_zhao"]


#: the joint count of docs/deployment.md (one file for the demo and the walkthrough)
COUNT_MANIFEST = (PROFILES.parent / "examples" / "social_assistance" / "jobs" / "joint_count.toml").read_text()

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

# the aligned order stays with civil affairs; the departments' policies
# (psi_id_recipients, psi_size_release) decide who else may learn it and its sizes
[results]
recipients = ["requester"]
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


#: Published resolution of numbers a CKKS-trained model produces (AUC, Shapley
#: values). Training under CKKS carries fresh encryption noise and the arbiter's
#: flooding noise (os.urandom-seeded on purpose: a seeded flood could be
#: subtracted), so two runs with one seed differ by a few 1e-4 in AUC
#: (docs/protocols/vertical-lr.md, error budget). Two decimals is what that
#: error supports; the digits beyond it are noise, not information.
MODEL_DECIMALS = 2
#: he-stats sums carry CKKS decode error; docs/protocols/he-stats.md bounds it
#: by ``2^(mask_bits-45) * ceil(n/4096) * clip`` = 2^-15 * 50000 ≈ 1.5 CNY for
#: the demo's cells (mask_bits 30, clip 50000 or less, n < 4096). Sums are published to
#: the next power of ten above that bound (10 CNY), means from the published sum
#: to 0.1 CNY; counts are exact. (Measured error: ~1e-2 CNY.)
SUM_DECIMALS = -1
MEAN_DECIMALS = 1


def _he_stats_cells(cells: dict[str, Any]) -> dict[str, Any]:
    """he-stats cells at the resolution the documented error supports (see SUM_DECIMALS)."""
    out: dict[str, Any] = {}
    for label, cell in sorted(cells.items()):
        c = dict(cell)
        if c.get("sum") is not None:
            c["sum"] = float(round(float(c["sum"]), SUM_DECIMALS))
            if c.get("count"):
                c["mean"] = round(c["sum"] / c["count"], MEAN_DECIMALS)
        elif c.get("mean") is not None:
            c["mean"] = round(float(c["mean"]), MEAN_DECIMALS)
        out[label] = c
    return out


def _reconcile(world: dict[str, Any], catalog: dict[str, dict[str, int]]) -> dict[str, Any]:
    """How applicant households become civil affairs' application rows.

    ``rows = applicant households + re-entered applications + duplicated rows``,
    split into this year's training file and the held-out file; raises
    FedgovError when the catalogue's row counts disagree with the generator's.
    """
    rows = world["rows"]
    for key, n in rows.items():
        node, _, ds = key.partition(".")
        if catalog.get(node, {}).get(ds) != n:
            raise FedgovError(f"catalogue lists {catalog.get(node, {}).get(ds)} rows for {key}, generated {n}")
    defects = world["defects"]["civil_affairs.applications"]
    re_entered = defects.get("re_entered_application", 0)
    duplicated = defects.get("duplicate_rows", 0)
    train = rows["civil_affairs.applications"]
    held_out = rows["civil_affairs.applications_holdout"]
    if world["applicants"] + re_entered + duplicated != train + held_out:
        raise FedgovError("application rows do not reconcile with applicant households")
    return {
        "applicant_households": world["applicants"],
        "re_entered_applications": re_entered,
        "duplicated_rows": duplicated,
        "application_rows": train + held_out,
        "training_rows": train,
        "held_out_rows": held_out,
    }


def _serve_console(fed: LocalFederation, story: Story) -> None:
    """Keep the demo's federation up and serve the analyst's web console on 127.0.0.1 until Ctrl-C."""
    from fedgov.console.serve import run_console

    def ready(url: str) -> None:
        print(f"12. The federation stays up. The analyst's web console (Ctrl-C stops it and every process):\n"
              f"    {url}", flush=True)
        print(f"    an approver of medical: fedgov console --kit {fed.kits / MEDICAL_APPROVERS[0]} "
              f"--coordinator {fed.address} --node-config {fed.workdir / 'nodes' / 'medical' / 'node.toml'}",
              flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        run_console(fed.kits / "analyst", fed.address, on_ready=ready)
    story.say("console stopped")


def run_demo(
    *, keep: Path | None = None, households: int = 6000, seed: int = 7, quiet: bool = False,
    console: bool = False,
) -> dict[str, Any]:
    """Run the story; return the JSON summary.

    With ``console`` the federation stays up after the story and the analyst's
    web console is served on 127.0.0.1 (its one-time URL printed) until Ctrl-C.

    Guarantees: for one ``(seed, households)`` every field except ``seconds``,
    ``model.seconds_per_epoch`` and ``model.auc_joint`` is identical across
    runs unless a Shapley value lies within the CKKS noise (~3e-4) of a
    rounding boundary (the world, PSI, eligibility decisions, the ledger,
    Shapley values, points and budget shares), except the releases the owners
    noise with differential privacy (counts, the small cell, he-stats: fresh
    CSPRNG noise each run, by design). ``auc_joint`` is published at
    :data:`MODEL_DECIMALS` and agrees to that resolution.
    """
    story = Story(quiet)
    with tempfile.TemporaryDirectory(prefix="fedgov-demo-") as tmp:
        root = (keep or Path(tmp)).resolve()
        data_dir = root / "data"
        story.say("fedgov demo — social-assistance eligibility across six departments")
        story.say("=" * 68)
        world = generate(data_dir, households=households, seed=seed)
        story.say(
            f"1. A synthetic city (seed {seed}): {world['households']} households, {world['persons']} "
            f"residents, {world['applicants']} of the households applied for assistance."
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
                        f"   {n['name']:<14} {d['name']:<21} {d['rows']:>7} rows  ({len(d['fields'])} fields)"
                    )
            rec = _reconcile(world, {n["name"]: {d["name"]: d["rows"] for d in n["datasets"]} for n in catalog})
            story.say(
                f"   civil affairs' {rec['application_rows']} application rows = {rec['applicant_households']} "
                f"applicant households + {rec['re_entered_applications']} re-entered applications + "
                f"{rec['duplicated_rows']} duplicated rows;"
            )
            story.say(
                f"   {rec['training_rows']} are past applications (training), {rec['held_out_rows']} this "
                "year's (held out to evaluate the model)."
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
                    else f"{sres['counts']['civil_affairs']} people (large enough to release)."
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
            if "pairwise_sizes" in pres:
                for node, n in sorted(pres["pairwise_sizes"].items()):
                    story.say(f"   applicants known to {node:<9} {n if n is not None else 'suppressed':>6}")
                story.say(f"   known to all six departments: {pres['intersection_size']}")
            else:
                story.say("   the overlap sizes stay with civil affairs: no department's policy releases them")
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
            auc_joint = round(mres["eval"]["auc"], MODEL_DECIMALS)
            story.say(
                f"   AUC on this year's held-out applications: joint model {auc_joint:.2f}, "
                f"civil affairs' data alone {auc_alone:.2f} (two decimals: CKKS noise lies below)"
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
                + ", ".join(
                    f"{d} {'−' if v < 0 else '+'}{abs(float(v)):.2f}"
                    for d, v in sorted(phi.items(), key=lambda kv: (-kv[1], kv[0]))
                )
            )
            worse = sorted(d for d, v in phi.items() if v < 0)
            if worse:
                story.say(
                    f"   {', '.join(worse)} made the model (slightly) worse: a negative contribution earns "
                    "nothing for this job (docs/points.md)."
                )
            story.say("8. A statistical question across departments, computed under homomorphic encryption:")
            story.say(
                "   average pension (HRSS) of applicants rejected in past verification (civil affairs),"
            )
            story.say(
                "   by district. HRSS holds the key, checks every cell itself and suppresses small ones:"
            )
            stats = _submit(fed, stats_manifest(dp_epsilon=1.0, clip=DEMO_PENSION_CLIP), must_succeed="statistics")
            rel = stats["result"]["hrss"]
            shown = {"hrss": {**rel, "cells": _he_stats_cells(rel["cells"])}}
            if rel.get("total"):
                shown["hrss"]["total"] = _he_stats_cells({"all": rel["total"]})["all"]
            for line in stats_lines(shown):
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
                    "auc_joint": auc_joint,
                    "auc_civil_affairs_only": round(auc_alone, MODEL_DECIMALS),
                    "decimals": MODEL_DECIMALS,
                    "eval_rows": mres["eval"]["rows"],
                    "epochs": mres["epochs"],
                    "seconds_per_epoch": mres["seconds_per_epoch"],
                    "shapley_auc": {d: round(float(v), MODEL_DECIMALS) + 0.0 for d, v in sorted(phi.items())},  # no -0.0
                    #: departments whose Shapley value is negative (they earn nothing for the job)
                    "made_model_worse": worse,
                },
                "world": {
                    "seed": seed,
                    **{k: world[k] for k in ("households", "persons", "applicants")},
                    "applications": rec,
                },
                "catalog": {n["name"]: {d["name"]: d["rows"] for d in n["datasets"]} for n in catalog},
                # per-department counts of different populations: never summed
                "cohort_count": {"counts": res["counts"], "suppressed": res["suppressed"]},
                "small_cell": {k: sres[k] for k in ("counts", "suppressed") if k in sres},
                "he_stats": {
                    "cells": _he_stats_cells(stats["result"]["hrss"]["cells"]),
                    "suppressed": sorted(stats["result"]["hrss"]["suppressed"]),
                },
                "eligibility": {
                    **{k: cres[k] for k in ("applicants", "eligible", "not_eligible", "failed_by_rule")},
                    "decisions_changed_vs_declared_income": changed,
                },
                "psi": {k: pres[k] for k in ("size_release", "pairwise_sizes", "intersection_size") if k in pres},
                "refused": {"state": refused["job"]["state"], "reason": refused["job"]["reason"]},
            }
            # the contribution ledger, verified as an auditor would
            db = fed.workdir / "state" / "coordinator" / "ledger.db"
            verified = verify_db(db, ca_cert=fed.kits / "auditor" / "ca.crt")  # department signatures too
            summary["ledger"] = {"size": verified["size"], "verified": verified["verified"]}
            summary["points"] = points_table(
                db, period="all", budget=1000, ca_cert=fed.kits / "auditor" / "ca.crt"
            )  # department-signed facts only
            if keep:
                subprocess.run(
                    [sys.executable, "-m", "fedgov", "ledger", "points", "--db", str(db), "--period", "all",
                     "--ca", str(fed.kits / "auditor" / "ca.crt"),
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
            if console:
                _serve_console(fed, story)
        if refused["job"]["state"] != "rejected":
            raise FedgovError("the forbidden request was not refused")
        summary["seconds"] = round(time.monotonic() - story.t0, 1)
        story.say(f"Done in {summary['seconds']} s; every process stopped.")
        if keep:
            story.say(f"World, configs, audit logs and process logs kept in {root}")
        return summary
