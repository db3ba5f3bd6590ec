"""Test helpers shared by the learning-job tests (vertical LR and horizontal FL).

One place for what several test files build: manifests (``vlr_manifest``, ``hfl_manifest``),
a vertical-LR run spec over the FATE breast data (``vlr_spec``, one or two hosts), the
horizontal-FL "world" of regional nodes (``hfl_nodes``), and reading a node process's own
audit log (``node_audit``). Nothing here asserts anything.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fedgov.runner import DatasetSpec, LocalFederation, NodeSpec
from fedgov.scenarios.regional import FEATURES, generate_regional

ROOT = Path(__file__).resolve().parents[1]
FATE = ROOT / "examples" / "fate" / "data"
#: the test-only sitecustomize that makes a vertical-LR guest lie (tests/liars/vlr_guest)
LYING_GUEST = ROOT / "tests" / "liars" / "vlr_guest"

T = TypeVar("T")


# --------------------------------------------------------------------------- node processes


def node_audit(fed_dir: Path, node: str, job_id: str, action: str | None = None) -> list[dict]:
    """``fedgov node audit`` of one node process for one job: what that node recorded itself.

    With ``action``, only those entries, each with its ``detail`` merged in.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "fedgov", "node", "audit", "--json", "--job", job_id,
         "--config", str(fed_dir / "nodes" / node / "node.toml")],
        capture_output=True, text=True, check=True, timeout=60,
    )
    entries = json.loads(proc.stdout.splitlines()[-1])["entries"]
    if action is None:
        return entries
    return [{**e, **e.get("detail", {})} for e in entries if e["action"] == action]


def until(cond: Callable[[], T], what: str, timeout: float = 90.0) -> T:
    """Poll ``cond`` until it returns something truthy (returned); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


# --------------------------------------------------------------------------- vertical LR


def vlr_spec(tmp: Path, *, epochs: int = 5, extra: str = "", hosts: int = 1) -> Path:
    """A ``fedgov run`` spec: FATE breast guest and host(s); ``hosts = 2`` splits the host's
    20 columns into ``hosta`` (x0-x9) and ``hostb`` (x10-x19)."""
    parties = [("guest", "guest", FATE / "breast_hetero_guest.csv", "label = \"y\"\n")]
    if hosts == 1:
        parties.append(("host", "host", FATE / "breast_hetero_host.csv", ""))
    else:
        with (FATE / "breast_hetero_host.csv").open() as fh:
            rows = list(csv.reader(fh))
        halves = {"hosta": range(1, 11), "hostb": range(11, 21)}
        for name, cols in halves.items():
            path = tmp / f"{name}.csv"
            with path.open("w", newline="") as fh:
                csv.writer(fh).writerows([[r[0], *(r[i] for i in cols)] for r in rows])
            parties.append((name, "host", path, ""))
    text = (f'[job]\nkind = "vertical-lr"\npurpose = "test"\nepochs = {epochs}\nlearning_rate = 0.1\n'
            f"seed = 3\n{extra}")
    for name, role, data, label in parties:
        text += (f'[[parties]]\nname = "{name}"\nrole = "{role}"\ndata = "{data}"\neval_data = "{data}"\n'
                 f'id = "id"\n{label}')
    spec = tmp / "spec.toml"
    spec.write_text(text)
    return spec


def _participant(node: str, role: str | None, dataset: str | None = None, fields: Sequence[str] = (),
                 extra: str = "") -> str:
    lines = ["[[participants]]", f'node = "{node}"']
    if dataset is not None:
        lines += [f'dataset = "{dataset}"', f"fields = {json.dumps(list(fields))}"]
    if role is not None:  # None: no role line (the kind's default role applies)
        lines.append(f'role = "{role}"')
    return "\n".join(lines) + ("\n" + extra.strip() if extra.strip() else "") + "\n"


def vlr_manifest_text(
    params: str = "",
    guest_extra: str = "",
    *,
    kind: str = "vertical-lr",
    purpose: str = "test-purpose",
    job_extra: str = "",
    guest: tuple[str, str, Sequence[str]] = ("guest", "g", ("id", "y", "x0")),
    label: str | None = "y",
    host: tuple[str, str, Sequence[str]] = ("host", "h", ("id", "x1")),
    host_role: str | None = "host",
    host_extra: str = "",
    arbiter: str = "arbiter",
    tail: str = "",
) -> str:
    """Manifest text of a small vertical-LR job: one guest (with ``label`` unless None), one
    host (``host_role = None``: no role line), one arbiter. ``params`` is the body of ``[parameters]``; ``*_extra`` are further
    lines of the job table or a participant's entry; ``tail`` further tables (``[results]``)."""
    g_extra = (f'label = "{label}"\n' if label else "") + guest_extra
    job = job_extra.strip() + "\n" if job_extra.strip() else ""
    body = params.strip() + "\n" if params.strip() else ""
    return (
        f'[job]\nkind = "{kind}"\npurpose = "{purpose}"\n{job}'
        + _participant(guest[0], "guest", guest[1], guest[2], g_extra)
        + _participant(host[0], host_role, host[1], host[2], host_extra)
        + _participant(arbiter, "arbiter")
        + f"[parameters]\n{body}"
        + tail
    )


