"""Witnessing that works, through real processes: split views and withheld heads raise alarms at the nodes.

An honest coordinator cannot show departments different logs or freeze its
head, so these tests run a **patched coordinator**: the real server (this
module run as ``python -m tests.test_ledger_witness_stack coordinator start``)
with :class:`fedgov.coordinator.service.LedgerService` wrapped so that

* ``FEDGOV_TEST_SPLIT_VIEW=beta``: beta is served a second log, signed with
  the same log key, whose entry at the fork point differs (a split view:
  both logs are append-only and self-consistent, each node's own checks pass);
* ``FEDGOV_TEST_WITHHOLD=1``: every caller gets the first head forever;
* ``FEDGOV_TEST_REWORD=1``: the coordinator drops every fact a node signed
  and logs its own unsigned version instead (heads stay fresh).

Everything else (nodes, mTLS, relay of the sealed gossip) is the real code.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fedgov.node.witness import NODE_FILE, STATE_FILE
from fedgov.runner import LocalFederation, NodeSpec, Proc
from tests.test_federation import build_world

pytestmark = pytest.mark.slow

INTERVAL = 1.0
STARVE = 6.0


# ------------------------------------------------------------- the patched coordinator


def _patch_coordinator() -> None:
    """Wrap LedgerService in this (coordinator) process according to the FEDGOV_TEST_* variables."""
    from fedgov.coordinator import service as svc
    from fedgov.ledger import entries as le
    from fedgov.ledger.log import TransparencyLog
    from fedgov.transport.tls import caller_identity

    if os.environ.get("FEDGOV_TEST_REWORD") == "1":
        from fedgov.coordinator import store

        store._own_fact = lambda *a, **k: None  # type: ignore[assignment]
    victim = os.environ.get("FEDGOV_TEST_SPLIT_VIEW", "")
    withhold = os.environ.get("FEDGOV_TEST_WITHHOLD") == "1"
    cls = svc.LedgerService
    orig_init = cls.__init__
    lock = threading.Lock()

    def init(self: Any, store: Any, ledger: Any, ca: Any, stmt: Any) -> None:
        orig_init(self, store, ledger, ca, stmt)
        self._frozen = None
        if victim:
            self._fork_at = ledger.size
            self._shadow = TransparencyLog(ledger.path.with_name("shadow-ledger.db"), ledger._key)

    def view(self: Any, context: Any) -> Any:
        if not victim or caller_identity(context).name != victim:
            return self
        with lock:
            shadow = self._shadow
            for i in range(shadow.size, self.ledger.size):
                blob = self.ledger.entry(i)
                if i == self._fork_at:
                    blob = le.job_started(f"forged-for-{victim}").encode()
                shadow.append(blob)
        proxy = copy.copy(self)
        proxy.ledger = shadow
        return proxy

    def wrap(name: str) -> None:
        orig = getattr(cls, name)

        def method(self: Any, request: Any, context: Any) -> Any:
            if name == "GetHead" and withhold:
                if self._frozen is None:
                    self._frozen = orig(self, request, context)
                return self._frozen
            return orig(view(self, context), request, context)

        setattr(cls, name, method)

    cls.__init__ = init
    for name in ("GetHead", "GetConsistencyProof", "GetInclusionProof", "AddCosignature", "GetCosignatures"):
        wrap(name)
    orig_entries = cls.GetEntries
    cls.GetEntries = lambda self, request, context: orig_entries(view(self, context), request, context)


if __name__ == "__main__":
    _patch_coordinator()
    from fedgov.cli import main

    main(sys.argv[1:])
    sys.exit(0)


# ----------------------------------------------------------------------- federation


class PatchedFederation(LocalFederation):
    """A loopback federation whose coordinator is this module (patched); nodes witness every second."""

    def __init__(self, workdir: Path, nodes: list[NodeSpec], env: dict[str, str]) -> None:
        super().__init__(workdir, nodes, node_timeout=20)
        self.env = env

    def node_config(self, spec: NodeSpec) -> Path:
        path = super().node_config(spec)
        path.write_text(
            path.read_text()
            + f'\n[ledger]\nwitness_interval = {INTERVAL}\nstarve_after = {STARVE}\nwitnesses = ["alpha", "beta"]\n'
        )
        return path

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
        cmd = [sys.executable, "-m", "fedgov", *args]
        if name == "coordinator":
            env.update(self.env)
            cmd = [sys.executable, "-m", "tests.test_ledger_witness_stack", *args]
        with log.open("ab") as fh:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=Path(__file__).resolve().parents[1],
            )
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc


def node_state(fed: LocalFederation, node: str, name: str = NODE_FILE) -> dict[str, Any]:
    try:
        return json.loads((fed.workdir / "state" / node / name).read_text())
    except (OSError, ValueError):
        return {}


def alarms(fed: LocalFederation, node: str, kind: str) -> list[dict[str, Any]]:
    return [a for a in node_state(fed, node).get("alarms", []) if a["kind"] == kind]


def wait_for(what: str, cond: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def witness_cli(fed: LocalFederation, node: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fedgov",
            "node",
            "witness",
            "--json",
            "--config",
            str(fed.workdir / "nodes" / node / "node.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_split_view_raises_an_alarm_at_both_nodes(tmp_path: Path) -> None:
    """Beta is shown a forked log; neither node's own consistency checks can tell, the gossip does."""
    with PatchedFederation(
        tmp_path / "fed", build_world(tmp_path)[:2], {"FEDGOV_TEST_SPLIT_VIEW": "beta"}
    ) as fed:
        # each node verifies and cosigns its own view: both views are self-consistent
        wait_for(
            "both witnesses to verify a head past the fork",
            lambda: (
                all(
                    node_state(fed, n, STATE_FILE).get("head", {}).get("size", 0) > 0
                    for n in ("alpha", "beta")
                )
                or all(alarms(fed, n, "split-view") for n in ("alpha", "beta"))
            ),
            timeout=60,
        )
        # within a few witness intervals of seeing each other's heads, both raise the alarm
        got = wait_for(
            "the split-view alarm at both nodes",
            lambda: all(alarms(fed, n, "split-view") for n in ("alpha", "beta")),
            timeout=20 * INTERVAL + 30,
        )
        assert got
        a, b = alarms(fed, "alpha", "split-view")[0], alarms(fed, "beta", "split-view")[0]
        assert a["evidence"]["peer"] == "beta" and b["evidence"]["peer"] == "alpha"
        # the evidence: two log-signed heads that cannot both be the one log
        assert a["evidence"]["mine"]["root"] != a["evidence"]["theirs"]["root"]
        # the second node alarms within one witness interval of the first (plus scheduling slack)
        assert abs(a["at"] - b["at"]) <= 1000 * INTERVAL + 1500, (a["at"], b["at"])
        for n in ("alpha", "beta"):
            assert "ALARM (split-view)" in fed.tail(n, 10_000)
            assert node_state(fed, n, STATE_FILE)["alarm"]["kind"] == "forked"  # the node halts
            out = witness_cli(fed, n)
            assert out.returncode == 2, out.stderr
            status = json.loads(out.stdout.splitlines()[0])
            assert status["halted"] and any(x["kind"] == "split-view" for x in status["alarms"])


