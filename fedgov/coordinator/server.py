"""Coordinator process: configuration, gRPC server, liveness watchdog.

Config (``coordinator.toml``; paths relative to the file)::

    [coordinator]
    listen = "127.0.0.1:50051"     # host:port; port 0 picks a free port
    kit = "../federation/kits/coordinator"
    state_dir = "../federation/state/coordinator"
    node_timeout_seconds = 30      # a running job fails when a participant is silent this long
    max_payload_mb = 512           # largest relayed envelope
    metrics_listen = "127.0.0.1:9464"  # optional Prometheus endpoint; loopback addresses only

On start the coordinator writes ``<state_dir>/coordinator.addr`` with the
address it actually listens on, for scripts that asked for port 0.

Ledger: the log's Ed25519 signing key is ``<kit>/ledger.key`` when the admin
provisioned one, else ``<state_dir>/ledger.key``, generated (mode 0600) at the
first start. Its public half is written to ``<state_dir>/ledger.pub`` (hex) —
give that file to nodes (``<kit>/ledger.pub``) and auditors to pin the key out
of band. The log itself is ``<state_dir>/ledger.db``. See docs/protocols/ledger.md.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedgov.coordinator.gate import PeerGate, Sessions
from fedgov.coordinator.service import (
    JobsService,
    LedgerService,
    RegistryService,
    RelayService,
    key_statement,
)
from fedgov.coordinator.store import CoordinatorStore
from fedgov.crypto.kits import KitError, check_kit
from fedgov.crypto.pki import load_private_key, write_private_key
from fedgov.crypto.revocation import Revocations
from fedgov.errors import ConfigError
from fedgov.ledger.log import TransparencyLog, public_key_bytes
from fedgov.node.witness import endorse_log_key
from fedgov.privatefs import private_umask
from fedgov.tomlutil import check_keys, get_int, get_str, get_table, load_toml
from fedgov.transport.tls import SERVER_OPTIONS, TlsMaterial, server_credentials
from fedgov.v1 import jobs_pb2_grpc, ledger_pb2_grpc, registry_pb2_grpc, relay_pb2_grpc

log = logging.getLogger("fedgov.coordinator")


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str
    kit: Path
    state_dir: Path
    node_timeout: float = 30.0
    max_payload: int = 512 * 1024 * 1024
    #: loopback host:port of the Prometheus endpoint (None: no endpoint)
    metrics_listen: str | None = None

    @classmethod
    def load(cls, path: Path) -> CoordinatorConfig:
        doc = load_toml(path)
        where = str(path)
        check_keys(doc, ("coordinator",), where, required=("coordinator",))
        t = get_table(doc, "coordinator", where, required=True)
        w = f"{where}: coordinator"
        check_keys(
            t,
            ("listen", "kit", "state_dir", "node_timeout_seconds", "max_payload_mb", "metrics_listen"),
            w,
            required=("listen", "kit", "state_dir"),
        )
        base = path.parent
        listen = get_str(t, "listen", w)
        if ":" not in listen:
            raise ConfigError(f"listen must be host:port, got '{listen}'", where=w)
        metrics_listen = get_str(t, "metrics_listen", w) if "metrics_listen" in t else None
        if metrics_listen is not None:
            from fedgov.coordinator.prom import check_listen

            check_listen(metrics_listen, w)
        return cls(
            metrics_listen=metrics_listen,
            listen=listen,
            kit=(base / get_str(t, "kit", w)).resolve(),
            state_dir=(base / get_str(t, "state_dir", w)).resolve(),
            node_timeout=float(get_int(t, "node_timeout_seconds", w, 30, minimum=1)),
            max_payload=get_int(t, "max_payload_mb", w, 512, minimum=1) * 1024 * 1024,
        )


def ledger_key(kit: Path, state_dir: Path) -> Ed25519PrivateKey:
    """The log signing key: ``kit/ledger.key`` if provisioned, else ``state_dir/ledger.key`` (created 0600).

    Also (re)writes ``state_dir/ledger.pub`` with the public key in hex.
    """
    for path in (kit / "ledger.key", state_dir / "ledger.key"):
        if path.exists():
            key = load_private_key(path)
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError("the ledger key must be Ed25519", where=str(path))
            break
    else:
        state_dir.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        write_private_key(state_dir / "ledger.key", key)
        log.info("generated the ledger signing key %s", state_dir / "ledger.key")
    pub = state_dir / "ledger.pub"
    tmp = pub.with_name("ledger.pub.tmp")
    tmp.write_text(public_key_bytes(key.public_key()).hex() + "\n")
    tmp.chmod(0o644)  # public on purpose (auditors pin it)
    tmp.replace(pub)
    return key


class Coordinator:
    """A running coordinator: gRPC server plus watchdog thread."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        private_umask()  # every state file this process creates is 0600, every directory 0700
        self.material = TlsMaterial.from_kit(config.kit)
        if self.material.identity.role != "coordinator":
            raise ConfigError(
                f"kit certificate has role '{self.material.identity.role}', expected 'coordinator'",
                where=str(config.kit),
            )
        ca_cert = x509.load_pem_x509_certificate(self.material.ca)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        # the federation CA's revocation list: from the kit, else the last one published to us
        self.revocations = Revocations(
            ca_cert, store=config.state_dir / "crl.der", sources=(config.kit / "crl.pem",)
        )
        try:
            for warning in check_kit(config.kit, role="coordinator", revocations=self.revocations).warnings:
                log.warning("kit: %s", warning)
        except KitError as exc:
            raise ConfigError(f"cannot start: {exc}") from None
        self.store = CoordinatorStore(config.state_dir / "coordinator.db")
        self.store.reset_liveness()
        key = ledger_key(config.kit, config.state_dir)
        self.ledger = TransparencyLog(config.state_dir / "ledger.db", key)
        self.store.attach_ledger(self.ledger)
        statement = key_statement(
            self.ledger, self.material.cert, endorse_log_key(self.material.key, self.ledger.public_key)
        )
        # sessions registered before this start stay the node's for RESTART_GRACE_SECONDS (gate.py)
        self.gate = PeerGate(self.revocations, Sessions(persisted=self.store.registered_session))
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=64), options=SERVER_OPTIONS, interceptors=[self.gate]
        )
        registry_pb2_grpc.add_RegistryServicer_to_server(
            RegistryService(self.store, ca_cert, self.revocations), self.server
        )
        jobs_pb2_grpc.add_JobsServicer_to_server(JobsService(self.store, ca_cert), self.server)
        relay_pb2_grpc.add_RelayServicer_to_server(RelayService(self.store, config.max_payload), self.server)
        ledger_pb2_grpc.add_LedgerServicer_to_server(
            LedgerService(self.store, self.ledger, ca_cert, statement), self.server
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        host, _, port = config.listen.rpartition(":")
        try:
            self.port = self.server.add_secure_port(f"{host}:{port}", server_credentials(self.material))
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {config.listen}: {exc}", where="coordinator") from None
        if self.port == 0:
            raise ConfigError(f"cannot listen on {config.listen} (address in use?)", where="coordinator")
        self.address = f"{host}:{self.port}"
        self._stop = threading.Event()

    def start(self) -> None:
        self.server.start()
        for svc in ("", "fedgov.v1.Registry", "fedgov.v1.Jobs", "fedgov.v1.Relay", "fedgov.v1.Ledger"):
            self.health.set(svc, health_pb2.HealthCheckResponse.SERVING)
        threading.Thread(target=self._watchdog, name="watchdog", daemon=True).start()
        self.metrics_server = None
        if self.config.metrics_listen is not None:
            from fedgov.coordinator.prom import serve_metrics

            self.metrics_server = serve_metrics(
                self.config.metrics_listen, self.store, self.ledger, self.config.state_dir
            )
        addr_file = self.config.state_dir / "coordinator.addr"
        tmp = addr_file.with_suffix(".tmp")
        tmp.write_text(self.address + "\n")
        tmp.replace(addr_file)
        log.info("coordinator listening on %s (mTLS)", self.address)

    #: seconds between SQLite housekeeping passes (incremental vacuum, WAL checkpoint)
    HOUSEKEEPING_SECONDS = 30.0

    def _watchdog(self) -> None:
        last_housekeeping = 0.0
        while not self._stop.wait(1.0):
            if time.monotonic() - last_housekeeping >= self.HOUSEKEEPING_SECONDS:
                last_housekeeping = time.monotonic()
                try:
                    freed = self.store.housekeeping()
                    if freed:
                        log.info("housekeeping: %d free pages returned to the file system", freed)
                except sqlite3.Error as exc:
                    log.warning("housekeeping failed: %s", exc)
            for job_id, node, silent in self.store.stale_participants(self.config.node_timeout):
                if self.store.finish_job(
                    job_id, "failed", f"node '{node}' stopped responding ({silent:.0f} s without contact)"
                ):
                    log.warning("job %s failed: node %s silent for %.0f s", job_id, node, silent)

    def stop(self, grace: float = 2.0) -> None:
        self._stop.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if getattr(self, "metrics_server", None) is not None:
            self.metrics_server.shutdown()
        self.store.close()
        self.ledger.close()


def serve(config: CoordinatorConfig) -> None:
    """Run until SIGTERM/SIGINT."""
    coord = Coordinator(config)
    coord.start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    coord.stop()
