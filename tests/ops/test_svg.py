"""Server-side charts: well-formed SVG, points where the data says, text escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from picofleet.ops.svg import Box, line_chart, sparkline, stacked_bar

NS = {"s": "http://www.w3.org/2000/svg"}


def coords(svg: str) -> list[tuple[float, float]]:
    line = ET.fromstring(svg).find("s:polyline", NS)
    assert line is not None
    return [tuple(map(float, p.split(","))) for p in line.get("points", "").split()]


def test_line_chart_maps_time_to_x_and_value_to_y() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    points = [(t0 + timedelta(minutes=i), float(v)) for i, v in enumerate((10, 30, 20))]
    box = Box()
    pts = coords(line_chart(list(reversed(points)), title="soil", unit="%", box=box))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    assert xs == sorted(xs) and xs[0] == box.left and xs[-1] == box.width - box.right
    assert ys[1] < ys[2] < ys[0]  # higher value, higher on screen (smaller y)
    assert all(box.top <= y <= box.height - box.bottom for y in ys)


def test_step_chart_holds_each_value() -> None:
    pts = coords(line_chart([(0.0, 0.0), (10.0, 1.0), (20.0, 0.0)], title="pump_on", step=True))
    assert len(pts) == 5
    assert pts[1][0] == pts[2][0] and pts[1][1] == pts[0][1]  # vertical edge at t=10


def test_a_silence_is_a_gap_not_a_line() -> None:
    """Readings every minute, then nothing for an hour: two lines, none across the hour."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    times = [t0 + timedelta(minutes=m) for m in (0, 1, 2, 3, 63, 64, 65)]
    root = ET.fromstring(line_chart([(t, 1.0 + i) for i, t in enumerate(times)], title="soil"))
    assert [len(p.get("points", "").split()) for p in root.findall("s:polyline", NS)] == [4, 3]
    steps = ET.fromstring(
        line_chart([(t, float(i % 2)) for i, t in enumerate(times)], title="pump", step=True)
    )
    # A step line holds each value until the next reading, never across the silence.
    assert [len(p.get("points", "").split()) for p in steps.findall("s:polyline", NS)] == [7, 5]
    # Evenly spaced readings stay one line; so does a sparkline of half-hour buckets.
    even = ET.fromstring(
        line_chart([(t0 + timedelta(minutes=m), 1.0) for m in range(9)], title="x")
    )
    assert len(even.findall("s:polyline", NS)) == 1
    spark = ET.fromstring(
        sparkline([(float(t), 1.0) for t in (0, 1800, 3600, 9 * 3600)], label="x", gap_s=5400)
    )
    assert len(spark.findall("s:polyline", NS)) == 1  # the lone last point draws no line


def test_degenerate_inputs_still_draw() -> None:
    one = ET.fromstring(line_chart([(5.0, 3.0)], title="x"))
    assert one.find("s:circle", NS) is not None
    empty = line_chart([], title="x")
    assert "no data" in empty and "<polyline" not in empty
    flat = coords(line_chart([(0.0, 7.0), (60.0, 7.0)], title="x"))
    assert flat[0][1] == flat[1][1]


def test_text_is_escaped() -> None:
    svg = line_chart([(0.0, 1.0)], title='<script>"x"</script>', unit="&")
    root = ET.fromstring(svg)  # parses: nothing unescaped leaked into the markup
    assert root.find("s:title", NS).text == '<script>"x"</script> (&)'
    assert "<script>" not in svg


def test_stacked_bar_splits_width_by_count() -> None:
    root = ET.fromstring(stacked_bar([("booted_ok", 3), ("failed", 1)], width=200))
    rects = root.findall("s:rect", NS)
    widths = {r.get("class"): float(r.get("width", 0)) for r in rects}
    assert widths == {"track": 200.0, "seg-booted_ok": 150.0, "seg-failed": 50.0}
