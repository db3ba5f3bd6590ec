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
def cmd_provision(ns: argparse.Namespace) -> None:
    from fedgov.crypto import pki

    if ns.action == "ca":
        pki.create_ca(ns.out, ns.federation)
        print(f"federation CA written to {ns.out} (keep ca.key offline)")
    elif ns.action == "kit":
        out = pki.issue_kit(ns.ca, ns.out, ns.name, ns.role, hosts=ns.host or (), department=ns.department)
        print(f"startup kit for {ns.role} '{ns.name}' written to {out}")
    elif ns.action == "csr":
        paths = pki.make_csr(ns.out, ns.name, ns.role, hosts=ns.host or (), department=ns.department)
        print("private keys stay in", ns.out, "; send these to the federation admin:")
        for p in paths:
            print(" ", p)
    elif ns.action == "sign":
        for csr in ns.csr:
            ident, hosts = pki.describe_csr(csr)
            out = pki.sign_csr(ns.ca, csr)
            print(
                f"signed {csr} for {ident.role} '{ident.name}'"
                + (f" hosts={hosts}" if hosts else "")
                + f" -> {out}"
            )
    elif ns.action == "finish":
        pki.finish_kit(ns.kit_dir)
        print(f"kit {ns.kit_dir} is complete and verified")
    elif ns.action == "federation":
        pki.create_ca(ns.out / "ca", ns.federation)
        pki.issue_kit(
            ns.out / "ca",
            ns.out / "kits" / "coordinator",
            "coordinator",
            "coordinator",
            hosts=ns.host or ["127.0.0.1", "localhost"],
        )
        for n in ns.node:
            pki.issue_kit(ns.out / "ca", ns.out / "kits" / n, n, "node")
        for spec in ns.person:
            name, _, role = spec.partition(":")
            role, _, dept = role.partition("@")
            pki.issue_kit(
                ns.out / "ca", ns.out / "kits" / name, name, role or "analyst", department=dept or None
            )
        print(
            f"federation provisioned in {ns.out}: kits for coordinator, {len(ns.node)} nodes, {len(ns.person)} people"
        )


# -- services --------------------------------------------------------------------
def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_coordinator(ns: argparse.Namespace) -> None:
    from fedgov.coordinator.server import CoordinatorConfig, serve

    _setup_logging(ns.log_level)
    serve(CoordinatorConfig.load(ns.config))


def cmd_node(ns: argparse.Namespace) -> None:
    from fedgov.node.config import NodeConfig

    config = NodeConfig.load(ns.config)
    if ns.action == "start":
        import signal

        from fedgov.node.agent import NodeAgent

        _setup_logging(ns.log_level)
        agent = NodeAgent(config)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: agent.stop.set())
        agent.run()
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
                    f"{r['job_id']}  {r['kind']}  purpose={r['purpose']}  requester={r['requester']}  "
                    f"dataset={r['dataset']} fields={','.join(r['fields'])}  "
                    f"approvals {len(r['approved_by'])}/{r['required']}"
                )
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
            for r in rows:
                print(f"#{r['id']} {r['job_id']} {r['action']} {json.dumps(r['detail'], sort_keys=True)}")
            print("audit chain OK" if broken is None else f"audit chain BROKEN at entry #{broken}")
        if broken is not None:
            raise FedgovError(f"audit log chain broken at entry #{broken}", where=str(config.state_dir))


