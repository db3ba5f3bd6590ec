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


# ------------------------------------------------------------ the node's witness loop (no network)

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402

from fedgov.crypto.keys import NodeKeys  # noqa: E402
from fedgov.crypto.kits import issue_kit  # noqa: E402
from fedgov.crypto.pki import create_ca  # noqa: E402
from fedgov.ledger.facts import sign_fact  # noqa: E402
from fedgov.ledger.witness import majority, quorum_head  # noqa: E402
from fedgov.node import witness as nwit  # noqa: E402
from fedgov.node.witness import NodeWitness, WitnessSettings, head_from_pb, head_to_pb  # noqa: E402
from fedgov.v1 import ledger_pb2  # noqa: E402


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class LogStub:
    """The coordinator's Ledger service over one TransparencyLog, in process (gossip through ``mailbox``)."""

    def __init__(self, log: TransparencyLog, me: str, mailbox: dict, keys: dict[str, NodeKeys]) -> None:
        self.log, self.me, self.mailbox, self.keys = log, me, mailbox, keys
        self.fail: FakeRpcError | None = None
        self.frozen: SignedTreeHead | None = None

    def GetHead(self, request, timeout=None):  # noqa: N802
        if self.fail is not None:
            raise self.fail
        sth = self.frozen or self.log.tree_head(fresh=True)
        key = ledger_pb2.LogKey(public_key=nwit.public_key_bytes(self.log.public_key))
        return ledger_pb2.GetHeadReply(head=head_to_pb(sth), key=key)

    def GetConsistencyProof(self, request, timeout=None):  # noqa: N802
        return ledger_pb2.Proof(hashes=self.log.consistency_proof(request.old_size, request.new_size))

    def GetInclusionProof(self, request, timeout=None):  # noqa: N802
        return ledger_pb2.InclusionProof(hashes=self.log.inclusion_proof(request.index, request.size))

    def GetEntries(self, request, timeout=None):  # noqa: N802
        for i, b in self.log.iter_entries(request.start, request.end):
            yield ledger_pb2.LedgerEntry(index=i, data=b)

    def AddCosignature(self, request, timeout=None):  # noqa: N802
        self.log.add_cosignature(self.me, head_from_pb(request.head), request.signature)
        return ledger_pb2.Ack() if hasattr(ledger_pb2, "Ack") else None

    def GetCosignatures(self, request, timeout=None):  # noqa: N802
        return ledger_pb2.GetCosignaturesReply(
            cosignatures=[
                ledger_pb2.Cosignature(witness=c.witness, head=head_to_pb(c.sth), signature=c.signature)
                for c in self.log.latest_cosignatures()
            ]
        )

    def SendGossip(self, request, timeout=None):  # noqa: N802
        self.mailbox[(self.me, request.recipient)] = bytes(request.envelope)

    def GetGossip(self, request, timeout=None):  # noqa: N802
        return ledger_pb2.GetGossipReply(
            messages=[
                ledger_pb2.GossipMessage(sender=s, recipient=r, envelope=e)
                for (s, r), e in self.mailbox.items()
                if r == self.me
            ]
        )


@pytest.fixture(scope="module")
def depts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, NodeKeys]:
    tmp = tmp_path_factory.mktemp("depts")
    create_ca(tmp / "ca", "witness test")
    out = {}
    for n in ("tax", "health", "civil"):
        issue_kit(tmp / "ca", tmp / n, n, "node")
        out[n] = NodeKeys.load(tmp / n)
    out["_ca"] = x509.load_pem_x509_certificate((tmp / "ca" / "ca.crt").read_bytes())  # type: ignore[assignment]
    return out


def _node(tmp: Path, name: str, stub: LogStub, depts: dict, **settings: object) -> NodeWitness:
    opts = {"witnesses": ["tax", "health", "civil"], "witness_interval": 0.2, "starve_after": 5.0, **settings}
    return NodeWitness(
        tmp / name,
        stub,
        stub.log.public_key,
        depts[name].sign,
        settings=WitnessSettings.from_table(opts, "test"),
        keys=depts[name],
        peers=lambda n: depts[n].public(),
    )


