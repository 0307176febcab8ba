"""Analytics benchmark: rollup refresh for one hour at 1,000 messages/s, and a 30-day
dashboard query from the rollups vs from the raw facts.

    .venv/bin/python bench/analytics_bench.py [--rate 1000] [--month-rate 10] [--url URL]

Without --url it starts a private PostgreSQL (picofleet.core.pgembed) in a temporary directory.
Data is generated server-side (INSERT ... SELECT generate_series), one fact per message,
devices and record types round-robin, ingested_at just after record_time (settled).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from picofleet.analytics import AnalyticsSettings, backfill, refresh
from picofleet.core import db

TYPES = [
    "soil_moisture_pct",
    "battery_charge",
    "temperature_c",
    "pump_runtime_s",
    "platform_extension_ticks",
    "rssi_dbm",
]
Q_DEVICES = """
INSERT INTO device (device_key)
SELECT 'BENCH-' || lpad(i::text, 5, '0') FROM generate_series(1, $1) i
"""
# Message i of the stream: device i % devices, type (i / devices) % types, at t0 + i / rate.
Q_RAW = """
INSERT INTO raw_record (id, received_at, source, topic, device_key, payload, payload_size)
SELECT $1 + i, $3::timestamptz + i * $4::float8 * interval '1 second', 'mqtt', 'bench', NULL,
       '\\x7b7d'::bytea, 2
FROM generate_series(0::bigint, $2::bigint - 1) i
"""
Q_FACTS = """
WITH d AS (SELECT array_agg(id ORDER BY id) AS ids FROM device WHERE device_key LIKE 'BENCH-%'),
     t AS (SELECT array_agg(r.id ORDER BY x.n) AS ids
           FROM unnest($5::text[]) WITH ORDINALITY AS x(name, n)
           JOIN record_type r ON r.name = x.name)
INSERT INTO processed_record (raw_id, item_idx, device_id, record_type_id, record_time, value,
                              ingested_at)
SELECT $1 + i, 0,
       d.ids[1 + (i % cardinality(d.ids))],
       t.ids[1 + ((i / cardinality(d.ids)) % cardinality(t.ids))],
       $3::timestamptz + i * $4::float8 * interval '1 second',
       ((i * 7919) % 1000) / 10.0,
       $3::timestamptz + i * $4::float8 * interval '1 second' + interval '50 milliseconds'
