"""Private eligibility check: cross-department thresholds on blinded CKKS values.

Protocol and leakage: ``docs/protocols/eligibility-check.md``. Parties:

* **key holder** K (the coordinator's arbiter, or any party that colludes
  with neither civil affairs nor the departments): makes a fresh CKKS key,
  decrypts only blinded values, answers with sign bits.
* **departments** D (tax, hrss, medical, housing, vehicles, ...): hold values
  over the batch order (0 / NaN where they have no record); encrypt their
  share of each threshold test under K's key; compute yes/no facts locally.
* **civil affairs** C: holds the batch (applicant order, region, household
  size), adds its threshold term, blinds, and learns per applicant eligible /
  not eligible and which rules failed — never a department figure.

Messages (n applicants, m = ceil(n/4096) ciphertexts per test)::

    K -> D, C  hello        public context                               ~0.48 MB
    D -> C     contribution Enc_K(sum of its terms) per threshold test     m x ~366 KB
                            + fail bits per fact rule                     n/8 B
    C -> K     blinded      Enc_K(s*r*(total - T) + s*e) per test          m x ~262 KB
    K -> C     signs        1 bit per slot per test                        m x 512 B

with per applicant and test a fresh random sign ``s``, a log-uniform factor
``r`` and bounded noise ``|e| <= r*tie/4`` chosen by C. K sees values whose
sign is a fair coin independent of the outcome and whose magnitude is the
applicant's margin times an unknown factor spanning ``2^r_bits``.

Rules come from a declarative TOML file (:func:`parse_rules`).

Disclosure bounds this module enforces itself (the node checks the owner's
policy too, before any computation):

* **rule ladders** - a department refuses a job whose rules read one of its
  figures in more than ``max_rules_per_figure`` rules (threshold and fact
  rules alike; :func:`figure_uses`; default :data:`DEFAULT_MAX_RULES_PER_FIGURE`):
  each rule on a figure is one more bit about it per applicant.
* **imaginary parts** - every blinded ciphertext gets fresh uniform
  imaginary flooding of magnitude :func:`imaginary_flood_bound` before it goes
  to K (:func:`fedgov.crypto.ckks.flood_imaginary`): otherwise ``Im`` of each
  slot is ``s*r*eta`` (encryption noise times the same blinding) and
  ``|Re/Im|`` estimates ``|margin|`` to about a bit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tenseal.sealapi as sealapi

from fedgov.crypto.ckks import ciphertext_bytes, flood_imaginary, load_ciphertext
from fedgov.crypto.ckks_stats import SLOTS, KeyOwner, PublicKey, job_tag, pack, unpack
from fedgov.errors import ConfigError, CryptoError, FedgovError, PolicyDenied
from fedgov.tomlutil import check_keys, get_str, get_table, load_toml, parse_toml

__all__ = [
    "ApplicantResult",
    "CivilAffairs",
    "Department",
    "FactRule",
    "KeyHolder",
    "Rules",
    "Term",
    "ThresholdRule",
    "DEFAULT_MAX_RULES_PER_FIGURE",
    "check_figure_uses",
    "evaluate_plain",
    "figure_uses",
    "imaginary_flood_bound",
    "load_rules",
    "parse_rules",
    "run_local",
]

_MAGIC = b"FELG"
_HELLO, _CONTRIB, _BLINDED, _SIGNS = 1, 2, 3, 4
_COMPARE = ("<", "<=", ">", ">=")
_FACT_OPS = ("==", "!=", "<", "<=", ">", ">=")
#: Decoding keeps about 2^-51 of the largest slot; leave 5 bits of margin.
_PRECISION_BITS = 46
_MAX_R_BITS = 30
_MIN_R_BITS = 8
#: Most rules (threshold or fact) that may read one department figure in one job.
DEFAULT_MAX_RULES_PER_FIGURE = 1


# --------------------------------------------------------------------------
# rules


@dataclass(frozen=True)
class Term:
    """``scale / divide * clip(node.field, -max, max)``; a missing value counts 0."""

    node: str
    field: str
    scale: float = 1.0
    divide: float = 1.0
    max: float = 1e7

    @property
    def weight(self) -> float:
        return self.scale / self.divide


@dataclass(frozen=True)
class ThresholdRule:
    """Passes when ``sum(terms) [/ household size] <compare> threshold[region]``."""

    name: str
    terms: tuple[Term, ...]
    threshold: str
    compare: str = "<"
    per_capita: bool = False
    description: str = ""


@dataclass(frozen=True)
class FactRule:
    """Fails when the department's local fact ``field <op> value`` holds."""

    name: str
    node: str
    field: str
    op: str
    value: float
    missing: str = "pass"  # no record at the department: "pass" | "fail"
    description: str = ""


