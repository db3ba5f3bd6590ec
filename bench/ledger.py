"""Ledger benchmark: durable appends, proof generation + verification, full verify.

``python bench/ledger.py --json`` prints progress to stderr and one JSON
object on its last stdout line: ``entries``, ``append_per_s`` (durable: each
batch is one fsync'ed transaction, as the coordinator's outbox drains),
``inclusion_proof_ms`` and ``consistency_proof_ms`` (generate + verify,
median), ``verify_all_s`` (the full ``fedgov ledger verify`` work), and a
baseline in the same process: plain SQLite inserts of the same entry bytes
with the same durability (``baseline_sqlite_append_per_s``), which is what
the Merkle bookkeeping costs on top of.
``cosigned_inclusion_ms`` (median) is what a node or auditor does to rely on
one entry: check the log's signature on the head, the cosignatures of the
``--witnesses`` departments, find the head ``quorum_head`` counts (k =
``--quorum``, default a majority), then generate and verify the entry's
inclusion proof against it.
Targets (issues 5, 13): append_per_s >= 5,000; both proofs <= 5 ms and
cosigned_inclusion_ms <= 10 ms at 1,000,000.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgov.ledger import entries as E
from fedgov.ledger import merkle
from fedgov.ledger.log import TransparencyLog, cosignature_message
from fedgov.ledger.witness import majority, quorum_head


def log(msg: str) -> None:
    print(f"[bench/ledger] {msg}", file=sys.stderr, flush=True)


def make_entries(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        digest = hashlib.sha256(i.to_bytes(8, "big")).hexdigest()
        out.append(E.node_registered(f"node{i % 97}", digest, ts=1_700_000_000_000 + i).encode())
    return out


def baseline(path: Path, data: list[bytes], batch: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE e (i INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    t0 = time.perf_counter()
    for s in range(0, len(data), batch):
        db.execute("BEGIN")
        db.executemany("INSERT INTO e(data) VALUES (?)", ((d,) for d in data[s : s + batch]))
        db.execute("COMMIT")
    dt = time.perf_counter() - t0
    db.close()
    return len(data) / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000, help="entries per durable transaction")
    ap.add_argument("--proofs", type=int, default=200)
    ap.add_argument("--skip-verify", action="store_true")
    ap.add_argument("--witnesses", type=int, default=5, help="departments cosigning (n)")
    ap.add_argument("--quorum", type=int, default=0, help="cosignatures a head needs (k; default majority)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        d = Path(tmp)
        log(f"building {a.entries} entries")
        data = make_entries(a.entries)
        log("baseline: plain SQLite, same durability")
        base = baseline(d / "base.db", data, a.batch)
        tl = TransparencyLog(d / "ledger.db", Ed25519PrivateKey.generate())
        log("transparency log: durable appends")
        t0 = time.perf_counter()
        for s in range(0, len(data), a.batch):
            tl.append_many(data[s : s + a.batch])
        append_s = time.perf_counter() - t0
        head = tl.tree_head(fresh=True)
        n = head.size
        log(f"{n} entries in {append_s:.1f} s; proofs")
        inc, con = [], []
        for _ in range(a.proofs):
            i = rng.randrange(n)
            t = time.perf_counter()
            path = tl.inclusion_proof(i, n)
            merkle.verify_inclusion(merkle.leaf_hash(data[i]), i, n, path, head.root)
            inc.append((time.perf_counter() - t) * 1000)
            old = rng.randrange(1, n)
            old_root = tl.root(old)  # the verifier already holds its old head
            t = time.perf_counter()
            proof = tl.consistency_proof(old, n)
            merkle.verify_consistency(old, n, old_root, head.root, proof)
            con.append((time.perf_counter() - t) * 1000)
        # n departments cosign the head; a verifier checks k of n plus one inclusion proof
        dept_keys = {f"dept{j}": Ed25519PrivateKey.generate() for j in range(a.witnesses)}
        cosigs = {w: k.sign(cosignature_message(head)) for w, k in dept_keys.items()}
        pubs = {w: k.public_key() for w, k in dept_keys.items()}
        log_pub = tl.public_key
        k = a.quorum or majority(a.witnesses)
        cos = []
        for _ in range(a.proofs):
            i = rng.randrange(n)
            t = time.perf_counter()
            head.verify(log_pub)
            vouched = {}
            for w, sig in cosigs.items():
                pubs[w].verify(sig, cosignature_message(head))
                vouched[w] = head
            counted = quorum_head(vouched, k)
            assert counted is not None and len(counted[1]) >= k
            path = tl.inclusion_proof(i, counted[0].size)
            merkle.verify_inclusion(merkle.leaf_hash(data[i]), i, counted[0].size, path, counted[0].root)
            cos.append((time.perf_counter() - t) * 1000)
        verify_s = None
        if not a.skip_verify:
            log("verify_all (recompute every leaf, check heads and points)")
            t = time.perf_counter()
            report = tl.verify_all()
            verify_s = time.perf_counter() - t
            if not report.ok:
                raise SystemExit(f"verify_all failed: {report.problems[:3]}")
        tl.close()
    out = {
        "entries": n,
        "append_per_s": round(n / append_s, 1),
        "append_batch": a.batch,
        "baseline_sqlite_append_per_s": round(base, 1),
        "inclusion_proof_ms": round(statistics.median(inc), 3),
        "consistency_proof_ms": round(statistics.median(con), 3),
        "cosigned_inclusion_ms": round(statistics.median(cos), 3),
        "cosigned_k_of_n": f"{k}/{a.witnesses}",
        "verify_all_s": None if verify_s is None else round(verify_s, 1),
        "note": "consistency_proof_ms excludes computing the old root (the verifier already holds it)",
    }
    log(json.dumps(out))
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
