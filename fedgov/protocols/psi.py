"""ECDH private set intersection on Curve25519 (transport-free).

Protocol and leakage: ``docs/protocols/psi.md``. In short, with a guest
(label holder, the hub) and one or more hosts (providers)::

    guest  -> host   A  = sort{ a*H(x) }            32 B each, one per distinct guest ID
    host   -> guest  AB = [ b*v for v in A ][:16]   16 B each, same order (alignment mode)
                                                    or permuted by a host-only key (cardinality)
    host   -> guest  B  = sort{ b*H(y) }            32 B each, one per distinct host ID
    guest            BA = [ a*w for w in B ][:16]   compares AB with BA
    guest  -> host   result: positions in B of the global intersection, in the
                     canonical order (only to hosts the manifest names)

Every step is a method that consumes and produces ``bytes`` chunks
(concatenated fixed-width values), so a transport can stream them through a
relay that moves opaque byte messages. The party objects hold the per-job
secret scalar; it never appears in any message.

Guarantees
----------
* IDs are normalised (:func:`normalize_ids`) and de-duplicated before
  hashing; the intersection is a set intersection of normalised IDs.
* Output order is canonical and reproducible: the intersection sorted by
  ``SHA-256(order-tag(job) || id)``, which every party that learns the
  intersection can recompute (hosts do, and reject a guest that deviates).
  It reveals nothing about any party's row order.
* ``rows`` are indices into the party's *original* input sequence (the first
  row of each ID when it occurs more than once).
* Equality is tested on 16-byte truncations of the double-masked values; a
  false match among n*m pairs has probability <= n*m / 2^128 (2^-88 for
  10^6 x 10^6).
* Sizes leave the guest only through :func:`release_sizes`: nothing by
  default (:data:`DEFAULT_SIZE_RELEASE`), else rounded to a multiple of at
  least :data:`MIN_ROUNDING` and suppressed below a minimum, or exact where
  every owner's policy says so.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import struct
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedgov import idcard
from fedgov.errors import CryptoError, FedgovError, JobFailed, SchemaMismatch
from fedgov.protocols import _psi_worker as _w

__all__ = [
    "CHUNK_ELEMS",
    "MATCH_WIDTH",
    "POINT_WIDTH",
    "Mode",
    "PsiGuest",
    "PsiHost",
    "PsiResult",
    "normalize_ids",
    "release_sizes",
    "run_local",
]

Mode = Literal["align", "cardinality"]

#: Bytes per single-masked value on the wire (an X25519 u-coordinate).
POINT_WIDTH = _w.POINT
#: Bytes per double-masked value on the wire (truncated; see module docstring).
MATCH_WIDTH = 16
#: Default number of elements per streamed chunk (2 MiB of points).
CHUNK_ELEMS = 65536

#: What leaves the guest of intersection sizes when nobody says otherwise.
DEFAULT_SIZE_RELEASE = "none"
#: Coarsest-allowed floor: "rounded" never rounds to less than this.
MIN_ROUNDING = 1
SIZE_LEVELS = ("none", "rounded", "exact")

_VERSION = 1
_RESULT_MAGIC = b"FPSR"
_MODE_CODE = {"align": 0, "cardinality": 1}
_HEADER = struct.Struct("<4sBBQ")  # magic, version, mode, size


# --------------------------------------------------------------------------
# normalisation and tags


def normalize_ids(values: Iterable[object], *, where: str = "psi input") -> list[str]:
    """Normalise IDs so the same person matches across departments.

    Each value is converted with ``str`` (ints allowed), surrounding whitespace
    is stripped, and an 18-character resident ID (17 ASCII digits + check
    character) gets an upper-case ``X``. Other IDs are kept as they are
    (case-sensitive). Nothing is validated beyond that.

    Raises :class:`SchemaMismatch` naming the first bad data row (1-based,
    header not counted, as in :mod:`fedgov.datasources`) when a
    value is ``None``, NaN, or empty after stripping.
    """
    out: list[str] = []
    append = out.append
    for row, v in enumerate(values, start=1):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise SchemaMismatch(f"row {row}: missing ID (None/NaN)", where=where)
        s = (v if isinstance(v, str) else str(v)).strip()
        if not s:
            raise SchemaMismatch(f"row {row}: empty ID", where=where)
        if len(s) == 18 and s[17] == "x" and s[:17].isascii() and s[:17].isdigit():
            s = idcard.normalize(s)
        append(s)
    return out


def _tag(job_id: str, label: bytes) -> bytes:
    if not job_id:
        raise FedgovError("job_id must be non-empty (it is the PSI domain tag)", where="psi")
    return hashlib.sha256(b"fedgov/psi/v1/" + label + b"\x00" + job_id.encode("utf-8")).digest()


def _order_keys(order_tag: bytes, ids: Sequence[str]) -> list[bytes]:
    return [hashlib.sha256(order_tag + s.encode("utf-8")).digest() for s in ids]


def _check_width(buf: bytes, width: int, what: str) -> None:
    if len(buf) % width:
        raise CryptoError(
            f"{what}: {len(buf)} bytes is not a multiple of the {width}-byte value width",
            where="psi",
        )


def _split(buf: bytes, width: int, parts: int, max_elems: int) -> list[bytes]:
    n = len(buf) // width
    if n == 0:
        return [b""]
    per = min(max_elems, max(1, -(-n // parts)))
    return [buf[i * width : (i + per) * width] for i in range(0, n, per)]


# --------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class PsiResult:
    """What one party learns from a PSI job.

    ``size`` is the global intersection size (guest + every host). In
    alignment mode ``ids`` (normalised) and ``rows`` (int64 indices into the
    party's original input) list that intersection in the canonical order;
    in cardinality mode both are ``None``. ``pairwise_sizes`` is filled for
    the guest only (host name -> |guest ∩ host|).
    """

    role: Literal["guest", "host"]
    mode: Mode
    size: int
    ids: list[str] | None
    rows: np.ndarray | None
    n_rows: int
    n_distinct: int
    pairwise_sizes: dict[str, int] = field(default_factory=dict)


def release_sizes(
    size: int,
    pairwise: Mapping[str, int],
    *,
    level: str = DEFAULT_SIZE_RELEASE,
    rounding: int = 10,
    minimum: int = 11,
) -> dict[str, object]:
    """What of the guest's sizes may go to the requester.

    ``level``: ``"none"`` -> ``{}`` (nothing); ``"rounded"`` -> each size
    rounded to the nearest multiple of ``rounding`` (>= :data:`MIN_ROUNDING`),
    ``None`` (suppressed) when the true size is below ``minimum``;
    ``"exact"`` -> the sizes. Keys: ``intersection_size``, ``pairwise_sizes``.
    Leaks: exactly the returned values. Rounded sizes of repeated jobs over
    changing data still reveal a change that crosses a rounding boundary;
    owners who care keep ``"none"``.
    """
    if level not in SIZE_LEVELS:
        raise FedgovError(f"unknown size release {level!r} (allowed: {', '.join(SIZE_LEVELS)})", where="psi")
    if level == "none":
        return {}
    if level == "exact":
        return {"intersection_size": int(size), "pairwise_sizes": {h: int(v) for h, v in pairwise.items()}}
    if rounding < MIN_ROUNDING or minimum < 1:
        raise FedgovError("size rounding and minimum must be >= 1", where="psi")

    def one(v: int) -> int | None:
        return None if v < minimum else int(rounding * round(v / rounding))

    return {"intersection_size": one(size), "pairwise_sizes": {h: one(v) for h, v in pairwise.items()},
            "rounded_to": rounding, "suppressed_below": minimum}


# --------------------------------------------------------------------------
# shared machinery


class _Party:
    """Per-job state shared by guest and host: scalar, IDs, worker pool."""

    role: Literal["guest", "host"]

    def __init__(
        self,
        job_id: str,
        ids: Iterable[object],
        *,
        mode: Mode = "align",
        workers: int | None = None,
        chunk_elems: int = CHUNK_ELEMS,
        key: bytes | None = None,
        hash_tag: bytes | None = None,
    ) -> None:
        """``key``/``hash_tag``: a given scalar and domain tag instead of a fresh
        per-job scalar and the job's tag (standing alignment reuses them)."""
        if mode not in _MODE_CODE:
            raise FedgovError(f"unknown PSI mode {mode!r}", where="psi")
        self.job_id = job_id
        self.mode: Mode = mode
        self._prefix = hash_tag if hash_tag is not None else _tag(job_id, b"hash-to-u")
        self._order_tag = _tag(job_id, b"order")
        self._key = X25519PrivateKey.from_private_bytes(key) if key is not None else X25519PrivateKey.generate()
        self._workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        self._chunk = max(1, chunk_elems)
        self._pool: ProcessPoolExecutor | None = None

        norm = normalize_ids(ids, where=f"psi input ({self.role})")
        first: dict[str, int] = {}
        for row, s in enumerate(norm):
            first.setdefault(s, row)
        self.n_rows = len(norm)
        self._ids: list[str] = list(first)  # distinct, first-occurrence order
        self._first_row = np.fromiter(first.values(), dtype=np.int64, count=len(first))
        del norm, first
        self._perm: np.ndarray | None = None  # sent position -> distinct index
        self._sorted_masked: bytes | None = None

    @property
    def n_distinct(self) -> int:
        """Number of distinct normalised IDs (= number of values this party sends)."""
        return len(self._ids)

    # -- pool -------------------------------------------------------------
    def _executor(self) -> ProcessPoolExecutor | None:
        if self._workers <= 1:
            return None
        if self._pool is None:
            ctx = multiprocessing.get_context("forkserver")
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=ctx,
                initializer=_w.init,
                initargs=(self._key.private_bytes_raw(), self._prefix),
            )
        return self._pool

    def close(self) -> None:
        """Stop the worker processes. The party stays usable (in-process, slower)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._workers = 1

    def __enter__(self) -> _Party:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pipelined(
        self,
        chunks: Iterable[bytes],
        split: Callable[[bytes], list[object]],
        local: Callable[[object], bytes],
        remote: Callable[[object], bytes],
    ) -> Iterator[bytes]:
        """Apply ``local``/``remote`` to the pieces of each chunk; yield one
        output per input chunk, in order, with a bounded number in flight."""
        pool = self._executor()
        if pool is None:
            for c in chunks:
                yield b"".join(local(p) for p in split(c))
            return
        pending: deque[list[Future[bytes]]] = deque()
        inflight = 0
        limit = 2 * self._workers
        for c in chunks:
            futs = [pool.submit(remote, p) for p in split(c)]
            pending.append(futs)
            inflight += len(futs)
            while inflight > limit and len(pending) > 1:
                done = pending.popleft()
                inflight -= len(done)
                yield b"".join(f.result() for f in done)
        while pending:
            yield b"".join(f.result() for f in pending.popleft())

    def _remask(self, chunks: Iterable[bytes], width: int, what: str) -> Iterator[bytes]:
        def split(c: bytes) -> list[object]:
            _check_width(c, POINT_WIDTH, what)
            return [(p, width) for p in _split(c, POINT_WIDTH, self._workers, self._chunk)]

        key = self._key

        def local(a: object) -> bytes:
            buf, w = a  # type: ignore[misc]
            return _w.remask(key, buf, w)

        return self._pipelined(chunks, split, local, _w.pool_remask)  # type: ignore[arg-type]

    # -- step 1: own masked set --------------------------------------------
    def _mask_own(self) -> bytes:
        """``k·H(id)`` for the distinct IDs, in first-occurrence order (32 bytes each)."""
        ids = self._ids
        n = len(ids)
        per = min(self._chunk, max(1, -(-n // self._workers))) if n else 1
        pieces = [ids[i : i + per] for i in range(0, n, per)]
        key, prefix = self._key, self._prefix
        return b"".join(
            self._pipelined(
                pieces,  # type: ignore[arg-type]
                lambda piece: [piece],
                lambda piece: _w.mask_ids(key, prefix, piece),  # type: ignore[arg-type]
                _w.pool_mask_ids,  # type: ignore[arg-type]
            )
        )

    def _compute_masked(self) -> None:
        arr = np.frombuffer(self._mask_own(), dtype=f"S{POINT_WIDTH}")
        self._perm = np.argsort(arr, kind="stable")
        self._sorted_masked = arr[self._perm].tobytes()

    def masked_set(self) -> Iterator[bytes]:
        """Chunks of ``sort{ k*H(id) }`` over this party's distinct IDs.

        32 bytes per value, at most ``chunk_elems`` values per chunk, always at
        least one chunk (``b""`` for an empty set). Sorting by value makes the
        order independent of the row order. Reveals to the receiver: the number
        of distinct IDs, and per value whether H(id) fell on the curve or its
        twist (see the doc page). Computed once; later calls replay it.
        """
        if self._sorted_masked is None:
            self._compute_masked()
        buf = self._sorted_masked
        assert buf is not None
        step = self._chunk * POINT_WIDTH
        if not buf:
            yield b""
            return
        for i in range(0, len(buf), step):
            yield buf[i : i + step]


# --------------------------------------------------------------------------
# host (provider)


class PsiHost(_Party):
    """A provider: answers the guest and (if named) learns the aligned result.

    ``shuffle_key`` (cardinality mode only, 32 bytes) must be shared by all
    hosts of a multi-host cardinality job and unknown to the guest; it fixes
    the secret permutation applied to the replies. With one host it may be
    left out (a fresh random key is used).
    """

    role = "host"

    def __init__(
        self,
        job_id: str,
        ids: Iterable[object],
        *,
        mode: Mode = "align",
        workers: int | None = None,
        chunk_elems: int = CHUNK_ELEMS,
        shuffle_key: bytes | None = None,
    ) -> None:
        super().__init__(job_id, ids, mode=mode, workers=workers, chunk_elems=chunk_elems)
        if shuffle_key is not None and len(shuffle_key) != 32:
            raise FedgovError("shuffle_key must be 32 bytes", where="psi")
        self._shuffle_key = shuffle_key or os.urandom(32)
        self._replied = 0

    def remask(self, guest_chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Reply to the guest's masked set: ``(b * v)[:16]`` for each value ``v``.

        Alignment mode: one output chunk per input chunk, order preserved (the
        guest maps them back to its rows). Cardinality mode: all replies are
        buffered and emitted, in chunks, under a secret permutation keyed by
        ``shuffle_key`` so the guest cannot link a reply to its own ID.
        Reveals nothing to the guest beyond ``b*a*H(x)`` values.
        """
        it = self._remask(guest_chunks, MATCH_WIDTH, "guest masked set")
        if self.mode == "align":
            for out in it:
                self._replied += len(out) // MATCH_WIDTH
                yield out
            return
        blob = b"".join(it)
        arr = np.frombuffer(blob, dtype=f"S{MATCH_WIDTH}")
        self._replied = len(arr)
        perm = _keyed_permutation(self._shuffle_key, len(arr))
        out = arr[perm].tobytes()
        step = self._chunk * MATCH_WIDTH
        yield out[:step]
        for i in range(step, len(out), step):
            yield out[i : i + step]

    def finish(self, result_msg: bytes | None) -> PsiResult | None:
        """Decode the guest's result message (``None`` if this host is not a
        receiver; returns ``None`` then).

        Checks that positions are in range, distinct, and listed in the
        canonical order; raises :class:`CryptoError` otherwise.
        """
        if result_msg is None:
            return None
        if len(result_msg) < _HEADER.size:
            raise CryptoError("PSI result message is truncated", where="psi")
        magic, ver, mode, size = _HEADER.unpack_from(result_msg)
        if magic != _RESULT_MAGIC or ver != _VERSION:
            raise CryptoError("not a PSI v1 result message", where="psi")
        if mode != _MODE_CODE[self.mode]:
            raise CryptoError("PSI result mode differs from this job's mode", where="psi")
        if self.mode == "cardinality":
            if len(result_msg) != _HEADER.size:
                raise CryptoError("cardinality result carries extra bytes", where="psi")
            return PsiResult("host", self.mode, size, None, None, self.n_rows, self.n_distinct)
        body = result_msg[_HEADER.size :]
        if len(body) != 4 * size:
            raise CryptoError(f"result lists {len(body) // 4} positions, header says {size}", where="psi")
        pos = np.frombuffer(body, dtype="<u4").astype(np.int64)
        if size and (pos.max() >= self.n_distinct or len(np.unique(pos)) != size):
            raise CryptoError("result positions out of range or repeated", where="psi")
        assert self._perm is not None or size == 0
        idx = self._perm[pos] if size else np.zeros(0, dtype=np.int64)  # type: ignore[index]
        ids = [self._ids[i] for i in idx]
        keys = _order_keys(self._order_tag, ids)
        if any(keys[i] > keys[i + 1] for i in range(len(keys) - 1)):
            raise CryptoError("guest's alignment is not in the job's canonical order", where="psi")
        return PsiResult("host", self.mode, size, ids, self._first_row[idx], self.n_rows, self.n_distinct)