def test_withheld_heads_raise_the_starvation_alarm(tmp_path: Path) -> None:
    """The coordinator keeps serving its first head: after starve_after every node alarms (not a log line only)."""
    with PatchedFederation(tmp_path / "fed", build_world(tmp_path)[:2], {"FEDGOV_TEST_WITHHOLD": "1"}) as fed:
        wait_for(
            "the starvation alarm at both nodes",
            lambda: all(alarms(fed, n, "starved") for n in ("alpha", "beta")),
            timeout=STARVE + 20 * INTERVAL + 30,
        )
        for n in ("alpha", "beta"):
            (a,) = alarms(fed, n, "starved")
            assert a["at"] - a["evidence"]["last_new_head_ms"] >= STARVE * 1000
            assert "ALARM (starved)" in fed.tail(n, 10_000)
            out = witness_cli(fed, n)
            assert out.returncode == 0, out.stderr
            status = json.loads(out.stdout.splitlines()[0])
            assert status["starving"] and any(x["kind"] == "starved" for x in status["alarms"])


def test_facts_the_coordinator_withheld_raise_an_alarm_at_their_department(tmp_path: Path) -> None:
    """The coordinator logs its own unsigned version of each node's facts: heads are fresh, the facts missing."""
    with PatchedFederation(tmp_path / "fed", build_world(tmp_path)[:2], {"FEDGOV_TEST_REWORD": "1"}) as fed:
        wait_for(
            "the withheld-fact alarm at both nodes",
            lambda: all(alarms(fed, n, "withheld-fact") for n in ("alpha", "beta")),
            timeout=STARVE + 20 * INTERVAL + 30,
        )
        for n in ("alpha", "beta"):
            assert "dataset_published" in alarms(fed, n, "withheld-fact")[0]["message"]
            assert not alarms(fed, n, "starved")  # heads kept coming: this is about the facts
            # and each department saw the coordinator's own words about it in the log
            foreign = alarms(fed, n, "foreign-fact")
            assert foreign and all("never signed (unsigned" in a["message"] for a in foreign)
            assert "ALARM (withheld-fact)" in fed.tail(n, 10_000)