def test_quorum_head_is_the_largest_head_k_witnesses_vouch_for() -> None:
    h = {n: SignedTreeHead(s, bytes(32), s, b"") for n, s in (("a", 10), ("b", 7), ("c", 3))}
    assert quorum_head(h, 2) == (h["b"], ["a", "b"])
    assert quorum_head(h, 3) == (h["c"], ["a", "b", "c"])
    assert quorum_head(h, 4) is None and quorum_head({}, 1) is None
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]


def test_a_head_counts_only_with_k_valid_cosignatures(tmp_path: Path, key: Ed25519PrivateKey, depts) -> None:
    log = _log(tmp_path / "l.db", key, ["a", "b"])
    mailbox: dict = {}
    tax = _node(tmp_path, "tax", LogStub(log, "tax", mailbox, depts), depts)
    tax.check()
    assert tax.quorum is None  # 1 of 3 cosigned; a majority needs 2
    # the coordinator makes up health's cosignature: it counts for nothing
    sth = tax.last_head
    log.add_cosignature("health", sth, Ed25519PrivateKey.generate().sign(cosignature_message(sth)))
    tax.check()
    assert tax.quorum is None
    health = _node(tmp_path, "health", LogStub(log, "health", mailbox, depts), depts)
    health.check()
    tax.check()
    q = tax.quorum
    assert q is not None and q["cosigners"] == ["health", "tax"] and (q["k"], q["n"]) == (2, 3)


def test_own_facts_are_checked_for_inclusion(tmp_path: Path, key: Ed25519PrivateKey, depts, monkeypatch) -> None:
    log = _log(tmp_path / "l.db", key, ["a"])
    mailbox: dict = {}
    tax = _node(tmp_path, "tax", LogStub(log, "tax", mailbox, depts), depts, quorum=1)
    tax.check()
    logged = sign_fact(E.job_approved("j1", "tax"), "tax", depts["tax"].sign).encode()
    dropped = sign_fact(E.job_approved("j2", "tax"), "tax", depts["tax"].sign).encode()
    tax.expect(logged)
    tax.expect(dropped)
    log.append(logged)
    log.append(E.job_approved("j2", "tax"))  # the coordinator's unsigned words instead of tax's own
    tax.check()
    tax.check()  # the quorum head (k = 1) now covers the new entries
    assert [p["sha256"] for p in tax.pending_facts] == [nwit.hashlib.sha256(dropped).hexdigest()]
    assert tax.status()["facts_included"] == 1
    # at once: the coordinator's own words about tax, which tax never signed
    (foreign,) = tax.alarms
    assert foreign["kind"] == "foreign-fact" and foreign["evidence"]["entry"] == 2
    assert "job_approved about this department that it never signed (unsigned" in foreign["message"]
    later = nwit.now_ms() + 6_000
    monkeypatch.setattr(nwit, "now_ms", lambda: later)
    tax.check()
    alarm = tax.alarms[-1]
    assert alarm["kind"] == "withheld-fact" and "job_approved" in alarm["message"] and len(tax.alarms) == 2


