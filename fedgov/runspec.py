"""``fedgov run SPEC.toml``: one job over CSV files, on a throwaway local federation.

Spec format::

    [job]
    kind = "cohort-count"          # or another registered kind
    purpose = "benchmark"          # optional, default "analysis"
    # any other keys are the job's [parameters]

    [[parties]]
    name = "guest"                 # node name
    role = "guest"                 # guest | host (kind-specific)
    data = "breast_hetero_guest.csv"   # relative to the spec file
    id = "id"                      # id column
    label = "y"                    # guest only, optional
    eval_data = "..."              # optional held-out CSV
    where = [{ field = "y", op = "==", value = 1 }]   # cohort-count only

Each party becomes a node whose schema is inferred from the CSV header (id
column: string; label: int; everything else: float) and whose policy allows
exactly this job. The analyst's manifest is generated from the spec.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedgov.errors import ConfigError, JobFailed
from fedgov.manifest import KINDS, NAME_RE
from fedgov.runner import DatasetSpec, LocalFederation, NodeSpec, run_job
from fedgov.tomlutil import check_keys, get_str, get_table, load_toml


@dataclass(frozen=True)
class Party:
    name: str
    role: str
    data: Path
    id: str
    label: str | None
    eval_data: Path | None
    columns: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSpec:
    kind: str
    purpose: str
    parameters: dict[str, Any]
    parties: tuple[Party, ...]
    path: Path


def _header(path: Path, where: str) -> tuple[str, ...]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            row = next(csv.reader(fh), None)
    except FileNotFoundError:
        raise ConfigError(f"data file not found: {path}", where=where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", where=where) from None
    if not row:
        raise ConfigError(f"{path} is empty (no header row)", where=where)
    return tuple(c.strip() for c in row)


def load_spec(path: Path) -> RunSpec:
    doc = load_toml(path)
    where = str(path)
    check_keys(doc, ("job", "parties"), where, required=("job", "parties"))
    job = get_table(doc, "job", where, required=True)
    kind = get_str(job, "kind", f"{where}: job")
    if kind not in KINDS:
        raise ConfigError(f"unknown job kind '{kind}' (known: {', '.join(KINDS)})", where=f"{where}: job")
    purpose = str(job.get("purpose", "analysis"))
    params = {k: v for k, v in job.items() if k not in ("kind", "purpose")}
    raw = doc.get("parties")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("at least one [[parties]] table is required", where=where)
    parties = []
    base = path.parent
    for i, p in enumerate(raw):
        w = f"{where}: parties[{i}]"
        if not isinstance(p, dict):
            raise ConfigError("must be a table", where=w)
        known = ("name", "role", "data", "id", "label", "eval_data")
        extra = {k: v for k, v in p.items() if k not in known}
        if kind != "cohort-count" and extra:
            check_keys(p, known, w)
        elif extra:
            check_keys(p, (*known, "where"), w)
        name = get_str(p, "name", w)
        if not NAME_RE.match(name):
            raise ConfigError(f"invalid party name '{name}' (lower-case letters, digits, _ . -)", where=w)
        data = (base / get_str(p, "data", w)).resolve()
        cols = _header(data, w)
        id_col = get_str(p, "id", w, default="id")
        if id_col not in cols:
            raise ConfigError(
                f"id column '{id_col}' not in {data.name} (columns: {', '.join(cols)})", where=w
            )
        label = p.get("label")
        if label is not None and label not in cols:
            raise ConfigError(f"label column '{label}' not in {data.name}", where=w)
        eval_data = (base / p["eval_data"]).resolve() if "eval_data" in p else None
        if eval_data is not None:
            ecols = _header(eval_data, w)
            if ecols != cols:
                raise ConfigError(f"{eval_data.name} has columns {ecols}, expected {cols}", where=w)
        parties.append(
            Party(
                name=name,
                role=str(p.get("role", "host")),
                data=data,
                id=id_col,
                label=label,
                eval_data=eval_data,
                columns=cols,
                extra=extra,
            )
        )
    if len({p.name for p in parties}) != len(parties):
        raise ConfigError("party names must be unique", where=where)
    return RunSpec(kind=kind, purpose=purpose, parameters=params, parties=tuple(parties), path=path)


def _schema_toml(dataset: str, party: Party) -> str:
    lines = ["[dataset]", f'name = "{dataset}"', f'key = "{party.id}"', 'update_frequency = "adhoc"']
    for col in party.columns:
        ftype = "string" if col == party.id else "int" if col == party.label else "float"
        lines += [
            "",
            "[[fields]]",
            f"name = {json.dumps(col)}",
            f'type = "{ftype}"',
            f"required = {str(col == party.id).lower()}",
        ]
    return "\n".join(lines) + "\n"


def _policy_toml(spec: RunSpec, party: Party, datasets: list[str]) -> str:
    lines = ["[defaults]", f"min_cohort = {int(spec.parameters.get('min_cohort', 11))}", 'approval = "auto"']
    if spec.kind == "psi":
        # the local operator owns every party's data: it sees exact sizes and every aligned order
        lines += ["[defaults.disclosure]", 'psi_size_release = "exact"', 'psi_id_recipients = ["*"]']
    for ds in datasets:
        lines += [
            "",
            f"[[datasets.{ds}.rules]]",
            f"purposes = [{json.dumps(spec.purpose)}]",
            f'kinds = ["{spec.kind}", "vertical-lr-score"]',
            f"fields = {json.dumps(list(party.columns))}",
        ]
    return "\n".join(lines) + "\n"


def manifest_for(spec: RunSpec) -> str:
    """The analyst's manifest for a spec (TOML text)."""
    lines = [
        "[job]",
        f'kind = "{spec.kind}"',
        f"purpose = {json.dumps(spec.purpose)}",
        'requester = "analyst"',
    ]
    for p in spec.parties:
        fields = [p.id] if spec.kind == "psi" else list(p.columns)
        if spec.kind == "cohort-count":
            fields = [c for c in p.columns if c != p.id]
        lines += [
            "",
            "[[participants]]",
            f'node = "{p.name}"',
            'dataset = "data"',
            f"fields = {json.dumps(fields)}",
            f'role = "{p.role}"',
            f"id = {json.dumps(p.id)}",
        ]
        if p.label:
            lines.append(f"label = {json.dumps(p.label)}")
        if p.eval_data is not None:
            lines.append('eval_dataset = "eval"')
        if "where" in p.extra:
            conds = ", ".join(
                f"{{ field = {json.dumps(c['field'])}, op = {json.dumps(c['op'])}, value = {json.dumps(c['value'])} }}"
                for c in p.extra["where"]
            )
            lines.append(f"where = [{conds}]")
    if spec.kind in ("vertical-lr", "vertical-lr-score"):
        lines += ["", "[[participants]]", 'node = "arbiter"', 'role = "arbiter"']
    params = {k: v for k, v in spec.parameters.items() if k != "min_cohort"}
    if spec.kind == "psi":
        params.setdefault("size_release", "exact")  # allowed by the local policies above
    if params:
        lines += ["", "[parameters]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in params.items()]
    # a local run's operator stands for every party: each receives its outputs
    lines += ["", "[results]", f"recipients = {json.dumps(['requester', *[p.name for p in spec.parties]])}"]
    return "\n".join(lines) + "\n"


def federation_for(spec: RunSpec, workdir: Path) -> LocalFederation:
    nodes = []
    for p in spec.parties:
        ndir = workdir / "profiles" / p.name
        ndir.mkdir(parents=True, exist_ok=True)
        datasets = [DatasetSpec("data", ndir / "data.toml", str(p.data))]
        (ndir / "data.toml").write_text(_schema_toml("data", p))
        if p.eval_data is not None:
            (ndir / "eval.toml").write_text(_schema_toml("eval", p))
            datasets.append(DatasetSpec("eval", ndir / "eval.toml", str(p.eval_data)))
        (ndir / "policy.toml").write_text(_policy_toml(spec, p, [d.name for d in datasets]))
        nodes.append(NodeSpec(p.name, ndir / "policy.toml", datasets))
    if spec.kind in ("vertical-lr", "vertical-lr-score"):
        adir = workdir / "profiles" / "arbiter"
        adir.mkdir(parents=True, exist_ok=True)
        (adir / "policy.toml").write_text(f'[arbiter]\nkinds = ["{spec.kind}"]\n')
        nodes.append(NodeSpec("arbiter", adir / "policy.toml", []))
    return LocalFederation(workdir / "federation", nodes)


@dataclass(frozen=True)
class Outcome:
    """What a finished run hands to a kind's summariser."""

    spec: RunSpec
    job_id: str
    result: dict[str, Any]
    federation: LocalFederation
    out_dir: Path | None

    def party_output(self, party: str, name: str) -> Path:
        """A node's private output file (the local runner operates every node)."""
        return self.federation.workdir / "state" / party / "outputs" / self.job_id / f"{name}.csv"


def _summarise_psi(o: Outcome) -> dict[str, Any]:
    guest = (
        next(p.name for p in o.spec.parties if p.role == "guest")
        if any(p.role == "guest" for p in o.spec.parties)
        else o.spec.parties[0].name
    )
    res = o.result.get(guest, {})
    out: dict[str, Any] = {"intersection_size": res.get("intersection_size"), "mode": res.get("mode")}
    if o.out_dir is not None:
        o.out_dir.mkdir(parents=True, exist_ok=True)
        written = {}
        for p in o.spec.parties:
            src = o.party_output(p.name, "aligned_ids")
            if src.exists():
                dst = o.out_dir / f"{p.name}.csv"
                shutil.copyfile(src, dst)
                written[p.name] = str(dst)
        out["outputs"] = written
    return out


def _guest(spec: RunSpec) -> str:
    return next((p.name for p in spec.parties if p.role == "guest"), spec.parties[0].name)


def _summarise_vlr(o: Outcome) -> dict[str, Any]:
    res = o.result.get(_guest(o.spec), {})
    ev = res.get("eval", {})
    out = {k: res.get(k) for k in ("intersection_size", "epochs", "best_epoch", "seconds_per_epoch", "join")}
    out.update({k: ev.get(k) for k in ("auc", "ks", "accuracy", "precision", "recall")})
    out["eval_rows"] = ev.get("rows")
    out["bytes_sent_by_guest"] = res.get("bytes_sent_by_guest")
    return out


#: kind -> function turning the finished job into the CLI's JSON fields
SUMMARISERS: dict[str, Callable[[Outcome], dict[str, Any]]] = {
    "psi": _summarise_psi,
    "vertical-lr": _summarise_vlr,
}


def run_spec(path: Path, *, out_dir: Path | None = None, workdir: Path | None = None) -> dict[str, Any]:
    """Run the spec's job end to end; returns the JSON-able summary."""
    spec = load_spec(path)
    with tempfile.TemporaryDirectory(prefix="fedgov-run-") as tmp:
        wd = workdir or Path(tmp)
        started = time.monotonic()
        with federation_for(spec, wd) as fed:
            ready = time.monotonic()
            out = run_job(fed, manifest_for(spec))
        finished = time.monotonic()
        state = out["job"]["state"]
        if state != "succeeded":
            raise JobFailed(f"job {state}: {out['job']['reason']}", where=out["job"]["job_id"])
        outcome = Outcome(spec, out["job"]["job_id"], out["result"], fed, out_dir)
        summary: dict[str, Any] = {
            "ok": True,
            "kind": spec.kind,
            "job_id": outcome.job_id,
            "seconds_startup": round(ready - started, 3),
            "seconds_job": round(finished - ready, 3),
        }
        summariser = SUMMARISERS.get(spec.kind)
        summary.update(summariser(outcome) if summariser else {"result": out["result"]})
        return summary
