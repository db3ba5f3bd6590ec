"""Merkle hash trees as defined by RFC 9162 §2.1 (Certificate Transparency v2.0).

Hashing (RFC 9162 §2.1.1, SHA-256 from :mod:`hashlib`):

* the hash of an empty list is ``SHA-256()`` (:data:`EMPTY_ROOT`);
* a leaf is ``SHA-256(0x00 || entry)`` (:func:`leaf_hash`);
* an interior node is ``SHA-256(0x01 || left || right)`` (:func:`node_hash`);
* ``MTH(D[n])`` for ``n > 1`` splits at ``k``, the largest power of two
  smaller than ``n``: ``MTH(D[n]) = node_hash(MTH(D[0:k]), MTH(D[k:n]))``.

Proof **generation** follows the recursive definitions ``PATH(m, D[n])``
(§2.1.3.1) and ``PROOF(m, D[n])`` / ``SUBPROOF`` (§2.1.4.1) literally, but every
``MTH`` it needs is assembled from *perfect subtrees*: the hash of leaves
``[i * 2**level, (i + 1) * 2**level)``, obtained from a caller-supplied
:data:`SubtreeSource` ``(level, i) -> bytes``. Every range the recursion asks
for starts at a multiple of a power of two at least as large as the range, so
it decomposes into at most ``log2(n)`` such perfect subtrees. A store that keeps
every completed perfect subtree (two hashes per leaf, amortised) therefore
serves proofs with ``O(log² n)`` look-ups and no rehashing of leaves —
:class:`MerkleTree` does that in memory, :mod:`fedgov.ledger.log` in SQLite.

Proof **verification** (:func:`verify_inclusion`, :func:`verify_consistency`)
implements the iterative algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2 step by
step, needs only hashes, and raises :class:`ProofError` (a
:class:`~fedgov.errors.CryptoError`) with a one-line reason on failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from fedgov.errors import CryptoError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "ProofError",
    "SubtreeSource",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_hash",
    "required_subtrees",
    "root_from_leaves",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
#: ``MTH({})``: the hash of an empty tree (RFC 9162 §2.1.1).
EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()

#: ``subtree(level, i)`` returns the hash of leaves ``[i << level, (i + 1) << level)``.
SubtreeSource = Callable[[int, int], bytes]


class ProofError(CryptoError):
    """An inclusion or consistency proof does not verify, or cannot be produced."""


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)`` — the RFC 9162 leaf hash of one log entry."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)`` — the RFC 9162 interior-node hash."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _largest_pow2_below(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_hash(start: int, end: int, subtree: SubtreeSource) -> bytes:
    """``MTH(D[start:end])`` for a range that starts on a power-of-two boundary.

    Requires ``start`` to be a multiple of the smallest power of two ``>= end -
    start`` (true for every range RFC 9162's PATH/PROOF recursion visits and for
    ``start = 0``). The range is split into perfect subtrees following the binary
    representation of its length, largest first, and folded right to left —
    exactly the shape of RFC 9162's MTH.
    """
    size = end - start
    if size <= 0:
        if size == 0:
            return EMPTY_ROOT
        raise ProofError(f"empty or negative range [{start}, {end})")
    parts: list[bytes] = []
    pos = start
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            if pos % (1 << level):
                raise ProofError(f"range [{start}, {end}) is not aligned to a power of two")
            parts.append(subtree(level, pos >> level))
            pos += 1 << level
    h = parts[-1]
    for left in reversed(parts[:-1]):
        h = node_hash(left, h)
    return h


def inclusion_proof(index: int, size: int, subtree: SubtreeSource) -> list[bytes]:
    """``PATH(index, D[size])`` of RFC 9162 §2.1.3.1, leaf-to-root order.

    Raises :class:`ProofError` unless ``0 <= index < size``.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    path: list[bytes] = []

    def rec(m: int, start: int, n: int) -> None:
        if n == 1:
            return
        k = _largest_pow2_below(n)
        if m < k:
            rec(m, start, k)
            path.append(range_hash(start + k, start + n, subtree))
        else:
            rec(m - k, start + k, n - k)
            path.append(range_hash(start, start + k, subtree))

    rec(index, 0, size)
    return path


