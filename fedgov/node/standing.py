"""Node side of standing alignment (:mod:`fedgov.protocols.psi_standing`).

:func:`align_standing` is a drop-in for :func:`fedgov.node.kinds.vertical_lr.align`
with ``join = "left"``: it returns ``(table, slot, n)`` where the guest's
order is all its distinct batch rows, sorted by a key only the guest holds
(:mod:`fedgov.node.row_order`, fresh per job), and a
host's ``slot[i]`` is the batch position of its row ``i`` (-1: not in the
batch). State lives under ``<state_dir>/psi-standing/`` (scalars in 0600
files, replaced atomically). Locks are held only around local
read-modify-write, never across a network wait, so concurrent jobs cannot
deadlock: the host's handle table is updated under its lock (so deltas stay
consistent), the guest's epoch is created under its lock; two guest jobs
racing on a cache write the same values, or a stale table the next job
notices (full resend).

A host takes part only if its policy for the dataset says
``standing_alignment = true``; the guest's node keeps one epoch for all hosts.

Messages (sealed relay, ``<prefix>`` = ``standing/<tag>``)::

    G -> H  <prefix>/hello   {"epoch", "table", "has"}
    H -> G  <prefix>/delta   {"epoch", "table", "from", "count", "tombstones"}, then a stream of values
    G -> H  <prefix>/batch   stream of a·H_t(x)
    H -> G  <prefix>/reply   stream of k·a·H_t(x)
    G -> H  <prefix>/slots   n, then (handle, position) pairs of the host's matched rows
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from fedgov.errors import ConfigError, FedgovError, PolicyDenied
from fedgov.node.context import TaskContext, id_column
from fedgov.node.row_order import guest_order_key, ordered
from fedgov.protocols import psi_standing as st
from fedgov.protocols.psi import CHUNK_ELEMS, POINT_WIDTH, normalize_ids

_W = "standing alignment"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_secret(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _chunks(buf: bytes) -> Iterator[bytes]:
    step = CHUNK_ELEMS * POINT_WIDTH
    if not buf:
        yield b""
    for i in range(0, len(buf), step):
        yield buf[i : i + step]


def _workers(ctx: TaskContext) -> int | None:
    return int(ctx.manifest.parameters.get("psi_workers", 0)) or None


def _standing_allowed(ctx: TaskContext) -> bool:
    """The department's policy opts this dataset in (``standing_alignment = true``)."""
    return bool(ctx.decision.standing_alignment)


def align_standing(
    ctx: TaskContext, *, tag: str, dataset: str, guest: str, hosts: list[str]
) -> tuple[pa.Table, np.ndarray, int]:
    """Left-join alignment of this party's rows with the guest's batch, reusing the epoch's caches."""
    me = ctx.participant
    id_col = id_column(ctx)
    fields = [f for f in me.fields if f != id_col]
    table = ctx.load([id_col, *fields], dataset=dataset)
    ids = normalize_ids(table.column(id_col).to_pylist(), where=f"{ctx.me}/{dataset}")
    root = Path(str(ctx.notes["state_dir"])) / "psi-standing"
    prefix = f"standing/{tag}"
    if ctx.me == guest:
        return _guest(ctx, table, ids, root, prefix, hosts, tag)
    if not _standing_allowed(ctx):
        raise PolicyDenied(
            f"dataset '{dataset}' does not allow standing alignment (policy: standing_alignment = true)",
            where=ctx.me,
        )
    return _host(ctx, table, ids, root / "host" / guest / dataset, prefix, guest)


