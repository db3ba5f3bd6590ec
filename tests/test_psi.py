"""ECDH-PSI protocol: correctness, normalisation, errors, and what crosses the wire."""

from __future__ import annotations

import hashlib
import random
from datetime import date

import numpy as np
import pytest

from fedgov import idcard
from fedgov.errors import CryptoError, FedgovError, JobFailed, SchemaMismatch
from fedgov.protocols import _psi_worker
from fedgov.protocols.psi import (
    MATCH_WIDTH,
    POINT_WIDTH,
    PsiGuest,
    PsiHost,
    normalize_ids,
    run_local,
)


def _ids(rng: random.Random, n: int) -> list[str]:
    return [f"P{rng.getrandbits(48):014d}" for _ in range(n)]


def _check(res: dict, guest_ids: list, hosts: dict[str, list]) -> None:
    expected = set(normalize_ids(guest_ids))
    for ids in hosts.values():
        expected &= set(normalize_ids(ids))
    g = res["guest"]
    assert g.size == len(expected)
    assert set(g.ids) == expected and len(g.ids) == len(expected)
    gnorm = normalize_ids(guest_ids)
    assert [gnorm[r] for r in g.rows] == g.ids
    for name, ids in hosts.items():
        h = res[name]
        assert h.ids == g.ids  # same aligned order on both sides
        hnorm = normalize_ids(ids)
        assert [hnorm[r] for r in h.rows] == h.ids
        # rows point at the first occurrence of each ID
        assert all(hnorm.index(i) == r for i, r in zip(h.ids, h.rows, strict=True))


@pytest.mark.parametrize(
    "case", ["random", "empty_guest", "empty_host", "both_empty", "disjoint", "identical", "dups"]
)
def test_two_party_matches_plaintext(case: str) -> None:
    rng = random.Random(case)
    a = _ids(rng, 300)
    b = a[:120] + _ids(rng, 200)
    if case == "empty_guest":
        a = []
    elif case == "empty_host":
        b = []
    elif case == "both_empty":
        a, b = [], []
    elif case == "disjoint":
        b = _ids(rng, 250)
    elif case == "identical":
        b = list(a)
        rng.shuffle(b)
    elif case == "dups":
        a = a + a[:50] + a[10:20]
        b = b + b[:70]
        rng.shuffle(a)
        rng.shuffle(b)
    res = run_local(f"job-{case}", a, {"tax": b}, workers=1, chunk_elems=64)
    _check(res, a, {"tax": b})


def test_multi_party_global_intersection_and_delivery() -> None:
    rng = random.Random(7)
    g = _ids(rng, 400)
    h1 = g[:250] + _ids(rng, 100)
    h2 = g[100:350] + h1[-50:] + _ids(rng, 60)
    rng.shuffle(h1)
    rng.shuffle(h2)
    res = run_local("multi", g, {"tax": h1, "hrss": h2}, deliver_to=["tax"], workers=1)
    assert res["guest"].size == len(set(g) & set(h1) & set(h2)) == 150
    assert res["guest"].pairwise_sizes == {"tax": 250, "hrss": 250}
    assert res["tax"] is not None and res["tax"].ids == res["guest"].ids
    assert res["hrss"] is None  # not named in the manifest: learns nothing


def test_process_pool_same_result() -> None:
    rng = random.Random(3)
    a = _ids(rng, 2000)
    b = a[:700] + _ids(rng, 900)
    res = run_local("pool", a, {"h": b}, workers=2, chunk_elems=300)
    _check(res, a, {"h": b})


def test_order_is_canonical_and_reproducible() -> None:
    rng = random.Random(11)
    a = _ids(rng, 200)
    b = a[:100]
    r1 = run_local("same-job", a, {"h": b}, workers=1)
    r2 = run_local("same-job", list(reversed(a)), {"h": list(reversed(b))}, workers=1)
    assert r1["guest"].ids == r2["guest"].ids  # independent of keys and row order
    r3 = run_local("other-job", a, {"h": b}, workers=1)
    assert sorted(r3["guest"].ids) == sorted(r1["guest"].ids)
    assert r3["guest"].ids != r1["guest"].ids