def _keyed_permutation(key: bytes, n: int) -> np.ndarray:
    """A permutation of ``range(n)`` determined by ``key`` and unpredictable
    without it: argsort of a ChaCha20 keystream read as uint64 values."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    enc = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()
    stream = np.frombuffer(enc.update(b"\x00" * (8 * n)), dtype="<u8")
    return np.argsort(stream, kind="stable")


# --------------------------------------------------------------------------
# guest (label holder, hub)


class PsiGuest(_Party):
    """The label holder: aligns with every host and computes the result.

    The guest always learns the pairwise intersections with each host (in
    alignment mode: which of its rows; in cardinality mode: only sizes).
    """

    role = "guest"

    def __init__(
        self,
        job_id: str,
        ids: Iterable[object],
        hosts: Sequence[str],
        *,
        mode: Mode = "align",
        workers: int | None = None,
        chunk_elems: int = CHUNK_ELEMS,
    ) -> None:
        super().__init__(job_id, ids, mode=mode, workers=workers, chunk_elems=chunk_elems)
        if not hosts or len(set(hosts)) != len(hosts):
            raise FedgovError("PSI needs at least one host and distinct host names", where="psi")
        self.hosts = list(hosts)
        self._replies: dict[str, list[bytes]] = {h: [] for h in hosts}
        self._host_sets: dict[str, list[bytes]] = {h: [] for h in hosts}

    def _host(self, host: str) -> None:
        if host not in self._replies:
            raise FedgovError(f"unknown host {host!r} (expected one of {self.hosts})", where="psi")

    def absorb_reply(self, host: str, chunks: Iterable[bytes]) -> None:
        """Store ``host``'s double-masked reply to our masked set (16 B values)."""
        self._host(host)
        for c in chunks:
            _check_width(c, MATCH_WIDTH, f"reply from {host}")
            self._replies[host].append(c)

    def absorb_host_set(self, host: str, chunks: Iterable[bytes]) -> None:
        """Double-mask ``host``'s masked set with our scalar (``(a*w)[:16]``) and
        store it; streams through the worker pool."""
        self._host(host)
        self._host_sets[host].extend(self._remask(chunks, MATCH_WIDTH, f"set from {host}"))

    def finish(self, deliver_to: Collection[str] = ()) -> tuple[PsiResult, dict[str, bytes]]:
        """Compute the result; return it and the result message for each host
        in ``deliver_to`` (hosts not listed get nothing and learn nothing).

        Alignment mode: the global intersection (guest ∩ every host) in the
        canonical order; each delivered host's message lists the positions of
        those IDs in *its own* masked set (4 bytes each). Cardinality mode:
        global size (meaningful across several hosts only if they share one
        ``shuffle_key``) and pairwise sizes; messages carry only the size.
        Raises :class:`JobFailed` if a host's reply count is wrong.
        """
        for h in deliver_to:
            self._host(h)
        pairwise, hit, matched_all = self._matches()
        size = int(matched_all.sum())
        code = _MODE_CODE[self.mode]
        header = _HEADER.pack(_RESULT_MAGIC, _VERSION, code, size)
        if self.mode == "cardinality":
            res = PsiResult("guest", self.mode, size, None, None, self.n_rows, self.n_distinct, pairwise)
            return res, {h: header for h in deliver_to}
        idx = np.flatnonzero(matched_all)
        keys = _order_keys(self._order_tag, [self._ids[i] for i in idx])
        idx = idx[np.argsort(np.array(keys, dtype="S32"), kind="stable")] if size else idx
        ids = [self._ids[i] for i in idx]
        msgs = {h: header + hit[h][idx].astype("<u4").tobytes() for h in deliver_to}
        res = PsiResult(
            "guest", self.mode, size, ids, self._first_row[idx], self.n_rows, self.n_distinct, pairwise
        )
        return res, msgs

    def finish_pairwise(
        self, deliver_to: Collection[str] = ()
    ) -> tuple[dict[str, PsiResult], dict[str, bytes]]:
        """Alignment mode, per host: the pairwise intersection guest ∩ host.

        For vertical learning with a left join, where a person missing at one
        department is still a training row. Returns, per host, the guest's
        view (IDs and guest rows in the canonical order) and, for hosts in
        ``deliver_to``, the result message :meth:`PsiHost.finish` decodes into
        that host's rows in the same order. Each host learns only its own
        pairwise intersection; the guest learns every pairwise intersection
        (as it does in :meth:`finish`). One masking of the guest's set serves
        every host.
        """
        if self.mode != "align":
            raise FedgovError("pairwise results exist only in alignment mode", where="psi")
        for h in deliver_to:
            self._host(h)
        pairwise, hit, _ = self._matches()
        results: dict[str, PsiResult] = {}
        msgs: dict[str, bytes] = {}
        for h in self.hosts:
            idx = np.flatnonzero(hit[h] >= 0)
            keys = _order_keys(self._order_tag, [self._ids[i] for i in idx])
            idx = idx[np.argsort(np.array(keys, dtype="S32"), kind="stable")] if len(idx) else idx
            results[h] = PsiResult(
                "guest",
                self.mode,
                len(idx),
                [self._ids[i] for i in idx],
                self._first_row[idx],
                self.n_rows,
                self.n_distinct,
                {h: pairwise[h]},
            )
            if h in deliver_to:
                header = _HEADER.pack(_RESULT_MAGIC, _VERSION, _MODE_CODE[self.mode], len(idx))
                msgs[h] = header + hit[h][idx].astype("<u4").tobytes()
        return results, msgs

    def _matches(self) -> tuple[dict[str, int], dict[str, np.ndarray], np.ndarray]:
        """Pairwise sizes, per-host match positions (align) and the all-hosts match mask."""
        if self._perm is None:
            self._compute_masked()
        n = self.n_distinct
        pairwise: dict[str, int] = {}
        hit: dict[str, np.ndarray] = {}  # align: distinct idx -> host pos (-1 none)
        matched_all: np.ndarray = np.ones(n, dtype=bool)
        for h in self.hosts:
            reply = np.frombuffer(b"".join(self._replies[h]), dtype=f"S{MATCH_WIDTH}")
            theirs = np.frombuffer(b"".join(self._host_sets[h]), dtype=f"S{MATCH_WIDTH}")
            if len(reply) != n:
                raise JobFailed(f"host {h} replied with {len(reply)} values for {n} sent", where="psi")
            if self.mode == "align":
                _, gi, hi = np.intersect1d(reply, theirs, return_indices=True)
                pos = np.full(n, -1, dtype=np.int64)
                pos[self._perm[gi]] = hi  # type: ignore[index]
                hit[h] = pos
                pairwise[h] = len(gi)
                matched_all &= pos >= 0
            else:
                m = np.isin(reply, theirs)  # over the hosts' secret permutation
                pairwise[h] = int(m.sum())
                matched_all &= m
        return pairwise, hit, matched_all


