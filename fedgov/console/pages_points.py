"""Points page: each department's points, budget share and quality over time, every figure linked to its facts.

The numbers are :func:`fedgov.auditor.points_view` of the ledger entries
(what ``fedgov ledger points`` prints): only department facts whose
signatures verify against this kit's CA count. Each department's figures link
to the jobs and the ledger entries behind them (each entry's page proves it
is in the log). The view is cached per log size: a new entry recomputes it.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from html import escape
from typing import Any

from starlette.responses import Response

from fedgov.auditor import POINTS_QUERY_TYPES, points_view
from fedgov.console.pages import PEOPLE, NavEntry, Page, PageContext, route
from fedgov.console.pages_ledger import ledger_client
from fedgov.errors import ConfigError
from fedgov.ledger.points import Period


def current_view(ctx: PageContext, period: str, budget: str) -> dict[str, Any]:
    """The points view for ``period``/``budget``, recomputed only when the log grew."""
    lc = ledger_client(ctx)
    _, _, size = lc.query(limit=1)
    key = (size, period, budget)
    cache = ctx.state.extra.setdefault("points.cache", {})
    if key not in cache:
        rows = lc.query_all(types=list(POINTS_QUERY_TYPES))
        cache.clear()
        cache[key] = points_view(rows, lc.ca, period=period, budget=budget)
    return cache[key]


def _params(ctx: PageContext) -> tuple[str, str]:
    q = ctx.request.query_params
    period = q.get("period") or "all"
    Period.parse(period)  # ConfigError names the accepted forms
    budget = q.get("budget") or "0"
    try:
        if Decimal(budget) < 0:
            raise InvalidOperation
    except InvalidOperation:
        raise ConfigError(f"budget must be a non-negative amount, got {budget!r}", where="points") from None
    return period, budget


def points_chart(rows: list[dict[str, Any]], *, width: int = 640) -> str:
    """Stacked bars (data, model) per department with its share; SVG, classes only (CSP: no inline style)."""
    bar_h, gap, label_w = 22, 10, 130
    h = max(1, len(rows)) * (bar_h + gap) + 30
    top = max([r["points"] for r in rows] + [1e-9])
    scale = (width - label_w - 90) / top
    parts = [f'<svg class="points-chart" role="img" aria-label="points" viewBox="0 0 {width} {h}" width="{width}" '
             f'height="{h}" xmlns="http://www.w3.org/2000/svg">']
    for k, r in enumerate(rows):
        y = 10 + k * (bar_h + gap)
        d, m = max(r["data_points"], 0) * scale, max(r["model_points"], 0) * scale
        dept = escape(r["dept"])
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" font-size="12" text-anchor="end">{dept}</text>')
        parts.append(f'<a href="/points/{dept}"><rect class="bar data" data-dept="{dept}" x="{label_w}" y="{y}" '
                     f'width="{max(d, 0.5):.1f}" height="{bar_h}"/>'
                     f'<rect class="bar model" x="{label_w + d:.1f}" y="{y}" width="{m:.1f}" height="{bar_h}"/></a>')
        parts.append(f'<text x="{label_w + d + m + 6:.1f}" y="{y + 15}" font-size="11">'
                     f'{r["points"]:,.2f} · {r["share"]:.1%}</text>')
    ly = h - 12
    parts.append(f'<rect class="bar data" x="{label_w}" y="{ly - 9}" width="10" height="10"/>'
                 f'<text x="{label_w + 14}" y="{ly}" font-size="11">data</text>'
                 f'<rect class="bar model" x="{label_w + 60}" y="{ly - 9}" width="10" height="10"/>'
                 f'<text x="{label_w + 74}" y="{ly}" font-size="11">model</text>')
    parts.append("</svg>")
    return "".join(parts)


def quality_chart(series: dict[str, list[dict[str, Any]]], *, width: int = 640, height: int = 220) -> str:
    """The ``overall`` quality score of each dataset over time (one polyline per dataset)."""
    pts = [(p["ts"], float(p["scores"].get("overall", 0.0))) for s in series.values() for p in s]
    if not pts:
        return ""
    t0, t1 = min(t for t, _ in pts), max(t for t, _ in pts)
    span = max(t1 - t0, 1)
    pad = 34
    parts = [f'<svg class="quality-chart" role="img" aria-label="quality" viewBox="0 0 {width} {height + 20}" '
             f'width="{width}" height="{height + 20}" xmlns="http://www.w3.org/2000/svg">',
             f'<rect class="axis" x="{pad}" y="10" width="{width - 2 * pad}" height="{height - 20}" fill="#fff"/>']
    for v in (0.0, 0.5, 1.0):
        y = 10 + (1 - v) * (height - 20)
        parts.append(f'<text x="{pad - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{v:.1f}</text>')
    for k, (name, s) in enumerate(sorted(series.items())):
        xy = " ".join(
            f"{pad + (p['ts'] - t0) / span * (width - 2 * pad):.1f},"
            f"{10 + (1 - float(p['scores'].get('overall', 0.0))) * (height - 20):.1f}"
            for p in s
        )
        parts.append(f'<polyline class="series s{k % 6}" data-dataset="{escape(name)}" points="{xy}"/>')
        for pt in xy.split():  # a dot per publication (one publication draws no line)
            cx, cy = pt.split(",")
            parts.append(f'<circle class="dot s{k % 6}" cx="{cx}" cy="{cy}" r="3"/>')
        parts.append(f'<text class="series-label s{k % 6}" x="{pad + 4}" y="{height + 14 - 0}" font-size="10" '
                     f'dx="{k * 120}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def points(ctx: PageContext) -> Response:
    period, budget = _params(ctx)
    view = current_view(ctx, period, budget)
    latest_quality = {name: s[-1] for name, s in sorted(view["quality"].items())}
    return ctx.render("points.html", view=view, period=period, budget=budget,
                      chart=points_chart(view["rows"]), qchart=quality_chart(view["quality"]),
                      latest_quality=latest_quality)


def department(ctx: PageContext) -> Response:
    period, budget = _params(ctx)
    view = current_view(ctx, period, budget)
    dept = ctx.request.path_params["dept"]
    row = next((r for r in view["rows"] if r["dept"] == dept), None)
    if row is None:
        raise ConfigError(f"no points row for department {dept!r} in period {period}", where="points")
    detail = view["detail"].get(dept, {"terms": {}, "sources": {}, "jobs": []})
    jobs = [{"job": j, "data": detail["terms"].get(j, {}).get("data", 0.0),
             "model": detail["terms"].get(j, {}).get("model", 0.0), "sources": detail["sources"].get(j, [])}
            for j in detail["jobs"]]
    quality = {k: v for k, v in view["quality"].items() if k.startswith(dept + "/")}
    return ctx.render("points_dept.html", row=row, jobs=jobs, period=period, budget=budget, view=view,
                      quality=quality, qchart=quality_chart(quality))


PAGE = Page(
    routes=[route("/points", points, PEOPLE), route("/points/{dept}", department, PEOPLE)],
    nav=[NavEntry("/points", "nav.points", PEOPLE, order=60)],
    messages={
        "en": {
            "nav.points": "Points",
            "pts.title": "Contribution points",
            "pts.note": "Recomputed from the ledger under the published rule set {version} ({digest}…); only facts "
                        "signed by their department count.",
            "pts.period": "Period", "pts.budget": "Budget pool", "pts.show": "Show",
            "pts.rank": "Rank", "pts.dept": "Department", "pts.points": "Points", "pts.data": "Data",
            "pts.model": "Model", "pts.records": "Records", "pts.share": "Share", "pts.amount": "Budget",
            "pts.facts": "Facts",
            "pts.chart": "Points per department (data + model)",
            "pts.quality": "Data quality over time",
            "pts.quality_note": "Overall quality score each department published with its dataset, in the ledger.",
            "pts.dataset": "Dataset", "pts.score": "Latest overall score", "pts.published": "Published",
            "pts.entry": "Entry",
            "pts.not_counted": "Facts not counted",
            "pts.none": "No department has points in this period.",
            "pts.dept_title": "{dept}: points behind the figures",
            "pts.job": "Job", "pts.sources": "Ledger entries behind it",
        },
        "zh": {
            "nav.points": "积分",
            "pts.title": "贡献积分",
            "pts.note": "依据账本按已发布的规则集 {version}（{digest}…）重新计算；只计入由所属部门签名的事实。",
            "pts.period": "期间", "pts.budget": "预算总额", "pts.show": "显示",
            "pts.rank": "排名", "pts.dept": "部门", "pts.points": "积分", "pts.data": "数据",
            "pts.model": "模型", "pts.records": "记录数", "pts.share": "份额", "pts.amount": "预算分配",
            "pts.facts": "事实",
            "pts.chart": "各部门积分（数据 + 模型）",
            "pts.quality": "数据质量随时间变化",
            "pts.quality_note": "各部门随数据集在账本中发布的综合质量评分。",
            "pts.dataset": "数据集", "pts.score": "最新综合评分", "pts.published": "发布时间",
            "pts.entry": "记录",
            "pts.not_counted": "未计入的事实",
            "pts.none": "本期间没有部门获得积分。",
            "pts.dept_title": "{dept}：积分的依据",
            "pts.job": "任务", "pts.sources": "依据的账本记录",
        },
    },
)
