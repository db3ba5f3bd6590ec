"""The coordinator's append-only transparency log, durable in SQLite.

Storage (one SQLite file, WAL journal, ``synchronous=FULL``: a call to
:meth:`TransparencyLog.append` returns only after its transaction is on disk,
so a ``SIGKILL`` right after it loses nothing):

``entries(idx, data, leaf)``   the canonical entry bytes and their RFC 9162 leaf hash;
``tree(level, idx, hash)``     every completed perfect subtree above the leaves
                               (``level >= 1``), written in the same transaction
                               as the leaf that completes it;
``heads(size, ts, root, signature)``   every signed tree head issued;
``cosignatures(...)``          witnesses' counter-signatures of those heads;
``meta``                        format version and the log's Ed25519 public key;
``entry_meta(idx, type, node, job, ts)``   a derived, indexed copy of each entry's type,
                               department, job and timestamp, written in the entry's own
                               transaction (rebuilt on open if missing) so :meth:`TransparencyLog.query`
                               serves filtered, keyset-paginated pages without parsing the
                               log. It is an index, not evidence: every row a query returns
                               carries the entry's stored bytes, which the caller proves.

SQL triggers refuse ``UPDATE`` and ``DELETE`` on these tables, so the
application cannot rewrite history by accident; someone with write access to
the file can drop them, which is what :meth:`TransparencyLog.verify_all`, the
signed heads and the witnesses (:mod:`fedgov.ledger.witness`) are for.

**Signed tree head** (:class:`SignedTreeHead`). The log signs, with Ed25519
(RFC 8032, from :mod:`cryptography`), the 67 bytes::

    b"fedgov/v1 tree-head\\x00"  (20-byte domain tag)
    uint64 big-endian tree_size
    uint64 big-endian timestamp (ms since the Unix epoch, UTC)
    32-byte root hash  (MTH of the first tree_size leaves, RFC 9162 §2.1.1)

A witness counter-signs ``b"fedgov/v1 cosignature\\x00" || <the 68 bytes above>``
(:func:`cosignature_message`). Timestamps of successive heads never decrease.

Proofs are generated from the stored perfect subtrees with ``O(log² n)``
point look-ups (:mod:`fedgov.ledger.merkle`), never by rehashing leaves.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgov.errors import ConfigError, CryptoError, FedgovError
from fedgov.ledger import merkle
from fedgov.ledger.entries import Entry, EntryError, now_ms, parse_entry
from fedgov.ledger.points import ENTRY_TYPES as _POINTS_TYPES
from fedgov.ledger.points import verify_awards

__all__ = [
    "COSIGN_DOMAIN",
    "EXPORT_FORMAT",
    "STH_DOMAIN",
    "Cosignature",
    "LogDamaged",
    "SignedTreeHead",
    "TransparencyLog",
    "VerifyReport",
    "cosignature_message",
    "entry_meta",
    "load_export",
    "public_key_bytes",
    "verify_export",
]

STH_DOMAIN = b"fedgov/v1 tree-head\x00"
COSIGN_DOMAIN = b"fedgov/v1 cosignature\x00"
EXPORT_FORMAT = "fedgov-ledger-export/1"
_SCHEMA_VERSION = "1"
_MAX_LISTED = 20  # problems of one kind listed by name before summarising
#: Entry types that :func:`~fedgov.ledger.points.compute_points` reads.


class _Slot:
    """One caller's entries waiting for a group commit."""

    __slots__ = ("blobs", "done", "error", "indices")

    def __init__(self, blobs: list[bytes]) -> None:
        self.blobs = blobs
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.indices: list[int] = []


