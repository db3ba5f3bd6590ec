"""Standing alignment: ECDH-PSI whose register side is reused across jobs.

The unbalanced case of the social-assistance checks: civil affairs (the
*guest*) aligns a batch ``X`` of applicants (thousands) with each
department's register ``Y`` (tens of thousands to millions) again and again.
Fresh ECDH-PSI (:mod:`fedgov.protocols.psi`) costs ``2(|X| + |Y|)`` X25519
scalar multiplications per job. Here the register's work is done once per
*epoch*, in the spirit of FATE's intersection cache:

* the guest holds a long-term scalar ``a`` and hash tag ``t`` per epoch
  (:class:`GuestEpoch`);
* each host holds, per guest epoch, a long-term scalar ``k`` and a *handle
  table*: its distinct register IDs in a random order, append-only, with
  removed IDs marked as tombstones (:class:`HostCache`);
* the guest keeps, per host, ``D[j] = a·k·H_t(y_j)`` for every handle ``j``
  it has been sent (:class:`GuestCache`).

Messages per job and host (all values 32-byte X25519 u-coordinates)::

    G -> H  hello   epoch id, the host table id and handle count the guest holds
    H -> G  delta   k·H_t(y) for the handles the guest lacks (new register rows),
                    the tombstoned handles, the handle count, the table id
                    (a renewed or restored host table has a new id: full resend)
    G -> H  batch   a·H_t(x) for the distinct batch IDs (one blob for all hosts)
    H -> G  reply   k·(a·H_t(x)), same order

The guest matches ``reply`` against ``D``; the glue (``fedgov.node.standing``)
then tells each host the matched handles and their batch positions, as fresh
alignment does. Cost per job: ``|X|`` (guest) + ``|X|`` per host + twice the
number of *new* register entries. The first job of an epoch costs as much as
fresh PSI.

What each party learns, beyond fresh pairwise PSI (``docs/protocols/psi.md``):

* **Host**: the batch size (as before) and *linkability inside the epoch*:
  ``a·H_t(x)`` is the same for the same person in every job of the epoch, so
  the host sees how many (unidentified) applicants recur between jobs.
* **Guest**: each register's size and churn (added / removed entries per
  job), and for matched applicants a random handle (no register order).
* Neither side can test an ID without the other: the guest's ``D`` needs
  ``k`` to be extended, the host's view needs ``a`` to be opened. A leak of
  ``D`` plus ``a`` alone allows no offline dictionary attack; a leak of both
  parties' scalars does (as for any DH-PSI).

Epochs end when the guest starts a new one (:data:`EPOCH_MAX_AGE_MS`) or a
host renews its own key at the same age; then the next job is a full run.
Pure: state objects serialise to bytes; the node persists them.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedgov.errors import CryptoError, FedgovError
from fedgov.protocols.psi import POINT_WIDTH, _keyed_permutation, _Party

__all__ = [
    "EPOCH_MAX_AGE_MS",
    "GuestCache",
    "GuestEpoch",
    "HostCache",
    "apply_delta",
    "host_delta",
    "mask_batch",
    "match",
    "reply_batch",
]

#: An epoch (guest key) and a host's key are renewed after this age (30 days).
EPOCH_MAX_AGE_MS = 30 * 86_400_000
_W = "psi standing"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _tag(epoch: str) -> bytes:
    return hashlib.sha256(b"fedgov/psi-standing/v1/hash-to-u\x00" + epoch.encode()).digest()


class _Keyed(_Party):
    """A :class:`~fedgov.protocols.psi._Party` whose scalar and tag are given (not per job)."""

    role = "guest"

    def __init__(self, key: bytes, tag: bytes, ids: Sequence[str], workers: int | None) -> None:
        super().__init__("standing", ids, workers=workers, key=key, hash_tag=tag)

    def masked_in_order(self) -> bytes:
        """``k·H_t(id)`` for the distinct IDs, in first-occurrence order (32 bytes each)."""
        return self._mask_own()

    def remask_in_order(self, buf: bytes) -> bytes:
        """``k·u`` for each 32-byte ``u`` of ``buf``, order kept."""
        if len(buf) % POINT_WIDTH:
            raise CryptoError(f"{len(buf)} bytes is not a whole number of points", where=_W)
        step = self._chunk * POINT_WIDTH
        chunks = [buf[i : i + step] for i in range(0, len(buf), step)] or [b""]
        return b"".join(self._remask(chunks, POINT_WIDTH, "standing values"))


# ------------------------------------------------------------------------- state


@dataclass
class GuestEpoch:
    """The guest's long-term scalar and tag for one epoch. ``key`` is secret."""

    epoch: str
    created_ms: int
    key: bytes

    @classmethod
    def new(cls) -> GuestEpoch:
        return cls(secrets.token_hex(16), _now_ms(), X25519PrivateKey.generate().private_bytes_raw())

    def expired(self, now_ms: int | None = None) -> bool:
        return (now_ms or _now_ms()) - self.created_ms > EPOCH_MAX_AGE_MS

    @property
    def tag(self) -> bytes:
        return _tag(self.epoch)

    def to_bytes(self) -> bytes:
        return json.dumps({"epoch": self.epoch, "created_ms": self.created_ms, "key": self.key.hex()}).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> GuestEpoch:
        d = json.loads(blob)
        return cls(str(d["epoch"]), int(d["created_ms"]), bytes.fromhex(d["key"]))


