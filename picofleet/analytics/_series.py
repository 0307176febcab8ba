"""Chart data for the dashboard: per-series points over a range, markers, threshold lines.

    1h, 1d   buckets of the raw facts (15 s, 5 min): the raw window
    7d       the hourly rollups as they are
    30d      the hourly rollups folded into UTC days (the daily grain of every series), and
             from the daily rollups the pump's run time per day where the device reports
             only its relay state (a daily max of ``pump_on`` would say nothing)

Continuous series take the bucket's mean, amounts (``SUMMED``: run time, starts) its sum,
on/off series (unit ``bool``) its max ("was it on in that bucket"), drawn as steps. A gap
longer than ``GAP_FACTOR`` times the series' usual spacing becomes a ``None`` point, so the
chart shows a gap instead of a straight line over hours without data. Markers: reboots
(startup messages), firmware installs (deploy log) and alerts. Thresholds are the alert
rules' own settings, so the line is where alerts fire.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from statistics import median

import asyncpg
from pydantic import BaseModel

from picofleet.core.charts import GAP_FACTOR, SUMMED, order_key
from picofleet.core.topics import Kind, Topics

from ._settings import AnalyticsSettings

# Deploy-log states that mean "new firmware is running" (OTA confirmed, rolled back, USB).
INSTALL_STATES = ("booted_ok", "rolled_back", "flashed")


class Range(StrEnum):
    HOUR = "1h"
    DAY = "1d"
    WEEK = "7d"
    MONTH = "30d"


@dataclass(frozen=True, slots=True)
class Grain:
    span: timedelta
    bucket_s: int
    source: str  # raw | hourly | daily


GRAINS = {
    Range.HOUR: Grain(timedelta(hours=1), 15, "raw"),
    Range.DAY: Grain(timedelta(days=1), 300, "raw"),
    Range.WEEK: Grain(timedelta(days=7), 3600, "hourly"),
    Range.MONTH: Grain(timedelta(days=30), 86400, "daily"),
}


class Series(BaseModel):
    type: str
    unit: str
    device: str
    step: bool
    threshold: float | None
    # [epoch seconds, value or None (a gap)], oldest first
    points: list[tuple[float, float | None]]


class Marker(BaseModel):
    t: float
    kind: str  # reboot | install | alert
    device: str | None
    label: str


class Chart(BaseModel):
    range: Range
    source: str
    bucket_s: int
    since: datetime
    until: datetime
    device: str | None
    series: list[Series]
    markers: list[Marker]


# $1 since, $2 until, $3 bucket seconds, $4 device key or NULL (the fleet), $5 SUMMED
Q_RAW = """
SELECT d.device_key AS device, t.name AS type, t.unit,
       to_timestamp(floor(extract(epoch FROM p.record_time) / $3) * $3) AS t,
       CASE WHEN t.unit = 'bool' THEN max(p.value)
            WHEN t.name = ANY($5::text[]) THEN sum(p.value)
            ELSE avg(p.value) END AS v
FROM processed_record p
JOIN device d ON d.id = p.device_id
JOIN record_type t ON t.id = p.record_type_id
WHERE p.record_time >= $1 AND p.record_time < $2
  AND ($4::text IS NULL OR d.device_key = $4)
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 4
"""
# Rollup series are named after their record type (ticks become mm through the divisor).
# $3 'hour' or 'day', $6 series left out at this grain
Q_ROLLUP = """
SELECT d.device_key AS device, r.series AS type, coalesce(t.unit, '') AS unit,
       date_trunc($3, r.hour, 'UTC') AS t,
       CASE WHEN coalesce(t.unit, '') = 'bool' THEN max(r.max_value)
            WHEN r.series = ANY($5::text[]) THEN sum(r.sum_value)
            ELSE sum(r.sum_value) / nullif(sum(r.n), 0) END AS v
FROM rollup_hourly r
JOIN device d ON d.id = r.device_id
LEFT JOIN record_type t ON t.name = r.series
WHERE r.hour >= $1 AND r.hour < $2
  AND ($4::text IS NULL OR d.device_key = $4)
  AND r.series <> ALL($6::text[])
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 4
"""
# Run time per day of devices that report only pump_on (counters come through Q_ROLLUP).
Q_DAILY_PUMP = """
SELECT d.device_key AS device, 'pump_runtime_s' AS type, 's' AS unit,
       (r.day::timestamp AT TIME ZONE 'UTC') AS t, r.pump_runtime_s AS v
FROM rollup_daily r
JOIN device d ON d.id = r.device_id
WHERE r.day >= $1::date AND r.day <= $2::date AND r.pump_source = 'pump_on'
  AND ($3::text IS NULL OR d.device_key = $3)
