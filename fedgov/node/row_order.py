"""The guest's training order of aligned rows, keyed by a secret only the guest holds.

After PSI the guest tells each host, for each of the host's matched rows, an
index into the guest's order of the job's rows (``vlr/<tag>/slots``,
``standing/<tag>/slots``). That order is the rows sorted by
``HMAC(K, id)`` with

    K = HMAC(S_guest, "fedgov/v1 row-order" | domain | tag | seed:<manifest seed>)   (seeded jobs)
    K = HMAC(S_guest, "fedgov/v1 row-order" | domain | tag | job:<job id>)           (otherwise)

``S_guest`` is 32 random bytes the guest node creates once in its own state
folder (``<state_dir>/row-order.key``, 0600) and never sends.

What it guarantees:

* Two jobs with the same manifest ``seed`` on the same guest data train on
  the same rows in the same positions, hence (with the shared ``seed``
  fixing the batch partition and order) on identical batches. A job without
  a seed (eligibility, he-stats) gets a fresh order per job id.
* No one but the guest can compute the order. A host learns its matched
  rows' positions and N, as before, but cannot place a *candidate* ID in the
  order: with a key computable from public inputs (the job id, as before
  this module), a host in a left join could locate any person it does not
  hold between its own matched rows and read, from the gap sizes, whether
  the guest holds that person (``tests/test_row_order.py``). The arbiter and
  the coordinator never see positions or the key.

What it leaks: to a host that runs two jobs with the same seed against the
same guest, that the guest's order did not change (its rows keep their
positions; new guest rows shift them by counts it already learns as N).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from fedgov.errors import ConfigError

#: the guest's order secret, in its state folder
KEY_FILE = "row-order.key"


def node_order_secret(state_dir: str | Path) -> bytes:
    """This node's order secret (created once, 0600, atomically: concurrent jobs read the same one)."""
    path = Path(state_dir) / KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f"{KEY_FILE}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(32))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if another job created it first: keep that one
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        data = path.read_bytes()
    if len(data) != 32:
        raise ConfigError(f"{path}: the row-order secret must be 32 bytes, found {len(data)}", where="row order")
    return data


def order_key(secret: bytes, *, domain: str, tag: str, job_id: str, seed: int | None) -> bytes:
    """The per-job (or, with ``seed``, per-seed) order key derived from the guest's ``secret``."""
    scope = f"seed:{int(seed)}" if seed is not None else f"job:{job_id}"
    msg = f"fedgov/v1 row-order\0{domain}\0{tag}\0{scope}".encode()
    return hmac.new(secret, msg, hashlib.sha256).digest()


def guest_order_key(state_dir: str | Path, *, domain: str, tag: str, job_id: str, seed: int | None) -> bytes:
    """:func:`order_key` with this guest node's own secret (the only place the secret is read)."""
    return order_key(node_order_secret(state_dir), domain=domain, tag=tag, job_id=job_id, seed=seed)


def ordered(rows: Iterable[int], ids: Sequence[str], key: bytes) -> list[int]:
    """``rows`` sorted by ``HMAC(key, ids[row])``: the guest's training order."""
    return sorted(rows, key=lambda r: hmac.new(key, ids[r].encode(), hashlib.sha256).digest())
