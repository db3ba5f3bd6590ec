"""TransparencyLog: appends, signed heads, proofs, tamper detection, durability, export."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgov.errors import ConfigError, CryptoError
from fedgov.ledger import entries as E
from fedgov.ledger import merkle
from fedgov.ledger.log import (
    SignedTreeHead,
    TransparencyLog,
    cosignature_message,
    load_export,
    verify_export,
)
from fedgov.ledger.points import PointsRules, award_entry, compute_points, rules_entry


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _fill(log: TransparencyLog, n: int) -> None:
    log.append_many([E.job_started(f"job-{i}", ts=1_700_000_000_000 + i) for i in range(n)])


def _tamper(path: Path, sql: str, args: tuple = ()) -> None:
    """What an attacker with file access does: drop the append-only triggers, then edit."""
    db = sqlite3.connect(path)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    db.execute(sql, args)
    db.commit()
    db.close()


def test_append_head_and_proofs(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = TransparencyLog(tmp_path / "ledger.db", key)
    assert log.tree_head().root == merkle.EMPTY_ROOT
    ref = merkle.MerkleTree()
    for i in range(70):
        e = E.job_started(f"job-{i}")
        assert log.append(e) == i
        ref.append(e.encode())
        sth = log.tree_head()
        sth.verify(key.public_key())
        assert (sth.size, sth.root) == (i + 1, ref.root())
    for n in (1, 2, 3, 8, 33, 70):
        for m in range(n):
            assert log.inclusion_proof(m, n) == ref.inclusion_proof(m, n)
            assert log.consistency_proof(m, n) == ref.consistency_proof(m, n)
    sth = log.tree_head()
    blob = log.entry(17)
    merkle.verify_inclusion(merkle.leaf_hash(blob), 17, sth.size, log.inclusion_proof(17), sth.root)
    assert log.entries(3, 5) == [ref_blob for ref_blob in log.entries()[3:5]]
    assert log.verify_all().ok


def test_head_signature_and_encoding(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = TransparencyLog(tmp_path / "ledger.db", key)
    _fill(log, 5)
    sth = log.tree_head()
    assert sth.signed_bytes()[:20] == b"fedgov/v1 tree-head\x00" and len(sth.signed_bytes()) == 68
    assert SignedTreeHead.from_dict(sth.to_dict()) == sth
    forged = SignedTreeHead(sth.size + 1, sth.root, sth.timestamp, sth.signature)
    with pytest.raises(CryptoError, match="does not verify"):
        forged.verify(key.public_key())
    assert log.tree_head() == sth  # unchanged size: same head
    assert log.tree_head(fresh=True).timestamp >= sth.timestamp


def test_wrong_key_and_invalid_entries_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    TransparencyLog(tmp_path / "ledger.db", key).close()
    with pytest.raises(ConfigError, match="different signing key"):
        TransparencyLog(tmp_path / "ledger.db", Ed25519PrivateKey.generate())
    log = TransparencyLog(tmp_path / "ledger.db", key)
    with pytest.raises(E.EntryError, match="unknown entry type"):
        log.append(b'{"ts":1,"type":"bogus","v":1}')
    with pytest.raises(E.EntryError, match="canonical"):
        log.append(b'{"job": "j","ts":1,"type":"job_started","v":1}')
    assert log.size == 0
    log.append(E.job_started("j"))
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        log._db.execute("UPDATE entries SET data = x'00'")


def test_edited_row_is_named_by_index(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "ledger.db"
    log = TransparencyLog(path, key)
    _fill(log, 40)
    log.tree_head()
    log.close()
    forged = E.job_started("job-forged", ts=1).encode()
    _tamper(path, "UPDATE entries SET data=? WHERE idx=23", (forged,))
    report = TransparencyLog(path, key).verify_all()
    assert not report.ok and report.edited == [23]
    assert any("entry 23" in p and "edited" in p for p in report.problems)
    assert any("history rewritten" in p for p in report.problems)


def test_rewrite_with_recomputed_hashes_is_caught_by_signed_head(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "ledger.db"
    log = TransparencyLog(path, key)
    _fill(log, 10)
    log.tree_head()
    _fill(log, 10)
    log.tree_head()
    log.close()
    forged = E.job_started("job-forged", ts=1).encode()
    _tamper(path, "UPDATE entries SET data=?, leaf=? WHERE idx=14", (forged, merkle.leaf_hash(forged)))
    report = TransparencyLog(path, key).verify_all()
    assert not report.ok
    assert any("entries 10..19" in p for p in report.problems), report.problems
    assert any("stored tree level 1" in p for p in report.problems)


def test_truncated_and_deleted_rows_detected(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "ledger.db"
    log = TransparencyLog(path, key)
    _fill(log, 30)
    log.tree_head()
    log.close()
    _tamper(path, "DELETE FROM entries WHERE idx >= 25")
    report = TransparencyLog(path, key).verify_all()
    assert any("log truncated" in p and "30" in p and "25" in p for p in report.problems), report.problems
    _tamper(path, "DELETE FROM entries WHERE idx = 7")
    damaged = TransparencyLog(path, key)
    report = damaged.verify_all()
    assert report.missing == [7]
    assert any("entry 7: missing" in p for p in report.problems)
    with pytest.raises(CryptoError, match="damaged"):
        damaged.append(E.job_started("x"))


def test_cosignatures_stored_and_checked(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = TransparencyLog(tmp_path / "ledger.db", key)
    _fill(log, 4)
    sth = log.tree_head()
    wkey = Ed25519PrivateKey.generate()
    sig = wkey.sign(cosignature_message(sth))
    log.add_cosignature("tax", sth, sig, wkey.public_key())
    log.add_cosignature("tax", sth, sig)  # idempotent
    with pytest.raises(CryptoError):
        log.add_cosignature("hrss", sth, b"\x00" * 64, wkey.public_key())
    other = SignedTreeHead(sth.size, sth.root, sth.timestamp + 1, b"")
    with pytest.raises(CryptoError):
        log.add_cosignature("tax", other, sig)
    assert [c.witness for c in log.cosignatures()] == ["tax"]
    assert log.verify_all(witness_keys={"tax": wkey.public_key()}).cosignatures_checked == 1
    assert not log.verify_all(witness_keys={"tax": Ed25519PrivateKey.generate().public_key()}).ok


def test_concurrent_appends_group_commit(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = TransparencyLog(tmp_path / "ledger.db", key)
    got: list[int] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for i in range(50):
            idx = log.append(E.job_started(f"w{w}-{i}"))
            with lock:
                got.append(idx)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(400))
    assert log.verify_all().ok


_WRITER = """
import sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from fedgov.ledger import entries as E
from fedgov.ledger.log import TransparencyLog
key = serialization.load_pem_private_key(Path(sys.argv[2]).read_bytes(), None)
log = TransparencyLog(Path(sys.argv[1]), key)
i = log.size
while True:
    idx = log.append(E.job_started(f"job-{i}"))
    print(idx, flush=True)
    i += 1