def consistency_proof(old_size: int, new_size: int, subtree: SubtreeSource) -> list[bytes]:
    """``PROOF(old_size, D[new_size])`` of RFC 9162 §2.1.4.1.

    The proof is empty when ``old_size == new_size`` or ``old_size == 0`` (every
    tree extends the empty tree). Raises :class:`ProofError` unless
    ``0 <= old_size <= new_size``.
    """
    if not 0 <= old_size <= new_size:
        raise ProofError(f"cannot prove consistency from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []

    def sub(m: int, start: int, n: int, b: bool) -> None:
        if m == n:
            if not b:
                proof.append(range_hash(start, start + n, subtree))
            return
        k = _largest_pow2_below(n)
        if m <= k:
            sub(m, start, k, b)
            proof.append(range_hash(start + k, start + n, subtree))
        else:
            sub(m - k, start + k, n - k, False)
            proof.append(range_hash(start, start + k, subtree))

    sub(old_size, 0, new_size, True)
    return proof


def required_subtrees(generate: Callable[[SubtreeSource], object]) -> list[tuple[int, int]]:
    """The ``(level, i)`` perfect subtrees ``generate`` reads, in first-use order.

    Lets a store fetch everything a proof needs in one query: call
    ``required_subtrees(lambda s: inclusion_proof(i, n, s))``, fetch those keys,
    then run the generator again on the fetched hashes.
    """
    seen: dict[tuple[int, int], None] = {}

    def record(level: int, i: int) -> bytes:
        seen[(level, i)] = None
        return EMPTY_ROOT

    generate(record)
    return list(seen)


def _lsb(x: int) -> int:
    return x & 1


def verify_inclusion(entry_hash: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> None:
    """Check an inclusion proof exactly as RFC 9162 §2.1.3.2 prescribes.

    ``entry_hash`` is the *leaf hash* (:func:`leaf_hash` of the entry). Returns
    ``None`` when the proof shows that leaf at ``index`` in the tree of ``size``
    whose head is ``root``; otherwise raises :class:`ProofError`.
    """
    # 1. Compare leaf_index against tree_size.
    if not 0 <= index < size:
        raise ProofError(f"inclusion: leaf index {index} is not below tree size {size}")
    _check_hashes([entry_hash, root, *path], "inclusion")
    # 2.-3.
    fn, sn = index, size - 1
    r = entry_hash
    # 4.
    for p in path:
        if sn == 0:  # 4a
            raise ProofError(f"inclusion: proof for leaf {index} of {size} is too long")
        if _lsb(fn) or fn == sn:  # 4b
            r = node_hash(p, r)
            if not _lsb(fn):
                while not (_lsb(fn) or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # 4c
        sn >>= 1
    # 5.
    if sn != 0:
        raise ProofError(f"inclusion: proof for leaf {index} of {size} is too short")
    if r != root:
        raise ProofError(f"inclusion: leaf {index} does not lead to the root of the tree of size {size}")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (``new_size``, ``new_root``) extends (``old_size``, ``old_root``).

    For ``0 < old_size < new_size`` this is RFC 9162 §2.1.4.2 step by step. The
    cases the RFC leaves to the caller are decided as follows: ``old_size ==
    new_size`` needs an empty proof and equal roots; ``old_size == 0`` needs an
    empty proof and ``old_root == EMPTY_ROOT``; ``old_size > new_size`` always
    fails. Raises :class:`ProofError` on failure.
    """
    _check_hashes([old_root, new_root, *proof], "consistency")
    if old_size < 0 or old_size > new_size:
        raise ProofError(f"consistency: size went from {old_size} to {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("consistency: proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"consistency: two different roots for tree size {old_size}")
        return
    if old_size == 0:
        if proof:
            raise ProofError("consistency: proof from the empty tree must be empty")
        if old_root != EMPTY_ROOT:
            raise ProofError("consistency: root of the empty tree is not SHA-256('')")
        return
    # 1.
    if not proof:
        raise ProofError(f"consistency: empty proof from size {old_size} to {new_size}")
    path = list(proof)
    # 2.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # 3.
    fn, sn = old_size - 1, new_size - 1
    # 4.
    if _lsb(fn):
        while _lsb(fn):
            fn >>= 1
            sn >>= 1
    # 5.
    fr = sr = path[0]
    # 6.
    for c in path[1:]:
        if sn == 0:  # 6a
            raise ProofError(f"consistency: proof from {old_size} to {new_size} is too long")
        if _lsb(fn) or fn == sn:  # 6b
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not _lsb(fn):
                while not (_lsb(fn) or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # 6c
        sn >>= 1
    # 7.
    if sn != 0:
        raise ProofError(f"consistency: proof from {old_size} to {new_size} is too short")
    if fr != old_root:
        raise ProofError(f"consistency: proof does not lead to the old root of size {old_size}")
    if sr != new_root:
        raise ProofError(f"consistency: proof does not lead to the new root of size {new_size}")


def _check_hashes(values: Sequence[bytes], what: str) -> None:
    for v in values:
        if not isinstance(v, bytes | bytearray) or len(v) != HASH_SIZE:
            raise ProofError(f"{what}: every hash must be {HASH_SIZE} bytes")


def root_from_leaves(leaf_hashes: Sequence[bytes]) -> bytes:
    """``MTH`` of a list of leaf hashes, level by level (``O(n)`` hashes).

    Promoting an unpaired right-most node unchanged to the next level yields
    the same root as RFC 9162's split-at-the-largest-power-of-two recursion.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


class MerkleTree:
    """An in-memory, append-only RFC 9162 tree that keeps every perfect subtree.

    ``append`` is amortised O(1) hashes; ``root(size)``, ``inclusion_proof`` and
    ``consistency_proof`` work for any historical size and cost O(log² n)
    look-ups. Memory: about two 32-byte hashes per leaf.
    """

    def __init__(self, leaf_hashes: Sequence[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append_hash(h)

    def __len__(self) -> int:
        return len(self._levels[0])

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def append(self, entry: bytes) -> int:
        """Append an entry (hashed with :func:`leaf_hash`); return its index."""
        return self.append_hash(leaf_hash(entry))

    def append_hash(self, h: bytes) -> int:
        """Append a precomputed leaf hash; return its index."""
        if len(h) != HASH_SIZE:
            raise ProofError(f"leaf hash must be {HASH_SIZE} bytes")
        index = len(self._levels[0])
        self._levels[0].append(h)
        level, i = 0, index
        while i & 1:
            if len(self._levels) == level + 1:
                self._levels.append([])
            row = self._levels[level]
            self._levels[level + 1].append(node_hash(row[i - 1], row[i]))
            level, i = level + 1, i >> 1
        return index

    def subtree(self, level: int, i: int) -> bytes:
        """Hash of the perfect subtree ``(level, i)``; :class:`ProofError` if incomplete."""
        try:
            return self._levels[level][i]
        except IndexError:
            raise ProofError(
                f"subtree ({level}, {i}) is not complete in a tree of size {self.size}"
            ) from None

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        return self.subtree(0, index)

    def root(self, size: int | None = None) -> bytes:
        """``MTH`` of the first ``size`` leaves (default: all)."""
        n = self.size if size is None else size
        if not 0 <= n <= self.size:
            raise ProofError(f"no tree of size {n}: the log has {self.size} leaves")
        return range_hash(0, n, self.subtree)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """``PATH(index, D[size])`` (default size: all leaves)."""
        n = self.size if size is None else size
        if n > self.size:
            raise ProofError(f"no tree of size {n}: the log has {self.size} leaves")
        return inclusion_proof(index, n, self.subtree)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """``PROOF(old_size, D[new_size])`` (default new size: all leaves)."""
        n = self.size if new_size is None else new_size
        if n > self.size:
            raise ProofError(f"no tree of size {n}: the log has {self.size} leaves")
        return consistency_proof(old_size, n, self.subtree)
