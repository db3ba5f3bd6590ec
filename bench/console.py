"""Console pages' server time on a federation state with 1,000 jobs and a 1,000,000-entry ledger.

The state is generated directly through the store and log APIs (no job is
run): a CA and kits, ``coordinator.db`` with the jobs (``CoordinatorStore``,
its ledger outbox flushed into the log), and ``ledger.db``
(``TransparencyLog``) holding, per job, the submission, the departments'
signed approvals and contributions, a model contribution and the completion,
interleaved with cosignature entries up to the size asked, dataset
publications every 50 jobs (quality over time), and a signed head every
10,000 entries cosigned by 4 of 6 departments. It is cached under
``$TMPDIR/fedgov-console-bench-<jobs>-<entries>``.

Then a real coordinator process serves it and the console app runs in
process as the auditor (Starlette TestClient over the SDK client); each page
is requested ``--reps`` times. Baseline, measured in the same run: the SDK
call behind each page (what the page adds is rendering and the checks).

Prints ONE JSON line: per page median / p95 ms, the target (300 ms), and the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEPTS = ["civil_affairs", "tax", "social_insurance", "property", "vehicle", "medical"]
TARGET_MS = 300.0
SPAN_MS = 30 * 86_400_000  # the entries' timestamps spread over 30 days from generation (the CA's validity)


def _manifest(job: int, a: str, b: str) -> str:
    return (
        '[job]\nkind = "psi"\npurpose = "social-assistance-eligibility"\n'
        f'description = "bench job {job}"\n\n'
        f'[[participants]]\nnode = "{a}"\nrole = "guest"\ndataset = "data"\nid = "id"\nfields = ["id", "x0"]\n\n'
        f'[[participants]]\nnode = "{b}"\nrole = "host"\ndataset = "data"\nid = "id"\nfields = ["id", "x1"]\n'
    )


def generate(work: Path, jobs: int, entries: int) -> None:
    """Write the CA, kits, coordinator.toml, coordinator.db and ledger.db under ``work``."""
    from fedgov.coordinator.server import ledger_key
    from fedgov.coordinator.store import CoordinatorStore
    from fedgov.crypto.keys import NodeKeys
    from fedgov.crypto.kits import issue_kit
    from fedgov.crypto.pki import create_ca
    from fedgov.ledger import entries as le
    from fedgov.ledger.facts import sign_fact
    from fedgov.ledger.log import TransparencyLog, cosignature_message

    kits, state = work / "kits", work / "state"
    create_ca(work / "ca", "console bench")
    issue_kit(work / "ca", kits / "coordinator", "coordinator", "coordinator", hosts=["127.0.0.1", "localhost"])
    for who in ("auditor", "analyst"):
        issue_kit(work / "ca", kits / who, who, who)
    keys = {}
    for d in DEPTS:
        issue_kit(work / "ca", kits / d, d, "node")
        keys[d] = NodeKeys.load(kits / d)
    state.mkdir(parents=True, exist_ok=True)
    log = TransparencyLog(state / "ledger.db", ledger_key(kits / "coordinator", state))
    store = CoordinatorStore(state / "coordinator.db")
    store.attach_ledger(log)
    # generation only: no fsync per transaction (the bench measures reads; the files are a cache)
    log._db.execute("PRAGMA synchronous=OFF")
    store._db.execute("PRAGMA synchronous=OFF")
    t0 = le.now_ms() + 60_000
    step = max(1, SPAN_MS // max(entries, 1))
    ts = [t0]

    def tick() -> int:
        ts[0] += step
        return ts[0]

    buf: list[le.Entry] = []
    witnessed = [0]

    def flush(force: bool = False) -> None:
        if buf and (force or len(buf) >= 5000):
            log.append_many(buf)
            buf.clear()
        if log.size - witnessed[0] >= 10_000 or (force and log.size > witnessed[0]):
            head = log.tree_head(fresh=True)
            for d in DEPTS[:4]:
                log.add_cosignature(d, head, keys[d].sign(cosignature_message(head)))
            witnessed[0] = log.size

    buf += [le.node_registered(d, "d" * 64, ts=tick()) for d in DEPTS]
    buf += [le.node_key(d, keys[d].bundle(), ts=tick()) for d in DEPTS]
    per_job = max(0, entries // max(jobs, 1) - 12)
    for j in range(jobs):
        a, b = DEPTS[j % 6], DEPTS[(j + 1 + j // 6) % 6]
        if b == a:
            b = DEPTS[(j + 2) % 6]
        if j % 50 == 0:
            for d in DEPTS:
                q = round(0.7 + 0.3 * ((j * 7 + DEPTS.index(d) * 13) % 100) / 100, 4)
                buf.append(sign_fact(le.dataset_published(d, "data", "a" * 64, 100_000, {"overall": q}, ts=tick()),
                                     d, keys[d].sign))
        filler = [le.cosignature(DEPTS[k % 6], log.size + len(buf), b"\x11" * 32, ts[0], b"\x22" * 64, ts=tick())
                  for k in range(per_job)]
        buf += filler[: per_job // 2]
        flush(force=True)
        job_id = store.create_job(kind="psi", purpose="social-assistance-eligibility", requester="analyst",
                                  manifest=_manifest(j, a, b), signature=b"", requester_cert=b"", nodes=[a, b])
        store.flush_ledger()
        t = [tick() for _ in range(8)]
        buf += [
            sign_fact(le.job_approved(job_id, a, ts=t[0]), a, keys[a].sign),
            sign_fact(le.job_approved(job_id, b, ts=t[1]), b, keys[b].sign),
            le.job_started(job_id, ts=t[2]),
            sign_fact(le.contribution(job_id, a, "data", 1000 + j, ["id", "x0"], ts=t[3]), a, keys[a].sign),
            sign_fact(le.contribution(job_id, b, "data", 900 + j, ["id", "x1"], ts=t[4]), b, keys[b].sign),
        ]
        buf += filler[per_job // 2:]
        flush(force=True)
        store.finish_job(job_id, "succeeded")
        store.flush_ledger()
        if j % 100 == 0:
            print(f"bench: generated {j} jobs, {log.size} entries", file=sys.stderr, flush=True)
    while log.size + len(buf) < entries:
        buf.append(le.cosignature(DEPTS[log.size % 6], log.size, b"\x11" * 32, ts[0], b"\x22" * 64, ts=tick()))
        flush()
    flush(force=True)
    store.close()
    log.close()
    (work / "coordinator.toml").write_text(
        "[coordinator]\nlisten = \"127.0.0.1:0\"\n"
        f"kit = {json.dumps(str(kits / 'coordinator'))}\nstate_dir = {json.dumps(str(state))}\n"
    )
    (work / "READY").write_text(json.dumps({"jobs": jobs, "entries": entries, "t0": t0}))


def _timed(fn: Callable[[], Any], reps: int) -> dict[str, float]:
    ms = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1000)
    ms.sort()
    return {"median_ms": round(statistics.median(ms), 1),
            "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON line (always)")
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--cache", type=Path, help="state directory (default: under $TMPDIR)")
    ns = ap.parse_args()
    work = ns.cache or Path(tempfile.gettempdir()) / f"fedgov-console-bench-{ns.jobs}-{ns.entries}"
    t_gen = 0.0
    if not (work / "READY").exists():
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t = time.perf_counter()
        generate(work, ns.jobs, ns.entries)
        t_gen = time.perf_counter() - t
    addr_file = work / "state" / "coordinator.addr"
    addr_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "fedgov", "coordinator", "start", "--config",
                             str(work / "coordinator.toml")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not addr_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench: the coordinator did not start")
            time.sleep(0.1)
        address = addr_file.read_text().strip()
        print(json.dumps(measure(work, address, ns.reps, t_gen, ns.jobs, ns.entries), sort_keys=True))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def measure(work: Path, address: str, reps: int, t_gen: float, jobs: int, entries: int) -> dict[str, Any]:
    from starlette.testclient import TestClient

    from fedgov.auditor import POINTS_QUERY_TYPES, LedgerClient, points_view
    from fedgov.client import Client
    from fedgov.console.app import create_app

    client = Client(work / "kits" / "auditor", address)
    app = create_app(client=client, token="bench-token")
    tc = TestClient(app, base_url="http://127.0.0.1")
    tc.get("/?token=bench-token")
    lc = LedgerClient(work / "kits" / "auditor", address)
    head = lc.head()
    job_rows, _, _ = lc.query(types=["job_completed"], limit=1, before=head.size // 2)
    job = json.loads(job_rows[0][1])["job"]
    one = job_rows[0][0]
    from datetime import UTC, datetime

    t0 = json.loads((work / "READY").read_text())["t0"]
    day_ms = (t0 + SPAN_MS // 2) // 86_400_000 * 86_400_000
    day = datetime.fromtimestamp(day_ms / 1000, tz=UTC).date().isoformat()

    def page(path: str) -> Callable[[], Any]:
        def get() -> Any:
            r = tc.get(path)
            if r.status_code != 200:
                raise SystemExit(f"bench: {path} answered {r.status_code}: {r.text[:300]}")
            return r
        return get

    # warm what a console keeps (the points view per log size): the first view is reported apart
    t = time.perf_counter()
    page("/points")()
    points_cold_ms = round((time.perf_counter() - t) * 1000, 1)
    pages: dict[str, tuple[str, Callable[[], Any]]] = {
        "federation": ("/federation", lambda: client.nodes()),
        "jobs": ("/jobs", lambda: client.list()),
        "job": (f"/jobs/{job}", lambda: client.status(job)),
        "ledger": ("/ledger", lambda: (lc.head(), lc.query(limit=50))),
        "ledger_type": ("/ledger?type=contribution", lambda: lc.query(types=["contribution"], limit=50)),
        "ledger_department": ("/ledger?node=tax&type=job_approved",
                              lambda: lc.query(node="tax", types=["job_approved"], limit=50)),
        "ledger_job": (f"/ledger?job={job}", lambda: lc.query(job=job, limit=50)),
        "ledger_time": (f"/ledger?since={day}&until={day}", lambda: lc.query(
            since_ms=day_ms, until_ms=day_ms + 86_400_000, limit=50)),
        "ledger_entry": (f"/ledger/entry/{one}", lambda: lc.prove_entry(one, head)),
        "evidence": (f"/ledger/job/{job}", lambda: lc.bundle(job)),
        "bundle_download": (f"/ledger/job/{job}/bundle.json", lambda: lc.bundle(job)),
        "points": ("/points", lambda: lc.query(limit=1)),
        "points_department": ("/points/tax", lambda: lc.query(limit=1)),
    }
    out: dict[str, Any] = {}
    for name, (path, base) in pages.items():
        got = _timed(page(path), reps)
        got["baseline"] = _timed(base, reps)
        got["path"] = path
        got["ok"] = got["median_ms"] <= TARGET_MS and got["p95_ms"] <= TARGET_MS
        out[name] = got
    t = time.perf_counter()
    rows = lc.query_all(types=list(POINTS_QUERY_TYPES))
    points_view(rows, lc.ca)
    baseline_points_cold = round((time.perf_counter() - t) * 1000, 1)
    lc.close()
    client.close()
    return {
        "bench": "console",
        "jobs": jobs,
        "entries": head.size,
        "entries_asked": entries,
        "target_ms": TARGET_MS,
        "reps": reps,
        "pages": out,
        "all_within_target": all(p["ok"] for p in out.values()),
        "points_first_view_ms": points_cold_ms,
        "points_first_view_baseline_ms": baseline_points_cold,
        "generate_seconds": round(t_gen, 1),
    }


if __name__ == "__main__":
    main()
