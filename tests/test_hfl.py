"""Horizontal FL on Flower's deployment engine (real SuperLink/SuperNode processes)."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from fedgov.errors import CryptoError, JobFailed
from fedgov.hfl import _superlink, logreg
from fedgov.hfl import secure_agg as sa
from fedgov.hfl.deployment import (
    DEFAULT_PARAMS,
    EXIT_SUPERNODE_CONNECTION,
    Deployment,
    marked_pids,
    run_horizontal_job,
)
from fedgov.hfl.evaluate import contribution, track_aucs
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
               "dim": len(logreg.load_table(regional["validation"]["path"])[2]) + 1,
               "region-nodes": ",".join(f"{n}={i}" for n, i in ids.items()),
               "he-context-path": str(km.public_context), "he-context-sha256": km.sha256,
               "coordinator-kit": str(dep.pki_dir / "superlink"), "key-holder": "auditor",
               "broker-port": bp}
        barrier = tmp_path / "barrier"
        cfg["test-round-barrier"] = str(barrier)  # the ServerApp waits for barrier.1 before round 2
        out: dict = {}
        th = threading.Thread(target=lambda: out.update(res=dep.run_app(cfg, timeout=150)))
        th.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # drop a region once round 1 is done, before round 2
            try:
                if json.loads((dep.workdir / "result.json").read_text())["rounds"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        dep.drop_node("counties")
        barrier.with_name("barrier.1").touch()
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
    r1, r2 = res["rounds"]
    assert r1["participants"] == sorted(regions)
    assert r2["participants"] == ["new_town", "old_town"] and r2["missing"] == ["counties"]
    # no validation data reached the ServerApp: it returns models, the caller evaluates them
    assert set(res["track_weights"]) == {"all", *(f"-{r}" for r in regions)}
    assert "auc_validation" not in res
    xv, yv, _ = logreg.load_table(regional["validation"]["path"])
    ev = contribution(track_aucs(res["track_weights"], xv, yv, list(regions)), list(regions))
    assert set(ev["contribution"]) == set(regions)
    assert 0.5 < ev["auc_validation"] <= 1.0
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


def test_local_dp_clips_then_adds_gaussian_noise() -> None:
    """The DP option: the update is clipped to L2 norm dp-clip, then N(0, (dp-noise*dp-clip)^2) added."""
    from fedgov.hfl.app import _local_dp

    w0 = np.zeros(2000)
    w = np.full(2000, 3.0)  # update norm ~134
    clipped = _local_dp(w0, w, clip=0.5, noise=0.0)
    assert np.linalg.norm(clipped - w0) == pytest.approx(0.5, rel=1e-9)
    assert np.allclose(clipped / np.linalg.norm(clipped), w / np.linalg.norm(w))
    small = np.full(2000, 1e-4)  # already inside the clip: untouched
    assert np.allclose(_local_dp(w0, small, clip=0.5, noise=0.0), small)
    noisy = _local_dp(w0, w, clip=0.5, noise=2.0)
    resid = noisy - clipped
    assert np.std(resid) == pytest.approx(1.0, rel=0.1)  # sigma = noise * clip


@pytest.mark.slow
def test_dp_option_bounds_the_model_end_to_end(regional: dict, tmp_path: Path) -> None:
    """dp-clip reaches every ClientApp through the real deployment: with clipping alone,
    FedAvg of updates of norm <= c moves the model at most c per round."""
    regions = {r: v["path"] for r, v in regional["regions"].items()}
    clip, rounds = 0.05, 2
    res = run_horizontal_job(tmp_path / "dp", regions,
                             {"rounds": rounds, "local-steps": 20, "min-clients": 3, "contribution": False,
                              "round-timeout": 40.0, "dp-clip": clip, "dp-noise": 0.0},
                             validation=regional["validation"]["path"], encrypted=False)
    norm = float(np.linalg.norm(res["weights"]))
    assert 0.5 * clip < norm <= rounds * clip + 1e-9, norm
    assert _pids_mentioning(str((tmp_path / "dp").resolve())) == []
    # the same run unclipped moves the weights far more (docs: "an unclipped run moves > 10 x rounds x c"),
    # so the bound above is the clip's doing, not the data's
    free = run_horizontal_job(tmp_path / "nodp", regions,
                              {"rounds": rounds, "local-steps": 20, "min-clients": 3, "contribution": False,
                               "round-timeout": 40.0},
                              validation=regional["validation"]["path"], encrypted=False)
    free_norm = float(np.linalg.norm(free["weights"]))
    print(f"dp norm {norm:.4f} unclipped norm {free_norm:.4f}")
    assert free_norm > 10 * rounds * clip, free_norm


def _routable_ipv4() -> str | None:
    """A non-loopback IPv4 address (a dummy interface as root when the host has none): see conftest."""
    from tests.conftest import routable_ipv4

    return routable_ipv4()


def test_superlink_on_all_interfaces_keeps_control_api_local(tmp_path: Path) -> None:
    """Multi-host mode: bound to 0.0.0.0, the Control API still refuses non-loopback peers."""
    import http.client
    import ssl

    from fedgov.errors import ConfigError

    with pytest.raises(ConfigError, match="advertised"):
        Deployment(tmp_path / "x", listen="0.0.0.0")
    with pytest.raises(ConfigError, match="listen = "):
        Deployment(tmp_path / "y", listen="10.0.0.7")
    ip = _routable_ipv4()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address on this host")
    dep = Deployment(tmp_path / "dep", listen="0.0.0.0", advertise=ip)
    try:
        dep.start_superlink()
        tls = ssl.create_default_context(cafile=str(dep.ca_cert))  # the cert names the advertised IP

        def status(host: str, path: str) -> int:
            c = http.client.HTTPSConnection(host, dep.port, context=tls, timeout=10)
            c.request("POST", path, body=b"", headers={"content-type": "application/protobuf"})
            return c.getresponse().status

        assert status(ip, "/v1/control/ListRuns") == 403  # peer address = ip: not loopback
        assert status(ip, "/v1/fleet/PullMessages") != 403  # the Fleet API is for everyone
        assert status("127.0.0.1", "/v1/control/ListRuns") != 403
        assert dep.flwr("ls", "fedgov")["success"]  # the coordinator's own CLI (loopback) works
    finally:
        dep.stop()
    assert dep.flower_pids() == []


@pytest.mark.slow
def test_encrypted_job_over_the_advertised_address(regional: dict, tmp_path: Path) -> None:
    """SuperNodes and the key holder dial the advertised (non-loopback) address, as from other hosts."""
    ip = _routable_ipv4()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address on this host")
    regions = {r: v["path"] for r, v in regional["regions"].items()}
    work = tmp_path / "multi"
    res = run_horizontal_job(work, regions,
                             {"rounds": 1, "local-steps": 5, "min-clients": 3, "contribution": False,
                              "round-timeout": 40.0},
                             validation=regional["validation"]["path"], key_holder="auditor",
                             listen="0.0.0.0", advertise=ip)
    assert res["status"] == "completed" and res["rounds"][0]["participants"] == sorted(regions)
    # the SuperLink's access log: every SuperNode activated from the routable address
    access = (work / "logs" / "superlink.log").read_text()
    activated = re.findall(r"(\S+):\d+ - \"POST /v1/fleet/activate-node", access)
    assert len(activated) >= len(regions) and set(activated) == {ip}, activated
    # the key holder (its only broker address is the advertised one) decrypted the round
    assert res["mode"] == "encrypted"
    assert _pids_mentioning(str(work.resolve())) == []


def test_node_config_hfl_addresses(tmp_path: Path) -> None:
    """The aggregator node's [hfl] table: loopback by default; all interfaces only with a name to dial."""
    from fedgov.errors import ConfigError
    from fedgov.node.config import NodeConfig

    (tmp_path / "policy.toml").write_text('[arbiter]\nkinds = ["horizontal-fl"]\n')
    base = ('[node]\nname = "agg"\ncoordinator = "127.0.0.1:1"\nkit = "kit"\nstate_dir = "state"\n'
            'policy = "policy.toml"\n')

    def load(extra: str) -> NodeConfig:
        (tmp_path / "node.toml").write_text(base + extra)
        return NodeConfig.load(tmp_path / "node.toml")

    c = load("")
    assert (c.hfl_listen, c.hfl_advertise) == ("127.0.0.1", "127.0.0.1")
    c = load('[hfl]\nlisten = "0.0.0.0"\nadvertise = "hub.example.gov.cn"\n')
    assert (c.hfl_listen, c.hfl_advertise) == ("0.0.0.0", "hub.example.gov.cn")
    with pytest.raises(ConfigError, match="advertised host"):
        load('[hfl]\nlisten = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match="listen = '10.1.2.3'"):
        load('[hfl]\nlisten = "10.1.2.3"\n')