@dataclass(frozen=True)
class Rules:
    """A parsed rules file. Eligible iff every rule passes."""

    name: str
    region_field: str
    household_size_field: str
    tie_tolerance: float
    thresholds: dict[str, dict[str, float]]  # region -> name -> value ("default" always present)
    rules: tuple[ThresholdRule | FactRule, ...]
    max_household_size: int = 20
    source: str = "rules"

    @property
    def threshold_rules(self) -> list[ThresholdRule]:
        return [r for r in self.rules if isinstance(r, ThresholdRule)]

    @property
    def fact_rules(self) -> list[FactRule]:
        return [r for r in self.rules if isinstance(r, FactRule)]

    def nodes(self) -> list[str]:
        """Departments the rules need, in first-use order."""
        out: list[str] = []
        for r in self.rules:
            for n in [t.node for t in r.terms] if isinstance(r, ThresholdRule) else [r.node]:
                if n not in out:
                    out.append(n)
        return out

    def fields(self, node: str) -> list[str]:
        """Fields of ``node`` the rules touch (for the node's policy check)."""
        out: list[str] = []
        for r in self.rules:
            fs = [t.field for t in r.terms if t.node == node] if isinstance(r, ThresholdRule) else (
                [r.field] if r.node == node else [])
            out += [f for f in fs if f not in out]
        return out

    def threshold(self, name: str, region: str | None) -> float:
        table = self.thresholds.get(region or "", {})
        return table.get(name, self.thresholds["default"][name])

    def margin_bound(self, rule: ThresholdRule) -> float:
        """Largest |total - T| any applicant can have (from public clip bounds)."""
        terms = sum(abs(t.weight) * t.max for t in rule.terms)
        thr = max(abs(t.get(rule.threshold, self.thresholds["default"][rule.threshold]))
                  for t in self.thresholds.values())
        return terms + thr * (self.max_household_size if rule.per_capita else 1)

    def r_bits(self, rule: ThresholdRule) -> int:
        """Blinding range (bits of log-uniform factor) the CKKS precision allows."""
        spread = math.log2(self.margin_bound(rule) / self.tie_tolerance)
        return int(min(_MAX_R_BITS, math.floor(_PRECISION_BITS - spread)))


def _num(table: dict[str, Any], key: str, where: str, default: float | None = None,
         *, positive: bool = False) -> float:
    v = table.get(key, default)
    if v is None:
        raise ConfigError(f"missing required key '{key}'", where=where)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ConfigError(f"'{key}' must be a number, got {v!r}", where=where)
    if positive and v <= 0:
        raise ConfigError(f"'{key}' must be > 0, got {v!r}", where=where)
    return float(v)


