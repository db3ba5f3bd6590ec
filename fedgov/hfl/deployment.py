"""Start, supervise and tear down Flower's deployment engine for one fedgov job.

Processes (all started with the same marker environment variable so every
descendant Flower spawns — SuperExec, ``flwr-serverapp``, ``flwr-clientapp``,
which Flower starts in *new sessions* — can be found and killed):

* **SuperLink** (coordinator)::

    python -m fedgov.hfl._superlink --ssl-certfile superlink/tls.crt
        --ssl-keyfile superlink/tls.key --ssl-ca-certfile ca.crt
        --enable-supernode-auth --disable-runtime-dependency-installation
        --isolation subprocess --host LISTEN --port P

  ``fedgov.hfl._superlink`` is ``flower-superlink`` plus a guard that lets
  only loopback peers use the Control and Runtime APIs, which share the Fleet
  API's port in Flower 1.42. ``LISTEN`` is ``127.0.0.1`` on one host; with
  SuperNodes on other hosts it is ``0.0.0.0`` (or ``::``) and they dial the
  *advertised* name, which the SuperLink's certificate carries.
* **SuperNodes** (one per region)::

    flower-supernode --superlink ADVERTISED:P --root-certificates ca.crt
        --auth-supernode-private-key nodes/<r>/auth_key --port Q
        --node-config 'region="<r>" data-path="..." he-context-sha256="..."'
        --max-retries 3 --max-wait-time 20

  Each SuperNode's ECDSA P-384 key is generated here and its public key is
  registered first with ``flwr supernode register <key.pub> fedgov``; an
  unregistered SuperNode is refused by the SuperLink (exit code 305).
  Exit code 305 (also what a SuperNode restarted too early gets) is
  supervised: the node is restarted with back-off up to ``max_restarts``.
* **Key holder** (encrypted jobs): ``python -m fedgov.hfl.secure_agg``.
* **The run**: ``flwr run <app dir> fedgov --run-config run_config.toml
  --format json`` against the SuperLink's Control API on loopback, with
  ``FLWR_HOME`` pointing into the job directory (offline: telemetry, update
  checks and runtime dependency installation are disabled).

All processes use ``FLWR_HOME`` inside the job directory and never touch the
user's ``~/.flwr``. :meth:`Deployment.stop` SIGTERMs, then SIGKILLs, every
process carrying the job's marker (found through ``/proc``), including
orphans, so no Flower process outlives its job.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedgov.crypto import kits, pki
from fedgov.errors import ConfigError, JobFailed, TransportError
from fedgov.hfl import logreg, secure_agg
from fedgov.hfl._superlink import listen_addresses
from fedgov.hfl.evaluate import ALL, contribution, track_aucs

__all__ = [
    "EXIT_SUPERNODE_CONNECTION",
    "MARKER_ENV",
    "Deployment",
    "generate_supernode_keys",
    "marked_pids",
    "run_horizontal_job",
    "write_flower_app",
]

MARKER_ENV = "FEDGOV_HFL_DEPLOYMENT"
#: flwr ExitCode.SUPERNODE_CONNECTION_ERROR
EXIT_SUPERNODE_CONNECTION = 305
CONNECTION = "fedgov"
_BIN = Path(sys.executable).parent

DEFAULT_PARAMS: dict[str, Any] = {
    "rounds": 10, "local-steps": 20, "lr": 1.0, "l2": 1e-4, "min-clients": 2,
    "round-timeout": 60.0, "node-wait-timeout": 60.0, "contribution": True,
    "dp-clip": 0.0, "dp-noise": 0.0, "seed": 0,
}


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def generate_supernode_keys(key_dir: Path) -> tuple[Path, Path]:
    """Create a SuperNode authentication key pair (ECDSA P-384, OpenSSH format).

    Writes ``auth_key`` (0600, never overwritten) and ``auth_key.pub``; returns
    both paths. The public key is what the coordinator registers with the
    SuperLink; the private key never leaves the node.
    """
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP384R1())
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())
    pki.write_secret_file(key_dir / "auth_key", priv)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH)
    (key_dir / "auth_key.pub").write_bytes(pub + b"\n")
    return key_dir / "auth_key", key_dir / "auth_key.pub"


def marked_pids(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries ``MARKER_ENV=marker`` (Linux /proc)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes()
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if needle in env.split(b"\0") and ") Z" not in stat:
            out.append(int(d.name))
    return out


_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedgov-hfl"
version = "1.0.0"
description = "fedgov horizontal federated learning (logistic regression, CKKS aggregation)"
license = "Apache-2.0"
dependencies = ["flwr>=1.20"]

[tool.flwr.app]
publisher = "fedgov"

[tool.flwr.app.components]
serverapp = "fedgov.hfl.app:server_app"
clientapp = "fedgov.hfl.app:client_app"

[tool.flwr.app.config]
{config}
"""

_RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    **DEFAULT_PARAMS, "mode": "plain", "expected-clients": 2, "job-id": "",
    "result-path": "", "dim": 0, "he-context-path": "", "he-context-sha256": "",
    "coordinator-kit": "", "key-holder": "", "broker-port": 0, "broker-host": "127.0.0.1",
    "region-nodes": "", "test-round-barrier": "",
}


def hostport(host: str, port: int) -> str:
    """``host:port`` with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))


def write_flower_app(app_dir: Path) -> Path:
    """Write the Flower App directory (``pyproject.toml`` + a marker module) and return it.

    The components point at :mod:`fedgov.hfl.app`, which must be importable
    where the ServerApp/ClientApp run (runtime dependency installation is
    disabled, so nothing is installed from the FAB).
    """
    app_dir = Path(app_dir)
    app_dir.mkdir(parents=True, exist_ok=True)
    conf = "\n".join(f'"{k}" = {_toml_value(v)}' for k, v in _RUN_CONFIG_DEFAULTS.items())
    (app_dir / "pyproject.toml").write_text(_PYPROJECT.format(config=conf))
    (app_dir / "fedgov_hfl_app.py").write_text(
        '"""Marker module; the app lives in fedgov.hfl.app."""\n')
    return app_dir


# --------------------------------------------------------------------------- processes


@dataclass
class _Proc:
    name: str
    cmd: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    supervised: bool = False
    exit_codes: list[int] = field(default_factory=list)
    log_offset: int = 0

    def flower_exit_code(self) -> int | None:
        """Flower's exit code of the last spawn, or None if it is still running.

        Flower 1.42 logs ``Exit Code: 305`` but the SuperNode process itself
        may exit with status 1 (its HTTP server's shutdown wins), so the code
        Flower reported in this spawn's log takes precedence.
        """
        if self.popen is None or self.popen.poll() is None:
            return None
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self.log_offset)
                tail = fh.read().decode(errors="replace")
        except OSError:
            tail = ""
        codes = re.findall(r"Exit Code: (\d+)", tail)
        return int(codes[-1]) if codes else self.popen.returncode


class Deployment:
    """One job's Flower deployment on the coordinator's loopback interface.

    Guarantees: every process it or Flower starts for the job carries the
    job's marker and is killed by :meth:`stop` (also on ``with`` exit);
    Control/Runtime APIs answer only loopback peers; SuperNodes must be
    registered before they can connect.
    """

    def __init__(self, workdir: Path, *, port: int | None = None, max_restarts: int = 3,
                 restart_backoff: float = 1.0, superlink_ca: Path | None = None,
                 listen: str = "127.0.0.1", advertise: str | None = None) -> None:
        """``superlink_ca``: run only the SuperNode side of a deployment whose
        SuperLink (at ``advertise:port``) another process or host runs, trusting
        that CA certificate; no PKI is created then.

        ``listen``: the address the SuperLink (and the decryption broker)
        bind: loopback (default, single host) or a wildcard (``0.0.0.0``,
        ``::``) so SuperNodes on other hosts reach the Fleet API; the Control
        and Runtime APIs still answer only loopback peers. ``advertise``: the
        host name or address SuperNodes and the key holder dial (in the
        SuperLink's TLS certificate); defaults to ``listen`` unless that is a
        wildcard, which needs an explicit name.
        """
        self.listen, self.advertise = listen_addresses(listen, advertise)
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.marker = uuid.uuid4().hex
        self.port = port or _free_port()
        self.max_restarts = max_restarts
        self.restart_backoff = restart_backoff
        self.pki_dir = self.workdir / "pki"
        self.flwr_home = self.workdir / "flwr_home"
        self.procs: dict[str, _Proc] = {}
        self.node_ids: dict[str, int] = {}
        self.events: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._remote_ca = Path(superlink_ca).resolve() if superlink_ca is not None else None
        if self._remote_ca is None:
            self._ensure_pki()

    # ---- PKI

    def _ensure_pki(self) -> None:
        ca = self.pki_dir / "ca"
        if not (ca / "ca.crt").exists():
            pki.create_ca(ca, "fedgov hfl job")
        if not (self.pki_dir / "superlink" / "tls.crt").exists():
            hosts = tuple(dict.fromkeys(("localhost", "127.0.0.1", self.advertise)))
            kits.issue_kit(ca, self.pki_dir / "superlink", "superlink", "coordinator", hosts=hosts)

    @property
    def ca_cert(self) -> Path:
        if self._remote_ca is not None:
            return self._remote_ca
        return self.pki_dir / "ca" / "ca.crt"

    def issue_node_kit(self, name: str) -> Path:
        """Issue (once) a node TLS kit for ``name`` under ``pki/<name>``; return its directory."""
        kit = self.pki_dir / name
        if not (kit / "tls.crt").exists():
            kits.issue_kit(self.pki_dir / "ca", kit, name, "node", department=name)
        return kit

    # ---- environment

    def env(self, flwr_home: Path | None = None) -> dict[str, str]:
        """Environment for every process of this job (offline, marked, job-local FLWR_HOME)."""
        env = dict(os.environ)
        env.update({
            MARKER_ENV: self.marker,
            "PATH": f"{_BIN}{os.pathsep}{env.get('PATH', '')}",
            "FLWR_HOME": str(flwr_home or self.flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
        })
        return env

    def _spawn(self, p: _Proc, env: dict[str, str]) -> None:
        p.log.parent.mkdir(parents=True, exist_ok=True)
        p.log_offset = p.log.stat().st_size if p.log.exists() else 0
        fh = open(p.log, "ab")  # noqa: SIM115 - owned by the child
        try:
            p.popen = subprocess.Popen(p.cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       cwd=self.workdir)
        finally:
            fh.close()
        p.env = env  # type: ignore[attr-defined]

    # ---- SuperLink

    def start_superlink(self, *, timeout: float = 30.0) -> None:
        """Start the SuperLink with TLS and SuperNode auth; wait until its Control API answers."""
        kit = self.pki_dir / "superlink"
        cmd = [sys.executable, "-m", "fedgov.hfl._superlink",
               "--ssl-certfile", str(kit / "tls.crt"), "--ssl-keyfile", str(kit / "tls.key"),
               "--ssl-ca-certfile", str(self.ca_cert), "--enable-supernode-auth",
               "--disable-runtime-dependency-installation", "--isolation", "subprocess",
               "--host", self.listen, "--port", str(self.port)]
        local = "::1" if self.listen in ("::", "::1") else "127.0.0.1"
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(  # the flwr CLI: always over loopback
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{hostport(local, self.port)}"\nroot-certificates = "{self.ca_cert}"\n')
        p = _Proc("superlink", cmd, self.workdir / "logs" / "superlink.log")
        self.procs["superlink"] = p
        self._spawn(p, self.env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.popen is not None and p.popen.poll() is not None:
                raise TransportError(f"SuperLink exited with code {p.popen.returncode}; "
                                     f"see {p.log}")
            with contextlib.suppress(OSError), socket.create_connection(
                    (local, self.port), timeout=0.5):
                return
            time.sleep(0.2)
        raise TransportError(f"SuperLink did not listen on port {self.port} in {timeout:.0f} s")

    def flwr(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """Run the ``flwr`` CLI against this SuperLink with ``--format json``; return its JSON."""
        cmd = [str(_BIN / "flwr"), *args, "--format", "json"]
        r = subprocess.run(cmd, env=self.env(), capture_output=True, timeout=timeout,
                           cwd=self.workdir, start_new_session=True)
        out = r.stdout.decode(errors="replace")
        start = out.find("{")
        try:
            data = json.loads(out[start:]) if start >= 0 else {}
        except json.JSONDecodeError:
            data = {}
        if r.returncode != 0 or not data.get("success", False):
            err = (data.get("error-message") or r.stderr.decode(errors="replace")
                   or out).strip()[-800:]
            raise TransportError(f"`flwr {' '.join(args[:2])}` failed: {err}")
        return data

    # ---- SuperNodes

    def register_supernode(self, name: str) -> int:
        """Generate (once) the node's auth keys and register the public key; return the node ID."""
        ndir = self.workdir / "nodes" / name
        if not (ndir / "auth_key").exists():
            generate_supernode_keys(ndir)
        data = self.flwr("supernode", "register", str(ndir / "auth_key.pub"), CONNECTION,
                         "--name", name.replace("_", "-"))
        self.node_ids[name] = int(data["node-id"])
        return self.node_ids[name]

    def register_public_key(self, name: str, public_key: bytes) -> int:
        """Register a SuperNode public key created elsewhere (OpenSSH ECDSA); return the node ID.

        For SuperNodes on other hosts: their private key never comes here.
        """
        if not public_key.startswith(b"ecdsa-sha2-nistp384 ") or b"\n" in public_key.strip():
            raise ConfigError(f"SuperNode key of {name} is not an OpenSSH ECDSA P-384 public key")
        ndir = self.workdir / "nodes" / name
        ndir.mkdir(parents=True, exist_ok=True)
        (ndir / "auth_key.pub").write_bytes(public_key.strip() + b"\n")
        data = self.flwr("supernode", "register", str(ndir / "auth_key.pub"), CONNECTION,
                         "--name", name.replace("_", "-"))
        self.node_ids[name] = int(data["node-id"])
        return self.node_ids[name]

    def register_supernodes(self, names: list[str]) -> dict[str, int]:
        """Register several SuperNodes concurrently (one ``flwr`` CLI call each); return IDs."""
        with futures.ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
            ids = list(pool.map(self.register_supernode, names))
        return dict(zip(names, ids, strict=True))

    def start_supernode(self, name: str, node_config: dict[str, Any], *,
                        supervise: bool = True, max_retries: int = 3,
                        max_wait_time: float = 20.0) -> None:
        """Start the SuperNode of ``name`` (keys under ``nodes/<name>``, created if missing).

        Does not register it: call :meth:`register_supernode` first, or the
        SuperLink refuses it. With ``supervise`` an exit with code 305 is
        retried with back-off up to ``max_restarts`` times.
        """
        ndir = self.workdir / "nodes" / name
        if not (ndir / "auth_key").exists():
            generate_supernode_keys(ndir)
        conf = " ".join(f"{k}={_toml_value(v)}" for k, v in node_config.items())
        cmd = [str(_BIN / "flower-supernode"), "--superlink", hostport(self.advertise, self.port),
               "--root-certificates", str(self.ca_cert),
               "--auth-supernode-private-key", str(ndir / "auth_key"),
               "--host", "127.0.0.1", "--port", str(_free_port()),
               "--max-retries", str(max_retries), "--max-wait-time", str(max_wait_time),
               "--node-config", conf]
        p = _Proc(f"supernode:{name}", cmd, self.workdir / "logs" / f"supernode-{name}.log",
                  supervised=supervise)
        with self._lock:
            self.procs[p.name] = p
        self._spawn(p, self.env(ndir / "flwr_home"))
        if supervise and self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                                name="fedgov-hfl-supervisor")
            self._supervisor.start()

    def _supervise(self) -> None:
        while not self._stop.wait(0.3):
            with self._lock:
                procs = [p for p in self.procs.values() if p.supervised]
            for p in procs:
                if p.popen is None or p.popen.poll() is None:
                    continue
                code = p.flower_exit_code()
                assert code is not None
                p.exit_codes.append(code)
                if code == EXIT_SUPERNODE_CONNECTION and p.restarts < self.max_restarts:
                    p.restarts += 1
                    self.events.append(f"{p.name} exited 305; restart {p.restarts}")
                    self._stop.wait(self.restart_backoff * p.restarts)
                    if self._stop.is_set() or not p.supervised:
                        return
                    self._spawn(p, p.env)  # type: ignore[attr-defined]
                else:
                    p.supervised = False
                    self.events.append(f"{p.name} exited with code {code}; not restarted")

    def wait_nodes_online(self, names: list[str], timeout: float = 60.0) -> list[str]:
        """Wait until the named registered nodes are online; return those that are."""
        want = {self.node_ids[n]: n for n in names if n in self.node_ids}
        deadline = time.monotonic() + timeout
        online: list[str] = []
        while time.monotonic() < deadline:
            data = self.flwr("supernode", "ls", CONNECTION)
            online = [want[int(n["node-id"])] for n in data.get("nodes", [])
                      if int(n["node-id"]) in want and n.get("status") == "online"]
            if len(online) == len(want):
                break
            time.sleep(1.0)
        return sorted(online)

    def drop_node(self, name: str) -> None:
        """Kill a SuperNode and all it spawned, without restart (a region dropping out)."""
        p = self.procs.get(f"supernode:{name}")
        if p is None or p.popen is None:
            return
        p.supervised = False
        _kill_group(p.popen.pid, signal.SIGKILL)
        # its SuperExec / ClientApp live in other sessions: find them by parentage
        for pid in _descendants(p.popen.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p.popen.wait(timeout=5)

    # ---- key holder

    def start_key_holder(self, name: str, broker_port: int, *,
                         min_contributors: int = 2) -> secure_agg.KeyMaterial:
        """Create the key holder's CKKS keys and TLS kit; start its process; return the key info."""
        kdir = self.workdir / "keyholder" / name
        if (kdir / "secret.ctx").exists():
            pub = (kdir / "public.ctx").read_bytes()
            km = secure_agg.KeyMaterial(kdir / "secret.ctx", kdir / "public.ctx",
                                        secure_agg.fingerprint(pub))
        else:
            km = secure_agg.create_key_material(kdir)
        kit = self.issue_node_kit(name)
        cmd = [sys.executable, "-m", "fedgov.hfl.secure_agg", "--kit", str(kit),
               "--secret-context", str(km.secret_context),
               "--broker", hostport(self.advertise, broker_port),
               "--min-contributors", str(min_contributors),
               "--audit-log", str(kdir / "decryptions.jsonl")]
        p = _Proc(f"keyholder:{name}", cmd, self.workdir / "logs" / f"keyholder-{name}.log")
        self.procs[p.name] = p
        self._spawn(p, self.env())
        return km

    # ---- runs

    def run_app(self, run_config: dict[str, Any], *, timeout: float = 600.0) -> dict[str, Any]:
        """``flwr run`` the fedgov app; wait for its result file; return the result.

        Raises JobFailed with the ServerApp's reason if the run fails, or if
        it ends without a result (Flower itself may report success).
        """
        app_dir = write_flower_app(self.workdir / "app")
        result_path = Path(run_config["result-path"])
        result_path.unlink(missing_ok=True)
        cfg_file = self.workdir / "run_config.toml"
        cfg_file.write_text("".join(f'"{k}" = {_toml_value(v)}\n' for k, v in run_config.items()))
        data = self.flwr("run", str(app_dir), CONNECTION, "--run-config", str(cfg_file))
        run_id = str(data["run-id"])
        deadline = time.monotonic() + timeout
        status = ""
        last_poll = 0.0
        while time.monotonic() < deadline:
            res = _read_json(result_path)
            if res and res.get("status") in ("completed", "failed"):
                break
            if time.monotonic() - last_poll > 10.0:
                last_poll = time.monotonic()
                runs = self.flwr("ls", CONNECTION, "--run-id", run_id).get("runs", [])
                status = runs[0].get("status", "") if runs else ""
                if status.startswith("finished"):
                    time.sleep(0.5)
                    break
            time.sleep(0.2)
        else:
            raise JobFailed(f"run {run_id} did not finish within {timeout:.0f} s")
        res = _read_json(result_path) or {}
        res["flower_run_id"] = run_id
        if res.get("status") == "completed":
            return res
        reason = res.get("reason") or (f"the ServerApp ended ({status or 'unknown status'}) "
                                       f"without a result; see {self.workdir / 'logs'}")
        raise JobFailed(reason, where=f"horizontal-fl run {run_id}")

    # ---- teardown

    def flower_pids(self) -> list[int]:
        """Live PIDs of every process of this deployment (incl. Flower's own children)."""
        return marked_pids(self.marker)

    def stop(self, *, grace: float = 3.0) -> None:
        """Terminate every process of this job (TERM, then KILL after ``grace`` s). Idempotent."""
        self._stop.set()
        for p in self.procs.values():
            p.supervised = False
        for p in self.procs.values():
            if p.popen is not None and p.popen.poll() is None:
                _kill_group(p.popen.pid, signal.SIGTERM)
        for pid in self.flower_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.flower_pids():
            time.sleep(0.1)
        for _ in range(3):
            pids = self.flower_pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        for p in self.procs.values():
            if p.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=2)

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- job API


def run_horizontal_job(workdir: Path, regions: dict[str, Path | str], params: dict[str, Any],
                       *, validation: Path | str, key_holder: str | None = None,
                       encrypted: bool = True, keep_workdir: bool = True,
                       listen: str = "127.0.0.1", advertise: str | None = None) -> dict[str, Any]:
    """Run one horizontal-FL job end to end on this host and return its result.

    ``regions`` maps region name → that bureau's feature table (CSV);
    ``validation`` is the labelled validation table the caller holds (it is
    evaluated here, after the run, never sent to the ServerApp);
    ``params`` overrides :data:`DEFAULT_PARAMS` (rounds, local-steps, lr, l2,
    min-clients, round-timeout, contribution, dp-clip, dp-noise, seed).
    With ``encrypted`` the ``key_holder`` (required, must not be a region
    name reserved for the aggregator) generates the CKKS keys and decrypts
    only sums. The result holds ``status``, ``weights``, ``auc_validation``,
    ``rounds`` (participation per round), ``contribution`` (leave-one-out),
    ``seconds_per_round``, ``aggregator_context_is_private`` (always False)
    and ``deployment`` (node IDs, supervision events). Raises JobFailed with
    a clear reason; every process is stopped before returning or raising.
    ``listen`` / ``advertise``: where the SuperLink binds and the name
    SuperNodes dial (see :class:`Deployment`).
    """
    workdir = Path(workdir)
    if not regions:
        raise ConfigError("a horizontal-fl job needs at least one region")
    for r in regions:
        pki.validate_name(r, what="region")
    if encrypted:
        if not key_holder:
            raise ConfigError("an encrypted horizontal-fl job needs a key_holder")
        pki.validate_name(key_holder, what="key_holder")
        if key_holder in ("superlink", "coordinator", "aggregator"):
            raise ConfigError("the key holder must not be the aggregator")
    p = {**DEFAULT_PARAMS, **params}
    if int(p["min-clients"]) < secure_agg.MIN_SUM_CONTRIBUTORS:
        raise ConfigError(f"min-clients must be >= {secure_agg.MIN_SUM_CONTRIBUTORS}")
    # the validation table stays with the caller: the ServerApp never sees it
    xv, yv, xv_names = logreg.load_table(validation)
    dep = Deployment(workdir, listen=listen, advertise=advertise)
    try:
        dep.start_superlink()
        ids = dep.register_supernodes(list(regions))
        run_cfg: dict[str, Any] = {
            **{k: p[k] for k in DEFAULT_PARAMS}, "mode": "encrypted" if encrypted else "plain",
            "expected-clients": len(regions), "job-id": uuid.uuid4().hex,
            "result-path": str(dep.workdir / "result.json"),
            "dim": len(xv_names) + 1,
            "region-nodes": ",".join(f"{n}={i}" for n, i in ids.items()),
        }
        pin = ""
        if encrypted:
            assert key_holder is not None
            broker_port = _free_port()
            km = dep.start_key_holder(key_holder, broker_port,
                                      min_contributors=secure_agg.MIN_SUM_CONTRIBUTORS)
            pin = km.sha256
            run_cfg.update({"he-context-path": str(km.public_context),
                            "he-context-sha256": km.sha256,
                            "coordinator-kit": str(dep.pki_dir / "superlink"),
                            "key-holder": key_holder, "broker-port": broker_port,
                            "broker-host": dep.listen})
        for name, path in regions.items():
            conf: dict[str, Any] = {"region": name, "data-path": str(Path(path).resolve())}
            if pin:
                conf["he-context-sha256"] = pin
            dep.start_supernode(name, conf)
        res = dep.run_app(run_cfg)
        tracks = res.get("track_weights") or {ALL: res["weights"]}
        res.update(contribution(track_aucs(tracks, xv, yv, list(regions)), list(regions)))
        res["deployment"] = {"node_ids": ids, "events": list(dep.events)}
        return res
    finally:
        dep.stop()
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
