"""Rollups: per (device, series, UTC hour) and per (device, UTC day), recomputed from facts.

    incremental  facts with id > watermark -> the (device, hour) pairs they touch ->
                 recompute those hours fully from facts -> recompute their days -> advance
                 the watermark; one transaction under the ETL advisory lock
    backfill     the same recompute for every hour of a window, one UTC day per transaction

Recomputing is an upsert that skips rows whose values did not change, plus a delete of rows
whose facts are gone, so re-running any window or overlapping runs change nothing and a late
fact (new id, old record_time) corrects exactly its own hour and day. Sums are taken in
numeric: a float sum depends on row order, which depends on the plan, and a recompute of
unchanged facts must give bit-identical rows.

The watermark only advances over facts whose ingest transaction began more than
``settle_s`` ago: a transaction still open when we look may hold lower ids than facts we
already see, and the ids it allocated must not fall behind the watermark.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg

from picofleet.core import db, logs

from ._settings import AnalyticsSettings

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

Q_STATE = "SELECT last_id, pruned_before FROM analytics_state WHERE name = 'rollup'"
Q_SAVE_STATE = """
UPDATE analytics_state SET last_id = $1, last_run_at = now(), last_run_ms = $2,
       last_run_facts = $3, updated_at = now()
WHERE name = 'rollup'
"""
Q_NEW_UPPER = """
SELECT max(id) FROM (SELECT id FROM processed_record WHERE id > $1 ORDER BY id LIMIT $2) s
"""
Q_SETTLED = """
SELECT max(id) FROM processed_record
WHERE id > $1 AND id <= $2 AND ingested_at < now() - make_interval(secs => $3)
"""
Q_TOUCHED_BY_IDS = """
SELECT date_trunc('hour', record_time, 'UTC') AS hour, device_id, count(*) AS facts,
       bool_or(record_type_id = (SELECT id FROM record_type WHERE name = 'pump_on')) AS pump
FROM processed_record
WHERE id > $1 AND id <= $2
GROUP BY 1, 2
"""
Q_TOUCHED_BY_TIME = """
SELECT date_trunc('hour', record_time, 'UTC') AS hour, device_id, count(*) AS facts,
       false AS pump
FROM processed_record
WHERE record_time >= $1 AND record_time < $2
GROUP BY 1, 2
UNION ALL
SELECT DISTINCT hour, device_id, 0, false FROM rollup_hourly WHERE hour >= $1 AND hour < $2
"""
Q_DAYS_IN_WINDOW = """
SELECT day, device_id FROM rollup_daily WHERE day >= $1 AND day <= $2
"""
Q_RECOMPUTE_HOUR = """
WITH agg AS (
    SELECT p.device_id, s.series, count(*) AS n,
           min(p.value / s.divisor) AS min_value, max(p.value / s.divisor) AS max_value,
           sum((p.value / s.divisor)::numeric) AS total,
           min(p.record_time) AS first_time, max(p.record_time) AS last_time
    FROM processed_record p
    JOIN rollup_series s ON s.record_type_id = p.record_type_id
    WHERE p.device_id = ANY($2::bigint[])
      AND p.record_time >= $1::timestamptz AND p.record_time < $1::timestamptz + interval '1 hour'
    GROUP BY p.device_id, s.series
), up AS (
    INSERT INTO rollup_hourly AS r (device_id, hour, series, n, min_value, max_value,
                                    sum_value, avg_value, first_time, last_time)
    SELECT device_id, $1::timestamptz, series, n, min_value, max_value, total::float8,
           (total / n)::float8, first_time, last_time
    FROM agg
    ON CONFLICT (device_id, hour, series) DO UPDATE SET
        n = EXCLUDED.n, min_value = EXCLUDED.min_value, max_value = EXCLUDED.max_value,
        sum_value = EXCLUDED.sum_value, avg_value = EXCLUDED.avg_value,
        first_time = EXCLUDED.first_time, last_time = EXCLUDED.last_time, updated_at = now()
    WHERE (r.n, r.min_value, r.max_value, r.sum_value, r.avg_value, r.first_time, r.last_time)
          IS DISTINCT FROM (EXCLUDED.n, EXCLUDED.min_value, EXCLUDED.max_value,
                            EXCLUDED.sum_value, EXCLUDED.avg_value, EXCLUDED.first_time,
                            EXCLUDED.last_time)
    RETURNING 1
), gone AS (
    DELETE FROM rollup_hourly r
    WHERE r.hour = $1::timestamptz AND r.device_id = ANY($2::bigint[])
      AND NOT EXISTS (SELECT 1 FROM agg a WHERE a.device_id = r.device_id AND a.series = r.series)
    RETURNING 1
)
SELECT (SELECT count(*) FROM up) AS written, (SELECT count(*) FROM gone) AS deleted
"""
# Hours before the retention horizon lost their facts: a late fact for one is added to its
# row (once: when the watermark passes it, inside the transaction that moves the watermark).
Q_MERGE_PRUNED = """
WITH f AS (
    SELECT p.device_id, s.series, date_trunc('hour', p.record_time, 'UTC') AS hour,
           count(*) AS n, min(p.value / s.divisor) AS min_value,
           max(p.value / s.divisor) AS max_value, sum((p.value / s.divisor)::numeric) AS total,
           min(p.record_time) AS first_time, max(p.record_time) AS last_time
    FROM processed_record p
    JOIN rollup_series s ON s.record_type_id = p.record_type_id
    WHERE p.id > $1 AND p.id <= $2 AND p.record_time < $3
    GROUP BY 1, 2, 3
)
INSERT INTO rollup_hourly AS r (device_id, hour, series, n, min_value, max_value, sum_value,
                                avg_value, first_time, last_time)