def test_errors_are_not_skipped_and_withheld_heads_starve(
    tmp_path: Path, key: Ed25519PrivateKey, depts, monkeypatch, caplog
) -> None:
    log = _log(tmp_path / "l.db", key, ["a"])
    stub = LogStub(log, "tax", {}, depts)
    tax = _node(tmp_path, "tax", stub, depts, gossip=False)
    tax.maybe_check()
    stub.fail = FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "no ledger here")
    tax._next = 0.0
    with caplog.at_level("ERROR", logger="fedgov.node.witness"):
        tax.maybe_check()
    assert "no ledger here" in tax.status()["last_error"]["message"]
    assert any(r.levelname == "ERROR" and "no ledger here" in r.getMessage() for r in caplog.records)
    assert not tax.alarms  # not yet starving
    stub.fail = None
    stub.frozen = tax.last_head  # the same head, again and again
    later = nwit.now_ms() + 6_000
    monkeypatch.setattr(nwit, "now_ms", lambda: later)
    tax._next = 0.0
    tax.maybe_check()
    (alarm,) = tax.alarms
    assert alarm["kind"] == "starved" and tax.status()["starving"]
    # UNAVAILABLE still propagates (the agent reconnects)
    stub.fail = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down")
    tax._next = 0.0
    with pytest.raises(grpc.RpcError):
        tax.maybe_check()


def test_split_view_is_caught_by_sealed_gossip(tmp_path: Path, key: Ed25519PrivateKey, depts) -> None:
    mailbox: dict = {}
    real = _log(tmp_path / "real.db", key, ["a", "b", "c"])
    shown_to_health = _log(tmp_path / "fork.db", key, ["a", "b", "FORGED"])  # same log key
    tax = _node(tmp_path, "tax", LogStub(real, "tax", mailbox, depts), depts)
    health = _node(tmp_path, "health", LogStub(shown_to_health, "health", mailbox, depts), depts)
    tax.check()
    health.check()  # each view is self-consistent
    tax.gossip()
    with pytest.raises(LogForked, match="split view: tax"):
        health.gossip()
    with pytest.raises(LogForked, match="split view: health"):
        tax.gossip()
    for w in (tax, health):
        assert [a["kind"] for a in w.alarms] == ["split-view"] and w.alarm is not None
        with pytest.raises(LogForked, match="witness halted"):
            w.maybe_check()
    # an envelope the coordinator altered in transit is refused, not believed
    mailbox2: dict = {}
    civil = _node(tmp_path, "civil", LogStub(real, "civil", mailbox2, depts), depts)
    civil.check()
    env = bytearray(mailbox.get(("health", "tax"), b"") or b"x" * 100)
    env[-1] ^= 1
    mailbox2[("health", "civil")] = bytes(env)
    civil.gossip()
    assert "gossip from" in civil.status()["last_error"]["message"] and not civil.alarms


def test_witness_settings_are_checked() -> None:
    assert WitnessSettings.from_table({}, "t") == WitnessSettings()
    for bad, msg in (
        ({"witness_interval": 0}, "witness_interval"),
        ({"starve_after": 5, "witness_interval": 10}, "longer than"),
        ({"witnesses": "tax"}, "list of department names"),
        ({"witnesses": ["a"], "quorum": 2}, "exceeds"),
        ({"quorom": 2}, "unknown key 'quorom'"),
    ):
        with pytest.raises(ConfigError, match=msg):
            WitnessSettings.from_table(bad, "t")


def test_facts_of_jobs_that_did_not_succeed_are_dropped_and_missing_ones_of_a_success_alarm(
    tmp_path: Path, key: Ed25519PrivateKey, depts
) -> None:
    log = _log(tmp_path / "l.db", key, ["a"])
    tax = _node(tmp_path, "tax", LogStub(log, "tax", {}, depts), depts, quorum=1)
    tax.check()
    failed = sign_fact(E.contribution("j-failed", "tax", "income", 5, ["id"]), "tax", depts["tax"].sign).encode()
    won = sign_fact(E.contribution("j-won", "tax", "income", 5, ["id"]), "tax", depts["tax"].sign).encode()
    tax.expect(failed)
    tax.expect(won)
    # another participant failed: no contribution is logged, rightly
    log.append(E.job_completed("j-failed", "failed"))
    # a job that succeeded, with the coordinator's own (unsigned) words for tax's contribution
    log.append(E.contribution("j-won", "tax", "income", 500, ["id"]))
    log.append(E.job_completed("j-won", "succeeded"))
    tax.check()
    tax.check()
    assert tax.pending_facts == [] or all("j-won" in p["entry"] for p in tax.pending_facts)
    kinds = sorted(a["kind"] for a in tax.alarms)  # at once, not after starve_after
    assert kinds == ["foreign-fact", "withheld-fact"]
    alarm = next(a for a in tax.alarms if a["kind"] == "withheld-fact")
    assert "j-won" in alarm["message"] and "succeeded" in alarm["message"]
    # re-publishing unchanged content re-sends the same bytes, so nothing new waits
    first = tax.republish("dataset:income", ["d", 5], lambda: won)
    assert tax.republish("dataset:income", ["d", 5], lambda: failed) == first


