"""The ``fedgov`` command line: argument parsing and printing only.

Every expected failure is a :class:`~fedgov.errors.FedgovError` printed as one
line (``fedgov: error: ...``) with exit status 2; with ``--json`` the last
stdout line is ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from fedgov.errors import FedgovError


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, sort_keys=True, default=str))


def _client(ns: argparse.Namespace):
    from fedgov.client import Client

    kit = ns.kit or os.environ.get("FEDGOV_KIT")
    coord = ns.coordinator or os.environ.get("FEDGOV_COORDINATOR")
    if not kit or not coord:
        raise FedgovError("give --kit and --coordinator (or set FEDGOV_KIT and FEDGOV_COORDINATOR)")
    return Client(kit, coord)


# -- provision -----------------------------------------------------------------
def _confirm(question: str, yes: bool) -> None:
    """Ask before a CA operation; --yes skips the question; without a terminal, refuse."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise FedgovError(f"{question}: no terminal to ask; pass --yes to confirm without asking")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise FedgovError("not confirmed; nothing was changed")


def _show_csr(info: dict[str, Any]) -> str:
    dept = f" of department {info['department']}" if info["department"] else ""
    hosts = ", ".join(info["hosts"]) if info["hosts"] else "(none)"
    lines = [
        f"{info['csr']}: {info['purpose']} certificate for {info['role']} '{info['name']}'{dept}",
        f"  hosts: {hosts}",
        f"  key sha256: {info['key_sha256']}",
        f"  valid for: {info['days']} days",
    ]
    for e in info["earlier"]:
        state = "revoked" if e["revoked"] else f"valid until {e['not_after']}"
        lines.append(f"  ALREADY ISSUED for this key: serial {e['serial']} ({state})")
    return "\n".join(lines)


