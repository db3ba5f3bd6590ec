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
                            accountant=acc2) for k in range(3)]
    sums = {(a.total or {}).get("sum") for a in answers} - {None}
    assert len(sums) > 1


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
