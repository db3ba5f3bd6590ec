"""Disclosure control of the eligibility check, attacked through the protocol module
with the owners' defaults (issue 11, attacks 5 and 6).

* Attack 5, rule ladders: ten rules ``income < 300 * 2^k`` would bracket every
  applicant's income within a factor of two in one job; repeated jobs would
  binary-search it. Refused: per job by the rules-per-figure limit, over time
  by the per-applicant check budget.
* Attack 6, CKKS imaginary parts: the key holder decodes each slot as a
  complex number; without flooding ``Im = s*r*noise`` and ``|Re/Im|``
  estimates ``|margin|`` to about a bit. With flooding the review's estimator
  (trained on a job whose margins it knows) does no better than the real part
  alone, i.e. no finer than the blinding window.
"""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as sa

from fedgov.crypto import ckks
from fedgov.crypto import ckks_stats as cs
from fedgov.errors import CryptoError, PolicyDenied
from fedgov.node.check_budget import CheckBudget
from fedgov.params import default_disclosure
from fedgov.protocols import eligibility as el

N = 4096


def ladder_rules(k: int) -> str:
    thresholds = "\n".join(f"t{i} = {300 * 2**i}.0" for i in range(k))
    rules = "".join(
        f'[[rules]]\nname = "rung{i}"\nkind = "threshold"\nthreshold = "t{i}"\n'
        'terms = [{ node = "tax", field = "annual_income", divide = 12, max = 2000000 }]\n'
        for i in range(k)
    )
    return f'[check]\nname = "ladder"\n[thresholds.default]\n{thresholds}\n{rules}'


ONE_RULE = """
[check]
name = "one"
tie_tolerance = 0.01
[thresholds.default]
income_standard = 1000.0
[[rules]]
name = "income"
kind = "threshold"
threshold = "income_standard"
terms = [{ node = "tax", field = "annual_income", divide = 12, max = 2000000 }]
"""


# --------------------------------------------------------------------------- attack 5: ladders


def test_ten_rule_ladder_on_one_figure_is_refused_by_the_department() -> None:
    rules = el.parse_rules(ladder_rules(10))
    income = np.random.default_rng(1).uniform(0, 1e6, 50)
    assert default_disclosure()["elig_max_rules_per_figure"] == el.DEFAULT_MAX_RULES_PER_FIGURE == 1
    with pytest.raises(PolicyDenied, match=r"10 rules .* read tax\.annual_income; at most 1"):
        el.Department("j", "tax", rules, {"annual_income": income})
    with pytest.raises(PolicyDenied, match="at most 1"):
        el.run_local("j", rules, [None] * 50, np.ones(50), {"tax": {"annual_income": income}})
    # the honest single rule runs
    one = el.parse_rules(ONE_RULE)
    got = el.run_local("j", one, [None] * 50, np.ones(50), {"tax": {"annual_income": income}})
    assert got == el.evaluate_plain(one, [None] * 50, np.ones(50), {"tax": {"annual_income": income}})


def test_fact_rules_count_towards_the_ladder() -> None:
    doc = ONE_RULE + (
        '[[rules]]\nname = "rich"\nkind = "fact"\nnode = "tax"\nfield = "annual_income"\n'
        "fail_if = { op = \">\", value = 60000 }\n"
    )
    rules = el.parse_rules(doc)
    assert el.figure_uses(rules, "tax") == {("tax", "annual_income"): ["income", "rich"]}
    with pytest.raises(PolicyDenied, match="2 rules"):
        el.Department("j", "tax", rules, {"annual_income": np.zeros(3)})
    el.Department("j", "tax", rules, {"annual_income": np.zeros(3)}, max_rules_per_figure=2)


