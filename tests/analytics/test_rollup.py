"""Rollups against the facts they summarise, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from picofleet.analytics import AnalyticsSettings, backfill, refresh
from tests.analytics.conftest import FLEET, MONTH, Feed, Series, generate

# The same aggregates straight from the facts, written without the rollup_series view.
Q_DIRECT_HOURLY = """
WITH f AS (
    SELECT p.device_id, t.name AS series, p.record_time, p.value AS v
    FROM processed_record p JOIN record_type t ON t.id = p.record_type_id
    WHERE t.name <> 'platform_extension_mm'
    UNION ALL
    SELECT p.device_id, 'platform_extension_mm', p.record_time,
           CASE t.name WHEN 'platform_extension_ticks' THEN p.value / 20.0 ELSE p.value END
    FROM processed_record p JOIN record_type t ON t.id = p.record_type_id
    WHERE t.name IN ('platform_extension_ticks', 'platform_extension_mm')
)
SELECT device_id, series, date_trunc('hour', record_time, 'UTC') AS hour, count(*) AS n,
       min(v) AS min_value, max(v) AS max_value, sum(v) AS sum_value, avg(v) AS avg_value,
       min(record_time) AS first_time, max(record_time) AS last_time
FROM f GROUP BY 1, 2, 3
"""
Q_DIRECT_DAILY = """
SELECT p.device_id, (p.record_time AT TIME ZONE 'UTC')::date AS day,
       sum(p.value) FILTER (WHERE t.name = 'pump_runtime_s') AS pump_runtime_s,
       sum(p.value) FILTER (WHERE t.name = 'pump_starts') AS pump_starts,
       min(p.value) FILTER (WHERE t.name = 'soil_moisture_pct') AS moisture_min,
       avg(p.value) FILTER (WHERE t.name = 'soil_moisture_pct') AS moisture_avg,
       min(p.value) FILTER (WHERE t.name = 'battery_charge') AS battery_min
