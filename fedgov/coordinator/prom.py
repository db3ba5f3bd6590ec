"""The coordinator's Prometheus endpoint (``metrics_listen`` in coordinator.toml).

Plain HTTP, so it binds to a loopback address only (:func:`check_listen`
refuses anything else): a scraper on the coordinator's host (or an SSH/mTLS
tunnel the operator sets up) reads it; nobody on the network does. It
exposes operational counts only — jobs by state, relay queue depth, bytes
relayed, ledger size and witness lag — never a job's content, a requester or
a department's data.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fedgov.errors import ConfigError

log = logging.getLogger("fedgov.coordinator")

JOB_STATES = ("submitted", "running", "succeeded", "failed", "rejected", "cancelled")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names the local host only (127.0.0.0/8, ::1 or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(listen: str, where: str) -> tuple[str, int]:
    """``(host, port)`` of a loopback ``host:port``; :class:`ConfigError` otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"metrics_listen must be host:port, got '{listen}'", where=where)
    if not is_loopback(host):
        raise ConfigError(
            f"metrics_listen '{listen}' is not a loopback address: the metrics endpoint is plain HTTP, "
            "so it binds to 127.0.0.1 or ::1 only (reach it through an SSH or mTLS tunnel)",
            where=where,
        )
    return host.strip("[]"), int(port)


class CoordinatorCollector(Collector):
    """Reads the store and the ledger at every scrape (no state of its own)."""

    def __init__(self, store: Any, ledger: Any) -> None:
        self.store = store
        self.ledger = ledger

    def collect(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily("fedgov_jobs", "Jobs by state", labels=["state"])
        counts = self.store.job_counts()
        for state in sorted(set(JOB_STATES) | set(counts)):
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        messages, size = self.store.relay_depth()
        yield GaugeMetricFamily("fedgov_relay_queue_messages", "Envelopes held by the relay", value=messages)
        yield GaugeMetricFamily("fedgov_relay_queue_bytes", "Bytes held by the relay", value=size)
        moved = CounterMetricFamily("fedgov_relay_bytes", "Envelope bytes relayed since start", labels=["direction"])
        moved.add_metric(["in"], self.store.relay_bytes_in)
        moved.add_metric(["out"], self.store.relay_bytes_out)
        yield moved
        yield GaugeMetricFamily("fedgov_ledger_entries", "Entries in the ledger", value=self.ledger.size)
        lag = GaugeMetricFamily(
            "fedgov_witness_lag_entries", "Ledger entries not yet cosigned, per witness", labels=["witness"]
        )
        latest: dict[str, int] = {}
        for c in self.ledger.cosignatures():
            latest[c.witness] = max(latest.get(c.witness, 0), c.sth.size)
        for w, s in sorted(latest.items()):
            lag.add_metric([w], self.ledger.size - s)
        yield lag


def serve_metrics(listen: str, store: Any, ledger: Any, state_dir: Path) -> Any:
    """Start the endpoint; writes ``<state_dir>/metrics.addr`` with the bound address; returns the server."""
    host, port = check_listen(listen, "coordinator: metrics_listen")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoordinatorCollector(store, ledger))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {listen} for metrics: {exc.strerror}", where="coordinator") from None
    bound = f"{host}:{server.server_port}" if ":" not in host else f"[{host}]:{server.server_port}"
    tmp = state_dir / "metrics.addr.tmp"
    tmp.write_text(bound + "\n")
    tmp.replace(state_dir / "metrics.addr")
    log.info("metrics on http://%s/metrics (loopback only)", bound)
    return server
