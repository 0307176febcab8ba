"""The partitioned ledger at work: the hub's partitions, ingest across midnight, retention by
dropping whole day partitions."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from picofleet.analytics import AnalyticsSettings, prune, refresh
from picofleet.bridge.decode import Message
from picofleet.bridge.ledger import status_of
from picofleet.core import db, partitions
from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.topics import Kind
from picofleet.ops.queries import delete_device
from picofleet.security.roles import ensure_runtime_login
from tests.analytics.conftest import make_feed
from tests.conftest import running_hub
from tests.helpers import wait_for

D = datetime(2026, 10, 1, tzinfo=UTC)  # long before the hub's own partitions
KEY = "AI-00077"
LEDGER_TABLES = (partitions.RAW, partitions.FACTS, partitions.ERRORS)


async def names(pool: asyncpg.Pool, table: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = $1::regclass ORDER BY 1",
        table,
    )
    return [r[0] for r in rows]


async def missing(pool: asyncpg.Pool, ahead: int) -> int:
    """Partitions the upkeep owes from yesterday to ``ahead`` days ahead (the template's were
    made when the session started, which may have been yesterday)."""
    today = datetime.now(UTC)
    have = {n for t in LEDGER_TABLES for n in await names(pool, t)}
    return sum(
        f"{t}_p{today + timedelta(days=d):%Y%m%d}" not in have
        for t in LEDGER_TABLES
        for d in range(-1, ahead + 1)
    )


async def per_partition(pool: asyncpg.Pool, table: str) -> dict[str, int]:
    rows = await pool.fetch(
        f"SELECT tableoid::regclass::text AS p, count(*) AS n FROM {table} GROUP BY 1"
    )
    return {r["p"]: r["n"] for r in rows}


async def test_retention_drops_whole_day_partitions(pool: asyncpg.Pool, keys: FleetKeys) -> None:
    feed = await make_feed(pool, keys)
    for day in range(4):
        for h in (0, 6, 12, 18):
            at = D + timedelta(days=day, hours=h)
            await feed.readings(KEY, at, {"battery_charge": 40.0 + h, "soil_moisture_pct": 9.0})
    bad = {"v": 1, "ts": D.timestamp(), "readings": [{"type": "battery_charge", "value": -5}]}
    await feed.send(feed.topics.device(KEY, Kind.TELEMETRY), bad, received_at=D)
    # No partition existed for those days: the rows wait in the default partitions, and the
    # hub's upkeep gives each day its own.
    assert await per_partition(pool, "processed_record") == {"processed_record_default": 32}
    owed = await missing(pool, 7)
    assert await partitions.ensure(pool, 7) == owed + 8  # 4 days of facts, 4 of raw records
    days = [f"{D + timedelta(days=i):%Y%m%d}" for i in range(4)]
    assert await per_partition(pool, "processed_record") == {
        f"processed_record_p{d}": 8 for d in days
    }
    assert await per_partition(pool, "raw_record") == {
        **{f"raw_record_p{d}": 4 for d in days},
        f"raw_record_p{days[0]}": 5,
    }
    errors = await pool.fetchval("SELECT count(*) FROM ingest_error")
    assert errors == 1

    settings = AnalyticsSettings(settle_s=0, retention_days=2)
    await refresh(pool, settings, wait=True)
    # A partition holding a fact the rollups have not seen stays.
    assert (
        await partitions.drop_before(pool, partitions.FACTS, D + timedelta(days=1), max_id=0) == 0
    )
    assert f"processed_record_p{days[0]}" in await names(pool, "processed_record")

    res = await prune(pool, settings, now=D + timedelta(days=3, hours=20))
    assert (res.cutoff, res.facts, res.raw, res.errors) == (D + timedelta(days=1), 8, 5, 0)
    assert f"processed_record_p{days[0]}" not in await names(pool, "processed_record")
    assert f"raw_record_p{days[0]}" not in await names(pool, "raw_record")
    for table in LEDGER_TABLES:  # detached, then dropped
        assert await pool.fetchval("SELECT to_regclass($1)", f"{table}_p{days[0]}") is None
    assert await pool.fetchval("SELECT count(*) FROM processed_record") == 24
    assert await pool.fetchval("SELECT count(*) FROM raw_record") == 12
    assert await pool.fetchval("SELECT min(record_time) FROM processed_record") == D + timedelta(
        days=1
    )
    # Errors go by when they were written (today): kept.
    assert await pool.fetchval("SELECT count(*) FROM ingest_error") == errors
    # Rollups of the dropped day stay.
    assert await pool.fetchval("SELECT count(*) FROM rollup_daily WHERE day = $1", D.date()) == 1

    # The runtime role may run the upkeep and retention, never create a partition itself.
    def can(fn: str) -> str:
        return f"SELECT has_function_privilege('picofleet_runtime', '{fn}', 'EXECUTE')"

    assert await pool.fetchval(can("picofleet_drop_partitions(regclass,timestamptz,bigint)"))
    assert await pool.fetchval(can("picofleet_ensure_ledger_partitions(integer)"))
    assert await pool.fetchval(can("picofleet_drop_detached(regclass)"))
    assert not await pool.fetchval(can("picofleet_ensure_partition(regclass,date)"))


async def test_ingest_across_midnight(pool: asyncpg.Pool, keys: FleetKeys) -> None:
    feed = await make_feed(pool, keys)
    now = datetime.now(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(
        days=1
    )  # the hub's partitions
    topic = feed.topics.device(KEY, Kind.TELEMETRY)

    def envelope(seq: int, at: datetime, *more: datetime) -> bytes:
        readings = [{"type": "battery_charge", "value": 50.0, "ts": at.timestamp()}]
        readings += [{"type": "battery_charge", "value": 51.0, "ts": t.timestamp()} for t in more]
        return json.dumps({"v": 1, "seq": seq, "ts": at.timestamp(), "readings": readings}).encode()

    half = timedelta(milliseconds=500)
    payloads = [
        envelope(1, midnight - half),
        envelope(2, midnight + half),
        envelope(3, midnight - half, midnight + half),  # one envelope, two days
    ]

    def batch(received: datetime) -> list[Message]:
        return [feed.decoder.decode(topic, p, received_at=received.timestamp()) for p in payloads]

    first = await feed.ledger.write(batch(midnight))  # one transaction, both days' partitions
    assert [status_of(m) for m in first] == ["ok"] * 3
    today, tomorrow = f"{midnight - half:%Y%m%d}", f"{midnight:%Y%m%d}"
    assert await per_partition(pool, "processed_record") == {
        f"processed_record_p{today}": 2,
        f"processed_record_p{tomorrow}": 2,
    }
    # Redelivered (across the boundary of the raw records' partitions too): nothing twice.
    again = await feed.ledger.write(batch(midnight + timedelta(hours=1)))
    assert [status_of(m) for m in again] == ["duplicate"] * 3
    assert await pool.fetchval("SELECT count(*) FROM processed_record") == 4
    assert await per_partition(pool, "raw_record") == {f"raw_record_p{tomorrow}": 6}


async def test_the_runtime_role_keeps_partitions(db_url: str, keys: FleetKeys) -> None:
    """The hub's pool owns no table: it creates and drops partitions through the owner's
    functions, and may write to the partitions they create."""
    url = await ensure_runtime_login(db_url, keys)
    assert url is not None
    runtime = await db.create_pool(url)
    try:
        assert await runtime.fetchval("SELECT current_user") == "picofleet_runtime"
        owed = await missing(runtime, 9)
        assert owed >= 6  # days 8 and 9 ahead, 3 tables
        assert await partitions.ensure(runtime, 9) == owed
        ahead = datetime.now(UTC) + timedelta(days=9)
        await runtime.execute(
            "INSERT INTO raw_record (received_at, source, topic, payload, payload_size)"
            " VALUES ($1, 'mqtt', 't', '\\x7b7d', 2)",
            ahead,
        )
        assert await per_partition(runtime, "raw_record") == {f"raw_record_p{ahead:%Y%m%d}": 1}
        assert await partitions.drop_before(runtime, partitions.RAW, ahead + timedelta(days=1)) == 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await runtime.execute("SELECT picofleet_ensure_partition('raw_record', '2030-01-01')")
        with pytest.raises(asyncpg.RaiseError, match="not a ledger table"):
            await runtime.execute("SELECT picofleet_drop_partitions('device', now())")
    finally:
        await runtime.close()


async def test_deleting_a_device_takes_its_errors(pool: asyncpg.Pool, keys: FleetKeys) -> None:
    """raw_record can no longer cascade to ingest_error (no foreign key to a partitioned
    table): deleting a device removes its errors itself."""
    feed = await make_feed(pool, keys)
    at = datetime.now(UTC)
    body = {
        "v": 1,
        "ts": at.timestamp(),
        "readings": [
            {"type": "battery_charge", "value": 50.0},
            {"type": "battery_charge", "value": 500.0},
        ],
    }
    await feed.send(feed.topics.device(KEY, Kind.TELEMETRY), body, received_at=at)
    assert await pool.fetchval("SELECT count(*) FROM ingest_error") == 1
    async with pool.acquire() as conn:
        gone = await delete_device(conn, KEY)
    assert gone is not None and (gone["raw_records"], gone["facts"]) == (1, 1)
    assert await pool.fetchval("SELECT count(*) FROM ingest_error") == 0


async def test_the_hub_keeps_partitions_ahead(settings: Settings, pool: asyncpg.Pool) -> None:
    settings.ledger_partition_ahead_days = 9  # the template has 7
    far = f"{datetime.now(UTC) + timedelta(days=9):%Y%m%d}"

    async def made() -> bool:
        return all([f"{t}_p{far}" in await names(pool, t) for t in LEDGER_TABLES])

    assert not await made()
    async with running_hub(settings):
        assert await wait_for(made, timeout=30)


async def test_a_long_reader_postpones_the_drop(pool: asyncpg.Pool, keys: FleetKeys) -> None:
    """Writers would queue behind a drop waiting for its exclusive lock: it gives up instead,
    and the next run drops the day."""
    feed = await make_feed(pool, keys)
    await feed.readings(KEY, D, {"battery_charge": 40.0})
    await partitions.ensure(pool, 7)
    cutoff = D + timedelta(days=1)
    async with pool.acquire() as reader, reader.transaction():
        await reader.fetchval("SELECT count(*) FROM processed_record")
        dropped = await asyncio.wait_for(partitions.drop_before(pool, partitions.FACTS, cutoff), 20)
        assert dropped == 0
        assert f"processed_record_p{D:%Y%m%d}" in await names(pool, "processed_record")
        # Creating a partition locks its table too: the upkeep waits for the next round.
        owed = await missing(pool, 9)
        assert await asyncio.wait_for(partitions.ensure(pool, 9), 20) == 0
    assert owed >= 6
    assert await partitions.ensure(pool, 9) == owed
    assert await partitions.drop_before(pool, partitions.FACTS, cutoff) == 1


async def test_partition_upkeep_beside_busy_writers(pool: asyncpg.Pool, keys: FleetKeys) -> None:
    """Retention and the upkeep lock the tables the facts' foreign keys name (device,
    record_type) as well as the ledger's: in the writers' order, or a writer and the upkeep
    each hold what the other waits for. Days are dropped and created one after another while
    two writers keep a batch open all the time; nothing may fail or be postponed."""
    feed = await make_feed(pool, keys)
    days = 6
    for day in range(days):
        await feed.readings(KEY, D + timedelta(days=day), {"battery_charge": 40.0})
    await partitions.ensure(pool, 7)
    now = datetime.now(UTC)
    stop = asyncio.Event()
    written = [0, 0]

    async def writer(k: int) -> None:
        seq = 0
        while not stop.is_set():
            batch = []
            for i in range(40):
                seq += 1
                body = {
                    "v": 1,
                    "seq": seq,
                    "ts": now.timestamp() + seq * 1e-3,
                    "readings": [{"type": "battery_charge", "value": 50.0}],
                }
                topic = feed.topics.device(f"AI-{k}{i:04d}", Kind.TELEMETRY)
                msg = feed.decoder.decode(
                    topic, json.dumps(body).encode(), received_at=now.timestamp()
                )
                batch.append(msg)
            stored = await feed.ledger.write(batch)
            written[k] += sum(len(s.processed_ids) for s in stored)

    writers = [asyncio.create_task(writer(k)) for k in range(2)]
    try:

        async def busy() -> bool:
            return all(written)

        await wait_for(busy, timeout=30)
        for day in range(days):
            cutoff = D + timedelta(days=day + 1)
            assert await partitions.drop_before(pool, partitions.FACTS, cutoff) == 1, day
            assert await partitions.drop_before(pool, partitions.RAW, cutoff) == 1, day
            assert await partitions.ensure(pool, 8 + day) == 3, day  # one more day ahead
        assert not any(w.done() for w in writers)
        for table in (partitions.FACTS, partitions.RAW):  # unlinked and dropped, none left
            assert (
                await pool.fetchval("SELECT count(*) FROM picofleet_detached($1::regclass)", table)
                == 0
            )
    finally:
        stop.set()
        await asyncio.gather(*writers)
    on_disk = await pool.fetchval(
        "SELECT count(*) FROM processed_record WHERE record_time >= $1", now - timedelta(hours=1)
    )
    assert on_disk == sum(written) > 0
    assert (
        await pool.fetchval("SELECT count(*) FROM processed_record WHERE record_time < $1", now)
        == 0
    )


async def test_a_day_detached_with_its_keys_waits_for_the_unlink(
    pool: asyncpg.Pool, keys: FleetKeys
) -> None:
    """A facts day whose unlink gave up keeps its foreign keys; a late fact of that day must
    not make the upkeep drop it (that would lock device after the ledger): the upkeep gives
    up, the fact waits in the default partition, and retention's next run finishes the day."""
    feed = await make_feed(pool, keys)
    await feed.readings(KEY, D, {"battery_charge": 40.0})
    await partitions.ensure(pool, 7)
    cutoff = D + timedelta(days=1)
    # Only the detach ran: the day is out of the ledger with its keys.
    assert await pool.fetchval(partitions.Q_DETACH, partitions.FACTS, cutoff, None) == 1
    late = await feed.readings(KEY, D + timedelta(hours=1), {"battery_charge": 41.0})
    assert late.processed_ids
    assert await partitions.ensure(pool, 7) == 0  # postponed, not a deadlock
    assert await per_partition(pool, "processed_record") == {"processed_record_default": 1}
    # Retention's next run: the detach gives up on that day too, the unlink and drop go on.
    assert await partitions.drop_before(pool, partitions.FACTS, cutoff) == 0
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM picofleet_detached($1::regclass)", partitions.FACTS
        )
        == 0
    )
    # And the one after takes the late fact's day as a partition of its own.
    assert await partitions.drop_before(pool, partitions.FACTS, cutoff) == 1
    assert await pool.fetchval("SELECT count(*) FROM processed_record") == 0