def test_repeated_jobs_binary_searching_one_applicant_stop_when_the_budget_is_spent(tmp_path) -> None:
    """One rule per job (within the ladder limit), the threshold halved each time:
    the department's durable budget refuses the job once the applicant's checks
    for the quarter are spent, so the search stops after ``budget`` bits."""
    budget = default_disclosure()["elig_checks_per_applicant"]
    assert 1 <= budget <= 4
    store = CheckBudget(tmp_path / "state")
    target_income = 123_456.0  # a year; the analyst wants it
    lo, hi, answered = 0.0, 2_000_000.0, 0
    for job in range(12):
        mid = (lo + hi) / 2
        doc = ONE_RULE.replace("1000.0", f"{mid / 12:.2f}")
        rules = el.parse_rules(doc)
        try:
            store.spend("income", ["annual_income"], ["110105194912310011"], limit=budget,
                        period="quarter", job_id=f"job{job}")
        except PolicyDenied as exc:
            assert "elig_checks_per_applicant" in str(exc)
            break
        (res,) = el.run_local(f"job{job}", rules, [None], np.ones(1), {"tax": {"annual_income": np.array([target_income])}})
        answered += 1
        lo, hi = (lo, mid) if res.eligible else (mid, hi)
    assert answered == budget
    assert (hi - lo) >= 2_000_000.0 / 2**budget  # the bracket is no finer than budget bits allow
    # the count is durable (a new process reading the same state refuses too)
    with pytest.raises(PolicyDenied, match="elig_checks_per_applicant"):
        CheckBudget(tmp_path / "state").spend("income", ["annual_income"], ["110105194912310011"],
                                              limit=budget, period="quarter", job_id="again")
    # other applicants and other figures keep their own budgets
    CheckBudget(tmp_path / "state").spend("income", ["annual_income"], ["110105194912310029"],
                                          limit=budget, period="quarter", job_id="other")
    CheckBudget(tmp_path / "state").spend("income", ["employer_count"], ["110105194912310011"],
                                          limit=budget, period="quarter", job_id="other")


def test_a_refused_spend_charges_nobody(tmp_path) -> None:
    store = CheckBudget(tmp_path)
    store.spend("d", ["f"], ["a"], limit=1, period="quarter", job_id="1")
    with pytest.raises(PolicyDenied):
        store.spend("d", ["f"], ["a", "b"], limit=1, period="quarter", job_id="2")
    store.spend("d", ["f"], ["b"], limit=1, period="quarter", job_id="3")  # b was not charged by job 2


# --------------------------------------------------------------------------- attack 6: Im channel


class CuriousKeyHolder(el.KeyHolder):
    """Answers honestly, but also decodes every slot as a complex number."""

    complex_view: dict[str, np.ndarray]

    def signs(self, blinded: bytes) -> bytes:
        msg = cs.unpack(blinded, magic=el._MAGIC, kind=el._BLINDED, tag=self._tag,
                        key_id=self._key.key_id, where="curious")
        sc = self._key.ctx.data.seal_context()
        enc, dec = sa.CKKSEncoder(sc), sa.Decryptor(sc, self._key.ctx.data.secret_key())
        m = msg.meta["chunks"]
        self.complex_view = {}
        for i, t in enumerate(msg.meta["tests"]):
            parts = []
            for b in msg.blobs[i * m : (i + 1) * m]:
                pt = sa.Plaintext()
                dec.decrypt(ckks.load_ciphertext(sc, b), pt)
                parts.append(np.array(enc.decode_complex(pt)))
            self.complex_view[t] = np.concatenate(parts)
        return super().signs(blinded)


