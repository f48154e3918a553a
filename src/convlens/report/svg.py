"""Tiny inline-SVG line charts for the training curves (stdlib only, no matplotlib).

One chart = several named series of (x, y) points on shared axes, with ticks, a legend and
markers (so a one-epoch run still shows its point). NaN points are skipped.
"""
from __future__ import annotations

import math
from html import escape

__all__ = ["line_chart", "nice_ticks"]

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    *,
    title: str,
    xlabel: str = "epoch",
    width: int = 480,
    height: int = 260,
) -> str:
    """An ``<svg>`` element (a string) drawing each series as a polyline with point markers.

    Example:
        >>> svg = line_chart({"train": [(1, 2.3), (2, 1.1)]}, title="loss")
        >>> svg.startswith("<svg")
        True
    """
    pts = {k: [(x, y) for x, y in v if math.isfinite(x) and math.isfinite(y)] for k, v in series.items()}
    pts = {k: v for k, v in pts.items() if v}
    if not pts:
        return ""
    xs = [x for v in pts.values() for x, _ in v]
    ys = [y for v in pts.values() for _, y in v]
    xt, yt = nice_ticks(min(xs), max(xs), 6), nice_ticks(min(0.0, min(ys)), max(ys), 5)
    if all(float(x).is_integer() for x in xs):  # epochs: whole-number ticks only
        xt = [t for t in xt if float(t).is_integer()] if len(xt) > 1 else xt
        if len(xt) < 2:
            xt = [min(xs), min(xs) + 1]
    left, right, top, bottom = 48, 104, 24, 36
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - xt[0]) / (xt[-1] - xt[0]) * pw

    def sy(y: float) -> float:
        return top + ph - (y - yt[0]) / (yt[-1] - yt[0]) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
           f'<text x="{width / 2:.0f}" y="15" text-anchor="middle" class="ct">{escape(title)}</text>']
    for t in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in xt:
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>')
    out.append(f'<text x="{left + pw / 2:.0f}" y="{height - 4}" text-anchor="middle">{escape(xlabel)}</text>')
    for i, (name, v) in enumerate(pts.items()):
        color = COLORS[i % len(COLORS)]
        dash = ' stroke-dasharray="5,3"' if name.startswith("train") else ""
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in v)
        out.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in v]
        ly = top + 10 + 15 * i  # legend in the right margin
        out.append(f'<line x1="{left + pw + 6}" x2="{left + pw + 22}" y1="{ly - 4}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="2"{dash}/>'
                   f'<text x="{left + pw + 26}" y="{ly}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)