def cmd_provision(ns: argparse.Namespace) -> None:
    from fedgov.crypto import kits, pki, revocation

    if ns.action == "ca":
        pki.create_ca(ns.out, ns.federation, days=ns.days or pki.CA_DAYS)
        print(f"federation CA written to {ns.out} (keep ca.key offline)")
    elif ns.action == "kit":
        out = kits.issue_kit(
            ns.ca, ns.out, ns.name, ns.role, hosts=ns.host or (), department=ns.department, days=ns.days
        )
        print(f"startup kit for {ns.role} '{ns.name}' written to {out}")
    elif ns.action == "csr":
        paths = kits.make_csr(ns.out, ns.name, ns.role, hosts=ns.host or (), department=ns.department)
        print("private keys stay in", ns.out, "; send these to the federation admin:")
        for p in paths:
            print(" ", p)
    elif ns.action == "sign":
        reviews = [pki.review_csr(ns.ca, csr) for csr in ns.csr]
        for info in reviews:
            print(_show_csr(info))
        _confirm(f"sign {len(reviews)} certificate(s) with the CA in {ns.ca}?", ns.yes)
        outs = []
        for csr in ns.csr:
            outs.append(pki.sign_csr(ns.ca, csr, days=ns.days, again=ns.again))
            print(f"signed {csr} -> {outs[-1]}")
        back = sorted({str(o) for o in outs} | {str(o.with_name("ca.crt")) for o in outs})
        print("send back to the site (then it runs `fedgov provision finish`):", " ".join(back))
    elif ns.action == "finish":
        ident = kits.finish_kit(ns.kit_dir)
        ca = pki.load_ca_cert(ns.kit_dir / "ca.crt")
        fp = pki.key_fingerprint(ca.public_key())
        print(f"kit {ns.kit_dir} is complete and verified: {ident.role} '{ident.name}'")
        print(f"federation CA key sha256 {fp} (compare it with the admin's, out of band)")
    elif ns.action == "check":
        status = kits.check_kit(ns.kit_dir)
        if ns.json:
            _print_json({"ok": True, "name": status.identity.name, "role": status.identity.role,
                         "not_after": status.not_after, "warnings": list(status.warnings)})
        else:
            print(f"kit {ns.kit_dir}: {status.identity.role} '{status.identity.name}', "
                  f"valid until {status.not_after.isoformat() if status.not_after else '?'}")
            for w in status.warnings:
                print(f"WARNING: {w}")
    elif ns.action == "status":
        rows = [c.to_dict() for c in pki.issuance_record(ns.ca)]
        import datetime as _dt

        now = _dt.datetime.now(_dt.UTC)
        for r in rows:
            end = _dt.datetime.fromisoformat(r["not_after"])
            r["state"] = "revoked" if r["revoked_at"] else ("expired" if end < now else "live")
            r["expires_soon"] = r["state"] == "live" and end - now <= pki.EXPIRY_WARNING
        if ns.json:
            _print_json(rows)
            return
        for r in rows:
            flag = "  EXPIRES SOON: renew (fedgov provision renew)" if r["expires_soon"] else ""
            print(f"{r['serial'][:16]}  {r['purpose']:<7} {r['role']:<11} {r['name']:<20} "
                  f"{r['state']:<7} until {r['not_after'][:10]}{flag}")
    elif ns.action == "revoke":
        serials = tuple(int(x, 16) for x in ns.serial or ())
        record = {c.serial: c for c in pki.issuance_record(ns.ca)}
        targets = [record[s] for s in serials if s in record]
        if ns.name:
            targets += [c for c in record.values() if c.name == ns.name and c.revoked_at is None]
        for c in targets:
            print(f"revoke {c.purpose} certificate of {c.role} '{c.name}' serial {c.serial:x} ({ns.reason})")
        _confirm(f"revoke {len(targets)} certificate(s)?", ns.yes)
        done, crl = revocation.revoke(ns.ca, serials=serials, name=ns.name, reason=ns.reason)
        print(f"revoked {len(done)} certificate(s); revocation list written to {crl}")
        print("publish it: fedgov provision publish-crl --kit ADMIN_KIT --coordinator HOST:PORT --crl", crl)
    elif ns.action == "crl":
        crl = revocation.issue_crl(ns.ca)
        print(f"revocation list re-issued: {crl}")
    elif ns.action == "publish-crl":
        path = ns.crl or (ns.ca / "crl.pem" if ns.ca else None)
        if path is None:
            raise FedgovError("give --crl FILE (or --ca CA to publish CA/crl.pem)")
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise FedgovError(f"cannot read the revocation list: {exc.strerror}", where=str(path)) from None
        with _client(ns) as c:
            c.publish_revocations(data)
            number = c.revocation_number()
        print(f"the coordinator now serves revocation list #{number}")
    elif ns.action == "renew":
        if ns.kit_dir:
            certs = [ns.kit_dir / f for f in ("tls.crt", "signing.crt") if (ns.kit_dir / f).exists()]
        else:
            certs = list(ns.cert or ())
        if not certs:
            raise FedgovError("give certificate files to renew, or --kit KIT")
        for cert in certs:
            out = pki.renew_certificate(ns.ca, cert, days=ns.days)
            print(f"renewed {out}")
        if ns.kit_dir:
            kits.finish_kit(ns.kit_dir)
            print(f"kit {ns.kit_dir} rebuilt (new key bundle serial)")
    elif ns.action == "federation":
        pki.create_ca(ns.out / "ca", ns.federation)
        kits.issue_kit(
            ns.out / "ca",
            ns.out / "kits" / "coordinator",
            "coordinator",
            "coordinator",
            hosts=ns.host or ["127.0.0.1", "localhost"],
        )
        for n in ns.node:
            kits.issue_kit(ns.out / "ca", ns.out / "kits" / n, n, "node")
        for spec in ns.person:
            name, _, role = spec.partition(":")
            role, _, dept = role.partition("@")
            kits.issue_kit(
                ns.out / "ca", ns.out / "kits" / name, name, role or "analyst", department=dept or None
            )
        print(
            f"federation provisioned in {ns.out}: kits for coordinator, {len(ns.node)} nodes, {len(ns.person)} people"
        )


