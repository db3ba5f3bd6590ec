"""Ready-made manifests for the social-assistance world (demo, tests, bench).

* :func:`stats_manifest` — a cross-department statistical question for the
  ``he-stats`` kind: pension (HRSS) of applicants rejected in past
  verification (civil affairs), by district.
* :func:`eligibility_manifest` — the ``eligibility-check`` kind over civil
  affairs' applicants, with the rules file carried in the manifest.
* :func:`decisions_changed` / :func:`stats_lines` — read the job results.

Manifests are TOML strings an analyst signs; node names and datasets are
those of the reference profiles in ``nodes/``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from fedgov.datasources import read_dataset
from fedgov.errors import FedgovError
from fedgov.protocols.eligibility import ApplicantResult, Rules, evaluate_plain, parse_rules
from fedgov.protocols.psi import normalize_ids
from fedgov.schema import load_schema

if TYPE_CHECKING:  # pragma: no cover
    from fedgov.runner import NodeSpec

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "examples" / "social_assistance" / "eligibility_rules.toml"
#: department -> its dataset in the reference profiles
DATASETS = {
    "civil_affairs": "applications",
    "tax": "income",
    "hrss": "insurance",
    "housing": "property",
    "vehicles": "vehicles",
    "medical": "claims",
}
#: the example rules without medical insurance (no manual approval needed):
#: four departments — the configuration the bench measures
RULES_WITHOUT_MEDICAL = """
[check]
name = "minimum-living-allowance-2024 (no medical term)"
region_field = "district"
household_size_field = "household_size"
tie_tolerance = 0.01
max_household_size = 20

[thresholds.default]
income_standard = 1000.0
area_per_capita = 70.0

[[rules]]
name = "income"
kind = "threshold"
per_capita = true
compare = "<"
threshold = "income_standard"
terms = [
  { node = "tax", field = "annual_income", divide = 12, max = 2000000 },
  { node = "hrss", field = "pension_monthly", max = 50000 },
]

[[rules]]
name = "floor-area"
kind = "threshold"
per_capita = true
compare = "<="
threshold = "area_per_capita"
terms = [{ node = "housing", field = "total_floor_area_m2", max = 10000 }]

[[rules]]
name = "properties"
kind = "fact"
node = "housing"
field = "property_count"
fail_if = { op = ">", value = 1 }

[[rules]]
name = "vehicle-count"
kind = "fact"
node = "vehicles"
field = "vehicle_count"
fail_if = { op = ">", value = 1 }