def parse_rules(doc: dict[str, Any] | str, where: str = "eligibility rules") -> Rules:
    """Validate a rules document (TOML text or parsed). Strict: unknown keys,
    unknown threshold names, bad operators and duplicate rule names are
    :class:`ConfigError` naming the key. Format: see
    ``examples/social_assistance/eligibility_rules.toml``."""
    if isinstance(doc, str):
        doc = parse_toml(doc, where)
    check_keys(doc, ("check", "thresholds", "rules"), where, required=("check", "thresholds", "rules"))
    chk = get_table(doc, "check", where, required=True)
    wc = f"{where}: check"
    check_keys(chk, ("name", "region_field", "household_size_field", "tie_tolerance",
                     "max_household_size"), wc, required=("name",))
    name = get_str(chk, "name", wc)
    region_field = get_str(chk, "region_field", wc, "district")
    size_field = get_str(chk, "household_size_field", wc, "household_size")
    tie = _num(chk, "tie_tolerance", wc, 0.01, positive=True)
    mhs = chk.get("max_household_size", 20)
    if isinstance(mhs, bool) or not isinstance(mhs, int) or mhs < 1:
        raise ConfigError(f"'max_household_size' must be an integer >= 1, got {mhs!r}", where=wc)

    thr_raw = get_table(doc, "thresholds", where, required=True)
    if "default" not in thr_raw:
        raise ConfigError("missing required table [thresholds.default]", where=where)
    thresholds: dict[str, dict[str, float]] = {}
    for region, table in thr_raw.items():
        wt = f"{where}: thresholds.{region}"
        if not isinstance(table, dict):
            raise ConfigError("must be a table of name = number", where=wt)
        thresholds[region] = {k: _num(table, k, wt) for k in table}
        unknown = set(table) - set(thr_raw["default"]) if region != "default" else set()
        if unknown:
            raise ConfigError(f"threshold(s) {sorted(unknown)} not defined in [thresholds.default]",
                              where=wt)

    raw_rules = doc["rules"]
    if not isinstance(raw_rules, list) or not raw_rules:
        raise ConfigError("at least one [[rules]] table is required", where=where)
    rules: list[ThresholdRule | FactRule] = []
    seen: set[str] = set()
    for i, r in enumerate(raw_rules):
        wr = f"{where}: rules[{i}]"
        if not isinstance(r, dict):
            raise ConfigError("must be a table", where=wr)
        kind = get_str(r, "kind", wr)
        rname = get_str(r, "name", wr)
        if rname in seen:
            raise ConfigError(f"duplicate rule name '{rname}'", where=wr)
        seen.add(rname)
        desc = str(r.get("description", ""))
        if kind == "threshold":
            check_keys(r, ("name", "kind", "description", "terms", "threshold", "compare", "per_capita"),
                       wr, required=("terms", "threshold"))
            thr = get_str(r, "threshold", wr)
            if thr not in thresholds["default"]:
                raise ConfigError(f"threshold '{thr}' is not defined in [thresholds.default]", where=wr)
            cmp_ = get_str(r, "compare", wr, "<")
            if cmp_ not in _COMPARE:
                raise ConfigError(f"compare must be one of {' '.join(_COMPARE)}, got '{cmp_}'", where=wr)
            pc = r.get("per_capita", False)
            if not isinstance(pc, bool):
                raise ConfigError("'per_capita' must be true or false", where=wr)
            terms_raw = r["terms"]
            if not isinstance(terms_raw, list) or not terms_raw:
                raise ConfigError("'terms' must be a non-empty list of {node, field, ...}", where=wr)
            terms = []
            for j, t in enumerate(terms_raw):
                wt = f"{wr}.terms[{j}]"
                if not isinstance(t, dict):
                    raise ConfigError("must be a table {node, field, scale, divide, max}", where=wt)
                check_keys(t, ("node", "field", "scale", "divide", "max"), wt, required=("node", "field"))
                terms.append(Term(get_str(t, "node", wt), get_str(t, "field", wt),
                                  _num(t, "scale", wt, 1.0), _num(t, "divide", wt, 1.0, positive=True),
                                  _num(t, "max", wt, 1e7, positive=True)))
            rules.append(ThresholdRule(rname, tuple(terms), thr, cmp_, pc, desc))
        elif kind == "fact":
            check_keys(r, ("name", "kind", "description", "node", "field", "fail_if", "missing"), wr,
                       required=("node", "field", "fail_if"))
            fi = r["fail_if"]
            wf = f"{wr}.fail_if"
            if not isinstance(fi, dict):
                raise ConfigError("must be a table {op, value}", where=wf)
            check_keys(fi, ("op", "value"), wf, required=("op", "value"))
            op = get_str(fi, "op", wf)
            if op not in _FACT_OPS:
                raise ConfigError(f"op must be one of {' '.join(_FACT_OPS)}, got '{op}'", where=wf)
            missing = get_str(r, "missing", wr, "pass")
            if missing not in ("pass", "fail"):
                raise ConfigError(f"missing must be 'pass' or 'fail', got '{missing}'", where=wr)
            rules.append(FactRule(rname, get_str(r, "node", wr), get_str(r, "field", wr), op,
                                  _num(fi, "value", wf), missing, desc))
        else:
            raise ConfigError(f"unknown rule kind '{kind}' (allowed: threshold, fact)", where=wr)
    out = Rules(name, region_field, size_field, tie, thresholds, tuple(rules), mhs, where)
    for tr in out.threshold_rules:
        if out.r_bits(tr) < _MIN_R_BITS:
            raise ConfigError(
                f"rule '{tr.name}': clip bounds (max) too wide for tie_tolerance {tie:g}: "
                f"the blinding range would be {out.r_bits(tr)} bits (< {_MIN_R_BITS}); "
                "lower the terms' max or raise tie_tolerance", where=where)
    return out