# -- services --------------------------------------------------------------------
class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO-8601 UTC, ms), level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime as _dt

        doc = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class _IsoFormatter(logging.Formatter):
    """``2026-01-02T03:04:05.678Z LEVEL logger: message`` (UTC)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        import datetime as _dt

        return (
            _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )


def _setup_logging(
    level: str,
    *,
    log_file: Path | None = None,
    log_format: str = "text",
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 5,
) -> None:
    """Log to stderr, or with ``log_file`` to a size-rotated file (``max_bytes``, ``backups``
    old files kept as FILE.1 … FILE.N); ``log_format`` ``text`` or ``json`` (one object a line)."""
    import logging.handlers

    handler: logging.Handler
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(
                log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )
        except OSError as exc:
            raise FedgovError(f"cannot open the log file: {exc.strerror}", where=str(log_file)) from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter() if log_format == "json" else _IsoFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def _service_logging(ns: argparse.Namespace) -> None:
    _setup_logging(
        ns.log_level, log_file=ns.log_file, log_format=ns.log_format, max_bytes=ns.log_max_bytes,
        backups=ns.log_backups,
    )


def _log_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-file", type=Path, help="log to this file (rotated by size) instead of stderr")
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="text lines or one JSON object per line")
    p.add_argument("--log-max-bytes", type=int, default=10 * 1024 * 1024,
                   help="rotate the log file at this size (default 10 MiB)")
    p.add_argument("--log-backups", type=int, default=5, help="rotated log files to keep (default 5)")


def cmd_coordinator(ns: argparse.Namespace) -> None:
    from fedgov.coordinator.server import CoordinatorConfig, serve

    _service_logging(ns)
    log = logging.getLogger("fedgov.coordinator")
    log.info("coordinator starting (pid %d, config %s)", os.getpid(), ns.config)
    try:
        serve(CoordinatorConfig.load(ns.config))
    except FedgovError as exc:
        log.error("coordinator stopped: %s", exc)
        raise
    except BaseException as exc:
        log.exception("coordinator stopped by an unexpected error: %s", exc)
        raise
    log.info("coordinator stopped")


def _read_every_dataset(config: Any) -> None:
    """Read each dataset as the node will serve it; the first load error (file, row,
    column) raises :class:`FedgovError`."""
    from fedgov.datasources import read_dataset

    for ds in config.datasets.values():
        read_dataset(ds.source, ds.schema, base_dir=ds.base_dir, table=ds.table, query=ds.query)


def cmd_node(ns: argparse.Namespace) -> None:
    from fedgov.node.config import NodeConfig

    if ns.action == "check":
        from fedgov.node.check import check_node

        report = check_node(ns.config)
        if ns.json:
            _print_json(report.to_dict())
        else:
            for line in report.checked:
                print(f"ok       {line}")
            for line in report.warnings:
                print(f"WARNING  {line}")
            for line in report.problems:
                print(f"PROBLEM  {line}")
            print(f"{ns.config}: " + ("every check passed" if report.ok else f"{len(report.problems)} problem(s)"))
        if not report.ok:
            sys.exit(2)
        return
    config = NodeConfig.load(ns.config)
    if ns.action == "start":
        import signal

        from fedgov.node.agent import NodeAgent

        _service_logging(ns)
        log = logging.getLogger("fedgov.node")
        log.info("node %s starting (pid %d, config %s)", config.name, os.getpid(), ns.config)
        stopped_by: list[str] = []

        def _stop(signum: int, _frame: object) -> None:
            stopped_by.append(signal.Signals(signum).name)
            agent.stop.set()

        try:
            _read_every_dataset(config)  # bad data stops the node before it dials (docs/deployment.md)
            agent = NodeAgent(config)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, _stop)
            agent.run()
        except FedgovError as exc:
            log.error("node %s stopped: %s", config.name, exc)
            raise
        except BaseException as exc:
            log.exception("node %s stopped by an unexpected error: %s", config.name, exc)
            raise
        log.info("node %s stopped%s", config.name, f" ({stopped_by[0]})" if stopped_by else "")
        return
    from fedgov.node import approvals

    if ns.action == "pending":
        rows = approvals.pending(config)
        if ns.json:
            _print_json(rows)
        elif not rows:
            print("no jobs await approval")
        else:
            for r in rows:
                print(
                    r["summary"]
                    or f"{r['job_id']}  {r['kind']}  purpose={r['purpose']}  requester={r['requester']}  "
                    f"dataset={r['dataset']} fields={','.join(r['fields'])}  approvals {r['approvals']}"
                )
            print("see one in full: fedgov node show JOB --config ...")
    elif ns.action == "show":
        brief = approvals.show(config, ns.job_id)
        _print_json(brief.to_dict()) if ns.json else print(brief.text())
    elif ns.action in ("approve", "reject"):
        msg = approvals.decide(
            config, ns.job_id, ns.kit, approve=ns.action == "approve", reason=ns.reason or ""
        )
        print(msg)
    elif ns.action == "audit":
        rows, broken = approvals.audit(config, ns.job)
        if ns.json:
            _print_json({"entries": rows, "chain_ok": broken is None, "first_broken": broken})
        else:
            from fedgov.opsview import iso

            for r in rows:
                print(f"#{r['id']} {iso(r['ts'])} {r['job_id']} {r['action']} "
                      f"{json.dumps(r['detail'], sort_keys=True)}")
            print("audit chain OK" if broken is None else f"audit chain BROKEN at entry #{broken}")
        if broken is not None:
            raise FedgovError(f"audit log chain broken at entry #{broken}", where=str(config.state_dir))
    elif ns.action == "witness":
        from fedgov.node.witness import print_status

        print_status(config, as_json=ns.json)


# -- jobs ------------------------------------------------------------------------
def cmd_job(ns: argparse.Namespace) -> None:
    with _client(ns) as c:
        if ns.action == "submit":
            st = c.submit_file(ns.manifest)
            if ns.wait:
                st = c.wait(st.job_id, timeout=ns.timeout)
            _print_json(st.to_dict()) if ns.json else print(f"{st.job_id} {st.state} {st.reason}".rstrip())
        elif ns.action == "status":
            from fedgov.opsview import event_dict, iso

            st = c.status(ns.job_id)
            if ns.json:
                _print_json(st.to_dict() | {"created": iso(st.created_at), "updated": iso(st.updated_at),
                                            "events": [event_dict(e) for e in st.events]})
            else:
                print(f"{st.job_id} {st.kind} {st.state} {st.reason}".rstrip())
                print(f"  submitted {iso(st.created_at)} by {st.requester}; last change {iso(st.updated_at)}")
                for p in st.participants:
                    print(f"  {p.node}: {p.decision} {p.task_state} {p.reason}".rstrip())
                if st.events:
                    print("  timeline (coordinator clock):")
                for e in st.events:
                    print(f"    {iso(e.ts)} {e.text}")
        elif ns.action == "list":
            from fedgov.opsview import iso

            jobs = c.list(ns.state)
            if ns.json:
                _print_json([j.to_dict() | {"created": iso(j.created_at), "updated": iso(j.updated_at)}
                             for j in jobs])
            elif not jobs:
                print("no jobs" + (f" in state {ns.state}" if ns.state else ""))
            for j in jobs if not ns.json else []:
                print(f"{j.job_id} {j.kind:<18} {j.state:<10} {iso(j.created_at)} {j.requester} {j.reason}".rstrip())
        elif ns.action == "follow":
            from fedgov.opsview import follow

            last: dict[str, Any] = {}
            recorded = False  # the coordinator records events: print those, with its own times
            for ev in follow(c, ns.job_id, timeout=ns.timeout):
                last = ev
                recorded = recorded or bool(ev["events"])
                if ns.json:
                    _print_json({k: v for k, v in ev.items() if k != "status"})
                elif recorded:
                    for e in ev["events"]:
                        print(f"{e['time']} {ev['job_id']} {e['text']}", flush=True)
                else:
                    for change in ev["changes"]:
                        print(f"{ev['time']} {ev['job_id']} {change}", flush=True)
            if last.get("state") != "succeeded":
                raise FedgovError(f"job ended {last.get('state')}: {last['status']['reason']}", where=ns.job_id)
        elif ns.action == "cancel":
            st = c.cancel(ns.job_id)
            print(f"{st.job_id} {st.state}")
        elif ns.action == "result":
            _print_json(c.result(ns.job_id))


def cmd_status(ns: argparse.Namespace) -> None:
    from fedgov.opsview import federation_status, render_status

    with _client(ns) as c:
        st = federation_status(c)
    if ns.json:
        _print_json(st)
    else:
        print(render_status(st))


def cmd_schema(ns: argparse.Namespace) -> None:
    from fedgov.schema_draft import infer_schema

    text, warnings = infer_schema(ns.file, name=ns.name)
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    if ns.out:
        if ns.out.exists() and not ns.force:
            raise FedgovError("exists; pass --force to overwrite", where=str(ns.out))
        ns.out.write_text(text, encoding="utf-8")
        print(f"schema draft written to {ns.out}: review types, ranges and descriptions before use")
    else:
        for line in text.splitlines():
            print(line)


def cmd_catalog(ns: argparse.Namespace) -> None:
    with _client(ns) as c:
        nodes = c.nodes()
    if ns.json:
        _print_json(nodes)
        return
    for n in nodes:
        print(f"{n['name']} ({'online' if n['online'] else 'offline'})")
        for d in n["datasets"]:
            print(f"  {d['name']}: {d['rows']} rows; fields {', '.join(d['fields'])}")
            allowed = "; ".join(f"{p} ({', '.join(k)})" for p, k in sorted(d.get("purposes", {}).items()))
            print(f"    purposes its policy allows: {allowed or 'none'}")


def cmd_run(ns: argparse.Namespace) -> None:
    from fedgov.runspec import run_spec

    _setup_logging("warning")
    summary = run_spec(ns.spec, out_dir=ns.out)
    if ns.json:
        _print_json(summary)
    else:
        for k, v in summary.items():
            print(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}")


def cmd_demo(ns: argparse.Namespace) -> None:
    from fedgov.demo import run_demo

    _setup_logging("warning")
    summary = run_demo(keep=ns.keep, households=ns.households, seed=ns.seed, quiet=ns.json, console=ns.console)
    if ns.json:
        _print_json(summary)


def cmd_console(ns: argparse.Namespace) -> None:
    from fedgov.console.serve import run_console

    kit = ns.kit or os.environ.get("FEDGOV_KIT")
    coord = ns.coordinator or os.environ.get("FEDGOV_COORDINATOR")
    if not kit or not coord:
        raise FedgovError("give --kit and --coordinator (or set FEDGOV_KIT and FEDGOV_COORDINATOR)")
    _setup_logging("warning")

    def ready(url: str) -> None:
        print(f"fedgov console for {Path(kit)} at {coord}; open this link (it works once):", flush=True)
        print(url, flush=True)

    run_console(Path(kit), coord, port=ns.port, lang=ns.lang, node_config=ns.node_config, on_ready=ready)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="fedgov", description="Usable-but-invisible computation across departments."
    )
    sub = ap.add_subparsers(dest="command", required=True)

    def client_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kit", help="your startup kit directory (or FEDGOV_KIT)")
        p.add_argument("--coordinator", help="host:port (or FEDGOV_COORDINATOR)")
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("provision", help="federation CA, certificates, keys and revocation")
    psub = p.add_subparsers(dest="action", required=True)
    q = psub.add_parser("ca", help="create the federation CA")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--federation", default="fedgov federation")
    q.add_argument("--days", type=int, help="CA lifetime (default 1826 = 5 years)")
    for action, helptext in (
        ("kit", "issue a complete startup kit (central path)"),
        ("csr", "generate keys at the site and a CSR (distributed path)"),
    ):
        q = psub.add_parser(action, help=helptext)
        if action == "kit":
            q.add_argument("--ca", type=Path, required=True)
            q.add_argument("--days", type=int, help="lifetime (default: 365 services, 90 people)")
        q.add_argument("--name", required=True)
        q.add_argument(
            "--role",
            required=True,
            choices=["coordinator", "node", "analyst", "auditor", "admin", "approver"],
        )
        q.add_argument("--host", action="append", help="coordinator host name or IP (repeatable)")
        q.add_argument("--department", help="department node name (approvers)")
        q.add_argument("--out", type=Path, required=True)
    q = psub.add_parser("sign", help="admin: show CSRs from sites and sign them (asks first)")
    q.add_argument("--ca", type=Path, required=True)
    q.add_argument("--yes", action="store_true", help="sign without asking (no terminal needed)")
    q.add_argument("--again", action="store_true", help="certify a key this CA already certified")
    q.add_argument("--days", type=int, help="lifetime (default: 365 services, 90 people)")
    q.add_argument("csr", type=Path, nargs="+")
    q = psub.add_parser("finish", help="site: verify signed certificates and complete the kit")
    q.add_argument("kit_dir", type=Path)
    q = psub.add_parser("check", help="check a kit: validity, keys, CA; warns 30 days before expiry")
    q.add_argument("kit_dir", type=Path)
    q.add_argument("--json", action="store_true")
    q = psub.add_parser("status", help="admin: what the CA issued and revoked, what expires soon")
    q.add_argument("--ca", type=Path, required=True)
    q.add_argument("--json", action="store_true")
    q = psub.add_parser("revoke", help="admin: revoke certificates and write a new revocation list")
    q.add_argument("--ca", type=Path, required=True)
    q.add_argument("--serial", action="append", help="serial (hex) to revoke (repeatable)")
    q.add_argument("--name", help="revoke every live certificate issued to this name")
    q.add_argument("--reason", default="unspecified",
                   choices=["unspecified", "keyCompromise", "affiliationChanged", "superseded",
                            "cessationOfOperation"])
    q.add_argument("--yes", action="store_true", help="revoke without asking")
    q = psub.add_parser("crl", help="admin: re-issue the revocation list (before its next update)")
    q.add_argument("--ca", type=Path, required=True)
    q = psub.add_parser("publish-crl", help="admin: hand the revocation list to the coordinator")
    q.add_argument("--crl", type=Path, help="the list (default: CA/crl.pem with --ca)")
    q.add_argument("--ca", type=Path)
    client_opts(q)
    q = psub.add_parser("renew", help="admin: re-certify keys before they expire")
    q.add_argument("--ca", type=Path, required=True)
    q.add_argument("--kit", dest="kit_dir", type=Path, help="renew a central kit in place (and its bundle)")
    q.add_argument("--days", type=int)
    q.add_argument("cert", type=Path, nargs="*")
    q = psub.add_parser("federation", help="CA plus kits for a coordinator, nodes and people in one go")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--federation", default="fedgov federation")
    q.add_argument("--host", action="append", help="coordinator host names/IPs")
    q.add_argument("--node", action="append", default=[], help="node name (repeatable)")
    q.add_argument(
        "--person", action="append", default=[], help="name:role or name:approver@dept (repeatable)"
    )
    p.set_defaults(func=cmd_provision)

    p = sub.add_parser("coordinator", help="run the coordinator")
    p.add_argument("action", choices=["start"])
    p.add_argument("--config", type=Path, required=True)
    _log_opts(p)
    p.set_defaults(func=cmd_coordinator)

    p = sub.add_parser("node", help="run or administer a department node")
    p.add_argument("action", choices=["start", "check", "pending", "show", "approve", "reject", "audit", "witness"],
                   help="check: validate config, policy, schemas, data and kit without starting (lists every problem)")
    p.add_argument("job_id", nargs="?", help="job to show/approve/reject")
    p.add_argument("--config", type=Path, required=True, help="node.toml")
    p.add_argument("--kit", type=Path, help="approver's startup kit (approve/reject)")
    p.add_argument("--reason", help="reason recorded with the decision")
    p.add_argument("--job", help="audit: only this job")
    p.add_argument("--json", action="store_true")
    _log_opts(p)
    p.set_defaults(func=cmd_node)

    p = sub.add_parser("job", help="submit and follow jobs")
    jsub = p.add_subparsers(dest="action", required=True)
    q = jsub.add_parser("submit")
    q.add_argument("manifest", type=Path)
    q.add_argument("--wait", action="store_true")
    q.add_argument("--timeout", type=float, default=600)
    client_opts(q)
    for action in ("status", "cancel", "result"):
        q = jsub.add_parser(action)
        q.add_argument("job_id")
        client_opts(q)
    q = jsub.add_parser("list")
    q.add_argument("--state")
    client_opts(q)
    q = jsub.add_parser("follow", help="print each state change of a job until it ends (exit 2 unless it succeeded)")
    q.add_argument("job_id")
    q.add_argument("--timeout", type=float, default=3600)
    client_opts(q)
    p.set_defaults(func=cmd_job)

    p = sub.add_parser("status", help="nodes, certificates, running jobs, pending approvals, ledger and witnesses")
    client_opts(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("schema", help="draft a dataset schema from a CSV or Parquet file")
    ssub = p.add_subparsers(dest="action", required=True)
    q = ssub.add_parser("infer", help="guess types, required fields and the ID key; prints a TOML draft to edit")
    q.add_argument("file", type=Path)
    q.add_argument("--name", help="dataset name (default: from the file name)")
    q.add_argument("--out", type=Path, help="write the draft here instead of stdout")
    q.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("catalog", help="registered nodes and their datasets (metadata only)")
    client_opts(p)
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("run", help="run one job over CSV files on a throwaway local federation")
    p.add_argument("spec", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, help="write per-party outputs here")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("console", help="the web console on 127.0.0.1, acting as your kit's person")
    p.add_argument("--kit", help="your startup kit directory (or FEDGOV_KIT)")
    p.add_argument("--coordinator", help="host:port (or FEDGOV_COORDINATOR)")
    p.add_argument("--port", type=int, default=0, help="loopback port (default: a random free one)")
    p.add_argument("--lang", choices=["zh", "en"], default="en", help="interface language (switchable in the page)")
    p.add_argument("--node-config", type=Path,
                   help="approvers: your department's node.toml (the approval inbox reads and signs locally)")
    p.set_defaults(func=cmd_console)

    from fedgov.cli_ledger import add_ledger_parser, add_quality_parser

    add_ledger_parser(sub)
    add_quality_parser(sub)

    p = sub.add_parser("demo", help="the social-assistance story, end to end")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", type=Path, help="keep the generated world and logs in this directory")
    p.add_argument("--households", type=int, default=6000,
                   help="size of the synthetic city (smaller runs faster; 1500 takes about half the time)")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic city (same seed, same numbers)")
    p.add_argument("--console", action="store_true",
                   help="afterwards keep the federation up and serve the analyst's web console (Ctrl-C stops)")
    p.set_defaults(func=cmd_demo)
    return ap


def _stdout_gone() -> None:
    """The reader of stdout went away (``fedgov ... | head``): stop quietly.

    Python's documented recipe: point stdout at /dev/null so the interpreter's
    final flush cannot raise again, then exit 141 (128 + SIGPIPE, as a shell
    reports a process killed by SIGPIPE).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(141)


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    try:
        ns.func(ns)
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_gone()
    except FedgovError as exc:
        try:
            if getattr(ns, "json", False):
                _print_json({"ok": False, "error": str(exc)})
            print(f"fedgov: error: {exc}", file=sys.stderr)
        except BrokenPipeError:
            _stdout_gone()
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