[[rules]]
name = "vehicle-value"
kind = "fact"
node = "vehicles"
field = "newest_vehicle_value_cny"
fail_if = { op = ">", value = 50000 }
"""


def _toml(value: Any) -> str:
    return json.dumps(value)  # JSON scalars, strings and arrays are valid TOML


#: the demo's clip for monthly pensions (CNY): the analyst's bound on one person's value. It sets
#: the DP sensitivity of sums, so a tight bound (the generator's pensions stay below it) keeps
#: the owners' noise useful; values above it are clipped by the owner.
DEMO_PENSION_CLIP = (0.0, 8000.0)


def stats_manifest(
    *,
    field: str = "pension_monthly",
    where: list[dict[str, Any]] | None = None,
    group_by: str | None = "district",
    stats: tuple[str, ...] = ("count", "sum", "mean"),
    clip: tuple[float, float] = (0.0, 50000.0),
    dp_epsilon: float | None = None,
    requester: str = "analyst",
    description: str = "Average pension of applicants rejected in past verification, by district",
) -> str:
    """``he-stats``: HRSS's ``field`` over civil affairs' cohort (default: rejected applicants)."""
    where = [{"field": "eligible", "op": "==", "value": 0}] if where is None else where
    ca_fields = ["resident_id", *([group_by] if group_by else [])]
    ca_fields += [w["field"] for w in where if w["field"] not in ca_fields]
    where_toml = ", ".join(
        "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in w.items()) + " }" for w in where
    )
    lines = [
        "[job]",
        'kind = "he-stats"',
        'purpose = "social-assistance-statistics"',
        f"description = {_toml(description)}",
        f"requester = {_toml(requester)}",
        "",
        "[[participants]]",
        'node = "civil_affairs"',
        'role = "cohort"',
        'dataset = "applications"',
        'id = "resident_id"',
        f"fields = {_toml(ca_fields)}",
        f"where = [{where_toml}]",
        "",
        "[[participants]]",
        'node = "hrss"',
        'role = "owner"',
        'dataset = "insurance"',
        'id = "resident_id"',
        f"fields = {_toml(['resident_id', field])}",
        "",
        "[parameters]",
        f"field = {_toml(field)}",
        f"stats = {_toml(list(stats))}",
        f"clip = {_toml([float(clip[0]), float(clip[1])])}",
    ]
    if group_by:
        lines.append(f"group_by = {_toml(group_by)}")
    if dp_epsilon is not None:
        lines.append(f'dp = {{ mechanism = "laplace", epsilon = {float(dp_epsilon)!r} }}')
    return "\n".join(lines) + "\n"


def eligibility_manifest(
    rules_text: str | None = None,
    *,
    dataset: str = "applications_holdout",
    arbiter: str = "arbiter",
    baseline: bool = True,
    label: bool = True,
    description: str = "Minimum-living-allowance check of this year's applicants; figures never exposed",
    alignment: str = "fresh",
) -> str:
    """``eligibility-check`` over civil affairs' ``dataset`` with ``rules_text``
    (default: ``examples/social_assistance/eligibility_rules.toml``, which
    includes medical insurance — two approvers there). Departments and their
    fields follow from the rules. ``alignment = "standing"`` reuses the
    departments' cached alignment (their policies must allow it)."""
    text = RULES_FILE.read_text() if rules_text is None else rules_text
    rules = parse_rules(text, "rules")
    if "'''" in text:
        raise FedgovError("rules text must not contain ''' (it is embedded as a TOML literal string)")
    ca_fields = ["resident_id", rules.region_field, rules.household_size_field]
    if baseline:
        ca_fields.append("declared_monthly_income")
    if label:
        ca_fields.append("eligible")
    parts = [
        "[job]",
        'kind = "eligibility-check"',
        'purpose = "social-assistance-eligibility"',
        f"description = {_toml(description)}",
        "",
        "[[participants]]",
        'node = "civil_affairs"',
        'role = "guest"',
        f"dataset = {_toml(dataset)}",
        'id = "resident_id"',
        *(['label = "eligible"'] if label else []),
        f"fields = {_toml(ca_fields)}",
    ]
    for node in rules.nodes():
        if node not in DATASETS:
            raise FedgovError(f"no reference dataset for department '{node}'")
        parts += [
            "",
            "[[participants]]",
            f"node = {_toml(node)}",
            'role = "host"',
            f"dataset = {_toml(DATASETS[node])}",
            'id = "resident_id"',
            f"fields = {_toml(['resident_id', *rules.fields(node)])}",
        ]
    parts += ["", "[[participants]]", f"node = {_toml(arbiter)}", 'role = "arbiter"', "", "[parameters]"]
    if alignment != "fresh":
        parts.append(f"alignment = {_toml(alignment)}")
    if baseline:
        parts.append('baseline = { field = "declared_monthly_income", threshold = "income_standard", '
                     'per_capita = true, compare = "<" }')
    parts.append("rules = '''" + text.strip("\n") + "\n'''")
    return "\n".join(parts) + "\n"


def eligibility_summary(result: dict[str, Any], guest: str = "civil_affairs") -> dict[str, Any]:
    """Civil affairs' released counts from an ``eligibility-check`` job result."""
    try:
        return dict(result[guest])
    except (KeyError, TypeError):
        raise FedgovError(f"the job result has no release from '{guest}'") from None


def decisions_changed(result: dict[str, Any], guest: str = "civil_affairs") -> int:
    """How many decisions differ from civil affairs' declared income alone."""
    summary = eligibility_summary(result, guest)
    if "compared_with_baseline" not in summary:
        raise FedgovError("the eligibility check was run without a baseline (parameters.baseline)")
    return int(summary["compared_with_baseline"]["changed"])


def stats_lines(result: dict[str, Any], owner: str = "hrss") -> list[str]:
    """Human-readable lines of an ``he-stats`` release (suppressed cells named)."""
    rel = result.get(owner)
    if not rel:
        raise FedgovError(f"the job result has no release from '{owner}'")
    from fedgov.protocols.he_stats import TOTAL, dp_error

    errors = dp_error(rel)  # the DP noise's standard deviation per figure ({} without DP)

    def pm(label: str, stat: str, fmt: str) -> str:
        sd = errors.get(label, {}).get(stat)
        return f" ± {sd:{fmt}}" if isinstance(sd, float) else ""

    out = []
    for label, cell in sorted(rel["cells"].items()):
        mean = cell.get("mean")
        out.append(f"{label:<12} n={cell.get('count', '?'):>5}{pm(label, 'count', '.1f')}  "
                   f"mean={'—' if mean is None else f'{mean:,.2f}'}{pm(label, 'mean', ',.2f')}")
    for label, why in sorted(rel["suppressed"].items()):
        out.append(f"{label:<12} suppressed ({why})")
    if rel.get("total"):
        t = rel["total"]
        out.append(f"{'all':<12} n={t.get('count', '?'):>5}{pm(TOTAL, 'count', '.1f')}  "
                   f"mean={t.get('mean') or 0:,.2f}{pm(TOTAL, 'mean', ',.2f')}")
    if errors:
        out.append("(± is the standard deviation of the differential-privacy noise in that figure)")
    return out