def _wide_prior_job(seed: int, job: str, missing: float = 0.0) -> tuple[np.ndarray, np.ndarray,
                                                                       list[el.ApplicantResult], list]:
    """n applicants whose |margin| is log-uniform over 2^0..2^14 CNY, half above, half
    below the standard; returns (|margin|, pass bit, decisions, plaintext decisions)
    and the key holder's complex view."""
    rules = el.parse_rules(ONE_RULE)
    rng = np.random.default_rng(seed)
    mag = np.exp2(rng.uniform(0, 14, N))
    side = rng.choice([-1.0, 1.0], N)
    income = np.clip((1000.0 + side * mag) * 12, 0, None)
    income[rng.uniform(size=N) < missing] = np.nan  # no record at tax
    depts = {"tax": {"annual_income": income}}
    kh = CuriousKeyHolder(job)
    got = el.run_local(job, rules, [None] * N, np.ones(N), depts, key_holder=kh)
    want = el.evaluate_plain(rules, [None] * N, np.ones(N), depts)
    margin = el.plain_margins(rules, [None] * N, np.ones(N), depts)["income"]
    return np.abs(margin), margin < 0, got, [want, kh.complex_view["income"][:N]]


def _membership_incomes(seed: int) -> np.ndarray:
    """The incomes :func:`_wide_prior_job` drew for ``seed`` with half the records missing."""
    rng = np.random.default_rng(seed)
    mag = np.exp2(rng.uniform(0, 14, N))
    side = rng.choice([-1.0, 1.0], N)
    income = np.clip((1000.0 + side * mag) * 12, 0, None)
    income[rng.uniform(size=N) < 0.5] = np.nan
    return income


def _features(z: np.ndarray) -> np.ndarray:
    lr, li = np.log2(np.abs(z.real)), np.log2(np.abs(z.imag) + 1e-300)
    return np.c_[np.ones(len(z)), lr, li, lr - li]


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    order = np.argsort(score)
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    pos = label.astype(bool)
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_key_holder_learns_nothing_from_imaginary_parts_and_decisions_stay_exact() -> None:
    rules = el.parse_rules(ONE_RULE)
    r_bits = rules.r_bits(rules.threshold_rules[0])
    train_m, _, got_a, (want_a, za) = _wide_prior_job(1, "train")
    test_m, passes, got_b, (want_b, zb) = _wide_prior_job(2, "test")
    assert got_a == want_a and got_b == want_b  # flooding keeps every decision exact
    y_train, y_test = np.log2(train_m), np.log2(test_m)

    def median_error(cols: list[int]) -> float:
        w = np.linalg.lstsq(_features(za)[:, cols], y_train, rcond=None)[0]
        return float(np.median(np.abs(_features(zb)[:, cols] @ w - y_test)))

    with_im = median_error([0, 1, 2, 3])  # the review's estimator: Re, Im and |Re/Im|
    im_only = median_error([0, 2])
    re_only = median_error([0, 1])  # what the blinding window (2^r_bits) allows
    prior_only = median_error([0])  # knowing only the distribution of margins
    # Im adds nothing: the trained estimator is no finer than the real part alone
    # (without flooding it reaches ~1.3 bits here), Im alone no finer than the prior,
    # and the window leaves more than 2 bits of median error
    assert with_im >= 0.95 * re_only, (with_im, re_only)
    assert im_only >= 0.95 * prior_only, (im_only, prior_only)
    assert re_only > 2.0 and r_bits >= 20, (re_only, prior_only, r_bits)
    # membership-style scores (which side of the threshold) from Re/Im: chance
    for score in (zb.imag, np.abs(zb.imag), np.sign(zb.real) * np.sign(zb.imag), np.abs(zb.real / zb.imag)):
        assert abs(_auc(score, passes) - 0.5) <= 0.05
    # membership (has a record at tax, else its terms count 0): the imaginary parts are chance
    _, _, got_c, (want_c, zc) = _wide_prior_job(3, "membership", missing=0.5)
    assert got_c == want_c
    has_record = ~np.isnan(_membership_incomes(3))
    for score in (zc.imag, np.abs(zc.imag), np.sign(zc.real) * np.sign(zc.imag)):
        assert abs(_auc(score, has_record) - 0.5) <= 0.05