@dataclass
class GuestCache:
    """Per host: ``D[j] = a·k·H_t(y_j)`` for handles ``0..len-1``, and the tombstones."""

    epoch: str
    table: str = ""
    values: bytearray = field(default_factory=bytearray)
    tombstones: set[int] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.values) // POINT_WIDTH

    def to_bytes(self) -> bytes:
        head = json.dumps({"epoch": self.epoch, "table": self.table, "tombstones": sorted(self.tombstones)}).encode()
        return len(head).to_bytes(4, "big") + head + bytes(self.values)

    @classmethod
    def from_bytes(cls, blob: bytes) -> GuestCache:
        n = int.from_bytes(blob[:4], "big")
        head = json.loads(blob[4 : 4 + n])
        values = bytearray(blob[4 + n :])
        if len(values) % POINT_WIDTH:
            raise FedgovError("standing-alignment cache is damaged (partial value)", where=_W)
        return cls(str(head["epoch"]), str(head["table"]), values, {int(t) for t in head["tombstones"]})


@dataclass
class HostCache:
    """Per guest epoch: this host's scalar ``k`` (secret) and its handle table."""

    epoch: str
    created_ms: int
    key: bytes
    ids: list[str | None]  # handle -> ID (None: removed from the register)
    table: str = ""  # random id of this table instance (new key, new handles)

    @classmethod
    def new(cls, epoch: str) -> HostCache:
        return cls(epoch, _now_ms(), X25519PrivateKey.generate().private_bytes_raw(), [], secrets.token_hex(16))

    def to_bytes(self) -> bytes:
        return json.dumps(
            {"epoch": self.epoch, "created_ms": self.created_ms, "key": self.key.hex(), "ids": self.ids,
             "table": self.table}
        ).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> HostCache:
        d = json.loads(blob)
        return cls(str(d["epoch"]), int(d["created_ms"]), bytes.fromhex(d["key"]), list(d["ids"]), str(d["table"]))


# ---------------------------------------------------------------------- protocol