"""


def test_sigkill_loses_no_committed_entry(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path = tmp_path / "ledger.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(pem)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    acknowledged = -1
    deadline = time.monotonic() + 20
    while acknowledged < 300 and time.monotonic() < deadline:
        acknowledged = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert acknowledged >= 300
    log = TransparencyLog(path, key)
    assert log.size >= acknowledged + 1  # every acknowledged append survived
    report = log.verify_all()
    assert report.ok, report.problems
    assert log.append(E.job_started("after-crash")) == log.size - 1


def test_export_recomputes_points_offline(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = TransparencyLog(tmp_path / "ledger.db", key)
    rules = PointsRules()
    ts = 1_717_000_000_000  # 2024-05-29
    log.append_many(
        [
            E.node_registered("tax", "a" * 64, ts=ts),
            E.node_registered("hrss", "b" * 64, ts=ts),
            rules_entry(rules, ts=ts),
            E.dataset_published("tax", "income", "c" * 64, 100, {"overall": 0.9}, ts=ts),
            E.job_submitted(
                "j1",
                "psi",
                "p",
                "analyst",
                "d" * 64,
                {"tax": ("income", ["x"]), "hrss": ("ins", ["y"])},
                ts=ts,
            ),
            E.job_approved("j1", "tax", ts=ts),
            E.job_approved("j1", "hrss", ["alice", "bob"], ts=ts),
            E.contribution("j1", "tax", "income", 80, ["x"], ts=ts),
            E.contribution("j1", "hrss", "ins", 80, ["y"], ts=ts),
            E.job_completed("j1", "succeeded", {"matched": 80}, ts=ts),
        ]
    )
    log.append(award_entry(log.parsed_entries(), "2024-Q2", rules, ts=ts))
    log.tree_head()
    report = log.verify_all()
    assert report.ok and report.awards_checked == 1
    buf = io.StringIO()
    assert log.export(buf) == log.size
    buf.seek(0)
    exported = load_export(buf)
    assert verify_export(exported, trusted_key=key.public_key()) == []
    recomputed = {n: b.total for n, b in compute_points(exported.entries(), "2024-Q2", rules).items()}
    assert recomputed == log.parsed_entries()[-1]["points"]
    assert recomputed["tax"] == pytest.approx(80 * 1 * 0.9 * rules.points_per_record_field)
    assert recomputed["hrss"] == 0.0  # hrss never published its dataset: quality factor 0


def test_forged_award_is_named(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = TransparencyLog(tmp_path / "ledger.db", key)
    rules = PointsRules()
    log.append(rules_entry(rules))
    log.append(E.node_registered("tax", "a" * 64))
    idx = log.append(E.points_awarded("all", rules.digest(), {"tax": 1000.0}))
    report = log.verify_all()
    assert not report.ok
    assert any(f"entry {idx}" in p and "tax" in p for p in report.problems), report.problems