# --------------------------------------------------------------------------
# in-process driver (tests, benchmarks, single-machine runs)


def run_local(
    job_id: str,
    guest_ids: Iterable[object],
    hosts: Mapping[str, Iterable[object]],
    *,
    mode: Mode = "align",
    deliver_to: Collection[str] | None = None,
    workers: int | None = None,
    chunk_elems: int = CHUNK_ELEMS,
    transcript: list[tuple[str, str, str, bytes]] | None = None,
) -> dict[str, PsiResult | None]:
    """Run the whole protocol in this process and return each party's result
    (keyed ``"guest"`` and host names; ``None`` for undelivered hosts).

    ``deliver_to`` defaults to every host. If ``transcript`` is given, every
    message is appended as ``(sender, recipient, step, payload)`` — exactly
    the bytes a relay would carry.
    """
    names = list(hosts)
    deliver = names if deliver_to is None else list(deliver_to)
    shuffle_key = os.urandom(32)  # hosts' shared secret (cardinality mode)

    def log(src: str, dst: str, step: str, it: Iterable[bytes]) -> Iterator[bytes]:
        for c in it:
            if transcript is not None:
                transcript.append((src, dst, step, c))
            yield c

    guest = PsiGuest(job_id, guest_ids, names, mode=mode, workers=workers, chunk_elems=chunk_elems)
    parties: dict[str, PsiHost] = {}
    try:
        for name, ids in hosts.items():
            parties[name] = PsiHost(
                job_id, ids, mode=mode, workers=workers, chunk_elems=chunk_elems, shuffle_key=shuffle_key
            )
        for name, host in parties.items():
            sent = log("guest", name, "guest_masked", guest.masked_set())
            guest.absorb_reply(name, log(name, "guest", "host_reply", host.remask(sent)))
            guest.absorb_host_set(name, log(name, "guest", "host_masked", host.masked_set()))
            host.close()
        res, msgs = guest.finish(deliver)
        out: dict[str, PsiResult | None] = {"guest": res}
        for name, host in parties.items():
            msg = msgs.get(name)
            if transcript is not None and msg is not None:
                transcript.append(("guest", name, "result", msg))
            out[name] = host.finish(msg)
        return out
    finally:
        guest.close()
        for host in parties.values():
            host.close()