def test_dropped_gossip_raises_an_alarm(tmp_path: Path, key: Ed25519PrivateKey, depts, monkeypatch) -> None:
    log = _log(tmp_path / "l.db", key, ["a"])
    mailbox: dict = {}
    tax = _node(tmp_path, "tax", LogStub(log, "tax", mailbox, depts), depts, witnesses=["tax", "health"])
    health = _node(tmp_path, "health", LogStub(log, "health", mailbox, depts), depts, witnesses=["tax", "health"])
    for w in (tax, health):
        w.check()
    health.gossip()
    tax.gossip()
    assert not tax.alarms  # health's head arrived and agrees
    later = nwit.now_ms() + 6_000
    monkeypatch.setattr(nwit, "now_ms", lambda: later)
    mailbox.clear()  # the coordinator drops everything from now on
    tax.gossip()
    (alarm,) = tax.alarms
    assert alarm["kind"] == "gossip-starved" and alarm["evidence"]["peer"] == "health"
    tax.gossip()
    assert len(tax.alarms) == 1  # once per silence


def test_node_witness_status_shows_alarms_and_exits_while_halted(
    tmp_path: Path, key: Ed25519PrivateKey, depts, capsys
) -> None:
    from types import SimpleNamespace

    mailbox: dict = {}
    tax = _node(tmp_path, "tax", LogStub(_log(tmp_path / "a.db", key, ["a"]), "tax", mailbox, depts), depts)
    health = _node(tmp_path, "health", LogStub(_log(tmp_path / "b.db", key, ["X"]), "health", mailbox, depts), depts)
    tax.check()
    health.check()
    health.gossip()
    with pytest.raises(LogForked):
        tax.gossip()
    config = SimpleNamespace(state_dir=tmp_path / "tax", ledger=WitnessSettings())
    with pytest.raises(nwit.WitnessError, match="witness halted"):
        nwit.print_status(config)
    out = capsys.readouterr().out
    assert "ALARM split-view" in out and "verified head: size 1" in out


def test_facts_signed_by_concurrent_jobs_are_all_kept(tmp_path: Path, key: Ed25519PrivateKey, depts) -> None:
    """Job threads sign facts while the witness loop checks: none may be lost, no write may fail.

    (CI once saw ``FileNotFoundError`` on ``ledger-facts.json.tmp`` when two
    standing checks finished together: both wrote through one temporary name.)
    """
    import threading

    log = _log(tmp_path / "l.db", key, ["a"])
    tax = _node(tmp_path, "tax", LogStub(log, "tax", {}, depts), depts, quorum=1)
    tax.check()
    facts = [sign_fact(E.job_approved(f"j{i}", "tax"), "tax", depts["tax"].sign).encode() for i in range(64)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def sign(chunk: list[bytes]) -> None:
        try:
            for f in chunk:
                tax.expect(f)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def witness() -> None:
        try:
            while not stop.is_set():
                tax.check()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    loop = threading.Thread(target=witness)
    loop.start()
    workers = [threading.Thread(target=sign, args=(facts[i::8],)) for i in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    loop.join()
    assert errors == []
    want = {nwit.hashlib.sha256(f).hexdigest() for f in facts}
    assert {p["sha256"] for p in tax.pending_facts} == want
    assert not list((tmp_path / "tax").glob("*.tmp"))
