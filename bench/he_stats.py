"""HE statistics and eligibility-check benchmark (in-process protocol).

    python bench/he_stats.py --json [--applicants 10000] [--rows 1000000]

Progress goes to stderr; the last stdout line is one JSON object with
``checks_per_s_protocol`` (applicants checked per second, four departments,
all four protocol roles in this process, key generation included),
``checks_per_s`` (null: no full-stack path yet), ``checks_correct`` (every
decision equals the plaintext rules), ``grouped_sum_seconds`` (count + sum of
one field over ``--rows`` aligned rows in 10 groups, both roles, key
generation and serialisation included), ``grouped_sum_max_rel_error`` and
message sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgov.protocols import eligibility as el  # noqa: E402
from fedgov.protocols import he_stats as hs  # noqa: E402

RULES = """
[check]
name = "bench"
tie_tolerance = 0.01
[thresholds.default]
income_standard = 1000.0
area_per_capita = 70.0
[thresholds.saihan]
income_standard = 1100.0
[[rules]]
name = "income"
kind = "threshold"
per_capita = true
threshold = "income_standard"
terms = [
  { node = "tax", field = "annual_income", divide = 12, max = 2000000 },
  { node = "hrss", field = "pension_monthly", max = 50000 },
]
[[rules]]
name = "floor-area"
kind = "threshold"
per_capita = true
compare = "<="
threshold = "area_per_capita"
terms = [{ node = "housing", field = "total_floor_area_m2", max = 10000 }]
[[rules]]
name = "properties"
kind = "fact"
node = "housing"
field = "property_count"
fail_if = { op = ">", value = 1 }
[[rules]]
name = "vehicle-value"
kind = "fact"
node = "vehicles"
field = "newest_vehicle_value_cny"
fail_if = { op = ">", value = 50000 }
"""


def log(msg: str) -> None:
    print(f"[bench/he_stats] {msg}", file=sys.stderr, flush=True)


def bench_checks(n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rules = el.parse_rules(RULES, "bench rules")
    regions = list(rng.choice(["saihan", "xincheng", "huimin", None], n))
    sizes = rng.integers(1, 7, n).astype(float)

    def sparse(p: float, vals: np.ndarray) -> np.ndarray:
        return np.where(rng.random(n) < p, vals, np.nan)

    depts = {
        "tax": {"annual_income": sparse(0.6, np.round(rng.lognormal(10.5, 0.8, n), 2))},
        "hrss": {"pension_monthly": sparse(0.4, np.round(rng.uniform(190, 5000, n), 2))},
        "housing": {"total_floor_area_m2": sparse(0.7, np.round(rng.uniform(20, 300, n), 1)),
                    "property_count": sparse(0.7, rng.integers(1, 4, n).astype(float))},
        "vehicles": {"newest_vehicle_value_cny": sparse(0.4, np.round(rng.lognormal(11.3, 0.6, n)))},
    }
    tr: list = []
    t0 = time.perf_counter()
    got = el.run_local("bench-el", rules, regions, sizes, depts, transcript=tr)
    dt = time.perf_counter() - t0
    want = el.evaluate_plain(rules, regions, sizes, depts)
    sizes_b: dict[str, int] = {}
    for _, _, step, b in tr:
        sizes_b[step] = sizes_b.get(step, 0) + len(b)
    return {"seconds": dt, "correct": got == want, "per_s": n / dt, "bytes": sizes_b,
            "eligible_rate": float(np.mean([r.eligible for r in got]))}


def bench_grouped_sum(rows: int, groups: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, groups, rows)
    labels = [f"g{k}" for k in range(groups)]
    values = np.round(rng.gamma(2.0, 1500.0, rows), 2)
    values[rng.random(rows) < 0.02] = np.nan
    q = hs.StatsQuery(job_id="bench-hs", requester="bench", scope="bench.value", cohort="bench",
                      stats=("count", "sum"), clip=(0.0, 100000.0), include_total=True)
    tr: list = []
    t0 = time.perf_counter()
    rel = hs.run_local(q, codes, labels, values, min_cohort=11, transcript=tr)
    dt = time.perf_counter() - t0
    want = hs.plaintext_stats(q, codes, values, labels)
    errs = [abs(rel.cells[c]["sum"] - want[c]["sum"]) / abs(want[c]["sum"]) for c in labels]
    errs.append(abs(rel.total["sum"] - want[hs.TOTAL]["sum"]) / abs(want[hs.TOTAL]["sum"]))  # type: ignore[index]
    counts_ok = all(rel.cells[c]["count"] == want[c]["count"] for c in labels)
    sizes_b: dict[str, int] = {}
    for _, _, step, b in tr:
        sizes_b[step] = sizes_b.get(step, 0) + len(b)
    return {"seconds": dt, "max_rel_error": max(errs), "counts_exact": counts_ok, "bytes": sizes_b}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--applicants", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the JSON result line (always printed)")
    args = ap.parse_args()
    log(f"eligibility check: {args.applicants} applicants, 4 departments")
    c = bench_checks(args.applicants, args.seed)
    log(f"  {c['seconds']:.2f} s, {c['per_s']:.0f} checks/s, correct={c['correct']}")
    log(f"grouped sum: {args.rows} rows, {args.groups} groups")
    g = bench_grouped_sum(args.rows, args.groups, args.seed)
    log(f"  {g['seconds']:.2f} s, max rel error {g['max_rel_error']:.2e}")
    out = {
        "checks_per_s": None,
        "checks_per_s_protocol": round(c["per_s"], 1),
        "checks_correct": bool(c["correct"]),
        "checks_seconds": round(c["seconds"], 3),
        "checks_message_bytes": c["bytes"],
        "applicants": args.applicants,
        "grouped_sum_seconds": round(g["seconds"], 3),
        "grouped_sum_max_rel_error": g["max_rel_error"],
        "grouped_sum_counts_exact": g["counts_exact"],
        "grouped_sum_message_bytes": g["bytes"],
        "rows": args.rows,
        "groups": args.groups,
        "notes": "in-process protocol (all roles in one process); no full-stack path yet",
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
