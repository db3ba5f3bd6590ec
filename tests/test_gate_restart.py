"""After a coordinator restart the session gate consults the sessions the nodes registered
(persisted in coordinator.db), so a process with a node's certificate identity but another
session id cannot claim that identity before the live node reconnects (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgov.coordinator.gate import DuplicateSession, Sessions
from fedgov.coordinator.store import CoordinatorStore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _restarted(tmp_path: Path, clock: Clock) -> tuple[CoordinatorStore, Sessions]:
    """A coordinator whose previous process had alpha registered with session 'live'."""
    store = CoordinatorStore(tmp_path / "coordinator.db")
    store.register_node("alpha", b"bundle", session="live")
    return store, Sessions(clock, grace=5.0, persisted=store.registered_session, restart_grace=30.0)


def test_an_impostor_cannot_take_a_live_nodes_identity_right_after_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    store, sessions = _restarted(tmp_path, clock)
    try:
        clock.t += 6.0  # past the live-call grace: before, the first caller claimed the identity
        with pytest.raises(DuplicateSession, match="registered before the coordinator restarted"):
            sessions.enter("alpha", "impostor", registering=True)
        with pytest.raises(DuplicateSession):
            sessions.enter("alpha", "impostor", registering=False)
        # the live process reconnects with its own session and carries on
        sessions.enter("alpha", "live", registering=True)
        sessions.leave("alpha", "live")
        sessions.enter("alpha", "live", registering=False)
        sessions.leave("alpha", "live")
        with pytest.raises(DuplicateSession, match="heard"):
            sessions.enter("alpha", "impostor", registering=True)
    finally:
        store.close()


def test_a_registered_process_that_never_comes_back_is_taken_over_after_the_grace(tmp_path: Path) -> None:
    clock = Clock()
    store, sessions = _restarted(tmp_path, clock)
    try:
        clock.t += 29.0
        with pytest.raises(DuplicateSession):
            sessions.enter("alpha", "new-process", registering=True)
        clock.t += 2.0  # 31 s after the restart: the old process is gone, a new one may register
        sessions.enter("alpha", "new-process", registering=True)
        sessions.leave("alpha", "new-process")
        # a node with no persisted session (never registered) is free at once
        sessions.enter("beta", "b1", registering=True)
    finally:
        store.close()
