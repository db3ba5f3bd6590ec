"""Several hosts for real: Linux network namespaces, one per host, joined by a bridge.

Layout (one /24 on a bridge in the root namespace; the root namespace is the
analyst's workstation)::

    coord  .1   coordinator; the data-less helpers: HFL aggregator + key holder
    d1     .11  guest (FATE guest), region old_town ...
    d2     .12  host  (FATE host),  region ...
    d3     .13  arbiter (vertical LR), region ...
    root   .254 analyst / admin client

Every process is started inside its host's namespace (``ip netns exec``) and
talks only over the bridge: nodes dial the coordinator's address, the
coordinator's certificate names that address. The test runs PSI, vertical LR
and horizontal FL across the hosts; checks, while jobs run, that nothing a
department host listens on (every port ``ss -ltn`` lists there) accepts a
connection from any other host; and takes one department host's link down in
the middle of a vertical-LR job, then up again: the job resumes. A second test
keeps the link down past ``node_timeout_seconds``: the job fails naming the
cut-off node, which reconnects by itself once the link is back.

Documented exception: the HFL aggregator's Flower SuperLink listens for the
regions' SuperNodes — it runs on the coordinator host here, which is why the
listener check covers department hosts only (a department that is itself the
aggregator exposes that one port; see docs/deployment.md).

Needs root and ``ip`` (iproute2); skipped otherwise with the reason, except
under ``CI=true`` where it must run (.ci/run installs iproute2).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedgov.crypto.kits import issue_kit
from fedgov.crypto.pki import create_ca
from fedgov.runner import DatasetSpec, LocalFederation, NodeSpec, Proc
from fedgov.runspec import federation_for, load_spec, manifest_for
from fedgov.scenarios.regional import generate_regional
from tests.helpers_learning import hfl_manifest, hfl_policy, hfl_schema
from tests.relay_wait import TERMINAL, relay_state, wait_for_relay

pytestmark = pytest.mark.slow

FATE = Path(__file__).resolve().parents[1] / "examples" / "fate" / "data"
HFL_PARAMS = {"rounds": 2, "local-steps": 20, "min-clients": 3, "round-timeout": 60.0, "node-wait-timeout": 60.0}


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, stdin=subprocess.DEVNULL)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}: CI must run the multi-host test (as root, with iproute2)")
    pytest.skip(reason)


_HOSTS_MADE = itertools.count()

class Hosts:
    """Namespaces ``<tag>-coord``, ``<tag>-d1..d3`` on a bridge; removed by :meth:`close`."""

    def __init__(self, tag: str, subnet: str) -> None:
        self.tag = tag
        self.subnet = subnet  # "10.a.b"
        self.bridge = f"{tag}br"
        self.addr = {"coord": f"{subnet}.1", "d1": f"{subnet}.11", "d2": f"{subnet}.12", "d3": f"{subnet}.13"}
        self.made: list[str] = []

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def veth(self, host: str) -> str:
        return f"{self.tag}v{host}"  # the root-namespace end of the host's link

    def make(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self.made.append("bridge")
        _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for host, addr in self.addr.items():
            ns = self.ns(host)
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("link", "add", self.veth(host), "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", self.veth(host), "master", self.bridge)
            _ip("link", "set", self.veth(host), "up")
            _ip("addr", "add", f"{addr}/24", "dev", "eth0", ns=ns)
            _ip("link", "set", "eth0", "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)

    def close(self) -> None:
        for item in reversed(self.made):
            if item == "bridge":
                _ip("link", "del", self.bridge, check=False)
            else:
                # the root end of the host's link goes now, even if a straggler keeps the namespace alive
                _ip("link", "del", self.veth(item.rpartition("-")[2]), check=False)
                _ip("netns", "del", item, check=False)
        self.made.clear()

    def listeners(self, host: str) -> list[tuple[str, int]]:
        """(address, port) of every listening TCP socket in ``host``'s namespace."""
        out = subprocess.run(["ip", "netns", "exec", self.ns(host), "ss", "-ltnH"], capture_output=True,
                             text=True, check=True, stdin=subprocess.DEVNULL).stdout
        found = []
        for line in out.splitlines():
            local = line.split()[3]
            addr, _, port = local.rpartition(":")
            found.append((addr.strip("[]"), int(port)))
        return found

    def connects(self, frm: str, to: str, port: int) -> bool:
        """True if a TCP connection from ``frm``'s namespace to ``to``'s address and ``port`` opens."""
        probe = f"exec 3<>/dev/tcp/{self.addr[to]}/{port}"
        r = subprocess.run(["ip", "netns", "exec", self.ns(frm), "timeout", "3", "bash", "-c", probe],
                           capture_output=True, stdin=subprocess.DEVNULL)
        return r.returncode == 0


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0:
        _unavailable("network namespaces need root")
    if shutil.which("ip") is None or shutil.which("ss") is None:
        _unavailable("`ip` / `ss` (iproute2) not installed")
    # unique per fixture (names of interfaces: at most 15 characters), not only per process
    n = next(_HOSTS_MADE)
    tag = f"fg{os.getpid() % 100000}{n % 10}"
    h = Hosts(tag, f"10.{200 + os.getpid() % 50}.{(os.getpid() + 17 * n) % 250}")
    try:
        h.make()
    except subprocess.CalledProcessError as exc:
        h.close()
        _unavailable(f"cannot make network namespaces: {exc.stderr.strip() or exc}")
    try:
        yield h
    finally:
        h.close()