class LogDamaged(CryptoError):
    """The database is inconsistent (tampered with); the log refuses to append or sign."""


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key (RFC 8032 encoding)."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class SignedTreeHead:
    """A tree head ``(size, root, timestamp)`` and the log's Ed25519 signature over it."""

    size: int
    root: bytes
    timestamp: int
    signature: bytes

    def signed_bytes(self) -> bytes:
        """The exact bytes the log signs (see the module docstring)."""
        return STH_DOMAIN + struct.pack(">QQ", self.size, self.timestamp) + self.root

    def verify(self, public_key: Ed25519PublicKey) -> None:
        """Raise :class:`CryptoError` unless the log's key signed this head."""
        if len(self.root) != merkle.HASH_SIZE:
            raise CryptoError("tree head root is not 32 bytes", where="tree head")
        try:
            public_key.verify(self.signature, self.signed_bytes())
        except InvalidSignature:
            raise CryptoError(
                f"signature on the tree head of size {self.size} does not verify with the log's key",
                where="tree head",
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form with hex-encoded hashes and signature."""
        return {
            "size": self.size,
            "root": self.root.hex(),
            "timestamp": self.timestamp,
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SignedTreeHead:
        """Inverse of :meth:`to_dict`; :class:`ConfigError` on a malformed document."""
        try:
            size, ts = d["size"], d["timestamp"]
            if not (isinstance(size, int) and isinstance(ts, int)) or size < 0 or ts < 0:
                raise ValueError("size and timestamp must be non-negative integers")
            return cls(size, bytes.fromhex(d["root"]), ts, bytes.fromhex(d["signature"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed tree head: {exc}", where="tree head") from None


def cosignature_message(sth: SignedTreeHead) -> bytes:
    """What a witness signs to vouch for ``sth``: :data:`COSIGN_DOMAIN` + the head's signed bytes."""
    return COSIGN_DOMAIN + sth.signed_bytes()


@dataclass(frozen=True)
class Cosignature:
    """A witness's counter-signature of one tree head."""

    witness: str
    sth: SignedTreeHead
    signature: bytes
    received: int


@dataclass
class VerifyReport:
    """Outcome of :meth:`TransparencyLog.verify_all`; ``ok`` iff ``problems`` is empty."""

    size: int = 0
    heads_checked: int = 0
    cosignatures_checked: int = 0
    awards_checked: int = 0
    edited: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True iff nothing was wrong."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "verified": self.ok,
            "size": self.size,
            "heads_checked": self.heads_checked,
            "cosignatures_checked": self.cosignatures_checked,
            "awards_checked": self.awards_checked,
            "edited": self.edited,
            "missing": self.missing,
            "problems": self.problems,
            "seconds": round(self.seconds, 3),
        }

    def __str__(self) -> str:
        if self.ok:
            return (
                f"ledger verified: {self.size} entries, {self.heads_checked} signed heads, "
                f"{self.cosignatures_checked} cosignatures, {self.awards_checked} points awards"
            )
        return "ledger verification FAILED:\n" + "\n".join(f"  - {p}" for p in self.problems)


