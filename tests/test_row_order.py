"""The guest's training order: reproducible per manifest seed, computable by the guest alone.

The attack: in a left join a host learns N and the positions of its own
matched rows in the guest's order. If the order key could be computed from
public inputs (job id, seed, tag — the design before the guest's secret), the
host places any candidate person it does *not* hold into the order and reads,
from the number of guest rows between its own neighbours, whether the guest
holds that person (here: who applied for social assistance).
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import os
import stat
from pathlib import Path

import numpy as np

from fedgov.metrics import auc
from fedgov.node.row_order import KEY_FILE, guest_order_key, order_key, ordered

JOB, TAG, SEED = "job-00ff", "batch", 7


def _world(seed: int = 1) -> tuple[list[str], list[str], set[str]]:
    """(population, the guest's applicants, the IDs one host holds)."""
    rng = np.random.default_rng(seed)
    population = [f"P{i:06d}" for i in range(6000)]
    applicants = [population[i] for i in rng.choice(len(population), 1200, replace=False)]
    held = {population[i] for i in rng.choice(len(population), 3000, replace=False)}
    return population, applicants, held


def _guest_positions(state: Path, applicants: list[str], *, job_id: str = JOB, seed: int | None = SEED) -> list[int]:
    """What the guest does in a left join: its order of all its rows (row index per position)."""
    key = guest_order_key(state, domain="align", tag=TAG, job_id=job_id, seed=seed)
    return ordered(range(len(applicants)), applicants, key)


def _membership_auc(population: list[str], applicants: list[str], held: set[str], order: list[int]) -> float:
    """The host's attack: AUC of its guess "the guest holds c" over every person c it does not hold.

    It knows its matched rows' positions (what ``vlr/<tag>/slots`` tells it) and the key a
    host can compute from public inputs; it scores c by the gap it falls into.
    (With a key from public inputs, as before ``row_order``: AUC 0.76-0.79 on three worlds.)
    """
    pos_of = {applicants[r]: p for p, r in enumerate(order)}
    matched = sorted((x for x in applicants if x in held), key=lambda x: pos_of[x])
    key = order_key(b"", domain="align", tag=TAG, job_id=JOB, seed=SEED)  # what a host can compute

    def h(x: str) -> bytes:  # the sort key of ``ordered``
        return hmac.new(key, x.encode(), hashlib.sha256).digest()

    bounds = [h(x) for x in matched]
    positions = [-1, *[pos_of[x] for x in matched], len(applicants)]
    gaps = np.diff(positions) - 1  # guest rows between consecutive matched rows
    unheld = [c for c in population if c not in held]
    where = np.array([bisect.bisect(bounds, h(c)) for c in unheld])
    # the host knows the population: of the m people it does not hold that fall in a gap of g
    # guest rows, each is the guest's with probability g / m
    score = gaps[where] / np.bincount(where, minlength=len(gaps))[where]
    guest_has = set(applicants)
    truth = np.array([c in guest_has for c in unheld], dtype=float)
    return auc(truth, score)


def test_a_host_cannot_place_a_person_it_does_not_hold_in_the_guests_order(tmp_path: Path) -> None:
    population, applicants, held = _world()
    order = _guest_positions(tmp_path / "guest", applicants)
    a = _membership_auc(population, applicants, held, order)
    assert abs(a - 0.5) < 0.06, a  # at chance: the order key is the guest's secret


def test_the_order_is_the_same_for_one_seed_and_fresh_without_one(tmp_path: Path) -> None:
    _, applicants, _ = _world()
    state = tmp_path / "guest"
    one = _guest_positions(state, applicants, job_id="job-01")
    assert one == _guest_positions(state, applicants, job_id="job-02")  # same seed, other job
    assert one != _guest_positions(state, applicants, seed=SEED + 1)
    assert _guest_positions(state, applicants, job_id="job-01", seed=None) != _guest_positions(
        state, applicants, job_id="job-02", seed=None
    )
    # another guest (another secret) orders differently, so the order is no public function of the seed
    assert one != _guest_positions(tmp_path / "other-guest", applicants)
    mode = stat.S_IMODE(os.stat(state / KEY_FILE).st_mode)
    assert mode == 0o600, oct(mode)
    assert len((state / KEY_FILE).read_bytes()) == 32