ORDER BY 1, 4
"""
DAILY_ONLY_FROM_DAILY_ROLLUP = ("pump_on",)
Q_REBOOTS = """
SELECT received_at AS t, device_key AS device, body ->> 'firmware' AS firmware
FROM raw_record
WHERE received_at >= $1 AND received_at < $2 AND topic LIKE $3
  AND ($4::text IS NULL OR device_key = $4)
ORDER BY received_at
"""
Q_INSTALLS = """
SELECT created_at AS t, device_key AS device, version, state, source
FROM deploy_event
WHERE created_at >= $1 AND created_at < $2 AND state = ANY($3::text[])
  AND ($4::text IS NULL OR device_key = $4)
ORDER BY created_at
"""
Q_ALERTS = """
SELECT opened_at AS t, device_key AS device, kind, subject FROM alert
WHERE opened_at >= $1 AND opened_at < $2
  AND ($3::text IS NULL OR device_key = $3 OR device_key IS NULL)
ORDER BY opened_at
"""


def thresholds(settings: AnalyticsSettings) -> dict[str, float]:
    """The alert rules' thresholds by record type."""
    return {"battery_charge": settings.battery_low_pct, "soil_moisture_pct": settings.soil_dry_pct}


def with_gaps(
    points: list[tuple[float, float]], bucket_s: float
) -> list[tuple[float, float | None]]:
    """A None point in every break longer than GAP_FACTOR x the usual spacing."""
    if len(points) < 2:
        return list(points)
    usual = max(median(b[0] - a[0] for a, b in pairwise(points)), bucket_s)
    out: list[tuple[float, float | None]] = [points[0]]
    for prev, cur in pairwise(points):
        if cur[0] - prev[0] > GAP_FACTOR * usual:
            out.append((prev[0] + usual, None))
        out.append(cur)
    return out


async def chart(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    range_: Range,
    device: str | None,
    settings: AnalyticsSettings,
    topics: Topics,
    until: datetime | None = None,
) -> Chart:
    grain = GRAINS[range_]
    until = until or datetime.now(UTC)
    since = until - grain.span
    summed = list(SUMMED)
    if grain.source == "raw":
        rows = await conn.fetch(Q_RAW, since, until, grain.bucket_s, device, summed)
    elif grain.source == "hourly":
        start = since.replace(minute=0, second=0, microsecond=0)
        rows = await conn.fetch(Q_ROLLUP, start, until, "hour", device, summed, [])
    else:
        start = since.replace(hour=0, minute=0, second=0, microsecond=0)
        daily_only = list(DAILY_ONLY_FROM_DAILY_ROLLUP)
        rows = await conn.fetch(Q_ROLLUP, start, until, "day", device, summed, daily_only)
        rows += await conn.fetch(Q_DAILY_PUMP, start.date(), until.date(), device)
    limits = thresholds(settings)
    by_key: dict[tuple[str, str], tuple[str, list[tuple[float, float]]]] = {}
    for r in rows:
        if r["v"] is None:
            continue
        entry = by_key.setdefault((r["type"], r["device"]), (r["unit"], []))
        entry[1].append((r["t"].timestamp(), float(r["v"])))
    series = [
        Series(
            type=type_,
            unit=unit,
            device=dev,
            step=unit == "bool",
            threshold=limits.get(type_),
            points=with_gaps(points, grain.bucket_s),
        )
        for (type_, dev), (unit, points) in sorted(
            by_key.items(), key=lambda kv: (order_key(kv[0][0]), kv[0][1])
        )
    ]
    return Chart(
        range=range_,
        source=grain.source,
        bucket_s=grain.bucket_s,
        since=since,
        until=until,
        device=device,
        series=series,
        markers=await markers(conn, since=since, until=until, device=device, topics=topics),
    )


async def markers(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    since: datetime,
    until: datetime,
    device: str | None,
    topics: Topics,
) -> list[Marker]:
    # Every device's startup topic; '%' stands for the key (keys never hold '%').
    startup = topics.device("%", Kind.STARTUP)
    out = [
        Marker(
            t=r["t"].timestamp(),
            kind="reboot",
            device=r["device"],
            label=f"reboot {r['device']}" + (f" ({r['firmware']})" if r["firmware"] else ""),
        )
        for r in await conn.fetch(Q_REBOOTS, since, until, startup, device)
    ]
    out += [
        Marker(
            t=r["t"].timestamp(),
            kind="install",
            device=r["device"],
            label=f"{r['version'] or '?'} {r['state']} on {r['device']} ({r['source']})",
        )
        for r in await conn.fetch(Q_INSTALLS, since, until, list(INSTALL_STATES), device)
    ]
    out += [
        Marker(
            t=r["t"].timestamp(),
            kind="alert",
            device=r["device"],
            label=f"alert {r['kind']} {r['subject'] or 'fleet'}",
        )
        for r in await conn.fetch(Q_ALERTS, since, until, device)
    ]
    return sorted(out, key=lambda m: m.t)
