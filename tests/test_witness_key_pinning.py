"""Ledger-key pinning: a coordinator cannot start a fresh log under a new key to hide the old history.

A node's witness pins the log's signing key — from ``<kit>/ledger.pub``, its
configuration, or the first key it verified (kept in its state file) — and
raises :class:`LedgerAlarm` when the coordinator later serves heads under any
other key, however well-formed the new log is.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgov.ledger import entries as E
from fedgov.ledger.log import TransparencyLog, public_key_bytes
from fedgov.node.witness import LedgerAlarm, NodeWitness, head_to_pb
from fedgov.v1 import ledger_pb2


class Coordinator:
    """What a coordinator's ledger service serves: the head of ``log`` and its key."""

    def __init__(self, log: TransparencyLog) -> None:
        self.log = log
        self.cosigned: list[Any] = []

    def GetHead(self, request: Any, timeout: float | None = None) -> ledger_pb2.GetHeadReply:  # noqa: N802
        return ledger_pb2.GetHeadReply(
            head=head_to_pb(self.log.tree_head()),
            key=ledger_pb2.LogKey(public_key=public_key_bytes(self.log.public_key)),
        )

    def GetConsistencyProof(self, request: Any, timeout: float | None = None) -> Any:  # noqa: N802
        return SimpleNamespace(hashes=self.log.consistency_proof(request.old_size, request.new_size))

    def AddCosignature(self, request: Any, timeout: float | None = None) -> None:  # noqa: N802
        self.cosigned.append(request)


def _log(path: Path, names: list[str]) -> TransparencyLog:
    log = TransparencyLog(path, Ed25519PrivateKey.generate())
    log.append_many([E.job_started(n, ts=1) for n in names])
    return log


@pytest.fixture
def logs(tmp_path: Path):
    honest = _log(tmp_path / "honest.db", ["a", "b", "c"])
    # the coordinator's fresh log, under a new key, without the old history
    fresh = _log(tmp_path / "fresh.db", ["x"])
    yield honest, fresh
    honest.close()
    fresh.close()


def _witness(state: Path, stub: Coordinator, **kw: Any) -> NodeWitness:
    return NodeWitness(state, stub, kw.pop("log_public_key", None), Ed25519PrivateKey.generate().sign, **kw)


def test_a_new_log_key_is_refused_after_the_first_one_was_verified(tmp_path: Path, logs) -> None:
    honest, fresh = logs
    coordinator = Coordinator(honest)
    w = _witness(tmp_path / "node", coordinator, log_public_key=honest.public_key)
    w.check()
    assert len(coordinator.cosigned) == 1  # control: the honest log is verified and cosigned
    coordinator.log = fresh  # the same running node, the coordinator switches logs
    with pytest.raises(LedgerAlarm, match="log key changed"):
        w.check()
    # after a restart the node has no configured key: the key in its state file is the pin
    restarted = _witness(tmp_path / "node", Coordinator(fresh))
    with pytest.raises(LedgerAlarm, match="log key changed"):
        restarted.check()


def test_a_provisioned_ledger_pub_pins_the_key_from_the_first_contact(tmp_path: Path, logs) -> None:
    honest, fresh = logs
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "ledger.pub").write_text(public_key_bytes(honest.public_key).hex() + "\n")
    with pytest.raises(LedgerAlarm, match="log key changed"):
        _witness(tmp_path / "node", Coordinator(fresh), kit_dir=kit).check()
    ok = Coordinator(honest)
    _witness(tmp_path / "node2", ok, kit_dir=kit).check()
    assert len(ok.cosigned) == 1


def test_a_configured_key_pins_the_key_from_the_first_contact(tmp_path: Path, logs) -> None:
    honest, fresh = logs
    with pytest.raises(LedgerAlarm, match="log key changed"):
        _witness(tmp_path / "node", Coordinator(fresh), log_public_key=honest.public_key).check()
