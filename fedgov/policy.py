"""A department's own policy, and the pure decision a node takes on a task.

Format (``nodes/<dept>/policy.toml``)::

    [defaults]
    min_cohort = 11            # smallest count/cohort ever released
    approval = "auto"          # "auto" | "manual"
    approvers_required = 1     # distinct approvers when manual (2 = dual-post review)
    requesters = ["*"]         # analysts (certificate names) allowed to ask; "*" = any

    [datasets.income]          # datasets not listed here are never used
    approval = "manual"        # any [defaults] key may be overridden
    [[datasets.income.rules]]
    purposes = ["social-assistance-eligibility"]
    kinds = ["psi", "vertical-lr"]
    fields = ["resident_id", "annual_income"]

A task is allowed when the requester is allowed and one rule covers its
purpose, its kind and *every* field the task touches. The node evaluates this
itself on every task; the coordinator's opinion is never consulted.

**Disclosure settings** (``[defaults.disclosure]``, ``[datasets.NAME.disclosure]``)
bound what any party can learn from a job on the dataset: masks, precision,
DP, who receives which result. Every key is declared by a job kind in
:mod:`fedgov.params` with a safe default that holds when the policy says
nothing; a manifest may ask for stricter, never looser
(:func:`fedgov.params.disclosure_refusals`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedgov.errors import ConfigError
from fedgov.params import default_disclosure, parse_disclosure
from fedgov.tomlutil import check_keys, get_int, get_str, get_str_list, get_table, load_toml

SETTING_KEYS = ("min_cohort", "approval", "approvers_required", "requesters", "approvers", "standing_alignment")
DEFAULT_MIN_COHORT = 11


@dataclass(frozen=True)
class Rule:
    purposes: frozenset[str]
    kinds: frozenset[str]
    fields: frozenset[str]


@dataclass(frozen=True)
class DatasetPolicy:
    name: str
    min_cohort: int
    approval: str
    approvers_required: int
    requesters: tuple[str, ...]
    approvers: tuple[str, ...]  # optional allow-list of approver names; empty = any approver of the dept
    rules: tuple[Rule, ...]
    #: may keep a standing (cached) PSI alignment with a requester's guest (see psi_standing)
    standing_alignment: bool = False
    #: effective disclosure settings (defaults < [defaults.disclosure] < [datasets.NAME.disclosure])
    disclosure: Mapping[str, Any] = field(default_factory=default_disclosure)
    #: where an operator changes them (named in refusals)
    disclosure_source: str = ""

    def allowed_purposes(self) -> dict[str, tuple[str, ...]]:
        """Each purpose some rule allows, with the job kinds allowed for it (sorted; what the node publishes
        in the catalogue). A necessary condition only: a task must also be covered field by field, by an
        allowed requester, within the disclosure settings. Leaks nothing about rows: it is the policy's text."""
        out: dict[str, set[str]] = {}
        for r in self.rules:
            for p in r.purposes:
                out.setdefault(p, set()).update(r.kinds)
        return {p: tuple(sorted(k)) for p, k in sorted(out.items())}


@dataclass(frozen=True)
class Decision:
    """Outcome of a policy check. ``reasons`` is empty iff ``allowed``."""

    allowed: bool
    reasons: tuple[str, ...]
    approval: str = "auto"
    approvers_required: int = 1
    approvers: tuple[str, ...] = ()
    min_cohort: int = DEFAULT_MIN_COHORT
    standing_alignment: bool = False
    disclosure: Mapping[str, Any] = field(default_factory=default_disclosure)
    disclosure_source: str = ""


@dataclass(frozen=True)
class ArbiterPolicy:
    """What a data-less key-holding node (an arbiter) agrees to serve."""

    kinds: frozenset[str]
    purposes: frozenset[str]
    requesters: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    datasets: dict[str, DatasetPolicy]
    source: str = "policy"
    arbiter: ArbiterPolicy | None = None

    def check_arbiter(self, *, kind: str, purpose: str, requester: str) -> Decision:
        """Decide whether this node serves as arbiter (key holder) for a job."""
        a = self.arbiter
        if a is None:
            return Decision(False, ("this node does not act as an arbiter (no [arbiter] in its policy)",))
        reasons = []
        if kind not in a.kinds:
            reasons.append(f"the arbiter does not serve job kind '{kind}'")
        if "*" not in a.purposes and purpose not in a.purposes:
            reasons.append(f"the arbiter does not serve purpose '{purpose}'")
        if "*" not in a.requesters and requester not in a.requesters:
            reasons.append(f"the arbiter does not serve requester '{requester}'")
        return Decision(not reasons, tuple(reasons))

    def check(
        self, *, dataset: str, kind: str, purpose: str, requester: str, fields: tuple[str, ...] | list[str]
    ) -> Decision:
        """Decide whether ``requester`` may run ``kind`` for ``purpose`` on ``fields``.

        Pure and total: never raises for a well-formed policy; every refusal
        carries a reason the analyst will read.
        """
        dp = self.datasets.get(dataset)
        if dp is None:
            return Decision(False, (f"dataset '{dataset}' is not shared by this node's policy",))
        reasons: list[str] = []
        if "*" not in dp.requesters and requester not in dp.requesters:
            reasons.append(f"requester '{requester}' is not allowed to use dataset '{dataset}'")
        by_purpose = [r for r in dp.rules if purpose in r.purposes]
        if not by_purpose:
            reasons.append(f"purpose '{purpose}' is not allowed for dataset '{dataset}'")
        by_kind = [r for r in by_purpose if kind in r.kinds]
        if by_purpose and not by_kind:
            reasons.append(f"job kind '{kind}' is not allowed for purpose '{purpose}' on dataset '{dataset}'")
        if by_kind:
            best = min(by_kind, key=lambda r: len(set(fields) - r.fields))
            denied = sorted(set(fields) - best.fields)
            if denied:
                reasons.append(
                    f"field(s) {', '.join(denied)} of dataset '{dataset}' may not be used "
                    f"for {kind}/{purpose}"
                )
        if reasons:
            return Decision(False, tuple(reasons))
        return Decision(
            True,
            (),
            approval=dp.approval,
            approvers_required=dp.approvers_required,
            approvers=dp.approvers,
            min_cohort=dp.min_cohort,
            standing_alignment=dp.standing_alignment,
            disclosure=dp.disclosure,
            disclosure_source=dp.disclosure_source,
        )