# --------------------------------------------------------------------------- horizontal FL

HFL_PURPOSE = "social-assistance-eligibility"


def hfl_manifest_text(params: str = "", extra: str = 'eval_dataset = "validation"', *,
                      purpose: str = "test-purpose", dataset: str = "apps",
                      fields: Sequence[str] = ("x", "eligible"), regions: Sequence[str] = ("north", "south"),
                      aggregator: str = "agg", key_holder: str = "kh") -> str:
    """Manifest text of a small horizontal-FL job (the first region carries ``extra``)."""
    text = f'[job]\nkind = "horizontal-fl"\npurpose = "{purpose}"\n'
    for i, r in enumerate(regions):
        text += _participant(r, "region", dataset, fields, extra if i == 0 else "")
    text += _participant(aggregator, "arbiter") + _participant(key_holder, "arbiter")
    text += f'[parameters]\naggregator = "{aggregator}"\nkey_holder = "{key_holder}"\n'
    return text + (params.strip() + "\n" if params.strip() else "")


def hfl_schema(name: str) -> str:
    """Schema TOML of the regional scenario's feature tables."""
    lines = ["[dataset]", f'name = "{name}"', 'update_frequency = "adhoc"']
    for f in FEATURES:
        lines += ["", "[[fields]]", f'name = "{f}"', 'type = "float"']
    lines += ["", "[[fields]]", 'name = "eligible"', 'type = "int"', "required = true"]
    return "\n".join(lines) + "\n"


def hfl_policy(datasets: list[str]) -> str:
    """A region's policy: automatic approval of horizontal-fl for the scenario's purpose."""
    lines = ["[defaults]", "min_cohort = 11", 'approval = "auto"']
    for ds in datasets:
        lines += [
            "",
            f"[[datasets.{ds}.rules]]",
            f'purposes = ["{HFL_PURPOSE}"]',
            'kinds = ["horizontal-fl"]',
            f"fields = {json.dumps([*FEATURES, 'eligible'])}",
        ]
    return "\n".join(lines) + "\n"


def hfl_manifest(regions: list[str], val_region: str, params: dict[str, Any]) -> str:
    """The analyst's horizontal-FL manifest over the regional nodes of :func:`hfl_nodes`."""
    lines = ["[job]", 'kind = "horizontal-fl"', f'purpose = "{HFL_PURPOSE}"', 'requester = "analyst"']
    for r in regions:
        lines += [
            "",
            "[[participants]]",
            f'node = "{r}"',
            'dataset = "applications_features"',
            f"fields = {json.dumps([*FEATURES, 'eligible'])}",
            'role = "region"',
            'label = "eligible"',
        ]
        if r == val_region:
            lines.append('eval_dataset = "validation"')
    lines += [
        "",
        "[[participants]]",
        'node = "aggregator"',
        'role = "arbiter"',
        "",
        "[[participants]]",
        'node = "keyholder"',
        'role = "arbiter"',
        "",
        "[parameters]",
        'aggregator = "aggregator"',
        'key_holder = "keyholder"',
    ]
    lines += [f"{k.replace('-', '_')} = {json.dumps(v)}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def hfl_nodes(tmp_path: Path, *, households: int, validation_policy: str = "") -> tuple[
        list[NodeSpec], list[str], str, dict[str, Any]]:
    """The regional world: one node per region (the first also holds ``validation``, whose
    policy gets ``validation_policy`` appended), an aggregator and a key holder.

    Returns ``(nodes, regions, validation region, generate_regional's description)``.
    """
    regional = generate_regional(tmp_path / "regional", households=households)
    regions = sorted(regional["regions"])
    val_region = regions[0]
    prof = tmp_path / "profiles"
    nodes = []
    for r in regions:
        d = prof / r
        d.mkdir(parents=True)
        (d / "data.toml").write_text(hfl_schema("applications_features"))
        datasets = [DatasetSpec("applications_features", d / "data.toml", regional["regions"][r]["path"])]
        if r == val_region:
            (d / "val.toml").write_text(hfl_schema("validation"))
            datasets.append(DatasetSpec("validation", d / "val.toml", regional["validation"]["path"]))
        policy = hfl_policy([ds.name for ds in datasets])
        if r == val_region and validation_policy:
            policy += validation_policy
        (d / "policy.toml").write_text(policy)
        nodes.append(NodeSpec(r, d / "policy.toml", datasets))
    for name in ("aggregator", "keyholder"):
        d = prof / name
        d.mkdir(parents=True)
        (d / "policy.toml").write_text('[arbiter]\nkinds = ["horizontal-fl"]\n')
        nodes.append(NodeSpec(name, d / "policy.toml", []))
    return nodes, regions, val_region, regional


def hfl_federation(tmp_path: Path, *, households: int, validation_policy: str = "") -> tuple[
        LocalFederation, list[str], str, dict[str, Any]]:
    """:func:`hfl_nodes` as a :class:`LocalFederation` in ``tmp_path / "fed"`` (not started)."""
    nodes, regions, val_region, regional = hfl_nodes(tmp_path, households=households,
                                                     validation_policy=validation_policy)
    return LocalFederation(tmp_path / "fed", nodes), regions, val_region, regional
