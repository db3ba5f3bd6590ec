"""Server-rendered SVG (no script, no inline style: presentation attributes and CSS classes only).

Every function returns markup built from numbers and escaped labels, safe to
insert with Jinja's ``|safe``; the console's Content-Security-Policy allows no
inline style, so colours come from classes in static/console.css.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def steps_graph(steps: Sequence[tuple[str, str]], *, width: int = 760) -> str:
    """Boxes joined by arrows, left to right: ``(label, state)`` with state done|active|bad|todo."""
    n = max(1, len(steps))
    gap = 34
    box_w = (width - gap * (n - 1) - 4) / n
    h = 56
    parts = [f'<svg class="steps" role="img" viewBox="0 0 {width} {h + 8}" width="{width}" height="{h + 8}" '
             'xmlns="http://www.w3.org/2000/svg"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
             'markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#627d98"/>'
             "</marker></defs>"]
    for i, (label, state) in enumerate(steps):
        x = 2 + i * (box_w + gap)
        parts.append(f'<g class="step {escape(state)}" data-step="{escape(label)}" data-state="{escape(state)}">'
                     f'<rect x="{x:.1f}" y="4" width="{box_w:.1f}" height="{h - 8}" rx="6" ry="6" stroke-width="1.5"/>'
                     f'<text x="{x + box_w / 2:.1f}" y="{h / 2 + 4:.1f}" text-anchor="middle" font-size="13">'
                     f"{escape(label)}</text></g>")
        if i < n - 1:
            x1 = x + box_w + 2
            parts.append(f'<line class="edge" x1="{x1:.1f}" y1="{h / 2:.1f}" x2="{x1 + gap - 6:.1f}" y2="{h / 2:.1f}" '
                         'marker-end="url(#arrow)"/>')
    parts.append("</svg>")
    return "".join(parts)


def roc_curve(points: Sequence[Sequence[float]], *, label: str, auc: float | None,
              baseline_auc: float | None = None, baseline_label: str = "", size: int = 320) -> str:
    """An ROC curve (``[fpr, tpr]`` pairs) in a unit square, the diagonal, and the AUC in the legend."""
    pad = 36
    inner = size - 2 * pad

    def xy(f: float, t: float) -> str:
        return f"{pad + f * inner:.1f},{pad + (1 - t) * inner:.1f}"

    path = " ".join(xy(float(f), float(t)) for f, t in points)
    parts = [f'<svg class="roc" role="img" aria-label="ROC" viewBox="0 0 {size} {size + 34}" width="{size}" '
             f'height="{size + 34}" xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="{pad}" y="{pad}" width="{inner}" height="{inner}" fill="#fff" class="axis"/>',
             f'<line class="diag" x1="{pad}" y1="{pad + inner}" x2="{pad + inner}" y2="{pad}"/>']
    for k in range(0, 11, 5):
        v = k / 10
        parts.append(f'<text x="{pad + v * inner:.1f}" y="{pad + inner + 14}" font-size="10" '
                     f'text-anchor="middle">{v:.1f}</text>')
        parts.append(f'<text x="{pad - 6}" y="{pad + (1 - v) * inner + 3:.1f}" font-size="10" '
                     f'text-anchor="end">{v:.1f}</text>')
    parts.append(f'<text x="{pad + inner / 2}" y="{pad + inner + 28}" font-size="11" text-anchor="middle">FPR</text>')
    parts.append(f'<text x="12" y="{pad + inner / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 12 {pad + inner / 2})">TPR</text>')
    if path:
        parts.append(f'<polyline class="curve" points="{path}"/>')
    legend = escape(label) + (f" AUC {auc:.3f}" if auc is not None else "")
    parts.append(f'<text x="{pad}" y="{pad - 18}" font-size="12" class="legend">— {legend}</text>')
    if baseline_auc is not None:
        parts.append(f'<text x="{pad}" y="{pad - 4}" font-size="12" class="legend">'
                     f'- - {escape(baseline_label)} AUC {baseline_auc:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bars(values: Sequence[tuple[str, float]], *, width: int = 420, unit: str = "") -> str:
    """Horizontal bars, negative values to the left of zero (class ``neg``)."""
    row = 26
    h = row * max(1, len(values)) + 10
    label_w = 120
    span = max([abs(v) for _, v in values] + [1e-9])
    has_neg = any(v < 0 for _, v in values)
    zero = label_w + ((width - label_w - 60) / 2 if has_neg else 0)
    scale = (width - label_w - 60) / (2 * span if has_neg else span)
    parts = [f'<svg class="bars" role="img" viewBox="0 0 {width} {h}" width="{width}" height="{h}" '
             'xmlns="http://www.w3.org/2000/svg">']
    for i, (name, v) in enumerate(values):
        y = 5 + i * row
        w = abs(v) * scale
        x = zero if v >= 0 else zero - w
        parts.append(f'<text x="{label_w - 6}" y="{y + 16}" font-size="12" text-anchor="end">{escape(name)}</text>')
        parts.append(f'<rect class="bar{" neg" if v < 0 else ""}" x="{x:.1f}" y="{y + 4}" width="{max(w, 1):.1f}" '
                     f'height="{row - 10}"/>')
        tx = (x + w + 4) if v >= 0 else (x - 4)
        parts.append(f'<text x="{tx:.1f}" y="{y + 16}" font-size="11" text-anchor="{"start" if v >= 0 else "end"}">'
                     f"{v:+.3f}{escape(unit)}</text>")
    parts.append(f'<line class="axis" x1="{zero:.1f}" y1="2" x2="{zero:.1f}" y2="{h - 2}"/>')
    parts.append("</svg>")
    return "".join(parts)
