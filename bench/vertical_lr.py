"""Vertical LR benchmark: fedgov CKKS protocol vs centralised scikit-learn, numpy and Paillier (FATE-style).

    python bench/vertical_lr.py --json          # default_credit (30,000 rows) + synthetic 100,000 x 30 + fate_shape
    python bench/vertical_lr.py --quick --json  # small run (subsets, 3 epochs)
    python bench/vertical_lr.py --case fate_shape --json   # only FATE 2.0's shape (1 epoch; --fate-epochs N)

``fate_shape`` is FATE 2.0's published benchmark shape (guest 100,000 x 30 with
the label, host 100,000 x 300; same synthetic generator, guest gets the first
30 columns), run through the full stack only for ``--fate-epochs`` epochs
(default 1), next to FATE's published 2 min 16 s per epoch (Coordinated LR,
Paillier, 16 cores; ``doc/2.0/fate/performance/performance_comparison.md``).
Its full-stack run takes about 2-3 minutes of wall time on 2 cores (writing the
CSVs, PSI alignment of 100,000 ids, setup, one epoch), so it is part of the
default run. Every full-stack case reports ``stack_peak_rss_mib``: the peak
resident memory (``VmHWM``) of each node process and the coordinator, plus
``stack_cpu_seconds`` (user + system CPU of each process over the whole job)
and ``stack_loadavg`` (1-minute load average before and after): on a shared
machine the wall-clock epoch time grows with the load.

Progress goes to stderr; the last stdout line is one JSON object
``{"default_credit": {...}, "synthetic_100k": {...}}``. Per data set:
``auc_fedgov`` (in-process CKKS protocol, held-out 20 %), ``auc_centralized``
(scikit-learn LogisticRegression on the pooled data, same split),
``auc_plain`` (numpy, same algorithm), ``seconds_per_epoch_protocol``
(in-process CKKS driver, all roles sequential in one process),
``seconds_per_epoch_fedgov`` (full stack), ``seconds_per_epoch_plain``,
``seconds_per_epoch_paillier`` (FATE-style hetero-LR with 2048-bit ``phe``
Paillier and gmpy2, measured on a subset and scaled per row: see
``paillier_note``), ``speedup_vs_paillier`` and ``bytes_per_epoch``.
Needs the ``bench`` extra (scikit-learn, phe, gmpy2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgov.protocols import vertical_lr as vlr  # noqa: E402

FATE = Path(__file__).resolve().parents[1] / "examples" / "fate" / "data"


def log(msg: str) -> None:
    print(f"[bench/vertical_lr] {msg}", file=sys.stderr, flush=True)


def load_fate(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = np.genfromtxt(FATE / f"{name}_hetero_guest.csv", delimiter=",", skip_header=1)
    h = np.genfromtxt(FATE / f"{name}_hetero_host.csv", delimiter=",", skip_header=1)
    if not (g[:, 0] == h[:, 0]).all():
        raise SystemExit(f"{name}: guest and host ids are not aligned")
    return g[:, 2:], g[:, 1], h[:, 1:]


def make_synthetic(
    n: int, p: int, seed: int = 20240601, *, guest_features: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n x p correlated Gaussian features, logistic labels. Fixed seed.

    The guest gets the first ``guest_features`` columns (default: the first half), the host the rest.
    """
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(p, p)) / np.sqrt(p)
    x = rng.normal(size=(n, p)) @ (0.6 * np.eye(p) + 0.4 * a)
    w = rng.normal(size=p) * 0.35
    z = x @ w - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float64)
    k = p // 2 if guest_features is None else guest_features
    return x[:, :k], y, x[:, k:]


