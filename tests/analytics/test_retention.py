"""Retention prunes raw records and facts only once the rollups hold them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from picofleet.analytics import AnalyticsSettings, backfill, prune, refresh
from tests.analytics.conftest import MONTH, Feed, generate
from tests.analytics.test_rollup import snapshot

NOW = MONTH + timedelta(days=10, hours=7)
CUTOFF = MONTH + timedelta(days=5)  # 5 whole days kept before today


async def counts(pool: asyncpg.Pool) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM processed_record) AS facts,"
        " (SELECT count(*) FROM raw_record) AS raw"
    )
    assert row is not None
    return row["facts"], row["raw"]


async def test_default_keeps_everything(pool: asyncpg.Pool, asettings: AnalyticsSettings) -> None:
    await generate(pool, MONTH, MONTH + timedelta(days=2))
    await refresh(pool, asettings, wait=True)
    before = await counts(pool)
    res = await prune(pool, asettings, now=NOW)
    assert res.cutoff is None and (res.facts, res.raw) == (0, 0)
    assert await counts(pool) == before


async def test_prunes_only_rolled_up_data(
    pool: asyncpg.Pool, asettings: AnalyticsSettings, feed: Feed
) -> None:
    await generate(pool, MONTH, MONTH + timedelta(days=10))
    settings = AnalyticsSettings(settle_s=0, retention_days=5)
    day2 = MONTH + timedelta(days=1)

    # Nothing is rolled up yet: nothing may go, however old.
    res = await prune(pool, settings, now=NOW)
    assert (res.cutoff, res.facts, res.raw) == (MONTH, 0, 0)

    await refresh(pool, settings, wait=True)
    rolled = await snapshot(pool)
    # A late reading from day 2 arrives after the rollup run: it holds day 2 back.
    late = await feed.readings(
        "AI-00001",
        day2 + timedelta(minutes=3),
        {"battery_charge": 1.0},
        received_at=datetime.now(UTC),
    )
    before_day2 = await pool.fetchval(
        "SELECT count(*) FROM processed_record WHERE record_time < $1", day2
    )
    raw_before_day2 = await pool.fetchval(
        "SELECT count(*) FROM raw_record WHERE received_at < $1", day2
    )
    facts, raw = await counts(pool)
    res = await prune(pool, settings, now=NOW)
    assert (res.cutoff, res.facts, res.raw) == (day2, before_day2, raw_before_day2)
    assert await counts(pool) == (facts - res.facts, raw - res.raw)
    assert await pool.fetchval("SELECT min(record_time) FROM processed_record") >= day2
    assert await snapshot(pool) == rolled  # no rollup row lost or changed

    assert (await refresh(pool, settings, wait=True)).hourly_written == 1  # the late fact
    rolled = await snapshot(pool)
    res = await prune(pool, settings, now=NOW)
    assert res.cutoff == CUTOFF
    assert await pool.fetchval("SELECT min(record_time) FROM processed_record") >= CUTOFF
    assert not await pool.fetchval(
        "SELECT count(*) FROM processed_record WHERE id = ANY($1)", late.processed_ids
    )
    # Raw records go by when they were received (the late reading's came today: it stays).
    old_raw = "SELECT count(*) FROM raw_record WHERE received_at < $1"
    assert await pool.fetchval(old_raw, CUTOFF) == 0
    assert await snapshot(pool) == rolled
    # No later run rebuilds the pruned hours from what is left of their facts.
    assert (await refresh(pool, settings, wait=True)).changed == 0
    assert (await backfill(pool, settings, MONTH - timedelta(days=1), NOW)).changed == 0
    assert await snapshot(pool) == rolled

    # A reading for an hour already pruned is added to its row once, then pruned.
    hour = await pool.fetchrow(
        "SELECT h.* FROM rollup_hourly h JOIN device d ON d.id = h.device_id"
        " WHERE d.device_key = 'AI-00001' AND series = 'battery_charge' AND hour = $1",
        day2,
    )
    await feed.readings(
        "AI-00001",
        day2 + timedelta(minutes=4),
        {"battery_charge": 0.25},
        received_at=datetime.now(UTC),
    )
    res = await refresh(pool, settings, wait=True)
    assert (res.pruned_hours, res.hourly_written, res.daily_written) == (1, 1, 1)
    merged = await pool.fetchrow(
        "SELECT * FROM rollup_hourly WHERE device_id = $1 AND series = $2 AND hour = $3",
        hour["device_id"],
        hour["series"],
        hour["hour"],
    )
    assert (merged["n"], merged["min_value"], merged["sum_value"]) == (
        hour["n"] + 1,
        0.25,
        hour["sum_value"] + 0.25,
    )
    assert merged["avg_value"] == pytest.approx(merged["sum_value"] / merged["n"], rel=1e-12)
    assert (
        await pool.fetchval(
            "SELECT battery_min FROM rollup_daily WHERE device_id = $1 AND day = $2",
            hour["device_id"],
            day2.date(),
        )
        == 0.25
    )
    assert (await refresh(pool, settings, wait=True)).changed == 0
    assert (await backfill(pool, settings, MONTH, NOW)).changed == 0
    assert (await prune(pool, settings, now=NOW)).facts == 1