def _guest(
    ctx: TaskContext, table: pa.Table, ids: list[str], root: Path, prefix: str, hosts: list[str], tag: str
) -> tuple[pa.Table, np.ndarray, int]:
    workers = _workers(ctx)
    first: dict[str, int] = {}
    for i, x in enumerate(ids):
        first.setdefault(x, i)
    distinct = list(first)
    with _locked(root / "guest.lock"):
        raw = _read(root / "guest" / "epoch.json")
        ep = st.GuestEpoch.from_bytes(raw) if raw else None
        if ep is None or ep.expired():
            ep = st.GuestEpoch.new()
            _write_secret(root / "guest" / "epoch.json", ep.to_bytes())
    caches: dict[str, st.GuestCache | None] = {}
    for h in hosts:
        blob = _read(root / "guest" / f"{h}.cache")
        c = st.GuestCache.from_bytes(blob) if blob else None
        caches[h] = c = c if c is not None and c.epoch == ep.epoch else None
        hello = {"epoch": ep.epoch, "table": c.table if c else "", "has": len(c) if c else 0}
        ctx.channel.send(h, f"{prefix}/hello", json.dumps(hello).encode())
    batch = st.mask_batch(ep, distinct, workers=workers)
    for h in hosts:
        ctx.channel.send_stream(h, f"{prefix}/batch", list(_chunks(batch)))
    matches: dict[str, np.ndarray] = {}
    delta: dict[str, int] = {}
    for h in hosts:
        try:
            header = json.loads(ctx.channel.recv(h, f"{prefix}/delta"))
        except ValueError:
            raise FedgovError(f"malformed standing-alignment delta from {h}", where=_W) from None
        values = b"".join(ctx.channel.recv_stream(h, f"{prefix}/delta-values"))
        cache = st.apply_delta(caches[h], ep, header, values, workers=workers)
        _write_secret(root / "guest" / f"{h}.cache", cache.to_bytes())
        reply = b"".join(ctx.channel.recv_stream(h, f"{prefix}/reply"))
        if len(reply) != len(batch):
            raise FedgovError(f"{h} answered {len(reply) // POINT_WIDTH} of {len(distinct)} values", where=_W)
        matches[h] = st.match(cache, reply)
        delta[h] = len(values) // POINT_WIDTH
    ctx.notes["standing_delta"] = delta
    key = guest_order_key(str(ctx.notes["state_dir"]), domain="standing", tag=tag, job_id=ctx.job_id, seed=None)
    rows = ordered(first.values(), ids, key)
    slot = np.full(len(ids), -1, dtype=np.int64)
    slot[np.array(rows, dtype=np.int64)] = np.arange(len(rows))
    first_rows = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    for h, m in matches.items():
        hit = np.nonzero(m >= 0)[0]
        pairs = np.stack([m[hit], slot[first_rows[hit]]], axis=1).astype("<i8")
        ctx.channel.send(h, f"{prefix}/slots", struct.pack("<q", len(rows)) + pairs.tobytes())
    return table, slot, len(rows)


def _host(
    ctx: TaskContext, table: pa.Table, ids: list[str], state: Path, prefix: str, guest: str
) -> tuple[pa.Table, np.ndarray, int]:
    workers = _workers(ctx)
    try:
        hello = json.loads(ctx.channel.recv(guest, f"{prefix}/hello"))
        epoch, guest_table, has = str(hello["epoch"]), str(hello["table"]), int(hello["has"])
    except (ValueError, KeyError, TypeError):
        raise FedgovError("malformed standing-alignment hello", where=_W) from None
    if not epoch or len(epoch) > 64:
        raise ConfigError("standing-alignment epoch id must be 1..64 characters", where=_W)
    with _locked(state / "lock"):  # no network wait inside: see the module docstring
        raw = _read(state / "cache.json")
        cache = st.HostCache.from_bytes(raw) if raw else None
        cache, values, header = st.host_delta(cache, epoch, guest_table, has, ids, workers=workers)
        _write_secret(state / "cache.json", cache.to_bytes())
    ctx.channel.send(guest, f"{prefix}/delta", json.dumps(header).encode())
    ctx.channel.send_stream(guest, f"{prefix}/delta-values", list(_chunks(values)))
    batch = b"".join(ctx.channel.recv_stream(guest, f"{prefix}/batch"))
    ctx.channel.send_stream(guest, f"{prefix}/reply", list(_chunks(st.reply_batch(cache, batch, workers=workers))))
    msg = ctx.channel.recv(guest, f"{prefix}/slots")
    (n,) = struct.unpack_from("<q", msg)
    pairs = np.frombuffer(msg, dtype="<i8", offset=8).reshape(-1, 2)
    handles, pos = pairs[:, 0], pairs[:, 1]
    if (
        len(np.unique(handles)) != len(handles)
        or len(np.unique(pos)) != len(pos)
        or (pos < 0).any()
        or (pos >= n).any()
        or (handles < 0).any()
        or (handles >= len(cache.ids)).any()
    ):
        raise FedgovError("guest sent an alignment that does not match the handle table", where=ctx.job_id)
    row_of: dict[str, int] = {}
    for i, x in enumerate(ids):
        row_of.setdefault(x, i)
    slot = np.full(table.num_rows, -1, dtype=np.int64)
    for hnd, p in zip(handles.tolist(), pos.tolist(), strict=True):
        x = cache.ids[hnd]
        if x is None or x not in row_of:
            raise FedgovError("guest matched a removed register entry", where=ctx.job_id)
        slot[row_of[x]] = p
    return table, slot, int(n)