SELECT device_id, hour, series, n, min_value, max_value, total::float8, (total / n)::float8,
       first_time, last_time
FROM f
ON CONFLICT (device_id, hour, series) DO UPDATE SET
    n = r.n + EXCLUDED.n,
    min_value = least(r.min_value, EXCLUDED.min_value),
    max_value = greatest(r.max_value, EXCLUDED.max_value),
    sum_value = (r.sum_value::numeric + EXCLUDED.sum_value::numeric)::float8,
    avg_value = ((r.sum_value::numeric + EXCLUDED.sum_value::numeric) / (r.n + EXCLUDED.n))::float8,
    first_time = least(r.first_time, EXCLUDED.first_time),
    last_time = greatest(r.last_time, EXCLUDED.last_time),
    updated_at = now()
RETURNING device_id, hour
"""
# $1 day start (timestamptz), $2 devices, $3 pump_on max gap (s), $4 the day (date),
# $5 frozen: the day is before the retention horizon, so its pump_on samples are gone; its
# pump_on figures stay as they are and its row is never deleted.
# Pump figures: the devices' counters when reported, else pump_on samples: a sample that is
# on runs until the next sample (at most the max gap) and counts as a start when the previous
# sample was off or more than the max gap earlier. The samples window reaches one max gap
# past each side of the day, so the answer never depends on what else is being recomputed.
Q_RECOMPUTE_DAY = """
WITH h AS (
    SELECT r.device_id,
           sum(r.sum_value ORDER BY r.hour) FILTER (WHERE r.series = 'pump_runtime_s')
               AS runtime_s,
           sum(r.sum_value ORDER BY r.hour) FILTER (WHERE r.series = 'pump_starts') AS starts,
           bool_or(r.series = 'pump_on') AS has_pump_on,
           min(r.min_value) FILTER (WHERE r.series = 'soil_moisture_pct') AS moisture_min,
           sum(r.sum_value ORDER BY r.hour) FILTER (WHERE r.series = 'soil_moisture_pct')
               / sum(r.n) FILTER (WHERE r.series = 'soil_moisture_pct') AS moisture_avg,
           min(r.min_value) FILTER (WHERE r.series = 'battery_charge') AS battery_min
    FROM rollup_hourly r
    WHERE r.device_id = ANY($2::bigint[])
      AND r.hour >= $1::timestamptz AND r.hour < $1::timestamptz + interval '1 day'
    GROUP BY r.device_id
), samples AS (
    SELECT p.device_id, p.id, p.record_time, p.value >= 0.5 AS is_on,
           lag(p.record_time) OVER w AS prev_time, lag(p.value) OVER w AS prev_value,
           lead(p.record_time) OVER w AS next_time
    FROM processed_record p
    WHERE p.record_type_id = (SELECT id FROM record_type WHERE name = 'pump_on')
      AND p.device_id IN (SELECT device_id FROM h
                          WHERE has_pump_on AND (runtime_s IS NULL OR starts IS NULL))
      AND p.record_time >= $1::timestamptz - make_interval(secs => $3)
      AND p.record_time < $1::timestamptz + interval '1 day' + make_interval(secs => $3)
      AND NOT $5::bool
    WINDOW w AS (PARTITION BY p.device_id ORDER BY p.record_time, p.id)
), pump AS (
    SELECT device_id,
           coalesce(sum(CASE WHEN is_on THEN least(
                        coalesce(extract(epoch FROM next_time - record_time)::float8, $3), $3)
                        ELSE 0 END ORDER BY record_time, id), 0) AS runtime_s,
           count(*) FILTER (WHERE is_on AND (prev_time IS NULL OR prev_value < 0.5
                            OR prev_time < record_time - make_interval(secs => $3))) AS starts
    FROM samples
    WHERE record_time >= $1::timestamptz AND record_time < $1::timestamptz + interval '1 day'
    GROUP BY device_id
), fin AS (
    SELECT h.device_id,
           coalesce(h.runtime_s, CASE WHEN $5 THEN old.pump_runtime_s ELSE p.runtime_s END)
               AS pump_runtime_s,
           coalesce(h.starts, CASE WHEN $5 THEN old.pump_starts ELSE p.starts::float8 END)
               AS pump_starts,
           CASE WHEN h.runtime_s IS NOT NULL OR h.starts IS NOT NULL THEN 'counters'
                WHEN $5 THEN old.pump_source
                WHEN p.device_id IS NOT NULL THEN 'pump_on' END AS pump_source,
           h.moisture_min, h.moisture_avg, h.battery_min
    FROM h
    LEFT JOIN pump p ON p.device_id = h.device_id
    LEFT JOIN rollup_daily old ON old.device_id = h.device_id AND old.day = $4::date
), up AS (
    INSERT INTO rollup_daily AS r (device_id, day, pump_runtime_s, pump_starts, pump_source,
                                   moisture_min, moisture_avg, battery_min)
    SELECT device_id, $4::date, pump_runtime_s, pump_starts, pump_source, moisture_min,
           moisture_avg, battery_min
    FROM fin
    ON CONFLICT (device_id, day) DO UPDATE SET
        pump_runtime_s = EXCLUDED.pump_runtime_s, pump_starts = EXCLUDED.pump_starts,
        pump_source = EXCLUDED.pump_source, moisture_min = EXCLUDED.moisture_min,
        moisture_avg = EXCLUDED.moisture_avg, battery_min = EXCLUDED.battery_min,
        updated_at = now()
    WHERE (r.pump_runtime_s, r.pump_starts, r.pump_source, r.moisture_min, r.moisture_avg,
           r.battery_min)
          IS DISTINCT FROM (EXCLUDED.pump_runtime_s, EXCLUDED.pump_starts, EXCLUDED.pump_source,
                            EXCLUDED.moisture_min, EXCLUDED.moisture_avg, EXCLUDED.battery_min)
    RETURNING 1
), gone AS (
    DELETE FROM rollup_daily r
    WHERE r.day = $4::date AND r.device_id = ANY($2::bigint[]) AND NOT $5
      AND NOT EXISTS (SELECT 1 FROM h WHERE h.device_id = r.device_id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM up) AS written, (SELECT count(*) FROM gone) AS deleted
"""


@dataclass(slots=True)
class RefreshResult:
    """What one run did. ``ran`` is False when another run held the lock."""

    ran: bool = True
    facts: int = 0
    hours: int = 0
    hourly_written: int = 0
    hourly_deleted: int = 0
    days: int = 0
    daily_written: int = 0
    daily_deleted: int = 0
    pruned_hours: int = 0  # late device-hours before the retention horizon: merged
    last_id: int = 0
    seconds: float = 0.0

    def add(self, other: RefreshResult) -> None:
        for name in (
            "facts",
            "hours",
            "hourly_written",
            "hourly_deleted",
            "days",
            "daily_written",
            "daily_deleted",
            "pruned_hours",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.last_id = max(self.last_id, other.last_id)

    @property
    def changed(self) -> int:
        return self.hourly_written + self.hourly_deleted + self.daily_written + self.daily_deleted


@dataclass(slots=True)
class _Plan:
    """The device-hours and device-days one transaction recomputes."""

    hours: dict[datetime, set[int]] = field(default_factory=lambda: defaultdict(set))
    days: dict[date, set[int]] = field(default_factory=lambda: defaultdict(set))
    frozen_days: dict[date, set[int]] = field(default_factory=lambda: defaultdict(set))
    facts: int = 0
    skipped: int = 0

    @classmethod
    def of(cls, rows: Iterable[asyncpg.Record], pruned_before: datetime | None) -> _Plan:
        plan = cls()
        horizon = pruned_before.date() if pruned_before is not None else None
        for r in rows:
            hour: datetime = r["hour"]
            plan.facts += r["facts"]
            if pruned_before is not None and hour < pruned_before:
                plan.skipped += 1  # its facts are partly gone: merged, not recomputed
                continue
            plan.hours[hour].add(r["device_id"])
            day = _utc_day(hour)
            # A pump_on sample also shapes its neighbours' runs and starts, maybe across midnight.
            for d in (day - DAY, day, day + DAY) if r["pump"] else (day,):
                if horizon is None or d >= horizon:
                    plan.days[d].add(r["device_id"])
        return plan


def _utc_day(t: datetime) -> date:
    return t.astimezone(UTC).date()


def _day_start(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def floor_hour(t: datetime) -> datetime:
    t = t.astimezone(UTC)
    return t.replace(minute=0, second=0, microsecond=0)


def ceil_hour(t: datetime) -> datetime:
    f = floor_hour(t)
    return f if f == t.astimezone(UTC) else f + HOUR


async def _recompute(
    conn: asyncpg.Connection, plan: _Plan, settings: AnalyticsSettings
) -> RefreshResult:
    res = RefreshResult(facts=plan.facts, pruned_hours=plan.skipped)
    step = settings.devices_per_statement
    for hour in sorted(plan.hours):
        devices = sorted(plan.hours[hour])
        for i in range(0, len(devices), step):
            row = await conn.fetchrow(Q_RECOMPUTE_HOUR, hour, devices[i : i + step])
            assert row is not None
            res.hourly_written += row["written"]
            res.hourly_deleted += row["deleted"]
        res.hours += len(devices)
    gap = float(settings.pump_on_max_gap_s)
    for frozen, days in ((False, plan.days), (True, plan.frozen_days)):
        for day in sorted(days):
            devices = sorted(days[day])
            for i in range(0, len(devices), step):
                row = await conn.fetchrow(
                    Q_RECOMPUTE_DAY, _day_start(day), devices[i : i + step], gap, day, frozen
                )
                assert row is not None
                res.daily_written += row["written"]
                res.daily_deleted += row["deleted"]
            res.days += len(devices)
    return res


async def _begin(conn: asyncpg.Connection, *, wait: bool) -> asyncpg.Record | None:
    """Take the ETL lock (or give up when busy and not waiting) and read the state."""
    if not await db.xact_lock(conn, db.Lock.ETL, wait=wait):
        return None
    return await conn.fetchrow(Q_STATE)


async def refresh(
    pool: asyncpg.Pool, settings: AnalyticsSettings, *, wait: bool = False
) -> RefreshResult:
    """Fold every fact past the watermark into the rollups (at most max_facts_per_run)."""
    log = logs.get("analytics.rollup")
    t0 = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction():
        state = await _begin(conn, wait=wait)
        if state is None:
            return RefreshResult(ran=False)
        last_id: int = state["last_id"]
        upper = await conn.fetchval(Q_NEW_UPPER, last_id, settings.max_facts_per_run)
        if upper is None:
            return RefreshResult(last_id=last_id, seconds=time.perf_counter() - t0)
        pruned_before = state["pruned_before"]
        plan = _Plan.of(await conn.fetch(Q_TOUCHED_BY_IDS, last_id, upper), pruned_before)
        settled = await conn.fetchval(Q_SETTLED, last_id, upper, settings.settle_s)
        new_last = max(last_id, settled or 0)
        merged = 0
        if plan.skipped and new_last > last_id:
            for r in await conn.fetch(Q_MERGE_PRUNED, last_id, new_last, pruned_before):
                plan.frozen_days[_utc_day(r["hour"])].add(r["device_id"])
                merged += 1
        res = await _recompute(conn, plan, settings)
        res.hourly_written += merged
        res.last_id = new_last
        res.seconds = time.perf_counter() - t0
        await conn.execute(Q_SAVE_STATE, res.last_id, res.seconds * 1000, res.facts)
    if merged:
        log.warning("rollup.late_facts_before_retention", merged_rows=merged)
    log.info(
        "rollup.refreshed",
        facts=res.facts,
        hours=res.hours,
        changed=res.changed,
        last_id=res.last_id,
        ms=round(res.seconds * 1000, 1),
    )
    return res


async def fact_bounds(pool: asyncpg.Pool) -> tuple[datetime | None, datetime | None]:
    """Earliest and latest record_time over facts and hourly rollups (a full backfill)."""
    row = await pool.fetchrow(
        "SELECT least((SELECT min(record_time) FROM processed_record),"
        "             (SELECT min(hour) FROM rollup_hourly)) AS lo,"
        "       greatest((SELECT max(record_time) FROM processed_record),"
        "                (SELECT max(hour) + interval '1 hour' FROM rollup_hourly)) AS hi"
    )
    assert row is not None
    return row["lo"], row["hi"]


async def backfill(
    pool: asyncpg.Pool,
    settings: AnalyticsSettings,
    since: datetime | None = None,
    until: datetime | None = None,
) -> RefreshResult:
    """Recompute every hour in [since, until) (whole hours) from facts; the watermark stays.

    One UTC day per transaction, each waiting for the ETL lock, so a long backfill and the
    hub's job take turns instead of interleaving.
    """
    log = logs.get("analytics.rollup")
    t0 = time.perf_counter()
    total = RefreshResult()
    if since is None or until is None:
        lo, hi = await fact_bounds(pool)
        since = since or lo
        until = until or hi
    if since is None or until is None:
        return total
    start, end = floor_hour(since), ceil_hour(until)
    while start < end:
        stop = min(_day_start(_utc_day(start)) + DAY, end)
        async with pool.acquire() as conn, conn.transaction():
            state = await _begin(conn, wait=True)
            assert state is not None
            rows = await conn.fetch(Q_TOUCHED_BY_TIME, start, stop)
            plan = _Plan.of(rows, state["pruned_before"])
            horizon = state["pruned_before"]
            last_day = _utc_day(stop - timedelta(microseconds=1))
            for r in await conn.fetch(Q_DAYS_IN_WINDOW, _utc_day(start), last_day):
                if horizon is None or _day_start(r["day"]) >= horizon:
                    plan.days[r["day"]].add(r["device_id"])
            total.add(await _recompute(conn, plan, settings))
            total.last_id = state["last_id"]
        start = stop
    total.seconds = time.perf_counter() - t0
    log.info(
        "rollup.backfilled",
        since=since.isoformat(),
        until=until.isoformat(),
        hours=total.hours,
        changed=total.changed,
        ms=round(total.seconds * 1000, 1),
    )
    return total
