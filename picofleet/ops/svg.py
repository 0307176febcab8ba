"""Charts as inline SVG, drawn here: the dashboard needs no script library and no CDN.

Pure functions from data to markup; every text node is escaped. Colours come from the
page's CSS (``currentColor`` and classes), so one chart suits light and dark themes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from itertools import pairwise
from statistics import median

from picofleet.core.charts import GAP_FACTOR

Point = tuple[datetime | float, float]


@dataclass(frozen=True, slots=True)
class Box:
    """Chart size and the margins that hold the axis labels."""

    width: int = 600
    height: int = 180
    left: int = 52
    right: int = 12
    top: int = 24
    bottom: int = 22

    @property
    def inner_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def inner_h(self) -> float:
        return self.height - self.top - self.bottom


def _epoch(t: datetime | float) -> float:
    return t.timestamp() if isinstance(t, datetime) else float(t)


def _fmt_value(v: float) -> str:
    if v == int(v) and abs(v) < 1e9:
        return str(int(v))
    return f"{v:.3g}" if abs(v) >= 1000 or abs(v) < 0.01 else f"{v:.2f}".rstrip("0").rstrip(".")


def _fmt_time(t: float, span: float) -> str:
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%m-%d %H:%M" if span > 86400 else "%H:%M:%S" if span < 600 else "%H:%M")


def _range(lo: float, hi: float) -> tuple[float, float]:
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _runs(pts: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Sorted points cut where the time to the next one exceeds GAP_FACTOR x the median."""
    if len(pts) < 3:
        return [pts]
    usual = median(b[0] - a[0] for a, b in pairwise(pts))
    runs = [[pts[0]]]
    for (t0, _), p in pairwise(pts):
        if usual > 0 and p[0] - t0 > GAP_FACTOR * usual:
            runs.append([])
        runs[-1].append(p)
    return runs


def line_chart(
    points: Sequence[Point], *, title: str, unit: str = "", step: bool = False, box: Box = Box()
) -> str:
    """A time series as an SVG line chart (points in any order; drawn by time).

    ``step`` holds each value until the next one (states such as a pump relay). A silence
    (GAP_FACTOR x the usual spacing) breaks the line: one polyline per stretch of readings.
    """
    label = f"{title} ({unit})" if unit else title
    head = (
        f'<svg class="chart" viewBox="0 0 {box.width} {box.height}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(label)}</title>"
    )
    if not points:
        return (
            f'{head}<text class="empty" x="{box.width / 2}" y="{box.height / 2}" '
            f'text-anchor="middle">no data</text></svg>'
        )
    pts = sorted((_epoch(t), float(v)) for t, v in points)
    t0, t1 = pts[0][0], pts[-1][0]
    span = t1 - t0
    tlo, thi = (t0 - 1, t1 + 1) if span == 0 else (t0, t1)
    dlo, dhi = min(v for _, v in pts), max(v for _, v in pts)
    vlo, vhi = _range(dlo, dhi)

    def x(t: float) -> float:
        return box.left + (t - tlo) / (thi - tlo) * box.inner_w

    def y(v: float) -> float:
        return box.top + (1 - (v - vlo) / (vhi - vlo)) * box.inner_h

    parts = [head]
    last = pts[-1][1]
    parts.append(
        f'<text class="title" x="{box.left}" y="15">{escape(title)} '
        f'<tspan class="last">{escape(_fmt_value(last))} {escape(unit)}</tspan></text>'
    )
    bottom = box.top + box.inner_h
    for v in sorted({dlo, (dlo + dhi) / 2, dhi}):  # grid at the data's min, middle, max
        yy = y(v)
        parts.append(
            f'<line class="grid" x1="{box.left}" x2="{box.width - box.right}" '
            f'y1="{yy:.1f}" y2="{yy:.1f}"/>'
            f'<text class="axis" x="{box.left - 4}" y="{yy + 4:.1f}" text-anchor="end">'
            f"{escape(_fmt_value(v))}</text>"
        )
    parts.append(
        f'<text class="axis" x="{box.left}" y="{box.height - 4}">'
        f"{escape(_fmt_time(t0, span))}</text>"
        f'<text class="axis" x="{box.width - box.right}" y="{box.height - 4}" '
        f'text-anchor="end">{escape(_fmt_time(t1, span))} UTC</text>'
        f'<line class="grid" x1="{box.left}" x2="{box.left}" y1="{box.top}" y2="{bottom}"/>'
    )
    for run in _runs(pts):
        drawn = run
        if step:
            drawn = [run[0]]
            for (_, prev), (t, v) in pairwise(run):
                drawn += [(t, prev), (t, v)]
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in drawn)
        parts.append(f'<polyline class="series" fill="none" points="{coords}"/>')
    lx, ly = x(pts[-1][0]), y(last)
    parts.append(f'<circle class="dot" cx="{lx:.1f}" cy="{ly:.1f}" r="3"/>')
    parts.append("</svg>")
    return "".join(parts)


def stacked_bar(parts: Sequence[tuple[str, int]], *, width: int = 240, height: int = 14) -> str:
    """Proportions as one horizontal bar (wave progress: devices per state).

    Each segment gets the class ``seg-<name>`` so the page's CSS colours it by state.
    """
    total = sum(n for _, n in parts)
    label = ", ".join(f"{name} {n}" for name, n in parts) or "empty"
    out = [
        f'<svg class="bar" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(label)}</title>"
        f'<rect class="track" x="0" y="0" width="{width}" height="{height}"/>'
    ]
    x = 0.0
    for name, n in parts:
        if total == 0 or n <= 0:
            continue
        w = width * n / total
        cls = "seg-" + "".join(c if c.isalnum() else "_" for c in name)
        out.append(
            f'<rect class="{escape(cls)}" x="{x:.1f}" y="0" width="{w:.1f}" height="{height}"/>'
        )
        x += w
    out.append("</svg>")
    return "".join(out)


def sparkline(
    points: Sequence[Point], *, label: str, width: int = 120, height: int = 28, gap_s: float = 0
) -> str:
    """A tiny trend line with no axes (the fleet overview); breaks where the time between two
    points exceeds ``gap_s`` (when set), so a silent device shows a gap, not a slope."""
    head = (
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(label)}</title>"
    )
    pts = sorted((_epoch(t), float(v)) for t, v in points)
    if len(pts) < 2:
        return head + "</svg>"
    tlo, thi = pts[0][0], pts[-1][0]
    vlo, vhi = _range(min(v for _, v in pts), max(v for _, v in pts))

    def xy(t: float, v: float) -> str:
        x = 1 + (t - tlo) / (thi - tlo) * (width - 2)
        y = 1 + (1 - (v - vlo) / (vhi - vlo)) * (height - 2)
        return f"{x:.1f},{y:.1f}"

    runs: list[list[tuple[float, float]]] = [[pts[0]]]
    for (t0, _), p in pairwise(pts):
        if gap_s and p[0] - t0 > gap_s:
            runs.append([])
        runs[-1].append(p)
    lines = "".join(
        f'<polyline fill="none" points="{" ".join(xy(t, v) for t, v in run)}"/>'
        for run in runs
        if len(run) > 1
    )
    return head + lines + "</svg>"
