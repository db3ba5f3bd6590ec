"""RFC 9162 §2.1 Merkle trees: generation vs the RFC's recursive definitions, verification, tampering."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgov.ledger import merkle
from fedgov.ledger.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    ProofError,
    leaf_hash,
    node_hash,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)

MAX = 200


# ---- reference: the RFC 9162 §2.1.1 / §2.1.3.1 / §2.1.4.1 definitions, written literally


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


DATA = [f"entry-{i}".encode() for i in range(MAX)]


@pytest.fixture(scope="module")
def tree() -> MerkleTree:
    t = MerkleTree()
    for d in DATA:
        t.append(d)
    return t


def test_hash_definitions() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    assert MerkleTree().root() == EMPTY_ROOT == root_from_leaves([])


def test_roots_match_reference_for_every_size(tree: MerkleTree) -> None:
    for n in range(MAX + 1):
        expect = ref_mth(DATA[:n])
        assert tree.root(n) == expect
        assert root_from_leaves([leaf_hash(d) for d in DATA[:n]]) == expect


def test_every_inclusion_proof_matches_reference_and_verifies(tree: MerkleTree) -> None:
    for n in range(1, MAX + 1):
        root = tree.root(n)
        for m in range(n):
            proof = tree.inclusion_proof(m, n)
            if n <= 70:
                assert proof == ref_path(m, DATA[:n])
            verify_inclusion(leaf_hash(DATA[m]), m, n, proof, root)


def test_every_consistency_proof_matches_reference_and_verifies(tree: MerkleTree) -> None:
    roots = [tree.root(n) for n in range(MAX + 1)]
    for n in range(1, MAX + 1):
        for m in range(0, n + 1):
            proof = tree.consistency_proof(m, n)
            if 0 < m < n and n <= 70:
                assert proof == ref_subproof(m, DATA[:n], True)
            verify_consistency(m, n, roots[m], roots[n], proof)


def _flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 70).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))), st.data())
def test_altered_inclusion_proofs_fail(tree: MerkleTree, nm: tuple[int, int], data: st.DataObject) -> None:
    n, m = nm
    root, proof, leaf = tree.root(n), tree.inclusion_proof(m, n), leaf_hash(DATA[m])
    verify_inclusion(leaf, m, n, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(_flip(leaf), m, n, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, m, n, proof, _flip(root))
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[i] = _flip(bad[i])
        with pytest.raises(ProofError):
            verify_inclusion(leaf, m, n, bad, root)
        with pytest.raises(ProofError):
            verify_inclusion(leaf, m, n, proof[:-1], root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, m, n, [*proof, b"\x00" * 32], root)
    other = data.draw(st.integers(0, n - 1))
    if other != m and tree.leaf(other) != leaf:
        with pytest.raises(ProofError):
            verify_inclusion(leaf, other, n, proof, root)
    # The tree size is authenticated by the signed head, not by the proof: a
    # wrong size fails whenever it implies a different proof shape.
    wrong_n = data.draw(st.integers(m + 1, MAX))
    if len(tree.inclusion_proof(m, wrong_n)) != len(proof):
        with pytest.raises(ProofError):
            verify_inclusion(leaf, m, wrong_n, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, n, n, proof, root)


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 70).flatmap(lambda n: st.tuples(st.integers(1, n - 1), st.just(n))), st.data())
def test_altered_consistency_proofs_fail(tree: MerkleTree, mn: tuple[int, int], data: st.DataObject) -> None:
    m, n = mn
    old, new, proof = tree.root(m), tree.root(n), tree.consistency_proof(m, n)
    verify_consistency(m, n, old, new, proof)
    with pytest.raises(ProofError):
        verify_consistency(m, n, _flip(old), new, proof)
    with pytest.raises(ProofError):
        verify_consistency(m, n, old, _flip(new), proof)
    with pytest.raises(ProofError):
        verify_consistency(m, n, old, new, [])
    i = data.draw(st.integers(0, len(proof) - 1))
    bad = list(proof)
    bad[i] = _flip(bad[i])
    with pytest.raises(ProofError):
        verify_consistency(m, n, old, new, bad)
    with pytest.raises(ProofError):
        verify_consistency(m, n, old, new, [*proof, proof[0]])
    with pytest.raises(ProofError):
        verify_consistency(m, n, old, new, proof[:-1])
    with pytest.raises(ProofError):
        verify_consistency(n, m, new, old, proof)
    wrong_m = data.draw(st.integers(1, n - 1))
    if wrong_m != m and tree.root(wrong_m) != old:
        with pytest.raises(ProofError):
            verify_consistency(wrong_m, n, old, new, proof)
    # a history that differs in one earlier entry is not consistent
    j = data.draw(st.integers(0, m - 1))
    forged = MerkleTree([leaf_hash(d if k != j else b"forged") for k, d in enumerate(DATA[:n])])
    with pytest.raises(ProofError):
        verify_consistency(m, n, old, forged.root(n), forged.consistency_proof(m, n))


def test_equal_and_empty_sizes() -> None:
    t = MerkleTree([leaf_hash(d) for d in DATA[:5]])
    verify_consistency(5, 5, t.root(5), t.root(5), [])
    with pytest.raises(ProofError, match="different roots"):
        verify_consistency(5, 5, t.root(5), t.root(4), [])
    verify_consistency(0, 5, EMPTY_ROOT, t.root(5), [])
    with pytest.raises(ProofError):
        verify_consistency(0, 5, t.root(1), t.root(5), [])
    with pytest.raises(ProofError):
        t.inclusion_proof(5, 5)
    with pytest.raises(ProofError):
        t.consistency_proof(3, 6)


def test_required_subtrees_are_logarithmic() -> None:
    n = 1_000_003
    keys = merkle.required_subtrees(lambda s: merkle.inclusion_proof(123_456, n, s))
    assert len(keys) <= 2 * n.bit_length() ** 2
    keys = merkle.required_subtrees(lambda s: merkle.consistency_proof(500_001, n, s))
    assert len(keys) <= 2 * n.bit_length() ** 2