def load_rules(path: Path) -> Rules:
    """Load and validate a rules TOML file."""
    return parse_rules(load_toml(path), str(path))


def figure_uses(rules: Rules, node: str | None = None) -> dict[tuple[str, str], list[str]]:
    """``(node, field) -> names of the rules that read it`` (threshold terms and facts).

    Each rule on a figure tells civil affairs one more bit about it per
    applicant (which side of that rule's threshold it lies), so the number of
    rules per figure bounds what one job reveals about the figure.
    """
    out: dict[tuple[str, str], list[str]] = {}
    for r in rules.rules:
        keys = {(t.node, t.field) for t in r.terms} if isinstance(r, ThresholdRule) else {(r.node, r.field)}
        for k in sorted(keys):
            if node is None or k[0] == node:
                out.setdefault(k, []).append(r.name)
    return out


def check_figure_uses(rules: Rules, node: str, max_rules_per_figure: int) -> None:
    """Raise :class:`PolicyDenied` when a figure of ``node`` is read by more than
    ``max_rules_per_figure`` rules (a rule ladder), naming the figure and the rules."""
    for (_, fld), names in figure_uses(rules, node).items():
        if len(names) > max_rules_per_figure:
            raise PolicyDenied(
                f"{len(names)} rules ({', '.join(names)}) read {node}.{fld}; at most "
                f"{max_rules_per_figure} rule(s) may read one figure per job",
                where=f"eligibility: {node}",
            )


def imaginary_flood_bound(rules: Rules) -> float:
    """Magnitude ``B`` of the imaginary flooding added to every blinded slot.

    ``B = 2^_PRECISION_BITS * tie_tolerance``: by construction of
    :meth:`Rules.r_bits` every blinded real part is at most about that large,
    so flooding at most doubles the largest slot (one of the five spare
    precision bits; decisions stay exact, tests/test_disclosure_checks.py).
    Without it K would see ``Im = s*r*eta`` with ``|eta| < 2^-13`` (encryption
    and rescaling noise, measured); with it, per slot, the imaginary part's
    distribution moves by at most ``|Im_before| / (2B) <= 2^(r_bits-60) / tie``
    in statistical distance (``2^-33`` for the example's income rule,
    ``2^-28`` for floor area).
    """
    return float(2.0**_PRECISION_BITS * rules.tie_tolerance)


# --------------------------------------------------------------------------
# shared arithmetic


