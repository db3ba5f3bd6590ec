"""Operator views: the federation at a glance (``fedgov status``) and a job's progress
(``fedgov job follow``), both read over the caller's mutual-TLS connection.

What a view shows is what the coordinator lets the caller's certificate see:
an admin or auditor sees every job; an analyst only its own jobs (and so only
their pending approvals); nodes and certificates are public to members.
Nothing here is a new source of truth: every line is read from the
coordinator's existing calls (ListNodes, GetKeyBundle, List, GetHead,
GetCosignatures).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any

from cryptography import x509

from fedgov.client import TERMINAL, Client, JobEvent, JobStatus
from fedgov.crypto.revocation import Revocations
from fedgov.errors import FedgovError
from fedgov.v1 import ledger_pb2, ledger_pb2_grpc


def iso(ts: float | int | None, *, ms: bool = False) -> str | None:
    """An epoch time (seconds, or milliseconds with ``ms``) as ISO-8601 UTC, to the second."""
    if ts is None or ts == 0:
        return None
    seconds = ts / 1000 if ms else ts
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _cert_expiry(cert: x509.Certificate | None) -> str | None:
    if cert is None:
        return None
    return cert.not_valid_after_utc.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def federation_status(client: Client, *, now: float | None = None) -> dict[str, Any]:
    """One snapshot: nodes (online, last contact, certificate expiry), jobs by state,
    running jobs, pending approvals per department, ledger head and witnesses.

    Guarantees: read-only; raises :class:`FedgovError` (one line) when the
    coordinator cannot be reached.
    """
    now = time.time() if now is None else now
    ca = x509.load_pem_x509_certificate(client.material.ca)
    revocations = Revocations(ca)
    nodes = []
    for n in client.nodes():
        try:
            cert = client._node_keys(n["name"], ca, revocations).signing_cert
            expiry, problem = _cert_expiry(cert), None
        except FedgovError as exc:
            expiry, problem = None, str(exc)
        row = {
            "name": n["name"],
            "online": n["online"],
            "last_contact": iso(n["last_seen"]),
            "seconds_since_contact": round(max(0.0, now - n["last_seen"]), 1) if n["last_seen"] else None,
            "certificate_expires": expiry,
            "datasets": len(n["datasets"]),
        }
        if problem:
            row["certificate_problem"] = problem
        nodes.append(row)
    jobs = client.list()
    by_state: dict[str, int] = {}
    for j in jobs:
        by_state[j.state] = by_state.get(j.state, 0) + 1
    running = [
        {"job_id": j.job_id, "kind": j.kind, "requester": j.requester, "since": iso(j.created_at),
         "waiting_for": sorted(p.node for p in j.participants if p.task_state not in ("succeeded",))}
        for j in jobs if j.state == "running"
    ]
    pending: dict[str, list[str]] = {}
    for j in jobs:
        if j.state == "submitted":
            for p in j.participants:
                if p.decision == "pending":
                    pending.setdefault(p.node, []).append(j.job_id)
    return {
        "ok": True,
        "as": {"name": client.identity.name, "role": client.identity.role},
        "time": iso(now),
        "nodes": sorted(nodes, key=lambda r: r["name"]),
        "jobs": {"by_state": dict(sorted(by_state.items())), "running": running},
        "pending_approvals": {d: sorted(v) for d, v in sorted(pending.items())},
        "ledger": _ledger_status(client),
    }


def _ledger_status(client: Client) -> dict[str, Any]:
    stub = ledger_pb2_grpc.LedgerStub(client._channel)
    head = client._call(stub.GetHead, ledger_pb2.GetHeadRequest())
    cos = client._call(stub.GetCosignatures, ledger_pb2.GetCosignaturesRequest())
    latest: dict[str, tuple[int, int]] = {}
    for c in cos.cosignatures:
        size, ts = int(c.head.size), int(c.head.timestamp)
        if c.witness not in latest or (size, ts) > latest[c.witness]:
            latest[c.witness] = (size, ts)
    size = int(head.head.size)
    coord_cert = (
        x509.load_pem_x509_certificate(head.key.coordinator_cert_pem) if head.key.coordinator_cert_pem else None
    )
    return {
        "size": size,
        "root": head.head.root.hex(),
        "signed_at": iso(int(head.head.timestamp), ms=True),
        "coordinator_certificate_expires": _cert_expiry(coord_cert),
        "witnesses": [
            {"witness": w, "cosigned_size": s, "cosigned_at": iso(ts, ms=True), "lag": size - s}
            for w, (s, ts) in sorted(latest.items())
        ],
    }


def render_status(st: dict[str, Any]) -> str:
    """The snapshot as fixed-width text (ISO-8601 UTC times)."""
    lines = [f"federation status at {st['time']} (as {st['as']['role']} '{st['as']['name']}')", "", "nodes:"]
    if not st["nodes"]:
        lines.append("  no nodes registered")
    for n in st["nodes"]:
        ago = "" if n["seconds_since_contact"] is None else f" ({n['seconds_since_contact']:.0f} s ago)"
        cert = n["certificate_expires"] or f"unknown: {n.get('certificate_problem', '?')}"
        lines.append(
            f"  {n['name']:<16} {'online' if n['online'] else 'OFFLINE':<8} last contact {n['last_contact']}{ago}"
            f"  certificate until {cert}  datasets {n['datasets']}"
        )
    by_state = st["jobs"]["by_state"]
    lines += ["", "jobs: " + (", ".join(f"{k} {v}" for k, v in by_state.items()) if by_state else "no jobs")]
    for j in st["jobs"]["running"]:
        lines.append(
            f"  running {j['job_id']} {j['kind']} by {j['requester']} since {j['since']}; "
            f"waiting for {', '.join(j['waiting_for']) or '-'}"
        )
    lines += ["", "pending approvals:"]
    if not st["pending_approvals"]:
        lines.append("  none")
    for dept, ids in st["pending_approvals"].items():
        lines.append(f"  {dept:<16} {len(ids)}: {', '.join(ids)}")
    led = st["ledger"]
    lines += [
        "",
        f"ledger: {led['size']} entries, head {led['root'][:16]}… signed {led['signed_at']}; "
        f"coordinator certificate until {led['coordinator_certificate_expires']}",
    ]
    if not led["witnesses"]:
        lines.append("  no witness has cosigned yet")
    for w in led["witnesses"]:
        lines.append(
            f"  witness {w['witness']:<16} cosigned size {w['cosigned_size']} at {w['cosigned_at']} "
            f"(lag {w['lag']})"
        )
    return "\n".join(lines)


def _snapshot(st: JobStatus) -> tuple:
    return (st.state, st.reason, tuple((p.node, p.decision, p.task_state, p.reason) for p in st.participants))


def event_dict(ev: JobEvent) -> dict[str, Any]:
    """A coordinator event as JSON: ISO time (coordinator clock), event, department, detail, English text."""
    return {"time": iso(ev.ts), "ts": ev.ts, "event": ev.event, "node": ev.node, "detail": ev.detail,
            "text": ev.text}


def follow(
    client: Client,
    job_id: str,
    *,
    timeout: float = 3600.0,
    poll: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """Yield one event per change of the job's state or of any participant's
    decision/task state, until the job is terminal (the last event has ``done``).

    ``events`` holds what the coordinator recorded since the previous yield
    (:func:`event_dict`: its own ISO time, what, which department); ``changes``
    is the difference between two polls, for a coordinator that records none.

    Raises :class:`FedgovError` when the job is not terminal after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    prev: JobStatus | None = None
    seen = 0
    while True:
        st = client.status(job_id)
        fresh = st.events[seen:]
        if prev is None or _snapshot(st) != _snapshot(prev) or fresh:
            old = {p.node: p for p in prev.participants} if prev else {}
            changes = []
            if prev is None or st.state != prev.state:
                changes.append(f"job {st.state}" + (f": {st.reason}" if st.reason else ""))
            for p in st.participants:
                o = old.get(p.node)
                if o is None or (o.decision, o.task_state) != (p.decision, p.task_state):
                    changes.append(
                        f"{p.node}: {p.decision}, task {p.task_state}" + (f" ({p.reason})" if p.reason else "")
                    )
            yield {
                "time": iso(time.time()),
                "job_id": st.job_id,
                "state": st.state,
                "changes": changes,
                "events": [event_dict(e) for e in fresh],
                "done": st.state in TERMINAL,
                "status": st.to_dict(),
            }
            prev = st
            seen = len(st.events)
        if st.state in TERMINAL:
            return
        if time.monotonic() > deadline:
            raise FedgovError(f"still {st.state} after {timeout:.0f} s", where=job_id)
        sleep(poll)