def test_flood_imaginary_replaces_the_imaginary_part_and_keeps_the_real_part() -> None:
    ko = cs.KeyOwner()
    pk = cs.PublicKey(ko.public_bytes(), where="t")
    x = np.linspace(-1000, 1000, cs.SLOTS)
    sc = ko.ctx.data.seal_context()
    enc, dec = sa.CKKSEncoder(sc), sa.Decryptor(sc, ko.ctx.data.secret_key())

    def view(ct) -> np.ndarray:
        pt = sa.Plaintext()
        dec.decrypt(ckks.load_ciphertext(sc, ckks.ciphertext_bytes(ct)), pt)
        return np.array(enc.decode_complex(pt))

    v = pk.load(pk.encrypt(x)[0], "t") * 2.0**20
    before = view(v.ciphertext()[0])
    (flooded,) = ckks.flood_imaginary(v, 2.0**40)
    after = view(flooded)
    assert np.abs(view(v.ciphertext()[0]).imag).max() < 2.0**10  # the vector itself is untouched
    assert np.abs(before.imag).max() < 2.0**10 < 2.0**38 < np.abs(after.imag).max() <= 2.0**40
    assert np.allclose(after.real, x * 2.0**20, atol=1e-2 * 2**20 / 2**10)
    assert abs(np.corrcoef(after.imag, before.imag)[0, 1]) < 0.1
    with pytest.raises(CryptoError, match="bound"):
        ckks.flood_imaginary(v, 0.0)


def test_the_node_refuses_a_ladder_before_approval_naming_the_policy_key() -> None:
    """What every department's node checks before it asks anyone to approve: its own
    policy's ``elig_max_rules_per_figure`` (defaults when the policy says nothing)."""
    from fedgov.manifest import parse_manifest
    from fedgov.params import disclosure_refusals
    from fedgov.policy import parse_policy
    from fedgov.scenarios.social_assistance_jobs import eligibility_manifest

    m = parse_manifest(eligibility_manifest(ladder_rules(10), dataset="applications", baseline=False, label=False))
    rule = {"purposes": ["social-assistance-eligibility"], "kinds": ["eligibility-check"],
            "fields": ["resident_id", "annual_income"]}
    default = parse_policy({"datasets": {"income": {"rules": [rule]}}}, "tax/policy.toml")
    d = default.check(dataset="income", kind="eligibility-check", purpose="social-assistance-eligibility",
                      requester="analyst", fields=["resident_id", "annual_income"])
    (r,) = disclosure_refusals(m, m.participant("tax"), d.disclosure, d.disclosure_source)
    assert "10 rules" in str(r) and "tax.annual_income" in str(r)
    assert str(r).endswith("(policy key tax/policy.toml: datasets.income.disclosure.elig_max_rules_per_figure)")
    # civil affairs' figures are not read by the rules: nothing to refuse there
    assert disclosure_refusals(m, m.participant("civil_affairs"), d.disclosure) == []
    # an owner may allow more rules per figure (its choice); the ladder then passes this check
    looser = parse_policy({"datasets": {"income": {"rules": [rule],
                                                   "disclosure": {"elig_max_rules_per_figure": 10}}}}, "p")
    d2 = looser.check(dataset="income", kind="eligibility-check", purpose="social-assistance-eligibility",
                      requester="analyst", fields=["resident_id", "annual_income"])
    assert disclosure_refusals(m, m.participant("tax"), d2.disclosure) == []
    with pytest.raises(Exception, match="elig_max_rules_per_figure"):
        parse_policy({"datasets": {"income": {"disclosure": {"elig_max_rules_per_figure": 0}}}}, "p")


