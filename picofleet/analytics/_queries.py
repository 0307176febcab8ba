"""Reads over the rollups and alerts, shared by the HTTP routes and the CLI."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Literal

import asyncpg

from ._alerts import alert_out
from ._models import AlertOut, DailyStat, EtlStatus, HourlyStat

DEFAULT_HOURLY_SPAN = timedelta(hours=24)
DEFAULT_DAILY_SPAN = timedelta(days=30)

Q_HOURLY = """
SELECT d.device_key AS device, r.series, r.hour, r.n, r.min_value AS min, r.max_value AS max,
       r.avg_value AS avg, r.sum_value AS sum, r.first_time, r.last_time
FROM rollup_hourly r JOIN device d ON d.id = r.device_id
WHERE r.hour >= $1 AND r.hour < $2
  AND ($3::text IS NULL OR d.device_key = $3)
  AND ($4::text IS NULL OR r.series = $4)
ORDER BY r.hour, d.device_key, r.series
LIMIT $5
"""
Q_DAILY = """
SELECT device_key AS device, day, pump_runtime_s, pump_starts, pump_source, watering_l,
       moisture_min, moisture_avg, battery_min
FROM v_rollup_daily
WHERE day >= $1 AND day < $2 AND ($3::text IS NULL OR device_key = $3)
ORDER BY day, device_key
LIMIT $4
"""
Q_ALERTS = """
SELECT id, kind, subject, device_key, state, opened_at, closed_at, acked_at, detail FROM alert
WHERE ($1::text IS NULL OR state = $1)
  AND ($2::text IS NULL OR kind = $2)
  AND ($3::text IS NULL OR device_key = $3)
ORDER BY id DESC
LIMIT $4
"""
# Acknowledging is idempotent (the first time stays); a closed alert cannot be acked.
Q_ACK = """
UPDATE alert SET acked_at = coalesce(acked_at, now())
WHERE id = $1 AND state = 'open'
RETURNING id, kind, subject, device_key, state, opened_at, closed_at, acked_at, detail
"""
Q_ALERT = """
SELECT id, kind, subject, device_key, state, opened_at, closed_at, acked_at, detail
FROM alert WHERE id = $1
"""
Q_SET_FLOW = """
INSERT INTO analytics_device_config (device_id, pump_flow_l_per_min)
SELECT id, $2 FROM device WHERE device_key = $1
ON CONFLICT (device_id) DO UPDATE SET pump_flow_l_per_min = EXCLUDED.pump_flow_l_per_min,
                                      updated_at = now()
RETURNING device_id
"""
Q_STATUS = """
SELECT s.last_id, s.last_run_at, s.last_run_ms, s.last_run_facts, s.pruned_before,
       (SELECT count(*) FROM processed_record p WHERE p.id > s.last_id) AS pending_facts,
       (SELECT count(*) FROM rollup_hourly) AS hourly_rows,
       (SELECT count(*) FROM rollup_daily) AS daily_rows,
       (SELECT count(*) FROM alert WHERE state = 'open') AS open_alerts
FROM analytics_state s WHERE s.name = 'rollup'
"""


def _now() -> datetime:
    return datetime.now(UTC)


async def hourly(
    pool: asyncpg.Pool,
    *,
    device: str | None = None,
    series: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 10_000,
) -> list[HourlyStat]:
    until = until or _now()
    since = since or until - DEFAULT_HOURLY_SPAN
    rows = await pool.fetch(Q_HOURLY, since, until, device, series, limit)
    return [HourlyStat(**dict(r)) for r in rows]


async def daily(
    pool: asyncpg.Pool,
    *,
    device: str | None = None,
    since: date | None = None,
    until: date | None = None,
    limit: int = 10_000,
) -> list[DailyStat]:
    """Days in [since, until); by default the last 30 days up to and including today."""
    until = until or _now().date() + timedelta(days=1)
    since = since or until - DEFAULT_DAILY_SPAN
    rows = await pool.fetch(Q_DAILY, since, until, device, limit)
    return [DailyStat(**dict(r)) for r in rows]


async def alerts(
    pool: asyncpg.Pool,
    *,
    state: Literal["open", "closed"] | None = None,
    kind: str | None = None,
    device: str | None = None,
    limit: int = 500,
) -> list[AlertOut]:
    """Newest first."""
    rows = await pool.fetch(Q_ALERTS, state, kind, device, limit)
    return [alert_out(r) for r in rows]


async def ack(pool: asyncpg.Pool, alert_id: int) -> tuple[AlertOut | None, bool]:
    """(the alert or None if there is none, whether it is acked now)."""
    row = await pool.fetchrow(Q_ACK, alert_id)
    if row is not None:
        return alert_out(row), True
    row = await pool.fetchrow(Q_ALERT, alert_id)
    return (alert_out(row) if row is not None else None), False


async def set_flow(pool: asyncpg.Pool, device_key: str, l_per_min: float | None) -> bool:
    """Configure (or with None, forget) a device's pump flow rate; False if no such device."""
    if l_per_min is None:
        await pool.execute(
            "DELETE FROM analytics_device_config c USING device d"
            " WHERE d.id = c.device_id AND d.device_key = $1",
            device_key,
        )
        return bool(await pool.fetchval("SELECT 1 FROM device WHERE device_key = $1", device_key))
    return await pool.fetchval(Q_SET_FLOW, device_key, l_per_min) is not None


async def status(pool: asyncpg.Pool) -> EtlStatus:
    row = await pool.fetchrow(Q_STATUS)
    assert row is not None
    return EtlStatus(**dict(row))
