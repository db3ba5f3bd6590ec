"""Horizontal FL on Flower's deployment engine (real SuperLink/SuperNode processes)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import tenseal as ts

from fedgov.errors import CryptoError, JobFailed
from fedgov.hfl import _superlink
from fedgov.hfl import secure_agg as sa
from fedgov.hfl.deployment import (
    DEFAULT_PARAMS,
    EXIT_SUPERNODE_CONNECTION,
    Deployment,
    marked_pids,
    run_horizontal_job,
)
from fedgov.scenarios.regional import generate_regional


@pytest.fixture(scope="module")
def regional(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return generate_regional(tmp_path_factory.mktemp("regional"), households=1500)


def _pids_mentioning(text: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text.encode() in (d / "environ").read_bytes():
                    stat = (d / "stat").read_text()
                    if ") Z" not in stat:
                        out.append(int(d.name))
            except OSError:
                pass
    return out


def test_public_context_guard() -> None:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=4096, coeff_mod_bit_sizes=[60, 49])
    ctx.global_scale = 2**40
    private = ctx.serialize(save_secret_key=True)
    with pytest.raises(CryptoError):
        sa.load_public_context(private, None)
    pub = ctx.serialize(save_secret_key=False)
    assert not sa.load_public_context(pub, sa.fingerprint(pub)).is_private()
    with pytest.raises(CryptoError):
        sa.load_public_context(pub, "0" * 64)


def test_control_api_loopback_guard() -> None:
    assert _superlink.is_allowed("/v1/fleet/PullMessages", "203.0.113.9")
    assert not _superlink.is_allowed("/v1/control/StartRun", "203.0.113.9")
    assert not _superlink.is_allowed("/v1/runtime/PushMessages", "10.0.0.2")
    assert _superlink.is_allowed("/v1/control/StartRun", "127.0.0.1")
    assert _superlink.is_allowed("/v1/control/StartRun", "::1")


@pytest.mark.slow
def test_encrypted_job_with_drop_and_intruder(regional: dict, tmp_path: Path) -> None:
    """Unregistered SuperNode refused; region dropped in round 2 is tolerated; teardown is total."""
    regions = {r: v["path"] for r, v in regional["regions"].items()}
    dep = Deployment(tmp_path / "job")
    try:
        dep.start_superlink()
        # an unregistered SuperNode is refused (exit 305), not supervised
        dep.start_supernode("intruder", {"region": "intruder", "data-path": "x"},
                            supervise=False, max_retries=0, max_wait_time=5)
        ids = dep.register_supernodes(list(regions))
        km = dep.start_key_holder("auditor", broker_port=(bp := _port()))
        for name, path in regions.items():
            dep.start_supernode(name, {"region": name, "data-path": path,
                                       "he-context-sha256": km.sha256})
        cfg = {**DEFAULT_PARAMS, "rounds": 2, "local-steps": 20, "min-clients": 2,
               "round-timeout": 25.0, "node-wait-timeout": 40.0, "mode": "encrypted",
               "expected-clients": 3, "job-id": "t1",
               "result-path": str(dep.workdir / "result.json"),
               "val-path": regional["validation"]["path"],
               "region-nodes": ",".join(f"{n}={i}" for n, i in ids.items()),
               "he-context-path": str(km.public_context), "he-context-sha256": km.sha256,
               "coordinator-kit": str(dep.pki_dir / "superlink"), "key-holder": "auditor",
               "broker-port": bp}
        out: dict = {}
        th = threading.Thread(target=lambda: out.update(res=dep.run_app(cfg, timeout=150)))
        th.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # drop a region once round 1 is done
            try:
                if json.loads((dep.workdir / "result.json").read_text())["rounds"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        dep.drop_node("counties")
        th.join(timeout=170)
        res = out["res"]
        intruder = dep.procs["supernode:intruder"]
        assert intruder.flower_exit_code() == EXIT_SUPERNODE_CONNECTION
        assert "Failed to activate SuperNode" in intruder.log.read_text()
        assert "intruder" not in ids
    finally:
        dep.stop()
    assert dep.flower_pids() == [] and marked_pids(dep.marker) == []
    assert res["status"] == "completed"
    assert res["aggregator_context_is_private"] is False
    r1, r2 = res["rounds"]
    assert r1["participants"] == sorted(regions)
    assert r2["participants"] == ["new_town", "old_town"] and r2["missing"] == ["counties"]
    assert set(res["contribution"]) == set(regions)
    assert 0.5 < res["auc_validation"] <= 1.0
    decs = (dep.workdir / "keyholder" / "auditor" / "decryptions.jsonl").read_text().splitlines()
    assert len(decs) == 2
    assert all(t["contributors"] >= 2 for d in decs for t in json.loads(d)["tracks"])


@pytest.mark.slow
def test_job_below_minimum_fails_with_reason(regional: dict, tmp_path: Path) -> None:
    """A failing ClientApp does not fail `flwr run`; fedgov fails the job itself."""
    regions = {r: v["path"] for r, v in regional["regions"].items()}
    regions["counties"] = str(tmp_path / "missing.csv")  # this region's ClientApp will fail
    work = tmp_path / "job2"
    with pytest.raises(JobFailed) as err:
        run_horizontal_job(work, regions, {"rounds": 1, "local-steps": 5, "min-clients": 3,
                                           "contribution": False, "round-timeout": 40.0},
                           validation=regional["validation"]["path"], encrypted=False)
    msg = str(err.value)
    assert "min-clients=3" in msg and "counties" in msg and "ClientApp error" in msg
    assert _pids_mentioning(str(work.resolve())) == []


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
