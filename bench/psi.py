"""PSI benchmark: fedgov ECDH-PSI (in-process) vs openmined-psi, plus the full stack.

Baseline: ``pip install --no-deps openmined-psi`` (its exact protobuf pin clashes with
fedgov's generated code; the wheel runs without it).

    python bench/psi.py --n 100000 --overlap 0.5 --json

Progress goes to stderr; the last stdout line is one JSON object with ``n``,
``intersection_size``, ``correct``, ``protocol_elems_per_s``,
``openmined_elems_per_s``, ``speedup_vs_openmined``, ``stack_elems_per_s``,
``peak_rss_mb`` and notes. Throughput = (guest elements + host elements) /
wall time, pool start-up included.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgov.protocols.psi import run_local  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench/psi] {msg}", file=sys.stderr, flush=True)


def make_sets(n: int, overlap: float, seed: int) -> tuple[list[str], list[str]]:
    """Two sets of n distinct 18-digit resident-ID-shaped strings sharing round(n*overlap)."""
    rng = np.random.default_rng(seed)
    k = round(n * overlap)
    need = 2 * n - k
    vals = np.unique(rng.integers(10**17, 10**18, size=need + need // 10 + 16, dtype=np.int64))
    rng.shuffle(vals)
    vals = vals[:need]
    ids = [str(v) for v in vals.tolist()]
    guest = ids[:n]
    host = ids[:k] + ids[n:]
    order = rng.permutation(n)
    host = [host[i] for i in order]
    return guest, host


def peak_rss_mb() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return round(me, 1), round(kids, 1)


def bench_fedgov(guest: list[str], host: list[str], workers: int | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = run_local("bench-psi", guest, {"host": host}, workers=workers)
    dt = time.perf_counter() - t0
    want = set(guest) & set(host)
    g, h = res["guest"], res["host"]
    assert h is not None
    correct = (
        g.size == len(want)
        and set(g.ids or []) == want
        and h.ids == g.ids
        and [guest[r] for r in g.rows] == g.ids  # type: ignore[union-attr]
        and [host[r] for r in h.rows] == h.ids  # type: ignore[union-attr]
    )
    return {"seconds": dt, "size": g.size, "correct": correct,
            "elems_per_s": (len(guest) + len(host)) / dt}


def bench_openmined(guest: list[str], host: list[str]) -> dict[str, Any]:
    import private_set_intersection.python as om  # type: ignore[import-not-found]

    t0 = time.perf_counter()
    client = om.client.CreateWithNewKey(True)
    server = om.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(0.0, len(guest), host, om.DataStructure.RAW)
    request = client.CreateRequest(guest)
    response = server.ProcessRequest(request)
    idx = client.GetIntersection(setup, response)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "size": len(idx), "elems_per_s": (len(guest) + len(host)) / dt,
            "version": om.__version__}


def bench_stack(guest: list[str], host: list[str]) -> tuple[float | None, str]:
    """Coordinator + two node processes over mTLS, via ``fedgov run``'s code path."""
    from fedgov.runspec import run_spec

    with tempfile.TemporaryDirectory(prefix="bench-psi-") as tmp:
        d = Path(tmp)
        for name, ids in (("guest", guest), ("host", host)):
            with open(d / f"{name}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id"])
                w.writerows([i] for i in ids)
        (d / "spec.toml").write_text(
            '[job]\nkind = "psi"\npurpose = "benchmark"\n\n'
            '[[parties]]\nname = "guest"\nrole = "guest"\ndata = "guest.csv"\nid = "id"\n\n'
            '[[parties]]\nname = "host"\nrole = "host"\ndata = "host.csv"\nid = "id"\n'
        )
        t0 = time.perf_counter()
        try:
            out = run_spec(d / "spec.toml")
        except Exception as exc:  # noqa: BLE001 - report, don't crash the bench
            return None, f"run_spec failed: {type(exc).__name__}: {exc}"[:300]
        dt = time.perf_counter() - t0
        size = out.get("intersection_size") if isinstance(out, dict) else None
        note = (f"stack {dt:.1f}s incl. {out.get('seconds_startup')}s process start, "
                f"intersection_size={size}")
        return (len(guest) + len(host)) / dt, note


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="elements per party")
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=None, help="pool size (default: all cores)")
    ap.add_argument("--baseline-max", type=int, default=None,
                    help="run openmined-psi on the first K elements of each set (default: all)")
    ap.add_argument("--no-stack", action="store_true", help="skip the full-stack run")
    ap.add_argument("--no-openmined", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the JSON summary line")
    a = ap.parse_args()

    notes: list[str] = []
    guest, host = make_sets(a.n, a.overlap, a.seed)
    log(f"sets: {len(guest)} x {len(host)}, overlap {a.overlap}, cores {os.cpu_count()}")

    log("fedgov ECDH-PSI (in-process, process pool) ...")
    fg = bench_fedgov(guest, host, a.workers)
    log(f"  {fg['seconds']:.2f}s, {fg['elems_per_s']:.0f} elems/s, correct={fg['correct']}")

    om_eps: float | None = None
    if a.no_openmined:
        notes.append("openmined-psi skipped (--no-openmined)")
    else:
        try:
            k = a.baseline_max or a.n
            log(f"openmined-psi ECDH PSI on {min(k, a.n)} x {min(k, a.n)} (single thread) ...")
            om = bench_openmined(guest[:k], host[:k])
            om_eps = om["elems_per_s"]
            log(f"  {om['seconds']:.2f}s, {om_eps:.0f} elems/s (v{om['version']}, RAW, fpr 0)")
            if k < a.n:
                notes.append(f"openmined-psi measured on the first {k} elements of each set")
        except ImportError:
            notes.append("openmined-psi not installed (pip install openmined-psi)")

    stack_eps: float | None = None
    if a.no_stack:
        notes.append("stack skipped (--no-stack)")
    else:
        log("full stack via run_spec ...")
        stack_eps, note = bench_stack(guest, host)
        notes.append(note)
        log(f"  {note}")

    me, kids = peak_rss_mb()
    out = {
        "n": a.n,
        "overlap": a.overlap,
        "intersection_size": fg["size"],
        "correct": fg["correct"],
        "protocol_seconds": round(fg["seconds"], 3),
        "protocol_elems_per_s": round(fg["elems_per_s"], 1),
        "openmined_elems_per_s": None if om_eps is None else round(om_eps, 1),
        "speedup_vs_openmined": None if om_eps is None else round(fg["elems_per_s"] / om_eps, 2),
        "stack_elems_per_s": None if stack_eps is None else round(stack_eps, 1),
        "peak_rss_mb": me,
        "peak_rss_children_mb": kids,
        "cores": os.cpu_count(),
        "note": "; ".join(notes),
    }
    if a.json:
        print(json.dumps(out))
    else:
        for key, v in out.items():
            print(f"{key:24s} {v}")
    return 0 if fg["correct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
