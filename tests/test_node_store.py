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