FROM processed_record p JOIN record_type t ON t.id = p.record_type_id
GROUP BY 1, 2
"""
HOURLY_COLS = ("n", "min_value", "max_value", "sum_value", "first_time", "last_time")
NOT_DYADIC = {"temperature_c"}


async def snapshot(pool: asyncpg.Pool) -> dict[str, set[tuple[Any, ...]]]:
    """Every rollup row including updated_at: equal snapshots mean nothing was written."""
    return {
        table: {tuple(r.values()) for r in await pool.fetch(f"SELECT * FROM {table}")}
        for table in ("rollup_hourly", "rollup_daily")
    }


def close(a: float | None, b: float | None, rel: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=rel)


async def test_month_of_rollups_equals_direct_aggregates(
    pool: asyncpg.Pool, asettings: AnalyticsSettings
) -> None:
    ids = await generate(pool)
    res = await refresh(pool, asettings, wait=True)
    facts = await pool.fetchval("SELECT count(*) FROM processed_record")
    assert res.facts == facts > 30 * 144 * 10
    assert res.last_id == await pool.fetchval("SELECT max(id) FROM processed_record")

    rolled = {
        (r["device_id"], r["series"], r["hour"]): r
        for r in await pool.fetch("SELECT * FROM rollup_hourly")
    }
    async with pool.acquire() as conn:
        await conn.execute("SET max_parallel_workers_per_gather = 0")
        direct = {
            (r["device_id"], r["series"], r["hour"]): r for r in await conn.fetch(Q_DIRECT_HOURLY)
        }
    assert rolled.keys() == direct.keys()
    # 29 active days x 24 hours for every series of every device, plus the unified mm series
    series = {(ids[k], s.type) for k, ss in FLEET.items() for s in ss}
    series |= {(i, "platform_extension_mm") for i, t in series if t.startswith("platform_ext")}
    assert len(rolled) == len(series) * 29 * 24
    for key, want in direct.items():
        got = rolled[key]
        for col in HOURLY_COLS:
            if col == "sum_value" and key[1] in NOT_DYADIC:
                assert close(got[col], want[col], 1e-12), (key, col)
            else:
                assert got[col] == want[col], (key, col, got[col], want[col])
        assert close(got["avg_value"], want["avg_value"]), key

    # The unified series holds every extension reading in mm, ticks converted.
    n = await pool.fetchval(
        "SELECT sum(n) FROM rollup_hourly WHERE series = 'platform_extension_mm'"
    )
    assert n == await pool.fetchval("SELECT count(*) FROM v_platform_extension_mm")

    daily = {(r["device_id"], r["day"]): r for r in await pool.fetch("SELECT * FROM rollup_daily")}
    direct_daily = {(r["device_id"], r["day"]): r for r in await pool.fetch(Q_DIRECT_DAILY)}
    assert daily.keys() == direct_daily.keys()
    assert len(daily) == len(FLEET) * 29
    for key, want in direct_daily.items():
        got = daily[key]
        for col in ("moisture_min", "battery_min"):
            assert got[col] == want[col], (key, col)
        assert close(got["moisture_avg"], want["moisture_avg"]), key
        if key[0] != ids["AI-00003"]:  # counters (or no pump at all)
            assert got["pump_runtime_s"] == want["pump_runtime_s"], key
            assert got["pump_starts"] == want["pump_starts"], key
            assert got["pump_source"] == ("counters" if want["pump_starts"] is not None else None)
        else:
            assert got["pump_source"] == "pump_on"


async def test_rerun_and_overlapping_runs_change_nothing(
    pool: asyncpg.Pool, asettings: AnalyticsSettings
) -> None:
    await generate(pool, MONTH, MONTH + timedelta(days=4))
    first = await refresh(pool, asettings, wait=True)
    assert first.hourly_written > 0
    before = await snapshot(pool)

    again = await refresh(pool, asettings, wait=True)
    assert again.facts == 0 and again.changed == 0
    # Backfills of the whole span and of windows that cut through hours and days, run
    # concurrently with each other and with an incremental run: all wait for the lock.
    results = await asyncio.gather(
        backfill(pool, asettings),
        backfill(pool, asettings, MONTH + timedelta(hours=30, minutes=20), MONTH + timedelta(2)),
        backfill(pool, asettings, MONTH - timedelta(days=3), MONTH + timedelta(days=9)),
        refresh(pool, asettings, wait=True),
    )
    assert [r.changed for r in results] == [0, 0, 0, 0]
    assert results[0].hours == len({(r[0], r[1]) for r in before["rollup_hourly"]})
    assert await snapshot(pool) == before


async def test_late_fact_updates_its_hour_and_only_that(
    pool: asyncpg.Pool, asettings: AnalyticsSettings, feed: Feed
) -> None:
    ids = await generate(pool, MONTH, MONTH + timedelta(days=3))
    await refresh(pool, asettings, wait=True)
    before = await snapshot(pool)
    old_hour = await pool.fetchrow(
        "SELECT * FROM rollup_hourly WHERE device_id = $1 AND series = 'battery_charge'"
        " AND hour = $2",
        ids["AI-00001"],
        MONTH + timedelta(days=1, hours=5),
    )

    # A reading taken on day 2 at 05:17 arrives today, through the real ingest path.
    late_at = MONTH + timedelta(days=1, hours=5, minutes=17)
    msg = await feed.readings(
        "AI-00001", late_at, {"battery_charge": 0.5}, received_at=datetime.now(UTC)
    )
    assert msg.processed_ids and not msg.errors
    res = await refresh(pool, asettings, wait=True)
    assert (res.facts, res.hours, res.hourly_written, res.hourly_deleted) == (1, 1, 1, 0)
    assert (res.daily_written, res.daily_deleted) == (1, 0)

    after = await snapshot(pool)
    gone = before["rollup_hourly"] - after["rollup_hourly"]
    new = after["rollup_hourly"] - before["rollup_hourly"]
    assert len(gone) == len(new) == 1
    row = await pool.fetchrow(
        "SELECT * FROM rollup_hourly WHERE device_id = $1 AND series = 'battery_charge'"
        " AND hour = $2",
        ids["AI-00001"],
        MONTH + timedelta(days=1, hours=5),
    )
    assert row["n"] == old_hour["n"] + 1
    assert row["min_value"] == 0.5
    assert row["sum_value"] == old_hour["sum_value"] + 0.5
    (day_gone,) = before["rollup_daily"] - after["rollup_daily"]
    (day_new,) = after["rollup_daily"] - before["rollup_daily"]
    assert day_new[:2] == day_gone[:2] == (ids["AI-00001"], (MONTH + timedelta(days=1)).date())
    assert (
        await pool.fetchval(
            "SELECT battery_min FROM rollup_daily WHERE device_id = $1 AND day = $2",
            *day_new[:2],
        )
        == 0.5
    )

    # A redelivery of the same message is a duplicate fact: nothing moves.
    again = await feed.readings(
        "AI-00001", late_at, {"battery_charge": 0.5}, received_at=datetime.now(UTC)
    )
    assert not again.processed_ids
    assert (await refresh(pool, asettings, wait=True)).changed == 0
    assert await snapshot(pool) == after


async def test_watermark_waits_for_unsettled_facts(pool: asyncpg.Pool, feed: Feed) -> None:
    at = MONTH + timedelta(hours=3)
    await feed.readings("AI-00009", at, {"soil_moisture_pct": 40.0})
    slow = AnalyticsSettings(settle_s=3600)
    res = await refresh(pool, slow, wait=True)
    # The fact is in the rollups already, but its id stays above the watermark ...
    assert res.hourly_written == 1 and res.last_id == 0
    # ... so the next run looks at it again (and changes nothing).
    res = await refresh(pool, slow, wait=True)
    assert res.facts == 1 and res.changed == 0
    res = await refresh(pool, AnalyticsSettings(settle_s=0), wait=True)
    assert res.last_id == await pool.fetchval("SELECT max(id) FROM processed_record")
    assert (await refresh(pool, slow, wait=True)).facts == 0


async def test_capped_runs_converge_to_the_same_rollups(pool: asyncpg.Pool) -> None:
    await generate(pool, MONTH, MONTH + timedelta(days=2))
    small = AnalyticsSettings(settle_s=0, max_facts_per_run=397)
    runs = 0
    while (await refresh(pool, small, wait=True)).facts:
        runs += 1
    capped = await snapshot(pool)
    assert runs > 5
    await pool.execute("TRUNCATE rollup_hourly, rollup_daily")
    await pool.execute("UPDATE analytics_state SET last_id = 0")
    await refresh(pool, AnalyticsSettings(settle_s=0), wait=True)
    strip = lambda rows: {r[:-1] for r in rows}  # noqa: E731 - all but updated_at
    whole = await snapshot(pool)
    assert strip(capped["rollup_hourly"]) == strip(whole["rollup_hourly"])
    assert strip(capped["rollup_daily"]) == strip(whole["rollup_daily"])


def pump_on_reference(
    samples: list[tuple[datetime, float]], day: datetime, gap: float
) -> tuple[float, int]:
    """Run time and starts of one day from pump_on samples, as documented (independent code)."""
    runtime, starts = 0.0, 0
    for i, (t, v) in enumerate(samples):
        if not day <= t < day + timedelta(days=1) or v < 0.5:
            continue
        nxt = samples[i + 1][0] if i + 1 < len(samples) else None
        runtime += min((nxt - t).total_seconds() if nxt else gap, gap)
        prev = samples[i - 1] if i else None
        if prev is None or prev[1] < 0.5 or (t - prev[0]).total_seconds() > gap:
            starts += 1
    return runtime, starts


async def test_pump_runs_from_pump_on_samples_and_watering_volume(
    pool: asyncpg.Pool, asettings: AnalyticsSettings, feed: Feed
) -> None:
    day = MONTH + timedelta(days=5)
    at = lambda h, m=0, s=0: day + timedelta(hours=h, minutes=m, seconds=s)  # noqa: E731
    samples = [
        (at(-1, 50), 1.0),  # on since before midnight: carries into the day, not a new start
        (at(0, 2), 1.0),
        (at(0, 5), 0.0),
        (at(6, 0), 1.0),  # a start; the next sample is far away: counts the max gap only
        (at(9, 0), 1.0),  # more than the max gap later: a new start
        (at(9, 0, 40), 0.0),
        (at(23, 58), 1.0),  # a start that runs past midnight: all of it counts today
        (at(24, 3), 0.0),
    ]
    for i, (t, v) in enumerate(samples):
        await feed.readings("AI-00077", t, {"pump_on": v}, seq=i)
    await refresh(pool, asettings, wait=True)
    gap = float(asettings.pump_on_max_gap_s)
    row = await pool.fetchrow(
        "SELECT * FROM v_rollup_daily WHERE device_key = 'AI-00077' AND day = $1", day.date()
    )
    want = pump_on_reference(samples, day, gap)
    assert want == (180 + gap + 40 + 300, 3)
    assert (row["pump_runtime_s"], row["pump_starts"], row["pump_source"]) == (*want, "pump_on")
    assert row["watering_l"] is None

    # Late sample inside the first run: today's run shortens, yesterday's run ends earlier too.
    await feed.readings("AI-00077", at(-1, 55), {"pump_on": 0.0}, seq=99)
    samples.insert(1, (at(-1, 55), 0.0))
    res = await refresh(pool, asettings, wait=True)
    assert res.days == 3  # its day and both neighbours are recomputed
    rows = {
        r["day"]: r
        for r in await pool.fetch("SELECT * FROM v_rollup_daily WHERE device_key = 'AI-00077'")
    }
    for d in (day - timedelta(days=1), day):
        assert (rows[d.date()]["pump_runtime_s"], rows[d.date()]["pump_starts"]) == (
            pump_on_reference(samples, d, gap)
        ), d

    await pool.execute(
        "INSERT INTO analytics_device_config (device_id, pump_flow_l_per_min)"
        " SELECT id, 1.5 FROM device WHERE device_key = 'AI-00077'"
    )
    row = await pool.fetchrow(
        "SELECT * FROM v_rollup_daily WHERE device_key = 'AI-00077' AND day = $1", day.date()
    )
    assert row["watering_l"] == pytest.approx(row["pump_runtime_s"] * 1.5 / 60)


async def test_backfill_rebuilds_a_window_from_facts(
    pool: asyncpg.Pool, asettings: AnalyticsSettings
) -> None:
    fleet = {"AI-00005": [Series("soil_moisture_pct", 401, 0.25)]}
    ids = await generate(pool, MONTH, MONTH + timedelta(days=2), fleet)
    await refresh(pool, asettings, wait=True)
    want = await snapshot(pool)
    # Rows lost or corrupted, and facts deleted by hand behind the ETL's back:
    await pool.execute("DELETE FROM rollup_hourly WHERE hour < $1", MONTH + timedelta(hours=10))
    await pool.execute("UPDATE rollup_daily SET moisture_min = -1")
    res = await backfill(pool, asettings, MONTH, MONTH + timedelta(days=2))
    assert res.hourly_written == 10 and res.daily_written == 2
    strip = lambda rows: {r[:-1] for r in rows}  # noqa: E731 - all but updated_at
    got = await snapshot(pool)
    assert strip(got["rollup_hourly"]) == strip(want["rollup_hourly"])
    assert strip(got["rollup_daily"]) == strip(want["rollup_daily"])

    await pool.execute(
        "DELETE FROM processed_record WHERE device_id = $1 AND record_time >= $2",
        ids["AI-00005"],
        MONTH + timedelta(days=1),
    )
    res = await backfill(pool, asettings, MONTH + timedelta(hours=20), None)
    assert (res.hourly_deleted, res.daily_deleted) == (24, 1)
    assert await pool.fetchval("SELECT max(hour) FROM rollup_hourly") == MONTH + timedelta(hours=23)