# -- jobs ------------------------------------------------------------------------
def cmd_job(ns: argparse.Namespace) -> None:
    with _client(ns) as c:
        if ns.action == "submit":
            st = c.submit_file(ns.manifest)
            if ns.wait:
                st = c.wait(st.job_id, timeout=ns.timeout)
            _print_json(st.to_dict()) if ns.json else print(f"{st.job_id} {st.state} {st.reason}".rstrip())
        elif ns.action == "status":
            st = c.status(ns.job_id)
            if ns.json:
                _print_json(st.to_dict())
            else:
                print(f"{st.job_id} {st.kind} {st.state} {st.reason}".rstrip())
                for p in st.participants:
                    print(f"  {p.node}: {p.decision} {p.task_state} {p.reason}".rstrip())
        elif ns.action == "list":
            jobs = c.list(ns.state)
            if ns.json:
                _print_json([j.to_dict() for j in jobs])
            for j in jobs if not ns.json else []:
                print(f"{j.job_id} {j.kind:<18} {j.state:<10} {j.requester} {j.reason}".rstrip())
        elif ns.action == "cancel":
            st = c.cancel(ns.job_id)
            print(f"{st.job_id} {st.state}")
        elif ns.action == "result":
            _print_json(c.result(ns.job_id))


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
    summary = run_demo(keep=ns.keep, households=ns.households, quiet=ns.json)
    if ns.json:
        _print_json(summary)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="fedgov", description="Usable-but-invisible computation across departments."
    )
    sub = ap.add_subparsers(dest="command", required=True)

    def client_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kit", help="your startup kit directory (or FEDGOV_KIT)")
        p.add_argument("--coordinator", help="host:port (or FEDGOV_COORDINATOR)")
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("provision", help="federation CA, certificates and keys")
    psub = p.add_subparsers(dest="action", required=True)
    q = psub.add_parser("ca", help="create the federation CA")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--federation", default="fedgov federation")
    for action, helptext in (
        ("kit", "issue a complete startup kit (central path)"),
        ("csr", "generate keys at the site and a CSR (distributed path)"),
    ):
        q = psub.add_parser(action, help=helptext)
        if action == "kit":
            q.add_argument("--ca", type=Path, required=True)
        q.add_argument("--name", required=True)
        q.add_argument(
            "--role",
            required=True,
            choices=["coordinator", "node", "analyst", "auditor", "admin", "approver"],
        )
        q.add_argument("--host", action="append", help="coordinator host name or IP (repeatable)")
        q.add_argument("--department", help="department node name (approvers)")
        q.add_argument("--out", type=Path, required=True)
    q = psub.add_parser("sign", help="admin: sign CSRs from sites")
    q.add_argument("--ca", type=Path, required=True)
    q.add_argument("csr", type=Path, nargs="+")
    q = psub.add_parser("finish", help="site: verify signed certificates and complete the kit")
    q.add_argument("kit_dir", type=Path)
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
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_coordinator)

    p = sub.add_parser("node", help="run or administer a department node")
    p.add_argument("action", choices=["start", "pending", "approve", "reject", "audit"])
    p.add_argument("job_id", nargs="?", help="job to approve/reject")
    p.add_argument("--config", type=Path, required=True, help="node.toml")
    p.add_argument("--kit", type=Path, help="approver's startup kit (approve/reject)")
    p.add_argument("--reason", help="reason recorded with the decision")
    p.add_argument("--job", help="audit: only this job")
    p.add_argument("--json", action="store_true")
    p.add_argument("--log-level", default="info")
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
    p.set_defaults(func=cmd_job)

    p = sub.add_parser("catalog", help="registered nodes and their datasets (metadata only)")
    client_opts(p)
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("run", help="run one job over CSV files on a throwaway local federation")
    p.add_argument("spec", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, help="write per-party outputs here")
    p.set_defaults(func=cmd_run)

    from fedgov.cli_ledger import add_ledger_parser, add_quality_parser

    add_ledger_parser(sub)
    add_quality_parser(sub)

    p = sub.add_parser("demo", help="the social-assistance story, end to end")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", type=Path, help="keep the generated world and logs in this directory")
    p.add_argument("--households", type=int, default=6000)
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    try:
        ns.func(ns)
    except FedgovError as exc:
        if getattr(ns, "json", False):
            _print_json({"ok": False, "error": str(exc)})
        print(f"fedgov: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
