"""Small charts drawn on the server as inline SVG: no chart library, no JavaScript, works offline.

Each function takes plain data and returns markup that is safe to place in a template (every label is
escaped here). The SVG scales to its container (``viewBox`` + ``width: 100%`` in CSS) and carries a
``<title>``/``<desc>`` and ``role="img"`` so screen readers announce what it shows; each chart is paired
with the numbers in a visually hidden table in the template for people who cannot see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

# Drawing units; the SVG scales to its panel, so these are proportions (a ~400 px panel shows ~1:1 text).
WIDTH = 420
HEIGHT = 230
PAD_LEFT = 44
PAD_RIGHT = 10
PAD_TOP = 12
PAD_BOTTOM = 30
TICKS = 4


@dataclass(frozen=True, slots=True)
class Point:
    """One value of a series with the label shown under (or beside) it."""

    label: str
    value: float


def _n(value: float) -> str:
    """A coordinate with one decimal (format_html escapes its arguments to text first)."""
    return f"{value:.1f}"


def _svg_open(title: str, desc: str, height: int = HEIGHT) -> str:
    return format_html(
        '<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{t}" preserveAspectRatio="xMidYMid meet">'
        "<title>{t}</title><desc>{d}</desc>",
        w=_n(WIDTH),
        h=_n(height),
        t=title,
        d=desc,
    )


def _empty(title: str, message: str) -> SafeString:
    return mark_safe(  # every interpolated value went through format_html
        _svg_open(title, message, 80)
        + format_html('<text x="{}" y="44" class="chart-empty" text-anchor="middle">{}</text>', WIDTH // 2, message)
        + "</svg>"
    )


def _nice_step(value: float) -> float:
    """The smallest 1, 2 or 5 × 10ⁿ at or above ``value``."""
    if value <= 0:
        return 1.0
    magnitude = 1.0
    while magnitude * 10 <= value:
        magnitude *= 10
    while magnitude > value:
        magnitude /= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _axis_top(value: float, integer: bool) -> float:
    """An axis maximum whose ``TICKS`` gridlines fall on round numbers (whole ones for counts)."""
    step = _nice_step(value / TICKS)
    if integer:
        step = max(step, 1.0)
    return step * TICKS


def _fmt(value: float, percent: bool) -> str:
    if percent:
        return f"{value * 100:.0f}%" if value * 100 >= 10 or value == 0 else f"{value * 100:.1f}%"
    return f"{value:,.0f}" if value >= 1 or value == 0 else f"{value:.2f}"


def _y_axis(top: float, percent: bool, plot_h: float) -> str:
    parts = []
    for i in range(TICKS + 1):
        frac = i / TICKS
        y = PAD_TOP + plot_h * (1 - frac)
        parts.append(
            format_html(
                '<line x1="{x1}" x2="{x2}" y1="{y}" y2="{y}" class="chart-grid"/>'
                '<text x="{tx}" y="{ty}" class="chart-tick" text-anchor="end">{label}</text>',
                x1=PAD_LEFT,
                x2=WIDTH - PAD_RIGHT,
                y=_n(y),
                tx=PAD_LEFT - 6,
                ty=_n(y + 4),
                label=_fmt(top * frac, percent),
            )
        )
    return "".join(parts)


def _x_labels(points: Sequence[Point], xs: Sequence[float]) -> str:
    # At most ~5 labels fit under the axis; thin them evenly and always keep the last one.
    step = max(1, (len(points) + 4) // 5)
    parts = []
    for i, (p, x) in enumerate(zip(points, xs, strict=True)):
        if i % step and i != len(points) - 1:
            continue
        if i != len(points) - 1 and len(points) - 1 - i < step:
            continue  # too close to the last label to fit beside it
        parts.append(
            format_html(
                '<text x="{x}" y="{y}" class="chart-tick" text-anchor="middle">{label}</text>',
                x=_n(x),
                y=_n(HEIGHT - PAD_BOTTOM + 16),
                label=p.label[:12],
            )
        )
    return "".join(parts)


def line_chart(points: Sequence[Point], *, title: str, percent: bool = False, empty: str = "No data yet") -> SafeString:
    """A line with dots, e.g. the duplicate rate of each scan over time."""
    if not points:
        return _empty(title, empty)
    top = _axis_top(max(p.value for p in points), integer=not percent)
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    n = len(points)
    xs = [PAD_LEFT + (plot_w * (i / (n - 1)) if n > 1 else plot_w / 2) for i in range(n)]
    ys = [PAD_TOP + plot_h * (1 - p.value / top) for p in points]
    path = " ".join(f"{x},{y}" for x, y in zip(xs, ys, strict=True))
    dots = "".join(
        format_html(
            '<circle cx="{x}" cy="{y}" r="3.5" class="chart-dot"><title>{label}: {value}</title></circle>',
            x=_n(x),
            y=_n(y),
            label=p.label,
            value=_fmt(p.value, percent),
        )
        for p, x, y in zip(points, xs, ys, strict=True)
    )
    desc = f"{n} values from {points[0].label} to {points[-1].label}; latest {_fmt(points[-1].value, percent)}"
    body = (
        _svg_open(title, desc)
        + _y_axis(top, percent, plot_h)
        + format_html('<polyline points="{}" class="chart-line"/>', path)
        + dots
        + _x_labels(points, xs)
        + "</svg>"
    )
    return mark_safe(body)  # assembled from format_html pieces only


def bar_chart(points: Sequence[Point], *, title: str, empty: str = "No data yet") -> SafeString:
    """Vertical bars, e.g. merges per day."""
    if not points or not any(p.value for p in points):
        return _empty(title, empty)
    top = _axis_top(max(p.value for p in points), integer=True)
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    slot = plot_w / len(points)
    bar_w = max(slot * 0.7, 1.0)
    bars = []
    xs = []
    for i, p in enumerate(points):
        h = plot_h * (p.value / top)
        x = PAD_LEFT + slot * i + (slot - bar_w) / 2
        xs.append(x + bar_w / 2)
        bars.append(
            format_html(
                '<rect x="{x}" y="{y}" width="{w}" height="{h}" class="chart-bar">'
                "<title>{label}: {value}</title></rect>",
                x=_n(x),
                y=_n(PAD_TOP + plot_h - h),
                w=_n(bar_w),
                h=_n(h),
                label=p.label,
                value=_fmt(p.value, False),
            )
        )
    total = sum(p.value for p in points)
    desc = f"{len(points)} bars from {points[0].label} to {points[-1].label}; total {_fmt(total, False)}"
    body = _svg_open(title, desc) + _y_axis(top, False, plot_h) + "".join(bars) + _x_labels(points, xs) + "</svg>"
    return mark_safe(body)  # assembled from format_html pieces only


def hbar_chart(points: Sequence[Point], *, title: str, empty: str = "No data yet") -> SafeString:
    """Horizontal bars with their labels on the left, e.g. open clusters per location."""
    if not points:
        return _empty(title, empty)
    row = 28
    label_w = 130
    height = PAD_TOP + row * len(points) + 8
    top = max(p.value for p in points) or 1
    plot_w = WIDTH - label_w - PAD_RIGHT - 44
    parts = [_svg_open(title, f"{len(points)} rows; largest {_fmt(top, False)}", height)]
    for i, p in enumerate(points):
        y = PAD_TOP + row * i
        w = max(plot_w * (p.value / top), 1.0 if p.value else 0.0)
        label = p.label if len(p.label) <= 18 else p.label[:17] + "…"
        parts.append(
            format_html(
                '<text x="{lx}" y="{ty}" class="chart-tick" text-anchor="end">{label}</text>'
                '<rect x="{x}" y="{y}" width="{w}" height="{h}" class="chart-bar"><title>{full}: {value}</title></rect>'
                '<text x="{vx}" y="{ty}" class="chart-tick">{value}</text>',
                lx=label_w - 8,
                ty=_n(y + row / 2 + 4),
                label=label,
                x=_n(label_w),
                y=_n(y + 3),
                w=_n(w),
                h=_n(row - 8),
                full=p.label,
                value=_fmt(p.value, False),
                vx=_n(label_w + w + 6),
            )
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # assembled from format_html pieces only