class HostsFederation(LocalFederation):
    """A LocalFederation whose processes each run inside their host's namespace."""

    def __init__(self, workdir: Path, nodes: list[NodeSpec], hosts: Hosts, placement: dict[str, str],
                 **kw: Any) -> None:
        super().__init__(workdir, nodes, **kw)
        self.hosts = hosts
        self.placement = placement  # process name -> host

    def provision(self) -> None:
        ca = self.workdir / "ca"
        create_ca(ca, "fedgov multi-host test")
        issue_kit(ca, self.kits / "coordinator", "coordinator", "coordinator", hosts=[self.hosts.addr["coord"]])
        for n in self.nodes:
            issue_kit(ca, self.kits / n.name, n.name, "node")
        for who in ("analyst", "admin", "auditor"):
            issue_kit(ca, self.kits / who, who, who)

    def coordinator_config(self) -> Path:
        path = super().coordinator_config()
        path.write_text(path.read_text().replace('listen = "127.0.0.1:0"',
                                                 f'listen = "{self.hosts.addr["coord"]}:0"'))
        return path

    def node_config(self, spec: NodeSpec) -> Path:
        path = super().node_config(spec)
        if spec.name == "aggregator":  # the SuperLink, on the coordinator host, for the regions to dial
            with path.open("a") as fh:
                fh.write(f'\n[hfl]\nlisten = "0.0.0.0"\nadvertise = "{self.hosts.addr["coord"]}"\n')
        return path

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        ns = self.hosts.ns(self.placement[name])
        with log.open("ab") as fh:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "fedgov", *args],
                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {})), start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc


def _fate_spec(tmp: Path, kind: str) -> Path:
    spec = tmp / f"{kind}.toml"
    job = f'[job]\nkind = "{kind}"\npurpose = "test"\n'
    if kind == "vertical-lr":
        job += "epochs = 4\nlearning_rate = 0.1\nseed = 3\n"
    spec.write_text(
        job
        + f'[[parties]]\nname = "guest"\nrole = "guest"\ndata = "{FATE}/breast_hetero_guest.csv"\nid = "id"\n'
        + ('label = "y"\n' if kind == "vertical-lr" else "")
        + f'[[parties]]\nname = "host"\nrole = "host"\ndata = "{FATE}/breast_hetero_host.csv"\nid = "id"\n'
    )
    return spec


class ListenerAudit:
    """Samples every department host's listeners while jobs run; probes each from the other hosts."""

    def __init__(self, hosts: Hosts) -> None:
        self.hosts = hosts
        self.probed: dict[tuple[str, str, int], list[str]] = {}  # (host, addr, port) -> hosts that got in
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        depts = [h for h in self.hosts.addr if h != "coord"]
        for host in depts:
            for addr, port in self.hosts.listeners(host):
                key = (host, addr, port)
                if key in self.probed:
                    continue
                self.probed[key] = [o for o in self.hosts.addr if o != host and self.hosts.connects(o, host, port)]

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            with contextlib.suppress(subprocess.CalledProcessError):
                self.sample()

    def __enter__(self) -> ListenerAudit:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()


def _wait(fed: LocalFederation, job_id: str, timeout: float = 300) -> Any:
    with fed.client() as c:
        return c.wait(job_id, timeout=timeout)