@pytest.mark.parametrize("hosts", [1, 2])
def test_cardinality_only(hosts: int) -> None:
    rng = random.Random(5)
    g = _ids(rng, 300)
    h = {"h1": g[:200] + _ids(rng, 50), "h2": g[100:260] + _ids(rng, 30)}
    h = dict(list(h.items())[:hosts])
    res = run_local("card", g, h, mode="cardinality", workers=1)
    want = set(g)
    for ids in h.values():
        want &= set(ids)
    assert res["guest"].size == len(want)
    assert res["guest"].ids is None and res["guest"].rows is None
    for name in h:
        assert res[name].size == len(want) and res[name].ids is None


def _guest_view(mode: str, guest_ids: list[str], host_ids: list[str], seed: int) -> tuple[PsiGuest, list]:
    """One guest/host exchange; returns the guest (its own secrets) and the transcript of what crossed."""
    transcript: list[tuple[str, str, str, bytes]] = []
    guest = PsiGuest("card-link", guest_ids, ["h"], mode=mode, workers=1)  # type: ignore[arg-type]
    host = PsiHost("card-link", host_ids, mode=mode, workers=1,  # type: ignore[arg-type]
                   shuffle_key=random.Random(seed).randbytes(32))
    sent = b"".join(guest.masked_set())
    transcript.append(("guest", "h", "guest_masked", sent))
    reply = b"".join(host.remask([sent]))
    transcript.append(("h", "guest", "host_reply", reply))
    host_set = b"".join(host.masked_set())
    transcript.append(("h", "guest", "host_masked", host_set))
    guest.absorb_reply("h", [reply])
    guest.absorb_host_set("h", [host_set])
    return guest, transcript


def _linking_attack(guest: PsiGuest, transcript: list) -> set[str]:
    """The guest's attack: reply i answers the i-th value it sent, so the replies that match the
    host's (double-masked) set name its IDs in the intersection."""
    (reply,) = [m for _, _, step, m in transcript if step == "host_reply"]
    replies = np.frombuffer(reply, dtype=f"S{MATCH_WIDTH}")
    theirs = set(np.frombuffer(b"".join(guest._host_sets["h"]), dtype=f"S{MATCH_WIDTH}").tolist())
    assert guest._perm is not None  # sent position -> the guest's own distinct ID
    return {guest._ids[guest._perm[i]] for i, r in enumerate(replies.tolist()) if r in theirs}


def test_cardinality_replies_are_unlinkable_to_guest_ids() -> None:
    """The guest knows which of its IDs each value it sent came from. In alignment mode the
    replies keep that order, so it learns exactly which IDs are shared; in cardinality mode the
    host's secret permutation must make that guess no better than chance."""
    rng = random.Random(9)
    g = _ids(rng, 400)
    shared = set(g[:200])
    h = g[:200] + _ids(rng, 150)
    rng.shuffle(h)
    # the attack works where nothing hides the order (align mode): it names the intersection
    guest, t = _guest_view("align", g, h, seed=1)
    assert _linking_attack(guest, t) == shared
    for seed in range(3):
        guest, t = _guest_view("cardinality", g, h, seed=seed)
        guess = _linking_attack(guest, t)
        assert len(guess) == len(shared)  # the guest does learn the size
        # chance: 200 of the 400 IDs are shared, so a blind guess of 200 is right about half
        # the time (sd of the hit rate 0.025); the attack must stay below 0.62 (4.8 sd)
        hit_rate = len(guess & shared) / len(guess)
        assert hit_rate < 0.62, f"seed {seed}: replies link to the guest's IDs ({hit_rate:.2f})"
    # and what the hosts are told in cardinality mode is the size alone
    full: list = []
    run_local("card-msg", g, {"h": h}, mode="cardinality", workers=1, transcript=full)
    (result,) = [m for _, dst, step, m in full if step == "result"]
    assert len(result) == 14  # magic, version, mode, size: no positions


def test_normalisation() -> None:
    assert normalize_ids([" 11010519491231002x ", "11010519491231002X", " abc ", 42]) == [
        "11010519491231002X",
        "11010519491231002X",
        "abc",
        "42",
    ]
    assert normalize_ids(["abcx"]) == ["abcx"]  # only resident IDs get an upper-case X
    res = run_local("norm", [" 11010519491231002x ", "A1"], {"h": ["11010519491231002X"]},
                    workers=1)
    assert res["guest"].ids == ["11010519491231002X"]
    assert list(res["guest"].rows) == [0] and list(res["h"].rows) == [0]


@pytest.mark.parametrize("bad,row", [([" ok", None], 2), (["", "x"], 1), (["a", "  "], 2),
                                     (["a", float("nan")], 2)])
