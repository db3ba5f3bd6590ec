from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fedgov.crypto.envelope import Header, OutOfOrderEnvelope, ReplayedEnvelope
from fedgov.node.store import NodeStore


def test_replay_counters_survive_restart(tmp_path: Path) -> None:
    s = NodeStore(tmp_path)
    h0 = Header(job_id="j", step="s", sender="tax", recipient="me", seq=0)
    s.accept(h0)
    s.close()
    s = NodeStore(tmp_path)  # node restarted
    with pytest.raises(ReplayedEnvelope):
        s.accept(h0)
    with pytest.raises(OutOfOrderEnvelope):
        s.accept(Header(job_id="j", step="s", sender="tax", recipient="me", seq=2))
    s.accept(Header(job_id="j", step="s", sender="tax", recipient="me", seq=1))


def test_audit_chain_detects_edits(tmp_path: Path) -> None:
    s = NodeStore(tmp_path)
    for i in range(5):
        s.audit("j", "relay-send", seq=i)
    assert s.verify_audit() is None
    s.close()
    db = sqlite3.connect(tmp_path / "node.db")
    db.execute("UPDATE audit SET detail='{\"seq\":99}' WHERE id=3")
    db.commit()
    db.close()
    assert NodeStore(tmp_path).verify_audit() == 3


def test_state_databases_commit_with_synchronous_full(tmp_path: Path) -> None:
    """Every durable store runs WAL with synchronous=FULL: a commit is on disk when the call returns
    (NORMAL, the usual WAL setting, may lose the last commits on power loss)."""
    import contextlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedgov.coordinator.store import CoordinatorStore
    from fedgov.ledger.log import TransparencyLog
    from fedgov.node.privacy_store import PrivacyStore

    node = NodeStore(tmp_path / "node")
    coord = CoordinatorStore(tmp_path / "coordinator" / "coordinator.db")
    ledger = TransparencyLog(tmp_path / "coordinator" / "ledger.db", Ed25519PrivateKey.generate())
    privacy = PrivacyStore(tmp_path / "node")
    try:
        with contextlib.closing(privacy._connect()) as pdb:
            dbs = {"node.db": node._db, "coordinator.db": coord._db, "ledger.db": ledger._db, "privacy.db": pdb}
            for name, db in dbs.items():
                assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal", name
                assert db.execute("PRAGMA synchronous").fetchone()[0] == 2, f"{name}: synchronous is not FULL"
    finally:
        node.close()
        coord.close()
        ledger.close()


_CRASH_AFTER_COMMIT = """
import sys, time
from pathlib import Path
from fedgov.coordinator.store import CoordinatorStore
store = CoordinatorStore(Path(sys.argv[1]))  # no ledger attached yet: the drainer is not running
store.register_node("alpha", b"bundle", "ab" * 32)
print("committed", flush=True)
time.sleep(600)
"""


def test_ledger_entry_of_a_committed_change_survives_sigkill(tmp_path: Path) -> None:
    """The coordinator dies right after a change the ledger records (before any append):
    the entry is in the same transaction as the change, so the next start appends it, once."""
    import os
    import signal
    import subprocess
    import sys

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedgov.coordinator.store import CoordinatorStore
    from fedgov.ledger.log import TransparencyLog

    path = tmp_path / "coordinator" / "coordinator.db"
    child = subprocess.Popen([sys.executable, "-c", _CRASH_AFTER_COMMIT, str(path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "committed"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    store = CoordinatorStore(path)
    log = TransparencyLog(tmp_path / "coordinator" / "ledger.db", Ed25519PrivateKey.generate())
    try:
        assert [n["name"] for n in store.nodes()] == ["alpha"]  # the change itself was committed
        store.attach_ledger(log)
        store.detach_ledger()
        registered = [e for e in log.parsed_entries() if e.type == "node_registered"]
        assert [e.fields["node"] for e in registered] == ["alpha"]
        assert registered[0].fields["cert_sha256"] == "ab" * 32
        store.attach_ledger(log)  # a second start appends nothing twice
        store.detach_ledger()
        assert len([e for e in log.parsed_entries() if e.type == "node_registered"]) == 1
    finally:
        store.close()
        log.close()
