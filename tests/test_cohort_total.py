"""cohort-count never adds up counts of different populations (issue 14, finding 10)."""

from __future__ import annotations

from fedgov.protocols import cohort_count


def test_total_only_for_one_population() -> None:
    counts = {"civil_affairs": 244, "tax": 134, "medical": None}
    assert "total_released" not in cohort_count.combine(counts, one_population=False)
    one = cohort_count.combine({"north": 20, "south": 30, "east": None})
    assert one["total_released"] == 50 and one["suppressed"] == ["east"]