def test_psi_vlr_and_hfl_across_four_hosts_with_a_link_down_mid_job(hosts: Hosts, tmp_path: Path) -> None:
    summary: dict[str, Any] = {"hosts": dict(hosts.addr)}
    # -- the nodes: FATE guest/host + VLR arbiter; three HFL regions; aggregator + key holder
    psi_spec, vlr_spec = load_spec(_fate_spec(tmp_path, "psi")), load_spec(_fate_spec(tmp_path, "vertical-lr"))
    fate_nodes = federation_for(vlr_spec, tmp_path / "profiles-fate").nodes
    for n in fate_nodes:  # the same parties may also run PSI (one operator owns them all: exact sizes)
        text = n.policy.read_text().replace("kinds = [\"vertical-lr\", ", "kinds = [\"psi\", \"vertical-lr\", ")
        head, sep, rest = text.partition("\n\n")
        n.policy.write_text(head + '\n[defaults.disclosure]\npsi_size_release = "exact"\npsi_id_recipients = ["*"]\n'
                            + sep + rest)
    regional = generate_regional(tmp_path / "regional", households=1500)
    regions = sorted(regional["regions"])
    assert len(regions) == 3
    hfl_nodes = []
    for r in regions:
        d = tmp_path / "profiles-hfl" / r
        d.mkdir(parents=True)
        (d / "data.toml").write_text(hfl_schema("applications_features"))
        datasets = [DatasetSpec("applications_features", d / "data.toml", regional["regions"][r]["path"])]
        if r == regions[0]:
            (d / "val.toml").write_text(hfl_schema("validation"))
            datasets.append(DatasetSpec("validation", d / "val.toml", regional["validation"]["path"]))
        (d / "policy.toml").write_text(hfl_policy([ds.name for ds in datasets]))
        hfl_nodes.append(NodeSpec(r, d / "policy.toml", datasets))
    for name in ("aggregator", "keyholder"):
        d = tmp_path / "profiles-hfl" / name
        d.mkdir(parents=True)
        (d / "policy.toml").write_text('[arbiter]\nkinds = ["horizontal-fl"]\n')
        hfl_nodes.append(NodeSpec(name, d / "policy.toml", []))
    placement = {"coordinator": "coord", "aggregator": "coord", "keyholder": "coord",
                 "guest": "d1", "host": "d2", "arbiter": "d3",
                 regions[0]: "d1", regions[1]: "d2", regions[2]: "d3"}
    summary["placement"] = placement
    fed = HostsFederation(tmp_path / "fed", [*fate_nodes, *hfl_nodes], hosts, placement, node_timeout=180)

    with fed, ListenerAudit(hosts) as audit:
        assert fed.address.startswith(hosts.addr["coord"] + ":")
        # positive control: the probe does see an open port (the coordinator's, from a department)
        assert hosts.connects("d1", "coord", int(fed.address.rpartition(":")[2]))
        with fed.client() as c:
            # PSI between d1 and d2
            psi = _wait(fed, c.submit(manifest_for(psi_spec)).job_id)
            assert psi.state == "succeeded", psi.reason
            psi_res = c.result(psi.job_id)
            assert psi_res["guest"]["intersection_size"] == 569
            summary["psi"] = {"state": psi.state, "intersection_size": psi_res["guest"]["intersection_size"]}

            # vertical LR across d1, d2, d3, with d2's link down in the middle of training
            job_id = c.submit(manifest_for(vlr_spec)).job_id
        # mid-job: the alignment is done and training envelopes flow
        wait_for_relay(fed, job_id, 12, poll=0.02, why="(the link was to go down there)")
        host_log = fed.procs["host"].log
        seen = host_log.read_text(errors="replace").count("coordinator connection lost")
        _ip("link", "set", hosts.veth("d2"), "down")
        t_down = time.monotonic()
        try:
            deadline = time.monotonic() + 120
            # the host's node notices (its long poll runs into its deadline or keepalive fails)
            while host_log.read_text(errors="replace").count("coordinator connection lost") == seen:
                assert time.monotonic() < deadline, fed.tail("host", 30)
                time.sleep(0.2)
            relay_at_down = relay_state(fed, job_id)
        finally:
            _ip("link", "set", hosts.veth("d2"), "up")
        outage = time.monotonic() - t_down
        vlr_st = _wait(fed, job_id)
        # resumed: node_timeout (180 s) outlasts the outage, so the watchdog had no cause to end it
        assert vlr_st.state == "succeeded", vlr_st.reason
        with fed.client() as c:
            vlr_res = c.result(job_id)["guest"]
        assert vlr_res["epochs"] == 4 and vlr_res["intersection_size"] == 569
        assert fed.procs["host"].popen.poll() is None  # the same process carried on
        summary["vertical_lr"] = {"state": vlr_st.state, "epochs": vlr_res["epochs"],
                                  "link_down": "d2 (host)", "outage_seconds": round(outage, 1),
                                  "relay_envelopes_when_down": relay_at_down[1],
                                  "relay_envelopes_at_end": relay_state(fed, job_id)[1]}

        # horizontal FL: one region per department host, aggregator + key holder on the coordinator host
        with fed.client() as c:
            hfl = _wait(fed, c.submit(hfl_manifest(regions, regions[0], HFL_PARAMS)).job_id)
            assert hfl.state == "succeeded", hfl.reason
            hfl_res = c.result(hfl.job_id)["aggregator"]
        assert hfl_res["rounds"] == 2 and all(e["participants"] == regions for e in hfl_res["participation"])
        assert np.isfinite(hfl_res["auc"]) and hfl_res["auc"] > 0.8
        summary["horizontal_fl"] = {"state": hfl.state, "rounds": hfl_res["rounds"], "auc": round(hfl_res["auc"], 4)}

    # no department host accepted a connection from any other host, on any port it listened on
    reachable = {f"{h} {a}:{p}": got for (h, a, p), got in audit.probed.items() if got}
    summary["department_listeners_probed"] = sorted(f"{h} {a}:{p}" for h, a, p in audit.probed)
    summary["department_listeners_reachable"] = reachable
    summary["exception"] = "HFL SuperLink (aggregator) listens on the coordinator host, not on a department host"
    out = tmp_path / "hosts-summary.json"
    out.write_text(json.dumps(summary, indent=2, sort_keys=True))
    print("\nmulti-host summary:", json.dumps(summary, indent=2, sort_keys=True))
    assert reachable == {}, reachable
    # not vacuous: while the HFL job ran, the audit saw (and probed) the loopback listeners the
    # regions' Flower SuperNodes open on every department host
    assert {h for h, _, _ in audit.probed} == {"d1", "d2", "d3"}, audit.probed
    for proc in fed.procs.values():
        assert proc.popen.poll() is not None  # nothing outlives the federation