FROM generate_series(0::bigint, $2::bigint - 1) i, d, t
"""
DASHBOARD = {
    "hourly soil moisture per device, 30 days": (
        """
        SELECT device_id, hour, avg_value FROM rollup_hourly
        WHERE series = 'soil_moisture_pct' AND hour >= $1 AND hour < $2
        ORDER BY device_id, hour
        """,
        """
        SELECT p.device_id, date_trunc('hour', p.record_time, 'UTC') AS hour, avg(p.value)
        FROM processed_record p
        WHERE p.record_type_id = (SELECT id FROM record_type WHERE name = 'soil_moisture_pct')
          AND p.record_time >= $1 AND p.record_time < $2
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
    ),
    "daily fleet table (moisture min/avg, battery min, pump), 30 days": (
        """
        SELECT device_key, day, moisture_min, moisture_avg, battery_min, pump_runtime_s
        FROM v_rollup_daily WHERE day >= $1::date AND day < $2::date
        ORDER BY device_key, day
        """,
        """
        SELECT d.device_key, (p.record_time AT TIME ZONE 'UTC')::date AS day,
               min(p.value) FILTER (WHERE t.name = 'soil_moisture_pct'),
               avg(p.value) FILTER (WHERE t.name = 'soil_moisture_pct'),
               min(p.value) FILTER (WHERE t.name = 'battery_charge'),
               sum(p.value) FILTER (WHERE t.name = 'pump_runtime_s')
        FROM processed_record p
        JOIN record_type t ON t.id = p.record_type_id
        JOIN device d ON d.id = p.device_id
        WHERE p.record_time >= $1 AND p.record_time < $2
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
    ),
}


async def timed(work: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = await work()
    return time.perf_counter() - t0, out


async def generate(url: str, start: datetime, seconds: float, rate: float, first: int) -> int:
    """Messages (one raw record + one fact each) for [start, start + seconds); returns count.

    On its own connection, without the hub pool's statement timeout.
    """
    n = int(seconds * rate)
    chunk = 100_000
    conn = await asyncpg.connect(url)
    try:
        for lo in range(0, n, chunk):
            size = min(chunk, n - lo)
            at = start + timedelta(seconds=lo / rate)
            async with conn.transaction():
                await conn.execute(Q_RAW, first + lo, size, at, 1 / rate)
                await conn.execute(Q_FACTS, first + lo, size, at, 1 / rate, TYPES)
        await conn.execute("SELECT setval('raw_record_id_seq', $1)", first + n)
        await conn.execute("ANALYZE raw_record")
        await conn.execute("ANALYZE processed_record")
    finally:
        await conn.close()
    return n


async def fresh_db(admin_url: str, url_for: Callable[[str], str], name: str) -> str:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = url_for(name)
    await db.migrate(url)
    return url


def line(label: str, value: str) -> None:
    print(f"  {label:<58} {value}", flush=True)


async def bench_hour(url: str, rate: float, devices: int) -> None:
    settings = AnalyticsSettings(settle_s=0, max_facts_per_run=100_000_000)
    pool = await db.create_pool(url, max_size=2)
    try:
        await pool.execute(Q_DEVICES, devices)
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
        print(f"one hour at {rate:g} messages/s, {devices} devices, {len(TYPES)} types")
        t, n = await timed(lambda: generate(url, hour, 3600, rate, 1))
        line(f"generate {n:,} messages (raw + fact, server-side)", f"{t:8.1f} s")
        t, res = await timed(lambda: refresh(pool, settings, wait=True))
        line(f"refresh: {res.facts:,} new facts -> {res.hourly_written} hourly rows", f"{t:8.2f} s")
        line("  = facts folded per second", f"{res.facts / t:10,.0f}")
        t, res = await timed(lambda: refresh(pool, settings, wait=True))
        line("re-run with nothing new (changes nothing)", f"{t * 1000:8.1f} ms")
        assert res.changed == 0
        t, res = await timed(lambda: backfill(pool, settings, hour, hour + timedelta(hours=1)))
        line(f"backfill the same hour (changed {res.changed} rows)", f"{t:8.2f} s")

        # Steady state: a cycle at the end of a busy hour. A minute's worth of new facts
        # (inside the same hour) makes the job recompute that hour's buckets of every device
        # in full: what one cycle costs at this rate, whatever interval_s is.
        first = int(await pool.fetchval("SELECT max(id) FROM raw_record")) + 1
        await generate(url, hour + timedelta(milliseconds=1), 60, rate, first)
        t, res = await timed(lambda: refresh(pool, settings, wait=True))
        line(
            f"cycle at the end of the hour: {res.facts:,} new facts, full-hour recompute",
            f"{t:8.2f} s",
        )
    finally:
        await pool.close()


async def bench_month(url: str, rate: float, devices: int) -> None:
    settings = AnalyticsSettings(settle_s=0, max_facts_per_run=100_000_000)
    pool = await db.create_pool(url, max_size=2)
    try:
        await pool.execute(Q_DEVICES, devices)
        end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        start = end - timedelta(days=30)  # whole UTC days, as a dashboard shows them
        print(f"30 days at {rate:g} messages/s, {devices} devices, {len(TYPES)} types")
        t, n = await timed(lambda: generate(url, start, 30 * 86400, rate, 1))
        line(f"generate {n:,} messages", f"{t:8.1f} s")
        t, res = await timed(lambda: refresh(pool, settings, wait=True))
        line(f"refresh (first run over the month, {res.hours:,} device-hours)", f"{t:8.1f} s")
        line("  = facts folded per second", f"{res.facts / t:10,.0f}")
        for table in ("rollup_hourly", "rollup_daily", "processed_record"):
            await pool.execute(f"VACUUM ANALYZE {table}")
        for name, (q_rollup, q_raw) in DASHBOARD.items():
            print(f"  dashboard: {name}")
            results = {}
            for label, q in (("rollups", q_rollup), ("raw facts", q_raw)):
                times = []
                for _ in range(3):
                    t, rows = await timed(partial(pool.fetch, q, start, end))
                    times.append(t)
                results[label] = statistics.median(times)
                line(
                    f"  from {label} ({len(rows):,} rows, median of 3)",
                    f"{results[label] * 1000:8.1f} ms",
                )
            line("  speed-up", f"{results['raw facts'] / results['rollups']:8.0f} x")
    finally:
        await pool.close()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=1000, help="messages/s for the hour [1000]")
    ap.add_argument("--devices", type=int, default=200, help="devices for the hour [200]")
    ap.add_argument("--month-rate", type=float, default=2, help="messages/s for 30 days [2]")
    ap.add_argument("--month-devices", type=int, default=100, help="devices for 30 days [100]")
    ap.add_argument("--url", help="an existing server's admin URL (creates bench databases)")
    ap.add_argument("--skip-month", action="store_true")
    args = ap.parse_args()

    tmp: str | None = None
    pg = None
    if args.url:
        admin = args.url
        base = args.url.rsplit("/", 1)[0]
        url_for: Callable[[str], str] = lambda name: f"{base}/{name}"  # noqa: E731
    else:
        from picofleet.core.pgembed import EmbeddedPostgres

        tmp = tempfile.mkdtemp(prefix="picofleet-bench-")
        os.chmod(tmp, 0o755)
        pg = EmbeddedPostgres(Path(tmp))
        pg.start()
        admin = pg.url("postgres")
        url_for = pg.url
    try:
        hour_url = await fresh_db(admin, url_for, "bench_analytics_hour")
        await bench_hour(hour_url, args.rate, args.devices)
        if not args.skip_month:
            month_url = await fresh_db(admin, url_for, "bench_analytics_month")
            await bench_month(month_url, args.month_rate, args.month_devices)
    finally:
        if pg is not None:
            pg.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
