"""sql/0080 converts a ledger filled by the old schema without losing a row, and dedupe holds
across it: a redelivery after the migration is not counted twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from picofleet.bridge.ledger import Stored, status_of
from picofleet.core import db
from picofleet.core.credentials import FleetKeys
from picofleet.core.topics import Kind
from tests.analytics.conftest import Feed, make_feed
from tests.ledger.conftest import PARTITIONED

DAY = datetime(2026, 11, 20, tzinfo=UTC)  # three days, all before the hub's own partitions
KEY = "AI-00042"
LEDGER = ("raw_record", "processed_record", "ingest_error")


async def send_all(feed: Feed, late: timedelta) -> list[Stored]:
    """Seq'd envelopes every 8 hours over three days, an untimed one, a rejected reading and
    a seq repeated with another value; ``late`` is how long after the device time each copy
    is received."""
    sent = []
    for k in range(9):
        at = DAY + timedelta(hours=8 * k, minutes=59, seconds=59)
        sent.append(
            await feed.readings(
                KEY,
                at,
                {"battery_charge": 50.0 + k, "soil_moisture_pct": 20.0 + k},
                seq=k,
                received_at=at + late,
            )
        )
    topic = feed.topics.device(KEY, Kind.TELEMETRY)
    untimed = {"v": 1, "readings": [{"type": "temperature_c", "value": 21.5}]}
    sent.append(await feed.send(topic, untimed, received_at=DAY + timedelta(hours=3) + late))
    bad = {"v": 1, "ts": DAY.timestamp(), "readings": [{"type": "battery_charge", "value": 999}]}
    sent.append(await feed.send(topic, bad, received_at=DAY + late))
    conflict = {
        "v": 1,
        "seq": 0,
        "ts": (DAY + timedelta(minutes=59, seconds=59)).timestamp(),
        "readings": [{"type": "battery_charge", "value": 7.0}],
    }
    sent.append(await feed.send(topic, conflict, received_at=DAY + timedelta(hours=1) + late))
    return sent


async def snapshot(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the ledger and of the views the older system reads."""
    out = {
        t: [tuple(r.values()) for r in await pool.fetch(f"SELECT * FROM {t} ORDER BY id")]
        for t in LEDGER
    }
    for view, order in (
        ("ingest_parse", "raw_data_id"),
        ("v_platform_extension_mm", "observed_at"),
        ("metric_battery_summary", "device_id"),
        ("metric_avg_extension_mm", "device_id"),
    ):
        out[view] = [
            tuple(r.values()) for r in await pool.fetch(f"SELECT * FROM {view} ORDER BY {order}")
        ]
    return out


async def test_migration_keeps_every_row_and_dedupe(old_url: str, keys: FleetKeys) -> None:
    pool = await db.create_pool(old_url)
    try:
        feed = await make_feed(pool, keys)
        first = await send_all(feed, timedelta(seconds=1))
        again = await send_all(feed, timedelta(minutes=2))  # redelivered before the migration
        assert [status_of(m) for m in again] == ["duplicate"] * 10 + ["invalid"] * 2
        await pool.execute(
            "INSERT INTO deploy_event (device_key, state, source, raw_id)"
            " VALUES ($1, 'x', 'ota', $2)",
            KEY,
            first[0].raw_id,
        )
        before = await snapshot(pool)
        assert [len(before[t]) for t in LEDGER] == [24, 9 * 2 + 1, 4]
        assert await pool.fetchval("SELECT to_regclass('processed_record_default')") is None
    finally:
        await pool.close()

    applied = await db.migrate(old_url)
    assert applied[0] == PARTITIONED and all(v > PARTITIONED for v in applied[1:])

    pool = await db.create_pool(old_url)
    try:
        assert await snapshot(pool) == before
        kinds = await pool.fetch(
            "SELECT c.relname FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid"
            " ORDER BY 1"
        )
        assert [r[0] for r in kinds] == sorted(LEDGER)
        # Every row is in the partition of its day, none waits in a default partition.
        placed = await pool.fetch(
            "SELECT tableoid::regclass::text AS part, count(*) AS n FROM processed_record"
            " GROUP BY 1 ORDER BY 1"
        )
        assert [(r["part"], r["n"]) for r in placed] == [
            ("processed_record_p20261120", 7),
            ("processed_record_p20261121", 6),
            ("processed_record_p20261122", 6),
        ]
        for t in LEDGER:
            assert await pool.fetchval(f"SELECT count(*) FROM {t}_default") == 0
        assert await pool.fetchval("SELECT raw_id FROM deploy_event") == first[0].raw_id

        # Redelivered after the migration: no fact counted twice, the raw copies are kept.
        feed = await make_feed(pool, keys)
        late = await send_all(feed, timedelta(days=1))
        # (The untimed copy, a day later, is past untimed_dedupe_window_s: a new reading, by
        # the same rule as before the migration.)
        assert [status_of(m) for m in late] == ["duplicate"] * 9 + ["ok"] + ["invalid"] * 2
        after = await snapshot(pool)
        assert after["processed_record"][:-1] == before["processed_record"]
        assert after["processed_record"][-1][0] == late[9].processed_ids[0]
        assert len(after["raw_record"]) == 24 + 12
        assert [r[3] for r in after["ingest_error"][4:]] == ["out_of_range", "seq_conflict"]
        # New rows go on from the old ids.
        new = await feed.readings(KEY, DAY, {"battery_charge": 1.0}, seq=100)
        assert new.processed_ids[0] > max(r[0] for r in before["processed_record"])
        assert new.raw_id > max(r[0] for r in after["raw_record"])
    finally:
        await pool.close()
    assert await db.pending(old_url) == []