def test_a_link_down_longer_than_node_timeout_fails_the_job_naming_the_host(hosts: Hosts, tmp_path: Path) -> None:
    """The other branch of the rule: an outage the job cannot wait out ends it cleanly, naming
    the host's node; once the link is back that node reconnects by itself (same process)."""
    vlr_spec = load_spec(_fate_spec(tmp_path, "vertical-lr"))
    nodes = federation_for(vlr_spec, tmp_path / "profiles").nodes
    placement = {"coordinator": "coord", "guest": "d1", "host": "d2", "arbiter": "d3"}
    fed = HostsFederation(tmp_path / "fed", nodes, hosts, placement, node_timeout=6)
    with fed:
        with fed.client() as c:
            job_id = c.submit(manifest_for(vlr_spec)).job_id
        wait_for_relay(fed, job_id, 12, poll=0.02, why="(the link was to go down there)")
        _ip("link", "set", hosts.veth("d2"), "down")
        try:
            deadline = time.monotonic() + 120
            while relay_state(fed, job_id)[0] not in TERMINAL:  # the watchdog's move, not a sleep
                assert time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            _ip("link", "set", hosts.veth("d2"), "up")
        with fed.client() as c:
            st = c.status(job_id)
        assert st.state == "failed"
        assert "node 'host' stopped responding" in st.reason, st.reason
        # back online by itself: the same process polls again and takes the job's abort task
        deadline = time.monotonic() + 120
        while f"job {job_id} aborted" not in fed.procs["host"].log.read_text(errors="replace"):
            assert time.monotonic() < deadline, fed.tail("host", 30)
            time.sleep(0.2)
        assert fed.procs["host"].popen.poll() is None
        log = fed.procs["host"].log.read_text(errors="replace")
        assert "Traceback" not in log and "closed channel" not in log, fed.tail("host", 40)