def read_reference(data_dir: Path, node: str, dataset: str) -> pa.Table:
    """Read a generated dataset through its reference profile (tests, bench: plaintext checks)."""
    from fedgov.scenarios.profiles import node_specs

    spec = next((s for s in node_specs(data_dir) if s.name == node), None)
    d = next((d for d in spec.datasets if d.name == dataset), None) if spec else None
    if d is None:
        raise FedgovError(f"no reference dataset {node}/{dataset}")
    return read_dataset(d.source, load_schema(d.schema), base_dir=data_dir, table=d.table, query=d.query)


def read_decisions(path: Path) -> tuple[list[str], list[ApplicantResult]]:
    """Civil affairs' kept decisions (``outputs/<job>/decisions.csv``): the batch's
    normalised IDs and, per applicant, the decision and failed rules."""
    import csv

    with Path(path).open() as fh:
        rows = list(csv.DictReader(fh))
    batch = normalize_ids([r["resident_id"] for r in rows])
    got = [ApplicantResult(r["eligible"] == "true", tuple(x for x in r["failed"].split(";") if x)) for r in rows]
    return batch, got


def plaintext_eligibility(
    data_dir: Path, rules: Rules, batch: list[str], *, dataset: str = "applications"
) -> tuple[list[ApplicantResult], np.ndarray]:
    """Reference decisions on plaintext over ``batch`` (normalised IDs), and the
    declared-income baseline — the same first-record conventions as the job."""

    def first(table: pa.Table, col: str, ids: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for rid, v in zip(ids, table.column(col).to_pylist(), strict=True):
            out.setdefault(rid, v)
        return out

    app = read_reference(data_dir, "civil_affairs", dataset)
    aid = normalize_ids(app.column("resident_id").to_pylist())
    region = first(app, rules.region_field, aid)
    size = first(app, rules.household_size_field, aid)
    declared = first(app, "declared_monthly_income", aid)
    depts: dict[str, dict[str, np.ndarray]] = {}
    for node in rules.nodes():
        t = read_reference(data_dir, node, DATASETS[node])
        tid = normalize_ids(t.column("resident_id").to_pylist())
        depts[node] = {}
        for f in rules.fields(node):
            m = first(t, f, tid)
            depts[node][f] = np.array([np.nan if m.get(r) is None else float(m[r]) for r in batch])
    regions = [None if region[r] is None else str(region[r]) for r in batch]
    sizes = np.array([np.nan if size[r] is None else float(size[r]) for r in batch])
    valid = ~np.isnan(sizes) & (sizes >= 1) & (sizes <= rules.max_household_size)
    base = np.array([
        bool(valid[k]) and float(declared[r] or 0) / sizes[k] < rules.threshold("income_standard", regions[k])
        for k, r in enumerate(batch)
    ])
    return evaluate_plain(rules, regions, sizes, depts), base


def with_disclosure(specs: Sequence[NodeSpec], where: Path, nodes: Sequence[str], **settings: object) -> list[NodeSpec]:
    """``specs`` with the policies of ``nodes`` extended by ``[defaults.disclosure]`` ``settings``
    (an owner's choice, e.g. ``elig_checks_per_applicant = 12`` for a world that re-checks the
    same applicants many times); the policies are rewritten under ``where``."""
    from fedgov.runner import NodeSpec as _NodeSpec

    out: list[NodeSpec] = []
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    for spec in specs:
        if spec.name not in nodes:
            out.append(spec)
            continue
        text = spec.policy.read_text()
        if "\n[defaults.disclosure]\n" in text:
            text = text.replace("\n[defaults.disclosure]\n", "\n[defaults.disclosure]\n" + lines, 1)
        else:
            i = text.index("\n[datasets.")
            text = text[:i] + "\n[defaults.disclosure]\n" + lines + text[i:]
        where.mkdir(parents=True, exist_ok=True)
        (where / f"{spec.name}.toml").write_text(text)
        out.append(_NodeSpec(spec.name, where / f"{spec.name}.toml", spec.datasets))
    return out