def test_malformed_ids_give_clear_error(bad: list, row: int) -> None:
    with pytest.raises(SchemaMismatch, match=f"row {row}:"):
        normalize_ids(bad)
    with pytest.raises(SchemaMismatch, match=f"row {row}:"):
        run_local("bad", bad, {"h": ["a"]}, workers=1)


def test_wire_hides_non_matching_ids() -> None:
    rng = random.Random(1)
    members = [
        idcard.make_id("110105", date(1950 + i, 1 + i % 12, 1 + i % 28), i) for i in range(40)
    ]
    g = _ids(rng, 150) + members
    h = g[:50] + _ids(rng, 100)
    t1: list = []
    run_local("job-A", g, {"h": h}, workers=1, transcript=t1)
    to_host = b"".join(p for src, dst, step, p in t1 if dst == "h")
    assert to_host  # something was sent
    non_matching = [s for s in g if s not in set(h)]
    for s in non_matching:
        raw = s.encode()
        assert raw not in to_host
        for digest in (
            hashlib.sha256(raw).digest(),
            hashlib.sha512(raw).digest()[:32],
            _psi_worker.hash_to_u(hashlib.sha256(b"fedgov/psi/v1/hash-to-u\x00job-A").digest(),
                                  s),
        ):
            assert digest[:16] not in to_host
    # job-specific domain tag (and fresh scalar): same IDs, unrelated messages
    t2: list = []
    run_local("job-B", g, {"h": h}, workers=1, transcript=t2)
    vals = lambda t, step: {  # noqa: E731
        p[i : i + POINT_WIDTH]
        for _, _, st, p in t
        if st == step
        for i in range(0, len(p), POINT_WIDTH)
    }
    assert not vals(t1, "guest_masked") & vals(t2, "guest_masked")
    assert not vals(t1, "host_masked") & vals(t2, "host_masked")
    # the only things sent: masked points, truncated double masks, the result
    steps = {(src, dst, step) for src, dst, step, _ in t1}
    assert steps == {("guest", "h", "guest_masked"), ("h", "guest", "host_reply"),
                     ("h", "guest", "host_masked"), ("guest", "h", "result")}
    sent = sum(len(p) for _, _, st, p in t1 if st == "guest_masked")
    assert sent == len(set(g)) * POINT_WIDTH  # guest reveals only its distinct count


def test_hash_to_u_is_domain_separated_and_masked_bit_clear() -> None:
    u1 = _psi_worker.hash_to_u(b"\x01" * 32, "same")
    u2 = _psi_worker.hash_to_u(b"\x02" * 32, "same")
    assert u1 != u2 and len(u1) == 32 and u1[31] & 0x80 == 0


def test_bad_messages_are_rejected() -> None:
    guest = PsiGuest("j", ["a", "b"], ["h"], workers=1)
    host = PsiHost("j", ["a"], workers=1)
    with pytest.raises(CryptoError, match="multiple"):
        list(host.remask([b"\x01" * 33]))
    list(guest.masked_set())
    guest.absorb_reply("h", [b"\x00" * MATCH_WIDTH])  # one value for two sent
    guest.absorb_host_set("h", host.masked_set())
    with pytest.raises(JobFailed, match="replied with 1 values for 2"):
        guest.finish(["h"])
    with pytest.raises(FedgovError, match="unknown host"):
        guest.absorb_reply("nobody", [])
    with pytest.raises(CryptoError):
        host.finish(b"junk")


def test_low_order_point_is_refused() -> None:
    host = PsiHost("j", ["a"], workers=1)
    with pytest.raises(CryptoError, match="all-zero"):
        list(host.remask([b"\x00" * 32]))  # u = 0 has order 2... product is zero


def test_guest_must_use_canonical_order() -> None:
    rng = random.Random(2)
    a = _ids(rng, 30)
    guest = PsiGuest("o", a, ["h"], workers=1)
    host = PsiHost("o", a, workers=1)
    guest.absorb_reply("h", host.remask(guest.masked_set()))
    guest.absorb_host_set("h", host.masked_set())
    _, msgs = guest.finish(["h"])
    msg = msgs["h"]
    head, body = msg[:14], bytearray(msg[14:])
    body[0:4], body[4:8] = body[4:8], body[0:4]
    with pytest.raises(CryptoError, match="canonical order"):
        host.finish(head + bytes(body))
