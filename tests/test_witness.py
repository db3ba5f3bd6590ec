"""Witness: consistent growth is cosigned; rewrite, fork, truncation and backwards heads are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgov.errors import ConfigError, CryptoError
from fedgov.ledger import entries as E
from fedgov.ledger.log import SignedTreeHead, TransparencyLog, cosignature_message
from fedgov.ledger.witness import LogForked, LogRewritten, Witness


def _log(path: Path, key: Ed25519PrivateKey, names: list[str]) -> TransparencyLog:
    log = TransparencyLog(path, key)
    log.append_many([E.job_started(n, ts=1) for n in names])
    return log


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def node_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_honest_growth_is_cosigned_and_persisted(tmp_path: Path, key: Ed25519PrivateKey, node_key) -> None:
    log = _log(tmp_path / "l.db", key, ["a", "b", "c"])
    w = Witness(tmp_path / "w.json", key.public_key(), sign=node_key.sign)
    first = log.tree_head()
    sig = w.observe(first, [])
    node_key.public_key().verify(sig, cosignature_message(first))
    log.add_cosignature("tax", first, sig, node_key.public_key())
    for i in range(20):
        log.append(E.job_started(f"j{i}"))
        head = log.tree_head()
        old = w.last_head
        assert old is not None
        w.observe(head, log.consistency_proof(old.size, head.size))
    # reload from disk
    w2 = Witness(tmp_path / "w.json", key.public_key(), sign=node_key.sign)
    assert w2.last_head == log.tree_head()
    entry = log.entry(5)
    w2.check_inclusion(entry, 5, log.inclusion_proof(5, w2.last_head.size))
    with pytest.raises(ConfigError, match="different public key"):
        Witness(tmp_path / "w.json", Ed25519PrivateKey.generate().public_key())


def test_rewritten_history_detected_and_halts(tmp_path: Path, key: Ed25519PrivateKey, node_key) -> None:
    honest = _log(tmp_path / "a.db", key, ["a", "b", "c", "d", "e"])
    w = Witness(tmp_path / "w.json", key.public_key(), sign=node_key.sign)
    w.observe(honest.tree_head(), [])
    # The coordinator rebuilds its log with entry 2 changed, plus new entries, and signs it.
    evil = _log(tmp_path / "b.db", key, ["a", "b", "EDITED", "d", "e", "f", "g"])
    head = evil.tree_head()
    with pytest.raises(LogRewritten, match="not an extension of the head of size 5"):
        w.observe(head, evil.consistency_proof(5, head.size))
    # the alarm is persisted: the node refuses to continue, even after a restart
    w2 = Witness(tmp_path / "w.json", key.public_key(), sign=node_key.sign)
    assert w2.alarm is not None
    honest.append(E.job_started("f"))
    with pytest.raises(LogRewritten, match="witness halted"):
        w2.observe(honest.tree_head(), honest.consistency_proof(5))
    w2.clear_alarm()
    w2.observe(honest.tree_head(), honest.consistency_proof(5))


def test_fork_detected(tmp_path: Path, key: Ed25519PrivateKey, node_key) -> None:
    a = _log(tmp_path / "a.db", key, ["a", "b", "c"])
    b = _log(tmp_path / "b.db", key, ["a", "b", "X"])
    w = Witness(tmp_path / "w.json", key.public_key(), sign=node_key.sign)
    w.observe(a.tree_head(), [])
    with pytest.raises(LogForked, match="two signed heads of size 3"):
        w.observe(b.tree_head(fresh=True), [])
    # gossip between witnesses: another node saw the other branch
    w_other = Witness(tmp_path / "w2.json", key.public_key())
    w_other.check(a.tree_head(), [])
    b.append(E.job_started("d"))
    peer = b.tree_head()
    with pytest.raises(LogForked, match="not one history"):
        w_other.check_peer(peer, b.consistency_proof(3, 4))


def test_backwards_and_stale_heads_refused(tmp_path: Path, key: Ed25519PrivateKey, node_key) -> None:
    log = _log(tmp_path / "a.db", key, ["a", "b", "c", "d"])
    w = Witness(tmp_path / "w.json", key.public_key(), sign=node_key.sign)
    small = log.tree_head()
    log.append(E.job_started("e"))
    big = log.tree_head()
    w.observe(small, [])
    w.observe(big, log.consistency_proof(4, 5))
    # replay of an older head: refused, but no alarm (could be a replay)
    with pytest.raises(LogRewritten, match="stale head"):
        w.observe(small, [])
    assert w.alarm is None
    # a newer head that covers fewer entries: truncation
    truncated_root = log.root(4)
    ts = big.timestamp + 1
    body = SignedTreeHead(4, truncated_root, ts, b"")
    truncated = SignedTreeHead(4, truncated_root, ts, key.sign(body.signed_bytes()))
    with pytest.raises(LogRewritten, match="went backwards"):
        w.observe(truncated, [])
    assert w.alarm is not None and "truncated" in w.alarm


def test_bad_signature_is_not_accepted(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log = _log(tmp_path / "a.db", key, ["a"])
    w = Witness(tmp_path / "w.json", key.public_key(), sign=lambda b: b"")
    sth = log.tree_head()
    forged = SignedTreeHead(
        sth.size, sth.root, sth.timestamp, Ed25519PrivateKey.generate().sign(sth.signed_bytes())
    )
    with pytest.raises(CryptoError, match="does not verify"):
        w.observe(forged, [])
    assert w.last_head is None and w.alarm is None
    with pytest.raises(ConfigError, match="signing callable"):
        Witness(tmp_path / "x.json", key.public_key()).observe(sth, [])