def _fact_fails(rule: FactRule, values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    missing = np.isnan(v)
    x = np.nan_to_num(v)
    ops = {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal,
           ">": np.greater, ">=": np.greater_equal}
    fail = ops[rule.op](x, rule.value)
    return np.where(missing, rule.missing == "fail", fail)


def _dept_total(rule: ThresholdRule, node: str, values: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    tot = np.zeros(n)
    for t in rule.terms:
        if t.node != node:
            continue
        if t.field not in values:
            raise ConfigError(f"rule '{rule.name}' needs field '{t.field}'", where=node)
        v = np.asarray(values[t.field], dtype=np.float64)
        if len(v) != n:
            raise ConfigError(f"field '{t.field}' has {len(v)} values for a batch of {n}", where=node)
        tot += t.weight * np.clip(np.nan_to_num(v), -t.max, t.max)
    return tot


def _threshold_terms(rules: Rules, rule: ThresholdRule, regions: Sequence[str | None],
                     sizes: np.ndarray) -> np.ndarray:
    thr = np.array([rules.threshold(rule.threshold, r) for r in regions], dtype=np.float64)
    return thr * sizes if rule.per_capita else thr


def _sign(rule: ThresholdRule) -> float:
    """Orientation: pass iff sign * (total - T) + shift < 0."""
    return 1.0 if rule.compare in ("<", "<=") else -1.0


def _shift(rules: Rules, rule: ThresholdRule) -> float:
    """Half the tie tolerance: a strict comparison fails and a non-strict one
    passes when total == T exactly; only margins within a quarter tolerance of
    +-tie/2 can go either way."""
    return (0.5 if rule.compare in ("<", ">") else -0.5) * rules.tie_tolerance


def _valid_sizes(rules: Rules, sizes: np.ndarray) -> np.ndarray:
    s = np.asarray(sizes, dtype=np.float64)
    return ~np.isnan(s) & (s >= 1) & (s <= rules.max_household_size)


@dataclass(frozen=True)
class ApplicantResult:
    """What civil affairs learns about one applicant."""

    eligible: bool
    failed: tuple[str, ...]


def _combine(rules: Rules, passes: Mapping[str, np.ndarray], valid: np.ndarray) -> list[ApplicantResult]:
    n = len(valid)
    out = []
    for a in range(n):
        failed = [r.name for r in rules.rules if not passes[r.name][a]]
        if not valid[a]:
            failed = ["household-size"] + failed
        out.append(ApplicantResult(not failed, tuple(failed)))
    return out


def evaluate_plain(rules: Rules, regions: Sequence[str | None], sizes: np.ndarray,
                   departments: Mapping[str, Mapping[str, np.ndarray]]) -> list[ApplicantResult]:
    """Reference: the rules on plaintext data (tests, bench). Same clipping and
    missing-value conventions as the protocol; ties resolve as ``<``."""
    n = len(regions)
    sizes = np.asarray(sizes, dtype=np.float64)
    valid = _valid_sizes(rules, sizes)
    sz = np.where(valid, sizes, 1.0)
    passes: dict[str, np.ndarray] = {}
    for r in rules.threshold_rules:
        total = sum((_dept_total(r, d, departments[d], n) for d in {t.node for t in r.terms}), np.zeros(n))
        margin = _sign(r) * (total - _threshold_terms(rules, r, regions, sz)) + _shift(rules, r)
        passes[r.name] = margin < 0
    for f in rules.fact_rules:
        passes[f.name] = ~_fact_fails(f, departments[f.node][f.field])
    return _combine(rules, passes, valid)


def plain_margins(rules: Rules, regions: Sequence[str | None], sizes: np.ndarray,
                  departments: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per threshold rule, the oriented margin ``sign * (total - T) + shift`` per
    applicant; the rule passes iff it is negative (tests: what must stay hidden)."""
    n = len(regions)
    sz = np.where(_valid_sizes(rules, sizes), np.asarray(sizes, dtype=np.float64), 1.0)
    out = {}
    for r in rules.threshold_rules:
        total = sum((_dept_total(r, d, departments[d], n) for d in {t.node for t in r.terms}), np.zeros(n))
        out[r.name] = _sign(r) * (total - _threshold_terms(rules, r, regions, sz)) + _shift(rules, r)
    return out


# --------------------------------------------------------------------------
# roles


def _chunks(n: int) -> int:
    return max(1, -(-n // SLOTS))


class KeyHolder:
    """Holds the CKKS key; decrypts blinded margins and returns sign bits only.

    Learns: the number of tests and slots, and for every slot a value
    ``s*r*margin + s*e`` (random sign, unknown log-uniform factor) whose
    imaginary part (if it decodes slots as complex) is uniform noise
    independent of the margin; no applicant identity, no batch order, no
    department figure.
    """

    def __init__(self, job_id: str) -> None:
        self._key = KeyOwner()
        self._tag = job_tag("eligibility", job_id)
        #: what this party decrypted in the last :meth:`signs` call (tests inspect it)
        self.view: dict[str, np.ndarray] = {}

    @property
    def key_id(self) -> bytes:
        return self._key.key_id

    def hello(self) -> bytes:
        return pack(_MAGIC, _HELLO, self._key.key_id, self._tag, {}, [self._key.public_bytes()])

    def _decrypt(self, blob: bytes, where: str) -> np.ndarray:
        """Real parts of one blinded ciphertext (SEAL serialisation, :func:`ciphertext_bytes`)."""
        sc = self._key.ctx.data.seal_context()
        ct = load_ciphertext(sc, blob, where)
        pt = sealapi.Plaintext()
        try:
            sealapi.Decryptor(sc, self._key.ctx.data.secret_key()).decrypt(ct, pt)
        except Exception as exc:  # SEAL: ciphertext not valid for this key's parameters
            raise CryptoError(f"ciphertext rejected: {exc}", where=where) from None
        return np.asarray(sealapi.CKKSEncoder(sc).decode_double(pt), dtype=np.float64)

    def signs(self, blinded: bytes) -> bytes:
        """Decrypt each blinded ciphertext; reply with 1 bit per slot (1 = negative)."""
        w = "eligibility: blinded values"
        msg = unpack(blinded, magic=_MAGIC, kind=_BLINDED, tag=self._tag, key_id=self._key.key_id, where=w)
        tests = msg.meta.get("tests")
        m = msg.meta.get("chunks")
        if not isinstance(tests, list) or not isinstance(m, int) or len(msg.blobs) != len(tests) * m:
            raise CryptoError("malformed blinded message", where=w)
        out = []
        self.view = {}
        for i, t in enumerate(tests):
            vals = np.concatenate([self._decrypt(b, w) for b in msg.blobs[i * m : (i + 1) * m]])
            self.view[str(t)] = vals
            out.append(np.packbits(vals < 0).tobytes())
        return pack(_MAGIC, _SIGNS, self._key.key_id, self._tag, {"tests": tests, "chunks": m}, out)


class Department:
    """A department's part: its terms of each threshold test, encrypted, and its facts.

    ``values[field]`` is over the batch order (NaN where it has no record).
    Learns nothing (holds no secret key; receives only the public context).
    Refuses (:class:`PolicyDenied`) rules that read one of its figures in more
    than ``max_rules_per_figure`` rules.
    """

    def __init__(self, job_id: str, name: str, rules: Rules, values: Mapping[str, np.ndarray], *,
                 max_rules_per_figure: int = DEFAULT_MAX_RULES_PER_FIGURE) -> None:
        check_figure_uses(rules, name, max_rules_per_figure)
        self.name = name
        self.rules = rules
        self.values = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
        lens = {len(v) for v in self.values.values()}
        if len(lens) > 1:
            raise ConfigError("fields have different lengths", where=name)
        self.n = lens.pop() if lens else 0
        self._tag = job_tag("eligibility", job_id)

    def contribute(self, hello: bytes) -> bytes:
        """Enc(sum of this node's terms) for each threshold test it appears in,
        plus packed fail bits for each of its fact rules."""
        w = f"eligibility: hello at {self.name}"
        msg = unpack(hello, magic=_MAGIC, kind=_HELLO, tag=self._tag, key_id=None, where=w)
        pk = PublicKey(msg.blobs[0], where=w)
        if pk.key_id != msg.key_id:
            raise CryptoError("hello's key id does not match its public context", where=w)
        tests = [r for r in self.rules.threshold_rules if any(t.node == self.name for t in r.terms)]
        facts = [f for f in self.rules.fact_rules if f.node == self.name]
        blobs: list[bytes] = []
        for r in tests:
            blobs += pk.encrypt(_dept_total(r, self.name, self.values, self.n))
        for f in facts:
            if f.field not in self.values:
                raise ConfigError(f"fact '{f.name}' needs field '{f.field}'", where=self.name)
            blobs.append(np.packbits(_fact_fails(f, self.values[f.field])).tobytes())
        meta = {"node": self.name, "n": self.n, "tests": [r.name for r in tests],
                "facts": [f.name for f in facts], "chunks": _chunks(self.n)}
        return pack(_MAGIC, _CONTRIB, pk.key_id, self._tag, meta, blobs)


class CivilAffairs:
    """Holds the batch; combines, blinds, and turns sign bits into decisions.

    ``regions`` and ``household_sizes`` are over the batch order. Learns per
    applicant which rules pass (the result), nothing else: department
    contributions are ciphertexts under the key holder's key.
    """

    def __init__(self, job_id: str, rules: Rules, regions: Sequence[str | None],
                 household_sizes: np.ndarray) -> None:
        self.rules = rules
        self.regions = list(regions)
        self.sizes = np.asarray(household_sizes, dtype=np.float64)
        if len(self.sizes) != len(self.regions):
            raise ConfigError("regions and household sizes differ in length", where="civil affairs")
        self.n = len(self.regions)
        self._tag = job_tag("eligibility", job_id)
        self._flip: dict[str, np.ndarray] = {}
        self._facts: dict[str, np.ndarray] = {}
        self._key_id: bytes | None = None

    def blind(self, hello: bytes, contributions: Sequence[bytes]) -> bytes:
        """Sum the departments' ciphertexts per test, subtract the threshold
        term, multiply by ``s*r``, add ``s*e`` and flood the imaginary parts
        (:func:`imaginary_flood_bound`); return the message for K."""
        w = "eligibility: civil affairs"
        h = unpack(hello, magic=_MAGIC, kind=_HELLO, tag=self._tag, key_id=None, where=w)
        pk = PublicKey(h.blobs[0], where=w)
        if pk.key_id != h.key_id:
            raise CryptoError("hello's key id does not match its public context", where=w)
        self._key_id = pk.key_id
        m = _chunks(self.n)
        per_test: dict[str, list[list[Any]]] = {r.name: [] for r in self.rules.threshold_rules}
        seen_nodes: set[str] = set()
        for c in contributions:
            msg = unpack(c, magic=_MAGIC, kind=_CONTRIB, tag=self._tag, key_id=pk.key_id,
                         where=f"{w}: contribution")
            node = msg.meta.get("node")
            where = f"{w}: contribution from {node}"
            if node in seen_nodes:
                raise CryptoError("department contributed twice", where=where)
            seen_nodes.add(str(node))
            if msg.meta.get("n") != self.n or msg.meta.get("chunks") != m:
                raise CryptoError(f"batch size {msg.meta.get('n')} != {self.n}", where=where)
            tests, facts = msg.meta.get("tests", []), msg.meta.get("facts", [])
            want_t = [r.name for r in self.rules.threshold_rules if any(t.node == node for t in r.terms)]
            want_f = [f.name for f in self.rules.fact_rules if f.node == node]
            if tests != want_t or facts != want_f or len(msg.blobs) != len(tests) * m + len(facts):
                raise CryptoError(f"contribution covers tests {tests} / facts {facts}; "
                                  f"rules need {want_t} / {want_f}", where=where)
            for i, t in enumerate(tests):
                per_test[t].append([pk.load(b, where) for b in msg.blobs[i * m : (i + 1) * m]])
            for j, f in enumerate(facts):
                bits = np.unpackbits(np.frombuffer(msg.blobs[len(tests) * m + j], dtype=np.uint8))
                if len(bits) < self.n:
                    raise CryptoError("fact bits truncated", where=where)
                self._facts[f] = bits[: self.n].astype(bool)
        missing = [n for n in self.rules.nodes() if n not in seen_nodes]
        if missing:
            raise FedgovError(f"no contribution from {missing}", where=w)

        rng = np.random.default_rng(int.from_bytes(os.urandom(32), "little"))
        valid = _valid_sizes(self.rules, self.sizes)
        sz = np.where(valid, self.sizes, 1.0)
        total_slots = m * SLOTS
        flood = imaginary_flood_bound(self.rules)
        blobs: list[bytes] = []
        for r in self.rules.threshold_rules:
            T = np.zeros(total_slots)
            T[: self.n] = _threshold_terms(self.rules, r, self.regions, sz)
            bits = self.rules.r_bits(r)
            # slots past n carry random threshold terms so they look like applicants
            T[self.n :] = rng.uniform(-1, 1, total_slots - self.n) * self.rules.margin_bound(r) / 4
            s = rng.choice(np.array([-1.0, 1.0]), total_slots)
            rr = np.exp2(rng.uniform(0, bits, total_slots))
            mult = s * rr * _sign(r)
            # s * r * (shift + e), |e| <= tie/4: sign kept whenever |margin| > tie/4
            e = s * rr * (_shift(self.rules, r)
                          + rng.uniform(-0.25, 0.25, total_slots) * self.rules.tie_tolerance)
            self._flip[r.name] = (s * _sign(r) < 0)[: self.n]
            for k in range(m):
                sl = slice(k * SLOTS, (k + 1) * SLOTS)
                acc = None
                for dept_cts in per_test[r.name]:
                    acc = dept_cts[k] if acc is None else acc + dept_cts[k]
                if acc is None:
                    raise FedgovError(f"no department contributed to test '{r.name}'", where=w)
                blinded = (acc - T[sl]) * mult[sl] + e[sl]
                # Im would be s*r*noise: flood it so K's |Re/Im| says nothing about the margin
                blobs += [ciphertext_bytes(ct) for ct in flood_imaginary(blinded, flood, rng, where="eligibility")]
        meta = {"tests": [r.name for r in self.rules.threshold_rules], "chunks": m}
        return pack(_MAGIC, _BLINDED, pk.key_id, self._tag, meta, blobs)

    def decide(self, signs: bytes) -> list[ApplicantResult]:
        """Per applicant: eligible iff every rule passes; ``failed`` names the rules
        that did not (plus ``household-size`` when the size is missing/invalid)."""
        if self._key_id is None:
            raise FedgovError("decide() before blind()", where="civil affairs")
        w = "eligibility: signs from key holder"
        msg = unpack(signs, magic=_MAGIC, kind=_SIGNS, tag=self._tag, key_id=self._key_id, where=w)
        tests = [r.name for r in self.rules.threshold_rules]
        if msg.meta.get("tests") != tests or len(msg.blobs) != len(tests):
            raise CryptoError("signs do not match the tests", where=w)
        passes: dict[str, np.ndarray] = {}
        for t, blob in zip(tests, msg.blobs, strict=True):
            neg = np.unpackbits(np.frombuffer(blob, dtype=np.uint8))[: self.n].astype(bool)
            if len(neg) < self.n:
                raise CryptoError("sign bits truncated", where=w)
            passes[t] = neg ^ self._flip[t]
        for f in self.rules.fact_rules:
            passes[f.name] = ~self._facts[f.name]
        return _combine(self.rules, passes, _valid_sizes(self.rules, self.sizes))


def run_local(job_id: str, rules: Rules, regions: Sequence[str | None], sizes: np.ndarray,
              departments: Mapping[str, Mapping[str, np.ndarray]], *,
              transcript: list[tuple[str, str, str, bytes]] | None = None,
              key_holder: KeyHolder | None = None) -> list[ApplicantResult]:
    """Run the whole check in this process (tests, bench)."""
    kh = key_holder or KeyHolder(job_id)
    ca = CivilAffairs(job_id, rules, regions, sizes)

    def log(src: str, dst: str, step: str, b: bytes) -> bytes:
        if transcript is not None:
            transcript.append((src, dst, step, b))
        return b

    hello = log("key_holder", "*", "hello", kh.hello())
    contribs = [log(d, "civil_affairs", "contribution",
                    Department(job_id, d, rules, departments[d]).contribute(hello))
                for d in rules.nodes()]
    blinded = log("civil_affairs", "key_holder", "blinded", ca.blind(hello, contribs))
    signs = log("key_holder", "civil_affairs", "signs", kh.signs(blinded))
    return ca.decide(signs)