def _settings(table: dict[str, Any], base: dict[str, Any], where: str) -> dict[str, Any]:
    out = dict(base)
    if "min_cohort" in table:
        out["min_cohort"] = get_int(table, "min_cohort", where, DEFAULT_MIN_COHORT, minimum=1)
    if "approval" in table:
        approval = get_str(table, "approval", where)
        if approval not in ("auto", "manual"):
            raise ConfigError(f"approval must be 'auto' or 'manual', got '{approval}'", where=where)
        out["approval"] = approval
    if "approvers_required" in table:
        out["approvers_required"] = get_int(table, "approvers_required", where, 1, minimum=1)
    if "requesters" in table:
        out["requesters"] = tuple(get_str_list(table, "requesters", where))
    if "approvers" in table:
        out["approvers"] = tuple(get_str_list(table, "approvers", where))
    if "standing_alignment" in table:
        if not isinstance(table["standing_alignment"], bool):
            raise ConfigError("standing_alignment must be true or false", where=where)
        out["standing_alignment"] = table["standing_alignment"]
    return out


def parse_policy(doc: dict[str, Any], where: str) -> Policy:
    """Validate a parsed policy document (strict: unknown keys are errors)."""
    check_keys(doc, ("defaults", "datasets", "arbiter"), where)
    defaults_t = get_table(doc, "defaults", where)
    check_keys(defaults_t, (*SETTING_KEYS, "disclosure"), f"{where}: defaults")
    base_disclosure = parse_disclosure(
        get_table(defaults_t, "disclosure", f"{where}: defaults"), default_disclosure(),
        f"{where}: defaults.disclosure",
    )
    defaults = _settings(
        defaults_t,
        {
            "min_cohort": DEFAULT_MIN_COHORT,
            "approval": "auto",
            "approvers_required": 1,
            "requesters": ("*",),
            "approvers": (),
            "standing_alignment": False,
        },
        f"{where}: defaults",
    )
    datasets: dict[str, DatasetPolicy] = {}
    for name, table in get_table(doc, "datasets", where).items():
        w = f"{where}: datasets.{name}"
        if not isinstance(table, dict):
            raise ConfigError("must be a table", where=w)
        check_keys(table, (*SETTING_KEYS, "rules", "disclosure"), w)
        settings = _settings(table, defaults, w)
        settings["disclosure"] = parse_disclosure(
            get_table(table, "disclosure", w), base_disclosure, f"{w}.disclosure"
        )
        settings["disclosure_source"] = f"{where}: datasets.{name}.disclosure"
        raw_rules = table.get("rules", [])
        if not isinstance(raw_rules, list):
            raise ConfigError("'rules' must be an array of tables [[datasets.NAME.rules]]", where=w)
        rules = []
        for i, r in enumerate(raw_rules):
            wr = f"{w}.rules[{i}]"
            if not isinstance(r, dict):
                raise ConfigError("must be a table", where=wr)
            check_keys(r, ("purposes", "kinds", "fields"), wr, required=("purposes", "kinds", "fields"))
            rules.append(
                Rule(
                    purposes=frozenset(get_str_list(r, "purposes", wr)),
                    kinds=frozenset(get_str_list(r, "kinds", wr)),
                    fields=frozenset(get_str_list(r, "fields", wr)),
                )
            )
        if settings["approval"] == "manual" and settings["approvers_required"] < 1:
            raise ConfigError("manual approval needs approvers_required >= 1", where=w)
        datasets[name] = DatasetPolicy(name=name, rules=tuple(rules), **settings)
    arbiter = None
    if "arbiter" in doc:
        wa = f"{where}: arbiter"
        t = get_table(doc, "arbiter", where)
        check_keys(t, ("kinds", "purposes", "requesters"), wa, required=("kinds",))
        arbiter = ArbiterPolicy(
            kinds=frozenset(get_str_list(t, "kinds", wa)),
            purposes=frozenset(get_str_list(t, "purposes", wa, default=["*"])),
            requesters=tuple(get_str_list(t, "requesters", wa, default=["*"])),
        )
    return Policy(datasets=datasets, source=where, arbiter=arbiter)


def load_policy(path: Path) -> Policy:
    """Load and validate ``policy.toml``."""
    return parse_policy(load_toml(path), str(path))