def paillier_epoch_seconds(gx: np.ndarray, hx: np.ndarray, y: np.ndarray, rows: int, n_total: int) -> tuple[float, str]:
    """FATE-style hetero-LR epoch with phe Paillier-2048 on ``rows`` rows, scaled per row to ``n_total``.

    Per row: host encrypts its partial score; guest forms [[d]] = 0.25*([[u_h]] + u_g) - 0.5*y
    (FATE's first-order Taylor) with one ciphertext-plaintext add and one scalar multiply; guest
    and host each compute X^T [[d]] (one scalar multiply + one add per feature); then the masked
    gradients (p values) are decrypted by the arbiter (counted once per batch of 4096 rows).
    """
    from phe import paillier

    pk, sk = paillier.generate_paillier_keypair(n_length=2048)
    m = min(rows, len(y))
    ug = gx[:m] @ np.full(gx.shape[1], 0.01)
    uh = hx[:m] @ np.full(hx.shape[1], 0.01)
    t0 = time.perf_counter()
    enc_u = [pk.encrypt(float(v)) for v in uh]
    enc_d = [(e + float(g)) * 0.25 - 0.5 * float(t) for e, g, t in zip(enc_u, ug, y[:m], strict=True)]
    for x in (hx[:m], gx[:m]):
        acc = [None] * x.shape[1]
        for i, d in enumerate(enc_d):
            for j in range(x.shape[1]):
                term = d * float(x[i, j])
                acc[j] = term if acc[j] is None else acc[j] + term
        masked = [a + 1.0 for a in acc]  # mask
        decrypt_cost_start = time.perf_counter()
        _ = [sk.decrypt(v) for v in masked]
        dec = time.perf_counter() - decrypt_cost_start
    per_row = (time.perf_counter() - t0 - 2 * dec) / m
    batches = -(-n_total // 4096)
    secs = per_row * n_total + 2 * dec * batches
    note = (
        f"phe Paillier-2048 with gmpy2, FATE-style hetero-LR (Taylor residual, encrypted X^T d at guest and host, "
        f"arbiter decrypts masked gradients); measured on {m} rows and scaled per row to {n_total} rows "
        f"(+ decryption per 4096-row batch)"
    )
    return secs, note


class PeakRss:
    """Samples the peak RSS (``VmHWM``) of every descendant process of this one, by node name.

    ``VmHWM`` is the kernel's own high-water mark, so sampling once a second
    loses nothing but processes that live under a second. Names come from the
    ``--config .../nodes/<name>/node.toml`` (or ``coordinator``) on the command line.
    """

    def __init__(self, interval: float = 1.0) -> None:
        import threading

        self.interval = interval
        self.peak_mib: dict[str, float] = {}
        self.cpu_seconds: dict[str, dict[int, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _children() -> dict[int, int]:
        out: dict[int, int] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                    out[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    pass
        return out

    def sample(self) -> None:
        parents = self._children()
        mine, frontier = set(), {os.getpid()}
        while frontier:
            frontier = {p for p, pp in parents.items() if pp in frontier} - mine
            mine |= frontier
        for pid in mine:
            try:
                argv = (Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            cmd = [a.decode(errors="replace") for a in argv]
            name = next((Path(a).parent.name for a in cmd if a.endswith("node.toml")), None)
            if name is None:
                name = "coordinator" if "coordinator" in cmd else "others"  # other descendants: peak = the largest, cpu = the sum
            hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                self.cpu_seconds.setdefault(name, {})[pid] = cpu
            except (OSError, ValueError, IndexError):
                pass
            self.peak_mib[name] = max(self.peak_mib.get(name, 0.0), round(hwm / 1024, 1))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def cpu(self) -> dict[str, float]:
        """User + system CPU seconds per name, as last sampled (summed over that name's processes)."""
        return {k: round(sum(v.values()), 1) for k, v in sorted(self.cpu_seconds.items())}

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def stack_run(
    name: str, gx: np.ndarray, y: np.ndarray, hx: np.ndarray, tr: np.ndarray, te: np.ndarray, params: vlr.VlrParams
) -> dict[str, Any]:
    """The same split through the full stack: guest, host and arbiter node processes over mTLS.

    Adds ``peak_rss_mib``: the peak resident memory of each node process (and the coordinator).
    """
    import tempfile

    from fedgov.runspec import run_spec

    with tempfile.TemporaryDirectory(prefix=f"bench-vlr-{name}-") as tmp:
        d = Path(tmp)
        ids = np.arange(len(y))

        def write(path: Path, rows: np.ndarray, x: np.ndarray, label: bool) -> None:
            head = ["id", *(["y"] if label else []), *[f"x{i}" for i in range(x.shape[1])]]
            cols = [ids[rows][:, None], *([y[rows][:, None]] if label else []), x[rows]]
            np.savetxt(path, np.hstack(cols), delimiter=",", header=",".join(head), comments="",
                       fmt=["%d", *(["%d"] if label else []), *(["%.6f"] * x.shape[1])])

        write(d / "g.csv", tr, gx, True)
        write(d / "ge.csv", te, gx, True)
        write(d / "h.csv", tr, hx, False)
        write(d / "he.csv", te, hx, False)
        pj = params.to_json()
        pj.pop("ckks")
        pj = {k: v for k, v in pj.items() if v is not None}
        job = "".join(f"{k} = {json.dumps(v)}\n" for k, v in pj.items())
        (d / "spec.toml").write_text(
            f'[job]\nkind = "vertical-lr"\npurpose = "benchmark"\n{job}\n'
            '[[parties]]\nname = "guest"\nrole = "guest"\ndata = "g.csv"\neval_data = "ge.csv"\nid = "id"\nlabel = "y"\n'
            '[[parties]]\nname = "host"\nrole = "host"\ndata = "h.csv"\neval_data = "he.csv"\nid = "id"\n'
        )
        t0 = time.perf_counter()
        load0 = os.getloadavg()[0]
        with PeakRss() as rss:
            summary = run_spec(d / "spec.toml")
        summary["wall_seconds"] = time.perf_counter() - t0
        summary["peak_rss_mib"] = dict(sorted(rss.peak_mib.items()))
        summary["cpu_seconds"] = rss.cpu()
        summary["loadavg"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        return summary


def bench_dataset(
    name: str, gx: np.ndarray, y: np.ndarray, hx: np.ndarray, params: vlr.VlrParams, paillier_rows: int
) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    ntr = int(0.8 * len(y))
    tr, te = perm[:ntr], perm[ntr:]
    out: dict[str, Any] = {"rows": int(len(y)), "train_rows": int(ntr), "features_guest": int(gx.shape[1]),
                           "features_host": int(hx.shape[1]), "epochs": params.epochs,
                           "batch_size": params.batch_size}
    log(f"{name}: scikit-learn (pooled, standardised on train)")
    x = np.hstack([gx, hx])
    mu, sd = x[tr].mean(0), x[tr].std(0)
    sd[sd == 0] = 1
    clf = LogisticRegression(max_iter=2000).fit((x[tr] - mu) / sd, y[tr])
    out["auc_centralized"] = vlr.auc(y[te], clf.decision_function((x[te] - mu) / sd))
    log(f"{name}: numpy reference")
    plain = vlr.fit_plain(gx[tr], y[tr], {"host": hx[tr]}, params)
    out["auc_plain"] = vlr.auc(y[te], plain.scores(gx[te], {"host": hx[te]}))
    out["seconds_per_epoch_plain"] = plain.seconds_per_epoch
    log(f"{name}: CKKS protocol in-process ({params.epochs} epochs)")
    res = vlr.run_in_process(gx[tr], y[tr], {"host": hx[tr]}, params)
    s = res.scores(gx[te], {"host": hx[te]})
    out["auc_fedgov"] = vlr.auc(y[te], s)
    out["metrics_fedgov"] = vlr.metrics(y[te], s)
    out["seconds_per_epoch_protocol"] = res.seconds_per_epoch
    out["setup_seconds_protocol"] = res.setup_seconds
    log(f"{name}: full stack (coordinator + guest, host, arbiter processes over mTLS)")
    stack = stack_run(name, gx, y, hx, tr, te, params)
    out["seconds_per_epoch_fedgov"] = stack["seconds_per_epoch"]
    out["auc_fedgov_stack"] = stack["auc"]
    out["stack_wall_seconds"] = round(stack["wall_seconds"], 1)
    out["stack_bytes_sent_by_guest"] = stack["bytes_sent_by_guest"]
    out["stack_peak_rss_mib"] = stack["peak_rss_mib"]
    out["stack_cpu_seconds"] = stack["cpu_seconds"]
    out["stack_loadavg"] = stack["loadavg"]
    out["bytes_per_epoch"] = res.bytes_per_epoch
    out["bytes_setup_public_context_per_party"] = next(v for k, v in res.bytes_sent.items() if k.startswith("setup:"))
    log(f"{name}: Paillier baseline on {paillier_rows} rows")
    p_secs, note = paillier_epoch_seconds(gx[tr], hx[tr], y[tr], paillier_rows, ntr)
    out["seconds_per_epoch_paillier"] = p_secs
    out["paillier_note"] = note
    out["speedup_vs_paillier"] = p_secs / res.seconds_per_epoch
    out["auc_gap_vs_centralized"] = out["auc_centralized"] - out["auc_fedgov"]
    log(f"{name}: {json.dumps({k: v for k, v in out.items() if k != 'metrics_fedgov'})}")
    return out


#: FATE 2.0's published hetero-LR figure for this shape (Coordinated LR, Paillier, 16 cores):
#: doc/2.0/fate/performance/performance_comparison.md, "2 min 16 s" per epoch
FATE_SECONDS_PER_EPOCH = 136.0


def bench_fate_shape(params: vlr.VlrParams, rows: int = 100_000) -> dict[str, Any]:
    """FATE 2.0's benchmark shape: guest ``rows`` x 30 with the label, host ``rows`` x 300 (synthetic).

    Full stack only (coordinator + guest, host, arbiter processes), plus the
    centralised scikit-learn and numpy AUCs on the same split; the in-process
    driver and the Paillier baseline are skipped (FATE's own figure is the
    comparison). ``auc_fedgov`` here is the full-stack AUC.
    """
    from sklearn.linear_model import LogisticRegression

    gx, y, hx = make_synthetic(rows, 330, guest_features=30)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    ntr = int(0.8 * len(y))
    tr, te = perm[:ntr], perm[ntr:]
    out: dict[str, Any] = {"rows": int(len(y)), "train_rows": int(ntr), "features_guest": int(gx.shape[1]),
                           "features_host": int(hx.shape[1]), "epochs": params.epochs,
                           "batch_size": params.batch_size}
    log("fate_shape: scikit-learn (pooled, standardised on train)")
    x = np.hstack([gx, hx])
    mu, sd = x[tr].mean(0), x[tr].std(0)
    sd[sd == 0] = 1
    clf = LogisticRegression(max_iter=2000).fit((x[tr] - mu) / sd, y[tr])
    out["auc_centralized"] = vlr.auc(y[te], clf.decision_function((x[te] - mu) / sd))
    del x
    log("fate_shape: numpy reference")
    plain = vlr.fit_plain(gx[tr], y[tr], {"host": hx[tr]}, params)
    out["auc_plain"] = vlr.auc(y[te], plain.scores(gx[te], {"host": hx[te]}))
    out["seconds_per_epoch_plain"] = plain.seconds_per_epoch
    log(f"fate_shape: full stack, {params.epochs} epoch(s)")
    stack = stack_run("fate_shape", gx, y, hx, tr, te, params)
    out["seconds_per_epoch_fedgov"] = stack["seconds_per_epoch"]
    out["auc_fedgov"] = stack["auc"]
    out["seconds_per_epoch_fate_published"] = FATE_SECONDS_PER_EPOCH
    out["fate_published_note"] = (
        "FATE 2.0 doc/2.0/fate/performance/performance_comparison.md: Coordinated LR, Paillier, "
        "guest 100,000 x 30, host 100,000 x 300, 16 cores: 2 min 16 s per epoch"
    )
    out["speedup_vs_fate_published"] = FATE_SECONDS_PER_EPOCH / stack["seconds_per_epoch"]
    out["stack_wall_seconds"] = round(stack["wall_seconds"], 1)
    out["stack_seconds_job"] = stack.get("seconds_job")
    out["stack_bytes_sent_by_guest"] = stack["bytes_sent_by_guest"]
    out["stack_peak_rss_mib"] = stack["peak_rss_mib"]
    out["stack_cpu_seconds"] = stack["cpu_seconds"]
    out["stack_loadavg"] = stack["loadavg"]
    out["pack_cache_mib_per_party"] = vlr.PACK_CACHE_BYTES // 2**20
    out["auc_gap_vs_centralized"] = out["auc_centralized"] - out["auc_fedgov"]
    log(f"fate_shape: {json.dumps(out)}")
    log(f"fate_shape: fedgov {out['seconds_per_epoch_fedgov']:.1f} s/epoch (2 cores, full stack), "
        f"AUC {out['auc_fedgov']:.4f}  vs  FATE 2.0 published {FATE_SECONDS_PER_EPOCH:.0f} s/epoch (16 cores)")
    return out


CASES = ["default_credit", "synthetic_100k", "fate_shape"]


def _missing_bench_extra() -> list[str]:
    """The ``bench`` extra's modules that are not importable (checked before minutes of work)."""
    import importlib.util

    return [m for m in ("sklearn", "phe", "gmpy2") if importlib.util.find_spec(m) is None]


def main() -> int:
    if missing := _missing_bench_extra():
        print(f"bench/vertical_lr.py needs the bench extra ({', '.join(missing)} missing): "
              "pip install -e '.[bench]'", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="subsets and 3 epochs")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--paillier-rows", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print the JSON summary line")
    ap.add_argument("--case", choices=[*CASES, "all"], action="append", default=None,
                    help="run only these cases (repeatable); default: all")
    ap.add_argument("--fate-epochs", type=int, default=1, help="epochs for fate_shape (default 1)")
    args = ap.parse_args()
    cases = CASES if args.case is None or "all" in args.case else [c for c in CASES if c in args.case]
    epochs = args.epochs or (3 if args.quick else 10)
    prow = args.paillier_rows or (50 if args.quick else 200)
    params = vlr.VlrParams(epochs=epochs)
    result: dict[str, Any] = {}
    if "default_credit" in cases:
        gx, y, hx = load_fate("default_credit")
        if args.quick:
            gx, y, hx = gx[:8000], y[:8000], hx[:8000]
        result["default_credit"] = bench_dataset("default_credit", gx, y, hx, params, prow)
    if "synthetic_100k" in cases:
        gx, y, hx = make_synthetic(20_000 if args.quick else 100_000, 30)
        result["synthetic_100k"] = bench_dataset("synthetic_100k", gx, y, hx, params, prow)
    if "fate_shape" in cases:
        result["fate_shape"] = bench_fate_shape(
            vlr.VlrParams(epochs=args.fate_epochs), rows=20_000 if args.quick else 100_000
        )
    result["notes"] = (
        "seconds_per_epoch_protocol runs guest, host and arbiter sequentially in one process (no network); "
        "seconds_per_epoch_fedgov is the full stack (fedgov run: coordinator, guest, host and arbiter "
        "processes over mTLS, PSI alignment first; epoch time excludes alignment and setup); "
        + ("QUICK run: subsets, fewer epochs" if args.quick else "full run")
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