def test_context_flood_imaginary_for_seal_ciphertexts() -> None:
    """The same guarantee for the sealapi-based contexts (vertical LR, HFL can reuse it)."""
    ctx = ckks.CkksContext.create(ckks.CkksParams(), rotation_steps=[1])
    x = np.linspace(-10, 10, ctx.slots)
    ct = ctx.encrypt(x)

    def complex_view(c) -> np.ndarray:
        pt = sa.Plaintext()
        ctx._decryptor.decrypt(c, pt)
        return np.array(ctx._encoder.decode_complex(pt))

    assert np.abs(complex_view(ct).imag).max() < 1e-3
    ctx.flood_imaginary(ct, 2.0**20)
    z = complex_view(ct)
    assert 2.0**18 < np.abs(z.imag).max() <= 2.0**20
    assert np.allclose(ctx.decrypt(ct), x, atol=1e-2)


def test_gaussian_flood_with_a_zero_sum_real_mask_keeps_the_slot_sum_exact() -> None:
    """The one flood's other mode (what HE statistics use): Gaussian imaginary parts of the
    requested sigma, uncorrelated with what was there, and a real mask whose encoded slot sum
    is exactly zero, so the key holder's exact sum is the plain one."""
    ko = cs.KeyOwner()
    pk = cs.PublicKey(ko.public_bytes(), where="t")
    x = np.round(np.linspace(-1000, 1000, cs.SLOTS))
    v = pk.load(pk.encrypt(x)[0], "t")
    rng = np.random.default_rng(7)

    def real() -> np.ndarray:
        m = np.round(rng.normal(0.0, 2.0**30, cs.SLOTS))
        m[-1] -= m.sum()
        return m

    before = ko.decrypt_complex(v.serialize(), "t")
    (ct,) = ckks.flood_imaginary(v, 2.0**20, rng, distribution="gaussian", real=real, exact_real_sum=True,
                                 where="t-stats")
    blob = ckks.ciphertext_bytes(ct)
    z = ko.decrypt_complex_raw(blob, "t")
    assert 0.9 < np.std(z.imag) / 2.0**20 < 1.1 and abs(np.mean(z.imag)) < 2.0**20 * 0.1
    assert abs(np.corrcoef(z.imag, before.imag)[0, 1]) < 0.1
    assert np.std(z.real - x) > 2.0**29  # the real mask is there
    assert abs(ko.decrypt_raw_sum(blob, "t") - x.sum()) < 1.0  # and cancels exactly in the sum
    # the zero-sum check is real: a mask that does not sum to zero is never sent
    with pytest.raises(CryptoError, match="t-stats.*zero-sum|zero-sum.*t-stats"):
        ckks.flood_imaginary(v, 2.0**20, rng, distribution="gaussian", real=lambda: np.ones(cs.SLOTS),
                             exact_real_sum=True, where="t-stats", tries=3)
    with pytest.raises(CryptoError, match="t-stats.*distribution|distribution.*t-stats"):
        ckks.flood_imaginary(v, 1.0, distribution="laplace", where="t-stats")  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="does not fit"):
        ckks.flood_imaginary(v, 1.0, real=np.zeros(cs.SLOTS + 1))


def test_exact_ties_still_resolve_as_the_operator_says_under_flooding() -> None:
    """Flooding doubles the largest slot; the sign at an exact tie (margin = ±tie/2 after the
    shift, smallest blinding factor 1) must survive the extra decoding error."""
    doc = ONE_RULE + (
        '[[rules]]\nname = "le"\nkind = "threshold"\nthreshold = "income_standard"\ncompare = "<="\n'
        'terms = [{ node = "hrss", field = "p", max = 2000000 }]\n'
    )
    rules = el.parse_rules(doc)
    n = 2 * cs.SLOTS
    inc = np.full(n, 12000.0)
    inc[::3] += 0.13
    inc[1::3] -= 0.13
    p = np.full(n, 1000.0)
    p[::2] = 1000.01
    p[1::4] = 999.99
    d = {"tax": {"annual_income": inc}, "hrss": {"p": p}}
    got = el.run_local("ties", rules, [None] * n, np.ones(n), d)
    want = el.evaluate_plain(rules, [None] * n, np.ones(n), d)
    assert got == want
    assert {r.failed for r in want} >= {("income",), ("le",), ()}