def host_delta(
    cache: HostCache | None,
    epoch: str,
    guest_table: str,
    guest_has: int,
    register_ids: Iterable[str],
    *,
    workers: int | None = None,
) -> tuple[HostCache, bytes, dict[str, object]]:
    """Host: bring the handle table up to date with the register; the delta for the guest.

    Starts a fresh table (new ``k``) when the guest's epoch differs from the
    cache's, or the cache is older than :data:`EPOCH_MAX_AGE_MS`. New IDs get
    handles in a random order; IDs gone from the register become tombstones
    (a returning ID gets a new handle). The guest is sent only the handles it
    lacks if it holds this very table (``guest_table``), else all of them.
    Returns the updated cache, the masked values ``k·H_t(y)`` of handles
    ``[from, count)`` and the delta header ``{"epoch", "table", "from",
    "count", "tombstones"}``.
    """
    if cache is None or cache.epoch != epoch or _now_ms() - cache.created_ms > EPOCH_MAX_AGE_MS:
        cache = HostCache.new(epoch)
    current = list(dict.fromkeys(register_ids))
    live = {x: j for j, x in enumerate(cache.ids) if x is not None}
    present = set(current)
    for x, j in live.items():
        if x not in present:
            cache.ids[j] = None
    new = [x for x in current if x not in live]
    order = _keyed_permutation(os.urandom(32), len(new))  # handles say nothing about register order
    cache.ids.extend(new[i] for i in order)
    start = guest_has if guest_table == cache.table and 0 <= guest_has <= len(cache.ids) else 0
    # a handle removed before it was ever sent still needs a value: a dummy no ID can equal
    fresh = [x if x is not None else f"\x00removed\x00{start + i}" for i, x in enumerate(cache.ids[start:])]
    masked = b""
    if fresh:
        with _Keyed(cache.key, _tag(epoch), fresh, workers) as p:
            masked = p.masked_in_order()
    header = {
        "epoch": epoch,
        "table": cache.table,
        "from": start,
        "count": len(cache.ids),
        "tombstones": [j for j, x in enumerate(cache.ids) if x is None],
    }
    return cache, masked, header


def apply_delta(
    cache: GuestCache | None, ep: GuestEpoch, header: dict[str, object], masked: bytes, *, workers: int | None = None
) -> GuestCache:
    """Guest: add ``a·(k·H_t(y))`` for the delta's handles; take over the tombstones.

    Raises :class:`CryptoError` if the delta does not continue what the guest
    holds (wrong epoch, a gap, a count that does not match the values).
    """
    try:
        epoch, start, count = str(header["epoch"]), int(header["from"]), int(header["count"])  # type: ignore[call-overload]
        table = str(header["table"])
        tombstones = {int(t) for t in header["tombstones"]}  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError):
        raise CryptoError("malformed standing-alignment delta header", where=_W) from None
    if epoch != ep.epoch:
        raise CryptoError(f"delta for epoch {epoch}, guest is in epoch {ep.epoch}", where=_W)
    if cache is None or cache.epoch != epoch or cache.table != table or start == 0:
        if start != 0:
            raise CryptoError("delta continues a host table the guest does not hold", where=_W)
        cache = GuestCache(epoch, table)
    if start != len(cache) or len(masked) != (count - start) * POINT_WIDTH or count < start:
        raise CryptoError(
            f"delta covers handles {start}..{count} with {len(masked) // POINT_WIDTH} values; "
            f"the guest holds {len(cache)}",
            where=_W,
        )
    if masked:
        with _Keyed(ep.key, ep.tag, [], workers) as p:
            cache.values += p.remask_in_order(masked)
    if any(not 0 <= t < count for t in tombstones):
        raise CryptoError("tombstone outside the handle table", where=_W)
    cache.tombstones = tombstones
    return cache


def mask_batch(ep: GuestEpoch, batch_ids: Sequence[str], *, workers: int | None = None) -> bytes:
    """Guest: ``a·H_t(x)`` for the distinct ``batch_ids`` (given distinct, in order)."""
    with _Keyed(ep.key, ep.tag, batch_ids, workers) as p:
        if p.n_distinct != len(batch_ids):
            raise FedgovError("batch IDs must be distinct", where=_W)
        return p.masked_in_order()


def reply_batch(cache: HostCache, batch: bytes, *, workers: int | None = None) -> bytes:
    """Host: ``k·u`` for each value of the guest's batch, order kept."""
    with _Keyed(cache.key, _tag(cache.epoch), [], workers) as p:
        return p.remask_in_order(batch)


def match(cache: GuestCache, reply: bytes) -> np.ndarray:
    """Guest: for each batch position, the host handle it matches, or -1."""
    if len(reply) % POINT_WIDTH:
        raise CryptoError("reply is not a whole number of points", where=_W)
    index = {}
    vals = bytes(cache.values)
    for j in range(len(cache)):
        if j not in cache.tombstones:
            index[vals[j * POINT_WIDTH : (j + 1) * POINT_WIDTH]] = j
    n = len(reply) // POINT_WIDTH
    return np.fromiter(
        (index.get(reply[i * POINT_WIDTH : (i + 1) * POINT_WIDTH], -1) for i in range(n)), dtype=np.int64, count=n
    )
