from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from fedgov.ledger.points import PointsRow, render_png


def test_points_chart_is_a_png(tmp_path: Path) -> None:
    rows = [
        PointsRow("tax", 30.0, 0.6, Decimal("600.00"), 1, 20.0, 10.0, 500),
        PointsRow("hrss", 20.0, 0.4, Decimal("400.00"), 2, 20.0, 0.0, 400),
    ]
    out = render_png(rows, tmp_path / "points.png", title="test")
    data = Path(out).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
