"""HE statistics on the synthetic city: equal to plaintext when the owner switches DP off,
small cells suppressed and not derivable (totals, earlier answers) under the exact rules,
DP on by default with a budget that refuses, foreign keys rejected, horizontal sums.

The disclosure attacks (tracker, membership, budget reset, masks, imaginary parts) are in
tests/test_disclosure_stats.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedgov.errors import CryptoError, PolicyDenied
from fedgov.protocols import he_stats as hs
from fedgov.protocols.psi import normalize_ids
from fedgov.scenarios.social_assistance import generate
from tests.conftest import load_world_dataset as load

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """Civil affairs (cohort holder) and HRSS (owner) aligned on resident ID,
    as PSI alignment would give them (first row per normalised ID)."""
    out = tmp_path_factory.mktemp("hs") / "sa"
    generate(out, seed=3, households=600)
    app, ins = load(out, "civil_affairs"), load(out, "hrss")
    a_ids = normalize_ids(app.column("resident_id").to_pylist())
    h_ids = normalize_ids(ins.column("resident_id").to_pylist())
    a_first: dict[str, int] = {}
    for i, s in enumerate(a_ids):
        a_first.setdefault(s, i)
    h_first: dict[str, int] = {}
    for i, s in enumerate(h_ids):
        h_first.setdefault(s, i)
    common = sorted(set(a_first) & set(h_first))
    district = [app.column("district")[a_first[s]].as_py() for s in common]
    eligible = np.array([app.column("eligible")[a_first[s]].as_py() for s in common])
    pension = np.array([ins.column("pension_monthly")[h_first[s]].as_py() for s in common], dtype=float)
    return district, eligible, pension


def query(job: str, cohort: str, **kw) -> hs.StatsQuery:
    base = dict(job_id=job, requester="analyst", scope="hrss.insurance.pension_monthly", cohort=cohort,
                stats=("count", "sum", "mean", "variance", "histogram"), clip=(0.0, 20000.0),
                bins=(0.0, 500.0, 2000.0, 5000.0, 20000.0))
    base.update(kw)
    return hs.StatsQuery(**base)


#: the owner switched DP off (its explicit choice): the exact rules apply
EXACT = hs.Disclosure(dp=False)


def test_equals_plaintext(world) -> None:
    district, eligible, pension = world
    codes, labels = hs.group_codes(district, in_cohort=eligible == 0)
    q = query("j-plain", "civil_affairs.applications eligible==0 by district", include_total=True)
    tr: list = []
    rel = hs.run_local(q, codes, labels, pension, min_cohort=1, transcript=tr, disclosure=EXACT)
    want = hs.plaintext_stats(q, codes, pension, labels)
    assert not rel.suppressed and rel.noise is None and rel.epsilon_spent == 0
    # the owner decodes slot sums exactly (constant coefficient): 40-bit masks cost no precision
    for lab in labels:
        got, exp = rel.cells[lab], want[lab]
        assert got["count"] == exp["count"] and got["histogram"] == exp["histogram"]
        assert got["sum"] == pytest.approx(exp["sum"], rel=1e-6, abs=1.0)
        if exp["count"] >= 11:
            assert got["variance"] == pytest.approx(exp["variance"], rel=1e-4, abs=1.0)
    assert rel.total is not None and rel.total["count"] == want[hs.TOTAL]["count"]
    assert rel.total["sum"] == pytest.approx(want[hs.TOTAL]["sum"], rel=1e-6, abs=1.0)
    # the owner's bytes to the holder are ciphertexts; the holder's replies are per-cell only
    steps = [s for _, _, s, _ in tr]
    assert steps == ["hello", "counts", "plan", "moments"]


def _derivable(rel: hs.Release, counts: dict[str, int], min_cohort: int) -> bool:
    """Can the requester isolate fewer than min_cohort rows by differencing this
    release with its total? (Suppressed non-empty cells must be >= 2 and sum >= min.)"""
    hidden = [c for c in counts if c in rel.suppressed and counts[c] > 0]
    if rel.total is None or not hidden:
        return False
    return len(hidden) < 2 or sum(counts[c] for c in hidden) < min_cohort


def test_small_cell_suppressed_and_not_derivable(world) -> None:
    district, eligible, pension = world
    codes, labels = hs.group_codes(district, in_cohort=eligible == 0)
    # make one small cell: keep only 3 rows of the first district
    first = np.flatnonzero(codes == 0)
    codes[first[3:]] = -1
    q = query("j-small", "cohort-A by district", stats=("count", "sum", "mean"))
    hist = hs.ReleaseHistory()
    rel = hs.run_local(q, codes, labels, pension, min_cohort=11, history=hist, disclosure=EXACT)
    counts = {lab: int(np.sum((codes == g) & ~np.isnan(pension))) for g, lab in enumerate(labels)}
    assert labels[0] in rel.suppressed and "fewer than 11" in rel.suppressed[labels[0]]
    assert labels[0] not in rel.cells
    assert rel.total is not None  # total released, so a second cell is withheld too
    assert not _derivable(rel, counts, 11)
    hidden = [c for c in rel.suppressed if c != hs.TOTAL]
    assert len(hidden) >= 2
    # total minus released cells = the sum of >= 2 cells of >= 11 rows, never the small cell
    derived_n = rel.total["count"] - sum(rel.cells[c]["count"] for c in rel.cells)
    assert derived_n == sum(counts[c] for c in hidden) >= 11

    # an earlier answer cannot be used either: cells without a total, then the total alone
    # (cohort: the 3-row cell plus the districts of >= 11 rows, so exactly 3 rows are hidden)
    keep = [0] + [g for g, lab in enumerate(labels) if counts[lab] >= 11]
    codes_k = np.where(np.isin(codes, keep), codes, -1)
    h2 = hs.ReleaseHistory()
    q1 = query("j-cells", "cohort-A by district", stats=("count", "sum"), include_total=False)
    r1 = hs.run_local(q1, codes_k, labels, pension, min_cohort=11, history=h2, disclosure=EXACT)
    assert labels[0] in r1.suppressed
    q2 = query("j-total", "cohort-A", stats=("count", "sum"), include_total=False)
    r2 = hs.run_local(q2, np.where(codes_k >= 0, 0, -1), ["all"], pension, min_cohort=11, history=h2,
                      disclosure=EXACT)
    hidden_n = sum(counts[c] for c in r1.suppressed if counts[c] and labels.index(c) in keep)
    assert hidden_n == 3, r1.suppressed  # only the small cell is hidden (no total): the branch below always runs
    assert "all" in r2.suppressed and "earlier answer" in r2.suppressed["all"]
    # and with a single small cell the total alone is refused
    h3 = hs.ReleaseHistory()
    big_g = max(range(1, len(labels)), key=lambda g: counts[labels[g]])
    only = np.where(codes == 0, 0, np.where(codes == big_g, 1, -1))
    assert int(np.sum((only == 1) & ~np.isnan(pension))) >= 11
    two = [labels[0], labels[big_g]]
    ra = hs.run_local(q1, only, two, pension, min_cohort=11, history=h3, disclosure=EXACT)
    assert labels[0] in ra.suppressed and two[1] in ra.cells
    rb = hs.run_local(q2, np.where(only >= 0, 0, -1), ["all"], pension, min_cohort=11, history=h3,
                      disclosure=EXACT)
    assert "all" in rb.suppressed and "earlier answer" in rb.suppressed["all"]
    # a cohort that adds one person to an earlier released cell is refused
    big = max((c for c in labels if c in rel.cells), key=lambda c: counts[c])
    g = labels.index(big)
    extra = np.flatnonzero((codes == -1) & ~np.isnan(pension))[0]
    codes3 = np.where(codes == g, 0, -1)
    codes3[extra] = 0
    q3 = query("j-plus1", "cohort-A plus one", stats=("count", "sum"), include_total=False)
    rel3 = hs.run_local(q3, codes3, [big + "+1"], pension, min_cohort=11, history=hist, disclosure=EXACT)
    assert big + "+1" in rel3.suppressed and "earlier answer" in rel3.suppressed[big + "+1"]
    # a one-person cohort is suppressed whatever the requester asks
    one = np.full(len(codes), -1)
    one[extra] = 0
    rel4 = hs.run_local(query("j-one", "one person"), one, ["x"], pension, min_cohort=11, disclosure=EXACT)
    assert rel4.cells == {} and rel4.total is None


def test_dp_is_on_by_default_and_the_budget_refuses_when_spent(world) -> None:
    """Defaults: DP on, ε charged per query to the dataset's budget; the released numbers
    are really noised (not only labelled): four answers to one query differ from the
    plaintext and from each other, and the spend is refused once the budget is gone."""
    district, eligible, pension = world
    codes, labels = hs.group_codes(district, in_cohort=eligible == 0)
    acc = hs.BudgetAccountant(epsilon_limit=1.0)
    want = hs.plaintext_stats(query("x", "c1", stats=("count", "sum")), codes, pension, labels)
    q1 = query("j-dp1", "c1", dp=hs.DPConfig("laplace", epsilon=0.6), stats=("count", "sum"))
    rel = hs.run_local(q1, codes, labels, pension, accountant=acc)
    assert rel.epsilon_spent == 0.6 and rel.noise == hs.NOISE_LABEL
    assert acc.remaining("hrss.insurance.pension_monthly") == pytest.approx(0.4)
    # the small districts may all fall below the noisy minimum: the margin (~50 people) passes
    got = {**rel.cells, **({hs.TOTAL: rel.total} if rel.total else {})}
    diffs = [abs(got[lab]["sum"] - want[lab]["sum"]) for lab in got]
    assert diffs and max(diffs) > 20000.0 / hs.SUM_GRID  # noise beyond the grid step
    with pytest.raises(PolicyDenied, match=r"privacy budget exhausted.*spent ε=0.6 of ε=1.*needs ε=0.6"):
        hs.run_local(query("j-dp2", "c2", dp=hs.DPConfig("laplace", epsilon=0.6), stats=("count", "sum")),
                     codes, labels, pension, accountant=acc)
    # another requester shares the same budget (one per dataset and period)
    with pytest.raises(PolicyDenied, match="privacy budget exhausted"):
        hs.run_local(query("j-dp3", "c1", dp=hs.DPConfig("laplace", epsilon=0.6), requester="other",
                           stats=("count",)), codes, labels, pension, accountant=acc)
    # repeated answers are fresh noise each time (no replay of an earlier answer)
    acc2 = hs.BudgetAccountant(epsilon_limit=3.0)
    answers = [hs.run_local(query(f"j-rep{k}", "c1", stats=("count", "sum")), codes, labels, pension,
                            accountant=acc2) for k in range(5)]
    # the noisy total's sum may clamp to 0 on a small cohort; count and sum together differ
    # between five fresh draws (all five equal by chance: < 1e-3 at the default ε)
    totals = {tuple(sorted((a.total or {}).items())) for a in answers}
    assert len(totals) > 1, totals


def test_foreign_key_rejected(world) -> None:
    district, eligible, pension = world
    codes, labels = hs.group_codes(district, in_cohort=eligible == 0)
    q = query("j-key", "c", stats=("count", "sum"))
    owner = hs.DataOwner(q, pension, min_cohort=11)
    other = hs.DataOwner(q, pension, min_cohort=11)
    holder = hs.CohortHolder(q, codes, labels)
    counts_for_other = holder.counts(other.hello())
    with pytest.raises(CryptoError, match="unknown key"):
        owner.plan(counts_for_other)
    # forge the header's key id: ciphertexts decrypt to garbage and are refused
    forged = counts_for_other[:6] + owner.key_id + counts_for_other[38:]
    with pytest.raises(CryptoError, match="not a count"):
        owner.plan(forged)
    with pytest.raises(CryptoError, match="another job"):
        hs.CohortHolder(query("j-other", "c", stats=("count", "sum")), codes, labels).counts(owner.hello())


def test_horizontal_sum(world) -> None:
    district, eligible, pension = world
    codes, labels = hs.group_codes(district, in_cohort=eligible == 0)
    parts = np.arange(len(codes)) % 3
    regions = {f"r{k}": (codes[parts == k], pension[parts == k]) for k in range(3)}
    q = query("j-h", "regional", stats=("count", "sum", "mean"))
    rel = hs.run_local_horizontal(q, labels, regions, min_cohort=1, disclosure=EXACT)
    want = hs.plaintext_stats(q, codes, pension, labels)
    for lab in labels:
        assert rel.cells[lab]["count"] == want[lab]["count"]
        assert rel.cells[lab]["sum"] == pytest.approx(want[lab]["sum"], rel=1e-6, abs=1e-3)


@pytest.mark.parametrize("epsilon", [0.3, 1.0])
def test_dp_error_is_the_spread_of_the_noise_actually_drawn(epsilon: float) -> None:
    """dp_error's figures against the sample standard deviation of OpenDP's sampler at the scales the
    owner uses (dp_noise_spec): count, sum (grid of clip/1024), a histogram bin, and the mean (delta method,
    against means computed from noisy count and sum exactly as a release computes them)."""
    q = query("j-err", "c", dp=hs.DPConfig("laplace", epsilon=epsilon), stats=("count", "sum", "mean", "histogram"),
              clip=(0.0, 8000.0))
    spec = hs.dp_noise_spec(q, epsilon)
    n, mean = 2000, 3000.0
    cell = {"count": n, "sum": n * mean, "mean": mean, "histogram": [n // 4] * 4}
    err = hs.dp_error({"cells": {"a": cell}, "total": None, "dp_noise": {"parties": [spec]}})["a"]
    draws = 40_000
    zeros = [0] * draws
    noise_n = np.array(hs.discrete_laplace(zeros, spec["count"]["scale"]), dtype=float)
    noise_s = np.array(hs.discrete_laplace(zeros, spec["sum"]["scale"]), dtype=float) * spec["sum"]["step"]
    noise_h = np.array(hs.discrete_laplace(zeros, spec["hist"]["scale"]), dtype=float)
    assert err["count"] == pytest.approx(noise_n.std(ddof=1), rel=0.05)
    assert err["sum"] == pytest.approx(noise_s.std(ddof=1), rel=0.05)
    assert err["histogram"][0] == pytest.approx(noise_h.std(ddof=1), rel=0.05)
    grid = round(n * mean / spec["sum"]["step"])
    means = [hs._finish_stats(q, {"count": n + dn, "sum": (grid + ds / spec["sum"]["step"]) * spec["sum"]["step"],
                                  **{f"bin{k}": 0.0 for k in range(4)}})["mean"]
             for dn, ds in zip(noise_n[:8000], noise_s[:8000], strict=True)]
    assert err["mean"] == pytest.approx(float(np.std(means, ddof=1)), rel=0.07)
    # the figure follows ε: a smaller ε, proportionally more noise (no constant)
    assert err["count"] == pytest.approx(hs.discrete_laplace_sd(spec["count"]["scale"]))
    assert hs.dp_error({"cells": {"a": cell}, "dp_noise": {"parties": []}}) == {}
    # two noising parties (horizontal regions): variances add
    two = hs.dp_error({"cells": {"a": cell}, "total": {"count": n}, "dp_noise": {"parties": [spec, spec],
                                                                               "total_count_cells": 3}})
    assert two["a"]["count"] == pytest.approx(err["count"] * 2**0.5, rel=1e-5)
    assert two[hs.TOTAL]["count"] == pytest.approx(err["count"] * 6**0.5, rel=1e-5)


def test_a_dp_release_carries_its_error(world) -> None:
    district, eligible, pension = world
    codes, labels = hs.group_codes(district, in_cohort=eligible == 1)
    q = query("j-err2", "cerr", dp=hs.DPConfig("laplace", epsilon=0.8), stats=("count", "sum", "mean"))
    out = hs.run_local(q, codes, labels, pension, min_cohort=11).to_json()
    spec = hs.dp_noise_spec(q, 0.8)
    assert out["dp_noise"] == {"parties": [spec]}
    assert set(out["dp_sd"]) == set(out["cells"]) | {hs.TOTAL}
    for sd in out["dp_sd"].values():
        assert sd["count"] == pytest.approx(hs.discrete_laplace_sd(spec["count"]["scale"]), rel=1e-5)
        assert sd["sum"] == pytest.approx(spec["sum"]["step"] * hs.discrete_laplace_sd(spec["sum"]["scale"]),
                                          rel=1e-5)
    exact = hs.run_local(query("j-err3", "cerr3"), codes, labels, pension, min_cohort=11, disclosure=EXACT)
    assert "dp_sd" not in exact.to_json()


def test_a_horizontal_dp_release_adds_every_regions_noise(world) -> None:
    district, eligible, pension = world
    codes, labels = hs.group_codes(district, in_cohort=eligible == 0)
    parts = np.arange(len(codes)) % 3
    regions = {f"r{k}": (codes[parts == k], pension[parts == k]) for k in range(3)}
    q = query("j-hdp", "regional-dp", dp=hs.DPConfig("laplace", epsilon=0.9), stats=("count", "sum", "mean"))
    out = hs.run_local_horizontal(q, labels, regions, min_cohort=1).to_json()
    spec = hs.dp_noise_spec(q, 0.9)
    assert out["dp_noise"] == {"parties": [spec] * 3, "total_count_cells": len(labels)}
    one = hs.discrete_laplace_sd(spec["count"]["scale"])
    for lab in out["cells"]:
        assert out["dp_sd"][lab]["count"] == pytest.approx(one * 3**0.5, rel=1e-5)
    assert out["dp_sd"][hs.TOTAL]["count"] == pytest.approx(one * (3 * len(labels)) ** 0.5, rel=1e-5)
