"""Local federation: a coordinator and nodes as separate processes on loopback.

Used by ``fedgov run``, ``fedgov demo``, the multi-process tests and the
benches. It provisions a throwaway CA and kits, writes real config files,
starts ``python -m fedgov coordinator start`` and ``python -m fedgov node
start`` as subprocesses (mutual TLS over 127.0.0.1) and guarantees teardown:
every process it started is terminated, then killed, when the federation
closes — also on error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedgov.client import Client
from fedgov.crypto.kits import issue_kit
from fedgov.crypto.pki import create_ca
from fedgov.errors import FedgovError


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid TOML basic string


@dataclass
class DatasetSpec:
    name: str
    schema: Path
    source: str
    table: str | None = None
    query: str | None = None


@dataclass
class NodeSpec:
    name: str
    policy: Path
    datasets: list[DatasetSpec] = field(default_factory=list)
    #: extra environment of this node's process only, on top of the caller's (tests: e.g. a
    #: PYTHONPATH whose sitecustomize makes this one node misbehave); empty for real federations
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


class LocalFederation:
    """Context manager owning every process of a loopback federation."""

    def __init__(
        self,
        workdir: Path,
        nodes: list[NodeSpec],
        *,
        approvers: dict[str, list[str]] | None = None,
        extra_kits: list[tuple[str, str]] | None = None,
        node_timeout: int = 20,
        max_payload_mb: int = 512,
        crl_refresh_seconds: float | None = None,
        metrics_listen: str | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        self.nodes = nodes
        self.approvers = approvers or {}
        #: (name, role) of further identities to provision without starting a process
        self.extra_kits = extra_kits or []
        self.node_timeout = node_timeout
        self.max_payload_mb = max_payload_mb
        #: nodes' revocation-list refresh interval (None: the node default)
        self.crl_refresh_seconds = crl_refresh_seconds
        #: the coordinator's Prometheus endpoint (None: none)
        self.metrics_listen = metrics_listen
        self.procs: dict[str, Proc] = {}
        self.address = ""
        self.kits = self.workdir / "kits"

    # -- provisioning and configs -----------------------------------------
    def provision(self) -> None:
        ca = self.workdir / "ca"
        create_ca(ca, "fedgov local federation")
        issue_kit(
            ca, self.kits / "coordinator", "coordinator", "coordinator", hosts=["127.0.0.1", "localhost"]
        )
        for n in self.nodes:
            issue_kit(ca, self.kits / n.name, n.name, "node")
        issue_kit(ca, self.kits / "analyst", "analyst", "analyst")
        issue_kit(ca, self.kits / "admin", "admin", "admin")
        issue_kit(ca, self.kits / "auditor", "auditor", "auditor")
        for name, role in self.extra_kits:
            issue_kit(ca, self.kits / name, name, role)
        for dept, names in self.approvers.items():
            for name in names:
                issue_kit(ca, self.kits / name, name, "approver", department=dept)

    def coordinator_config(self) -> Path:
        path = self.workdir / "coordinator.toml"
        path.write_text(
            "[coordinator]\n"
            'listen = "127.0.0.1:0"\n'
            f"kit = {_toml_str(str(self.kits / 'coordinator'))}\n"
            f"state_dir = {_toml_str(str(self.workdir / 'state' / 'coordinator'))}\n"
            f"node_timeout_seconds = {self.node_timeout}\n"
            f"max_payload_mb = {self.max_payload_mb}\n"
            + (f"metrics_listen = {_toml_str(self.metrics_listen)}\n" if self.metrics_listen else "")
        )
        return path

    def node_config(self, spec: NodeSpec) -> Path:
        lines = [
            "[node]",
            f"name = {_toml_str(spec.name)}",
            f"coordinator = {_toml_str(self.address)}",
            f"kit = {_toml_str(str(self.kits / spec.name))}",
            f"state_dir = {_toml_str(str(self.workdir / 'state' / spec.name))}",
            f"policy = {_toml_str(str(spec.policy.resolve()))}",
        ]
        if self.crl_refresh_seconds is not None:
            lines.append(f"crl_refresh_seconds = {float(self.crl_refresh_seconds)}")
        for d in spec.datasets:
            lines += [
                "",
                "[[datasets]]",
                f"name = {_toml_str(d.name)}",
                f"schema = {_toml_str(str(d.schema.resolve()))}",
                f"source = {_toml_str(d.source)}",
            ]
            if d.table:
                lines.append(f"table = {_toml_str(d.table)}")
            if d.query:
                lines.append(f"query = {_toml_str(d.query)}")
        path = self.workdir / "nodes" / spec.name / "node.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return path

    # -- processes ---------------------------------------------------------
    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
        with log.open("ab") as fh:
            popen = subprocess.Popen(
                [sys.executable, "-m", "fedgov", *args],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc

    def start_coordinator(self, *, timeout: float = 30.0) -> None:
        addr_file = self.workdir / "state" / "coordinator" / "coordinator.addr"
        addr_file.unlink(missing_ok=True)
        proc = self._spawn(
            "coordinator", ["coordinator", "start", "--config", str(self.coordinator_config())]
        )
        deadline = time.monotonic() + timeout
        while not addr_file.exists():
            if proc.popen.poll() is not None:
                raise FedgovError(f"coordinator exited at start: {self.last_error('coordinator')}")
            if time.monotonic() > deadline:
                raise FedgovError("coordinator did not start within 30 s")
            time.sleep(0.05)
        new = addr_file.read_text().strip()
        if self.address and new != self.address:
            # keep the port across restarts so running nodes reconnect
            raise FedgovError(f"coordinator came back on {new}, not {self.address}")
        self.address = new

    def restart_coordinator_on_same_port(self, *, timeout: float = 30.0) -> None:
        """Start the coordinator again on the address it had (after a kill)."""
        path = self.workdir / "coordinator.toml"
        text = path.read_text().replace('listen = "127.0.0.1:0"', f"listen = {_toml_str(self.address)}")
        path.write_text(text)
        addr_file = self.workdir / "state" / "coordinator" / "coordinator.addr"
        addr_file.unlink(missing_ok=True)
        proc = self._spawn("coordinator", ["coordinator", "start", "--config", str(path)])
        deadline = time.monotonic() + timeout
        while not addr_file.exists():
            if proc.popen.poll() is not None:
                if time.monotonic() > deadline:
                    raise FedgovError(f"coordinator could not restart:\n{self.tail('coordinator')}")
                time.sleep(0.5)  # the port may still be held briefly; try again
                proc = self._spawn("coordinator", ["coordinator", "start", "--config", str(path)])
                continue
            if time.monotonic() > deadline:
                raise FedgovError("coordinator did not restart within the timeout")
            time.sleep(0.05)

    def start_node(self, spec: NodeSpec) -> None:
        self._spawn(spec.name, ["node", "start", "--config", str(self.node_config(spec))], spec.env)

    def client(self, who: str = "analyst") -> Client:
        return Client(self.kits / who, self.address)

    def wait_registered(self, names: list[str], *, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client("admin") as admin:
            while True:
                want = {spec.name: len(spec.datasets) for spec in self.nodes}
                ready = {
                    n["name"] for n in admin.nodes() if n["online"] and len(n["datasets"]) >= want.get(n["name"], 0)
                }
                missing = [n for n in names if n not in ready]
                if not missing:
                    return
                for n in missing:
                    p = self.procs.get(n)
                    if p is not None and p.popen.poll() is not None:
                        raise FedgovError(f"node '{n}' exited at start: {self.last_error(n)}")
                if time.monotonic() > deadline:
                    raise FedgovError(f"nodes not registered after {timeout:.0f} s: {', '.join(missing)}")
                time.sleep(0.2)

    def start(self) -> LocalFederation:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.provision()
        self.start_coordinator()
        for spec in self.nodes:
            self.start_node(spec)
        self.wait_registered([n.name for n in self.nodes])
        return self

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.popen.poll() is None:
            os.killpg(proc.popen.pid, sig)
            proc.popen.wait(timeout=10)

    def tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join(self.procs[name].log.read_text(errors="replace").splitlines()[-lines:])
        except (KeyError, OSError):
            return ""

    def last_error(self, name: str) -> str:
        """The last ``fedgov: error:`` line a process printed (or its last line)."""
        lines = self.tail(name, 50).splitlines()
        for line in reversed(lines):
            if line.startswith("fedgov: error: "):
                return line.removeprefix("fedgov: error: ")
        return lines[-1] if lines else "(no output)"

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs.values():
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()

    def __enter__(self) -> LocalFederation:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_job(fed: LocalFederation, manifest: str, *, timeout: float = 600.0) -> dict[str, Any]:
    """Submit as the analyst, wait, return ``{"job": status, "result": ...}``."""
    with fed.client("analyst") as c:
        job = c.submit(manifest)
        status = c.wait(job.job_id, timeout=timeout)
        out: dict[str, Any] = {"job": status.to_dict()}
        if status.state == "succeeded":
            out["result"] = c.result(job.job_id)
        return out