_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, data BLOB NOT NULL, leaf BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tree (
    level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS heads (
    size INTEGER NOT NULL, ts INTEGER NOT NULL, root BLOB NOT NULL, signature BLOB NOT NULL,
    PRIMARY KEY (size, ts)
);
CREATE TABLE IF NOT EXISTS entry_meta (
    idx INTEGER PRIMARY KEY, type TEXT NOT NULL, node TEXT, job TEXT, ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entry_meta_type ON entry_meta (type, idx);
CREATE INDEX IF NOT EXISTS entry_meta_node ON entry_meta (node, type, idx);
CREATE INDEX IF NOT EXISTS entry_meta_job ON entry_meta (job, idx);
CREATE INDEX IF NOT EXISTS entry_meta_ts ON entry_meta (ts);
CREATE INDEX IF NOT EXISTS heads_ts ON heads (ts, size);
CREATE TABLE IF NOT EXISTS cosignatures (
    witness TEXT NOT NULL, size INTEGER NOT NULL, ts INTEGER NOT NULL, root BLOB NOT NULL,
    head_signature BLOB NOT NULL, signature BLOB NOT NULL, received INTEGER NOT NULL,
    PRIMARY KEY (witness, size, ts)
);
"""
_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t} "
    f"BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;"
    for t in ("entries", "tree", "heads", "cosignatures")
    for op in ("UPDATE", "DELETE")
]


class TransparencyLog:
    """Append-only RFC 9162 log of :class:`~fedgov.ledger.entries.Entry` records.

    Thread-safe (one connection behind a lock). Opening an existing file with a
    different signing key raises :class:`ConfigError`. If the stored tree is
    inconsistent the log still opens (so :meth:`verify_all` can name the damage)
    but :meth:`append` and :meth:`tree_head` raise :class:`LogDamaged`.
    """

    def __init__(self, path: Path, signing_key: Ed25519PrivateKey) -> None:
        self.path = Path(path)
        self._key = signing_key
        self.public_key = signing_key.public_key()
        self._lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._tx():
            for stmt in _DDL.split(";"):
                if stmt.strip():
                    self._db.execute(stmt)
            for stmt in _TRIGGERS:
                self._db.execute(stmt)
            pub = public_key_bytes(self.public_key)
            row = self._db.execute("SELECT value FROM meta WHERE key='public_key'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('public_key', ?)", (pub,))
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (_SCHEMA_VERSION,))
            elif bytes(row[0]) != pub:
                raise ConfigError(
                    "this ledger was created with a different signing key", where=str(self.path)
                )
        self._damaged: str | None = None
        self._queue: list[_Slot] = []
        self._queue_lock = threading.Lock()
        self._committing = False
        self._size = 0
        self._frontier: dict[int, bytes] = {}
        self._load_state()
        self._index_missing()

    # ------------------------------------------------------------------ plumbing

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            if exc_type is None:
                self.db.execute("COMMIT")
            else:
                self.db.execute("ROLLBACK")

    def _tx(self) -> TransparencyLog._Tx:
        return TransparencyLog._Tx(self._db)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> TransparencyLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load_state(self) -> None:
        row = self._db.execute("SELECT MAX(idx), COUNT(*) FROM entries").fetchone()
        size = 0 if row[0] is None else row[0] + 1
        self._size = size
        self._frontier = {}
        if row[1] != size:
            self._damaged = f"entries table has {row[1]} rows but indices up to {size - 1}"
            return
        try:
            for level in range(size.bit_length()):
                if size >> level & 1:
                    self._frontier[level] = self._subtree(level, (size >> level) - 1)
        except merkle.ProofError as exc:
            self._damaged = str(exc)

    def _index_missing(self) -> None:
        """Fill ``entry_meta`` for entries written before it existed (once, in batches)."""
        row = self._db.execute("SELECT COALESCE(MAX(idx), -1) FROM entry_meta").fetchone()
        start = row[0] + 1
        while start < self._size:
            batch = []
            for idx, data in self._db.execute(
                "SELECT idx, data FROM entries WHERE idx >= ? ORDER BY idx LIMIT 20000", (start,)
            ).fetchall():
                try:
                    batch.append((idx, *entry_meta(parse_entry(bytes(data)))))
                except EntryError:
                    batch.append((idx, "?", None, None, 0))  # named by verify_all
                start = idx + 1
            if not batch:
                break
            with self._tx() as db:
                db.executemany("INSERT OR REPLACE INTO entry_meta VALUES (?, ?, ?, ?, ?)", batch)

    def _check_usable(self) -> None:
        if self._damaged:
            raise LogDamaged(
                f"ledger database is damaged ({self._damaged}); run verify", where=str(self.path)
            )

    def _subtree(self, level: int, i: int) -> bytes:
        if level == 0:
            row = self._db.execute("SELECT leaf FROM entries WHERE idx=?", (i,)).fetchone()
        else:
            row = self._db.execute("SELECT hash FROM tree WHERE level=? AND idx=?", (level, i)).fetchone()
        if row is None:
            raise merkle.ProofError(f"stored subtree ({level}, {i}) is missing")
        return bytes(row[0])

    def _cached_source(self) -> merkle.SubtreeSource:
        cache: dict[tuple[int, int], bytes] = {}

        def get(level: int, i: int) -> bytes:
            key = (level, i)
            h = cache.get(key)
            if h is None:
                h = cache[key] = self._subtree(level, i)
            return h

        return get

    # -------------------------------------------------------------------- writes

    @property
    def size(self) -> int:
        """Number of entries."""
        return self._size

    def append(self, entry: Entry | bytes) -> int:
        """Validate, store and commit one entry; return its index (0-based).

        Returns only after the transaction is durable. Raises
        :class:`~fedgov.ledger.entries.EntryError` for a malformed entry.
        """
        return self.append_many([entry])[0]

    def append_many(self, entries: Iterable[Entry | bytes]) -> list[int]:
        """Append several entries in one durable transaction (all or none); return their indices.

        Concurrent callers are **group-committed**: while one thread commits,
        others queue their entries, and the next commit writes the whole queue
        with a single fsync. Each caller still returns only once its own
        entries are durable, and entries keep their order within a call.
        """
        blobs = [e.encode() if isinstance(e, Entry) else parse_entry(bytes(e)).encode() for e in entries]
        slot = _Slot(blobs)
        with self._queue_lock:
            self._queue.append(slot)
            leader = not self._committing
            if leader:
                self._committing = True
        if not leader:
            slot.done.wait()
        else:
            while True:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                    if not batch:
                        self._committing = False
                        break
                self._commit(batch)
        if slot.error is not None:
            raise slot.error
        return slot.indices

    def _commit(self, batch: list[_Slot]) -> None:
        try:
            with self._lock:
                self._check_usable()
                self._write([b for s in batch for b in s.blobs])
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
            for s in batch:
                s.error = exc
                s.done.set()
            return
        first = self._size - sum(len(s.blobs) for s in batch)
        for s in batch:
            s.indices = list(range(first, first + len(s.blobs)))
            first += len(s.blobs)
            s.done.set()

    def _write(self, blobs: list[bytes]) -> None:
        """Write ``blobs`` in one transaction; update size and frontier after the commit."""
        frontier = dict(self._frontier)
        size = self._size
        rows: list[tuple[int, bytes, bytes]] = []
        nodes: list[tuple[int, int, bytes]] = []
        metas: list[tuple[int, str, str | None, str | None, int]] = []
        for blob in blobs:
            h = merkle.leaf_hash(blob)
            rows.append((size, blob, h))
            metas.append((size, *entry_meta(parse_entry(blob))))
            level, i, cur = 0, size, h
            while i & 1:
                cur = merkle.node_hash(frontier.pop(level), cur)
                level, i = level + 1, i >> 1
                nodes.append((level, i, cur))
            frontier[level] = cur
            size += 1
        with self._tx() as db:
            db.executemany("INSERT INTO entries (idx, data, leaf) VALUES (?, ?, ?)", rows)
            db.executemany("INSERT INTO tree (level, idx, hash) VALUES (?, ?, ?)", nodes)
            db.executemany("INSERT OR REPLACE INTO entry_meta VALUES (?, ?, ?, ?, ?)", metas)
        self._frontier, self._size = frontier, size

    def tree_head(self, *, fresh: bool = False) -> SignedTreeHead:
        """A signed head for the current size.

        Reuses the latest stored head when it already covers the current size,
        unless ``fresh``; a new head is stored durably before it is returned and
        its timestamp is never earlier than the previous head's.
        """
        with self._lock:
            self._check_usable()
            last = self.latest_head()
            if last is not None and last.size == self._size and not fresh:
                return last
            root = self._root_locked(self._size)
            ts = max(now_ms(), last.timestamp if last else 0)
            unsigned = SignedTreeHead(self._size, root, ts, b"")
            sth = SignedTreeHead(self._size, root, ts, self._key.sign(unsigned.signed_bytes()))
            with self._tx() as db:
                db.execute(
                    "INSERT OR IGNORE INTO heads (size, ts, root, signature) VALUES (?, ?, ?, ?)",
                    (sth.size, sth.timestamp, sth.root, sth.signature),
                )
            return sth

    def latest_head(self) -> SignedTreeHead | None:
        """The most recently issued head (largest size, then latest timestamp), if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT size, root, ts, signature FROM heads ORDER BY ts DESC, size DESC LIMIT 1"
            ).fetchone()
        return None if row is None else SignedTreeHead(row[0], bytes(row[1]), row[2], bytes(row[3]))

    def heads(self) -> list[SignedTreeHead]:
        """Every head issued, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT size, root, ts, signature FROM heads ORDER BY ts, size"
            ).fetchall()
        return [SignedTreeHead(r[0], bytes(r[1]), r[2], bytes(r[3])) for r in rows]

    def add_cosignature(
        self,
        witness: str,
        sth: SignedTreeHead,
        signature: bytes,
        witness_key: Ed25519PublicKey | None = None,
    ) -> None:
        """Store ``witness``'s counter-signature of a head this log issued.

        Raises :class:`CryptoError` if the head was not issued by this log, or
        if ``witness_key`` is given and the signature does not verify. Storing
        the same witness/head twice is a no-op.
        """
        sth.verify(self.public_key)
        if witness_key is not None:
            try:
                witness_key.verify(signature, cosignature_message(sth))
            except InvalidSignature:
                raise CryptoError(
                    f"cosignature by {witness!r} of head {sth.size} does not verify", where="cosignature"
                ) from None
        with self._lock:
            row = self._db.execute(
                "SELECT root FROM heads WHERE size=? AND ts=?", (sth.size, sth.timestamp)
            ).fetchone()
            if row is None or bytes(row[0]) != sth.root:
                raise CryptoError(f"head of size {sth.size} was not issued by this log", where="cosignature")
            with self._tx() as db:
                db.execute(
                    "INSERT OR IGNORE INTO cosignatures VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (witness, sth.size, sth.timestamp, sth.root, sth.signature, signature, now_ms()),
                )

    def cosignatures(self, size: int | None = None) -> list[Cosignature]:
        """Stored cosignatures (of heads of ``size`` if given), oldest head first."""
        q = "SELECT witness, size, root, ts, head_signature, signature, received FROM cosignatures"
        args: tuple[Any, ...] = ()
        if size is not None:
            q, args = q + " WHERE size=?", (size,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY ts, size, witness", args).fetchall()
        return [
            Cosignature(r[0], SignedTreeHead(r[1], bytes(r[2]), r[3], bytes(r[4])), bytes(r[5]), r[6])
            for r in rows
        ]

    def latest_cosignatures(self) -> list[Cosignature]:
        """Each witness's latest cosignature (largest head, then newest timestamp)."""
        best: dict[str, Cosignature] = {}
        with self._lock:
            rows = self._db.execute(
                "SELECT c.witness, c.size, c.root, c.ts, c.head_signature, c.signature, c.received "
                "FROM cosignatures c JOIN (SELECT witness, MAX(size) AS size FROM cosignatures GROUP BY witness) m "
                "ON c.witness = m.witness AND c.size = m.size ORDER BY c.witness, c.ts"
            ).fetchall()
        for r in rows:
            best[r[0]] = Cosignature(r[0], SignedTreeHead(r[1], bytes(r[2]), r[3], bytes(r[4])), bytes(r[5]), r[6])
        return [best[w] for w in sorted(best)]

    # --------------------------------------------------------------------- reads

    def _root_locked(self, size: int) -> bytes:
        if not 0 <= size <= self._size:
            raise merkle.ProofError(f"no tree of size {size}: the log has {self._size} entries")
        return merkle.range_hash(0, size, self._cached_source())

    def root(self, size: int | None = None) -> bytes:
        """``MTH`` of the first ``size`` entries (default: all)."""
        with self._lock:
            return self._root_locked(self._size if size is None else size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 ``PATH(index, D[size])`` (default: the current size)."""
        with self._lock:
            n = self._size if size is None else size
            if n > self._size:
                raise merkle.ProofError(f"no tree of size {n}: the log has {self._size} entries")
            return merkle.inclusion_proof(index, n, self._cached_source())

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 ``PROOF(old_size, D[new_size])`` (default: the current size)."""
        with self._lock:
            n = self._size if new_size is None else new_size
            if n > self._size:
                raise merkle.ProofError(f"no tree of size {n}: the log has {self._size} entries")
            return merkle.consistency_proof(old_size, n, self._cached_source())

    def entry(self, index: int) -> bytes:
        """The stored bytes of entry ``index``; :class:`FedgovError` if there is none."""
        with self._lock:
            row = self._db.execute("SELECT data FROM entries WHERE idx=?", (index,)).fetchone()
        if row is None:
            raise FedgovError(f"no entry {index} (the log has {self._size})", where="ledger")
        return bytes(row[0])

    def entries(self, start: int = 0, end: int | None = None) -> list[bytes]:
        """Stored bytes of entries ``[start, end)`` (default: to the end)."""
        return [b for _, b in self.iter_entries(start, end)]

    def iter_entries(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Yield ``(index, bytes)`` for ``[start, end)`` in index order, in batches."""
        stop = self._size if end is None else min(end, self._size)
        pos = max(start, 0)
        while pos < stop:
            with self._lock:
                rows = self._db.execute(
                    "SELECT idx, data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx LIMIT 10000",
                    (pos, stop),
                ).fetchall()
            if not rows:
                return
            for idx, data in rows:
                yield idx, bytes(data)
            pos = rows[-1][0] + 1

    def points_entries(self) -> list[Entry]:
        """The entries :func:`~fedgov.ledger.points.compute_points` reads, parsed, in log order (via the index).

        Points computed from these equal points computed from every entry (the
        other types are ignored by it), at the cost of the points entries only.
        """
        return [parse_entry(b) for _, b in self.query_all(types=sorted(_POINTS_TYPES))]

    def parsed_entries(self, start: int = 0, end: int | None = None) -> list[Entry]:
        """Entries ``[start, end)`` parsed (for points and display)."""
        return [parse_entry(b) for _, b in self.iter_entries(start, end)]

    def query(
        self,
        *,
        types: Sequence[str] = (),
        node: str | None = None,
        job: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        before: int | None = None,
        limit: int = 50,
        ascending: bool = False,
    ) -> tuple[list[tuple[int, bytes]], int | None]:
        """A page of ``(index, stored bytes)`` matching every filter given, newest first.

        ``types`` (any of), ``node`` (the department an entry is about: a fact's
        department, ``node_*``'s node, a cosignature's witness), ``job``, and
        ``since_ms <= ts < until_ms``. Keyset pagination: ``before`` is the
        exclusive index cursor (``None``: from the end; with ``ascending``, the
        exclusive lower cursor, from the start); the second value is the cursor
        of the next page (``None``: no more). Uses the ``entry_meta`` indexes: a
        page costs ``O(log n + limit)`` row reads for a selective filter. The
        bytes returned are the stored ones; the index that selected them is
        not evidence (prove each entry with :meth:`inclusion_proof`).
        """
        limit = max(1, min(int(limit), 10_000))
        where, args = self._query_where(types, node, job, since_ms, until_ms)
        if since_ms is not None or until_ms is not None:
            # A time range as an index range first (the ts index, covering): scanning
            # the range's own rows in idx order then needs no sort of the whole day
            # (1M entries: 40 ms -> 3 ms). ``ts`` is still checked row by row, so an
            # entry whose signed time is out of order is neither lost nor added.
            span = self._idx_span(since_ms, until_ms)
            if span is None:
                return [], None
            where = [w.replace("m.ts", "+m.ts") for w in where]
            where.append("m.idx BETWEEN ? AND ?")
            args.extend(span)
        if before is not None:
            where.append("m.idx > ?" if ascending else "m.idx < ?")
            args.append(int(before))
        sql = (
            "SELECT m.idx, e.data FROM entry_meta m JOIN entries e ON e.idx = m.idx"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY m.idx {'ASC' if ascending else 'DESC'} LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(sql, (*args, limit + 1)).fetchall()
        page = [(int(i), bytes(d)) for i, d in rows[:limit]]
        return page, (page[-1][0] if len(rows) > limit else None)

    def query_all(self, **filters: Any) -> list[tuple[int, bytes]]:
        """Every ``(index, bytes)`` matching :meth:`query`'s filters, in log order."""
        out: list[tuple[int, bytes]] = []
        cursor: int | None = None
        while True:
            page, cursor = self.query(**filters, before=cursor, limit=10_000, ascending=True)
            out.extend(page)
            if cursor is None:
                return out

    def _idx_span(self, since_ms: int | None, until_ms: int | None) -> tuple[int, int] | None:
        """``(first, last)`` index of the entries with ``since_ms <= ts < until_ms`` (``None``: none)."""
        conds, args = [], []
        if since_ms is not None:
            conds.append("ts >= ?")
            args.append(int(since_ms))
        if until_ms is not None:
            conds.append("ts < ?")
            args.append(int(until_ms))
        with self._lock:
            lo, hi = self._db.execute(
                "SELECT MIN(idx), MAX(idx) FROM entry_meta WHERE " + " AND ".join(conds), args
            ).fetchone()
        return None if lo is None else (int(lo), int(hi))

    @staticmethod
    def _query_where(
        types: Sequence[str], node: str | None, job: str | None, since_ms: int | None, until_ms: int | None
    ) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        if types:
            where.append("m.type IN (" + ",".join("?" * len(types)) + ")")
            args.extend(types)
        if node:
            where.append("m.node = ?")
            args.append(node)
        if job:
            where.append("m.job = ?")
            args.append(job)
        if since_ms is not None:
            where.append("m.ts >= ?")
            args.append(int(since_ms))
        if until_ms is not None:
            where.append("m.ts < ?")
            args.append(int(until_ms))
        return where, args

    def heads_page(self, *, before_ts: int | None = None, limit: int = 50) -> list[SignedTreeHead]:
        """Signed heads newest first, ``limit`` at most, older than ``before_ts`` when given (keyset)."""
        limit = max(1, min(int(limit), 1000))
        q = "SELECT size, root, ts, signature FROM heads"
        args: tuple[Any, ...] = ()
        if before_ts is not None:
            q, args = q + " WHERE ts < ?", (int(before_ts),)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY ts DESC, size DESC LIMIT ?", (*args, limit)).fetchall()
        return [SignedTreeHead(r[0], bytes(r[1]), r[2], bytes(r[3])) for r in rows]

    # -------------------------------------------------------------------- export

    def export(self, out: IO[str]) -> int:
        """Write the log as JSON lines: a header, then one canonical entry per line.

        The header is ``{"format", "public_key", "size", "heads", "cosignatures"}``
        (hex-encoded bytes). Entry lines are the stored bytes verbatim, so an
        auditor can rehash them. Returns the number of entries written.
        """
        header = {
            "format": EXPORT_FORMAT,
            "public_key": public_key_bytes(self.public_key).hex(),
            "size": self._size,
            "heads": [h.to_dict() for h in self.heads()],
            "cosignatures": [
                {"witness": c.witness, "head": c.sth.to_dict(), "signature": c.signature.hex()}
                for c in self.cosignatures()
            ],
        }
        out.write(json.dumps(header, sort_keys=True) + "\n")
        n = 0
        for _, blob in self.iter_entries():
            out.write(blob.decode("utf-8") + "\n")
            n += 1
        return n

    # -------------------------------------------------------------------- verify

    def verify_all(
        self,
        *,
        witness_keys: Mapping[str, Ed25519PublicKey] | None = None,
        known_heads: Sequence[SignedTreeHead] = (),
    ) -> VerifyReport:
        """Re-check everything from the raw database rows; never raises for tampering.

        Recomputes every leaf hash from the stored entry bytes (an edited or
        deleted row is named by index), re-parses every entry strictly, rebuilds
        the tree and compares every stored interior node, checks each stored
        head's signature and root (a head larger than the log = truncation),
        each cosignature (signature checked when ``witness_keys`` names the
        witness), each externally held head in ``known_heads`` (e.g. a witness's
        last head), and recomputes every points award.
        """
        t0 = time.perf_counter()
        with self._lock:
            blob_rows = self._db.execute("SELECT idx, data, leaf FROM entries ORDER BY idx")
            report = VerifyReport()
            leaves = bytearray()
            last_award = -1
            expect = 0
            for idx, data, stored_leaf in blob_rows:
                if idx != expect:
                    gap = list(range(expect, idx))
                    report.missing.extend(gap)
                    expect = idx
                data = bytes(data)
                h = merkle.leaf_hash(data)
                if h != bytes(stored_leaf):
                    report.edited.append(idx)
                try:
                    if parse_entry(data).type == "points_awarded":
                        last_award = idx
                except EntryError as exc:
                    report.problems.append(f"entry {idx}: not a valid entry ({exc})")
                leaves += h
                expect += 1
            # An index gap leaves a hole; verify what the remaining rows imply.
            report.size = expect
            _name_rows(report)
            levels = self._verify_tree(leaves, report)
            self._verify_heads(levels, report, known_heads)
            self._verify_cosignatures(levels, report, witness_keys or {})
        if last_award >= 0:
            pairs = [
                (i, e)
                for i, b in self.iter_entries(0, last_award + 1)
                if (e := parse_entry(b)).type in _POINTS_TYPES
            ]
            parsed = [e for _, e in pairs]
            award_problems = verify_awards(parsed, [i for i, _ in pairs])
            report.awards_checked = sum(e.type == "points_awarded" for e in parsed)
            report.problems.extend(f"points: {p}" for p in award_problems)
        report.seconds = time.perf_counter() - t0
        return report

    def _verify_tree(self, leaves: bytearray, report: VerifyReport) -> list[bytes]:
        """Recompute every perfect subtree level; compare with stored rows."""
        levels = [bytes(leaves)]
        cur = levels[0]
        level = 0
        while len(cur) >= 64:
            level += 1
            n = len(cur) // 64
            nxt = bytearray()
            for i in range(n):
                nxt += merkle.node_hash(cur[64 * i : 64 * i + 32], cur[64 * i + 32 : 64 * i + 64])
            cur = bytes(nxt)
            levels.append(cur)
            bad: list[int] = []
            count = 0
            for idx, h in self._db.execute("SELECT idx, hash FROM tree WHERE level=? ORDER BY idx", (level,)):
                count += 1
                if idx >= n or bytes(h) != cur[32 * idx : 32 * idx + 32]:
                    bad.append(idx)
            if bad or count != n:
                shown = ", ".join(str(i) for i in bad[:_MAX_LISTED])
                report.problems.append(
                    f"stored tree level {level}: {len(bad)} altered node(s)"
                    + (f" at index {shown}" if bad else "")
                    + (f"; {count} stored, {n} expected" if count != n else "")
                )
        extra = self._db.execute("SELECT COUNT(*) FROM tree WHERE level > ?", (level,)).fetchone()[0]
        if extra:
            report.problems.append(f"stored tree has {extra} node(s) above the top level {level}")
        return levels

    @staticmethod
    def _root_from_levels(levels: list[bytes], size: int) -> bytes:
        def sub(level: int, i: int) -> bytes:
            return levels[level][32 * i : 32 * i + 32]

        return merkle.range_hash(0, size, sub)

    def _verify_heads(
        self, levels: list[bytes], report: VerifyReport, known: Sequence[SignedTreeHead]
    ) -> None:
        n = report.size
        stored = self.heads()
        good_sizes: list[int] = []
        bad_sizes: list[int] = []
        prev_ts = -1
        for sth in [*stored, *known]:
            origin = "stored" if report.heads_checked < len(stored) else "known"
            report.heads_checked += 1
            label = f"{origin} head (size {sth.size}, timestamp {sth.timestamp})"
            try:
                sth.verify(self.public_key)
            except CryptoError:
                report.problems.append(f"{label}: signature does not verify")
                continue
            if origin == "stored":
                if sth.timestamp < prev_ts:
                    report.problems.append(f"{label}: timestamp earlier than the previous head")
                prev_ts = sth.timestamp
            if sth.size > n:
                report.problems.append(
                    f"{label}: log truncated — the head covers {sth.size} entries, the database holds {n}"
                )
                continue
            if self._root_from_levels(levels, sth.size) != sth.root:
                bad_sizes.append(sth.size)
                report.problems.append(f"{label}: root does not match the stored entries (history rewritten)")
            else:
                good_sizes.append(sth.size)
        if bad_sizes and not report.edited and not report.missing:
            lo = max([s for s in good_sizes if s < min(bad_sizes)], default=0)
            report.problems.append(
                f"entries were rewritten together with their hashes: the change lies in entries "
                f"{lo}..{min(bad_sizes) - 1}"
            )

    def _verify_cosignatures(
        self, levels: list[bytes], report: VerifyReport, keys: Mapping[str, Ed25519PublicKey]
    ) -> None:
        for c in self.cosignatures():
            report.cosignatures_checked += 1
            label = f"cosignature by {c.witness} of head {c.sth.size}"
            try:
                c.sth.verify(self.public_key)
            except CryptoError:
                report.problems.append(f"{label}: the head's log signature does not verify")
                continue
            key = keys.get(c.witness)
            if key is not None:
                try:
                    key.verify(c.signature, cosignature_message(c.sth))
                except InvalidSignature:
                    report.problems.append(f"{label}: witness signature does not verify")
            if c.sth.size <= report.size and self._root_from_levels(levels, c.sth.size) != c.sth.root:
                report.problems.append(f"{label}: witnessed root differs from the stored entries")


def entry_meta(e: Entry) -> tuple[str, str | None, str | None, int]:
    """``(type, department, job, ts)`` of an entry, as :meth:`TransparencyLog.query` filters them."""
    f = e.fields
    node = f.get("node") if isinstance(f.get("node"), str) else None
    if e.type == "cosignature":
        node = f["witness"]
    elif e.type == "model_contribution":
        node = e.signer or str(f["validation"]).partition("/")[0] or None
    job = f.get("job") if isinstance(f.get("job"), str) else None
    return e.type, node, job, e.ts


def _name_rows(report: VerifyReport) -> None:
    for idx in report.edited[:_MAX_LISTED]:
        report.problems.append(f"entry {idx}: stored bytes do not match its leaf hash (row edited)")
    if len(report.edited) > _MAX_LISTED:
        report.problems.append(f"... and {len(report.edited) - _MAX_LISTED} more edited entries")
    for idx in report.missing[:_MAX_LISTED]:
        report.problems.append(f"entry {idx}: missing (row deleted)")
    if len(report.missing) > _MAX_LISTED:
        report.problems.append(f"... and {len(report.missing) - _MAX_LISTED} more missing entries")


# ------------------------------------------------------------------ offline check


@dataclass
class ExportedLog:
    """A log read back from :meth:`TransparencyLog.export`."""

    public_key: Ed25519PublicKey
    heads: list[SignedTreeHead]
    cosignatures: list[tuple[str, SignedTreeHead, bytes]]
    blobs: list[bytes]

    def entries(self) -> list[Entry]:
        """Every entry parsed strictly."""
        return [parse_entry(b) for b in self.blobs]


def load_export(source: IO[str] | Path) -> ExportedLog:
    """Read an export file; :class:`ConfigError` naming the line on a malformed one."""
    fh = open(source, encoding="utf-8") if isinstance(source, Path) else source  # noqa: SIM115
    try:
        first = fh.readline()
        try:
            header = json.loads(first)
            if header.get("format") != EXPORT_FORMAT:
                raise ValueError(f"format is {header.get('format')!r}, expected {EXPORT_FORMAT!r}")
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(header["public_key"]))
            heads = [SignedTreeHead.from_dict(h) for h in header["heads"]]
            cos = [
                (c["witness"], SignedTreeHead.from_dict(c["head"]), bytes.fromhex(c["signature"]))
                for c in header["cosignatures"]
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"line 1: malformed export header: {exc}", where="ledger export") from None
        blobs = [line.rstrip("\n").encode("utf-8") for line in fh if line.strip()]
    finally:
        if isinstance(source, Path):
            fh.close()
    return ExportedLog(key, heads, cos, blobs)


def verify_export(log: ExportedLog, *, trusted_key: Ed25519PublicKey | None = None) -> list[str]:
    """Offline audit of an export: every head's signature and root, and every points award.

    ``trusted_key`` (the log key the auditor obtained out of band) must equal
    the export's key when given. Returns problem lines (empty: verified).
    """
    problems: list[str] = []
    if trusted_key is not None and public_key_bytes(trusted_key) != public_key_bytes(log.public_key):
        return ["export is signed by a different log key than the trusted one"]
    tree = merkle.MerkleTree()
    parsed: list[Entry] = []
    for i, blob in enumerate(log.blobs):
        try:
            parsed.append(parse_entry(blob))
        except EntryError as exc:
            problems.append(f"entry {i}: {exc}")
        tree.append(blob)
    for sth in log.heads:
        try:
            sth.verify(log.public_key)
        except CryptoError:
            problems.append(f"head of size {sth.size}: signature does not verify")
            continue
        if sth.size > tree.size:
            problems.append(f"head of size {sth.size}: export truncated to {tree.size} entries")
        elif tree.root(sth.size) != sth.root:
            problems.append(f"head of size {sth.size}: root does not match the exported entries")
    problems.extend(f"points: {p}" for p in verify_awards(parsed))
    return problems
