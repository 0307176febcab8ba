"""Growth bench: the ledger's write rate and p99 as the ledger fills, and retention of a day.

    .venv/bin/python bench/growth.py [--rows 0,1M,5M] [--days 10] [--url URL]

For each size in --rows the ledger is first filled server-side (INSERT ... SELECT
generate_series, no client round trip per row) to that many facts (processed_record; a raw
record per 3 facts, as firmware envelopes of 3 readings), spread evenly over --days UTC days
that end with today, so the partition today's writes go to already holds a full day's share.
Then --messages new envelopes (3 readings each, seq'd, device time now) are written through
the bridge's write path (picofleet.bridge.ledger.Ledger: the bridge's SQL and transactions)
in batches of --batch by --writers concurrent writers; decoding is done before the clock
starts, so the figure is the database's. A first round on each ledger warms its caches and is
not counted. msg/s = messages / wall time; p99 = 99th percentile
of the batch commit time (a message's wait on the database). Last, retention of the oldest
day: detach and drop its partitions (picofleet.core.partitions, what retention runs) while a
writer keeps writing today's envelopes; its longest batch during the retention is printed
beside its longest in the second before, which is what the retention cost the bridge.

Targets (issue 18): the rate at the largest size within 10% of the rate on empty tables;
retention of a day under 1 s. Without --url a private PostgreSQL (picofleet.core.pgembed)
runs in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from picofleet.bridge.decode import Decoder, Limits, Message
from picofleet.bridge.ledger import Ledger, load_record_types
from picofleet.core import db, partitions
from picofleet.core.credentials import FleetKeys
from picofleet.core.topics import Kind, Topics

READINGS = ("soil_moisture_pct", "battery_charge", "temperature_c")
PER_MESSAGE = len(READINGS)
CHUNK = 1_000_000  # facts per fill statement (progress, and bounded transactions)
FIRST_ID = 10**12  # the history's raw ids: far above the ids the write path draws
Q_DEVICES = """
INSERT INTO device (device_key, serial)
SELECT 'GROW-' || lpad(i::text, 5, '0'), 'GROW-' || lpad(i::text, 5, '0')
FROM generate_series(0, $1 - 1) i
ON CONFLICT (device_key) DO NOTHING
"""
# Message i (raw id $1 + i) of the history: device i % devices, seq i / devices, at
# $3 + ((i * $7) % $8) * $4 seconds ($7 prime to $8, the planned total: every size is spread
# over all the days); payloads the size of a real envelope.
Q_FILL_RAW = """
INSERT INTO raw_record (id, received_at, source, topic, device_key, payload, payload_size, body)
SELECT $1 + i, $3::timestamptz + ((i * $7) % $8) * $4::float8 * interval '1 second', 'mqtt',
       'picofleet/devices/GROW-' || lpad((i % $5)::text, 5, '0') || '/telemetry',
       'GROW-' || lpad((i % $5)::text, 5, '0'), convert_to(j, 'UTF8'), octet_length(j),
       j::jsonb
FROM generate_series($6::bigint, $2::bigint - 1) i,
     LATERAL (SELECT format('{"v":1,"seq":%s,"ts":%s,"readings":[{"type":"soil_moisture_pct",'
                            '"value":%s},{"type":"battery_charge","value":%s},'
                            '{"type":"temperature_c","value":%s}]}',
                            i / $5, 1.7e9 + i, i % 100, i % 97, i % 40) AS j) p
ORDER BY 2  -- in time order: each partition's indexes grow at their right edge
"""
# The devices' ids are consecutive ($10 the first): no array lookup per row.
Q_FILL_FACTS = """
INSERT INTO processed_record (raw_id, item_idx, device_id, record_type_id, record_time, value,
                              seq, ingested_at)
SELECT $1 + i, k, $10 + i % $5, ($9::smallint[])[1 + k],
       $3::timestamptz + ((i * $7) % $8) * $4::float8 * interval '1 second',
       (i * 7919 + k) % 100, i / $5,
       $3::timestamptz + ((i * $7) % $8) * $4::float8 * interval '1 second'
           + interval '50 milliseconds'
FROM generate_series($6::bigint, $2::bigint - 1) i, generate_series(0, 2) k
ORDER BY 5
"""
Q_DEVICE_IDS = "SELECT min(id), count(*), max(id) FROM device WHERE device_key LIKE 'GROW-%'"
Q_TYPE_IDS = (
    "SELECT array_agg(id ORDER BY array_position($1::text[], name)) FROM record_type"
    " WHERE name = ANY($1::text[])"
)
Q_ENSURE_DAY = "SELECT picofleet_ensure_partition($1::regclass, $2::date)"
Q_DAY_BYTES = """
SELECT sum(pg_total_relation_size(t || '_p' || to_char($1::date, 'YYYYMMDD')))::bigint
FROM unnest(ARRAY['raw_record', 'processed_record', 'ingest_error']) t
"""


def parse_rows(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().upper()
        mult = {"K": 10**3, "M": 10**6, "G": 10**9}.get(part[-1:], 1)
        out.append(int(float(part.rstrip("KMG")) * mult))
    return out


def day_start(t: datetime) -> datetime:
    return datetime(t.year, t.month, t.day, tzinfo=UTC)


class History:
    """The ledger's history: raw ids 1.., spread evenly over [start, start + days)."""

    def __init__(self, url: str, days: int, devices: int, planned_facts: int) -> None:
        self.url, self.days, self.devices = url, days, devices
        self.start = day_start(datetime.now(UTC)) - timedelta(days=days - 1)
        self.messages = 0  # written so far
        self.planned = max(planned_facts // PER_MESSAGE, 1)
        self.step = days * 86400.0 / self.planned  # seconds between messages in time order
        self.stride = next(p for p in range(7919, 10**6) if math.gcd(p, self.planned) == 1)

    async def prepare(self, conn: asyncpg.Connection) -> None:
        await conn.execute(Q_DEVICES, self.devices)
        first, n, last = await conn.fetchrow(Q_DEVICE_IDS)
        assert n == self.devices == last - first + 1, "device ids are not consecutive"
        self.first_device = first
        self.type_ids = await conn.fetchval(Q_TYPE_IDS, list(READINGS))
        for d in range(self.days + 1):
            for table in (partitions.RAW, partitions.FACTS, partitions.ERRORS):
                await conn.execute(Q_ENSURE_DAY, table, (self.start + timedelta(days=d)).date())

    async def fill_to(self, facts: int) -> float:
        """Add messages until the ledger holds ``facts`` facts; returns seconds taken."""
        target = facts // PER_MESSAGE
        t0 = time.perf_counter()
        conn = await asyncpg.connect(self.url)
        try:
            # The history's device and type ids are right by construction: skip the foreign
            # key triggers (a superuser's switch; without it the fill is only slower).
            with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
                await conn.execute("SET session_replication_role = replica")
            while self.messages < target:
                upto = min(target, self.messages + CHUNK // PER_MESSAGE)
                args = (FIRST_ID, upto, self.start, self.step, self.devices, self.messages)
                spread = (self.stride, self.planned)
                async with conn.transaction():
                    await conn.execute(Q_FILL_RAW, *args, *spread)
                    await conn.execute(
                        Q_FILL_FACTS, *args, *spread, self.type_ids, self.first_device
                    )
                self.messages = upto
                done = f"  filling: {self.messages * PER_MESSAGE:,} facts"
                print(done, end="\r", file=sys.stderr, flush=True)
            # What autovacuum does to insert-only tables (autovacuum_vacuum_insert_threshold):
            # visibility maps set, statistics fresh.
            await conn.execute("VACUUM (ANALYZE) raw_record")
            await conn.execute("VACUUM (ANALYZE) processed_record")
        finally:
            await conn.close()
        return time.perf_counter() - t0


def envelopes(decoder: Decoder, devices: int, n: int, seq0: int) -> list[Message]:
    """``n`` new envelopes (seq above the history's), decoded as the bridge would."""
    topics = decoder.topics
    now = time.time()
    out = []
    for i in range(n):
        key = f"GROW-{i % devices:05d}"
        body = {
            "v": 1,
            "seq": seq0 + i // devices,
            "ts": now + i * 1e-3,
            "readings": [{"type": t, "value": (i + k) % 50} for k, t in enumerate(READINGS)],
        }
        out.append(
            decoder.decode(
                topics.device(key, Kind.TELEMETRY), json.dumps(body).encode(), received_at=now
            )
        )
    return out


async def ingest(
    pool: asyncpg.Pool, msgs: list[Message], batch: int, writers: int
) -> tuple[float, float]:
    """Write ``msgs`` through the Ledger; returns (messages/s, p99 batch ms)."""
    ledger = Ledger(pool)
    batches = [msgs[i : i + batch] for i in range(0, len(msgs), batch)]
    latencies: list[float] = []
    stored = 0

    async def writer(k: int) -> None:
        nonlocal stored
        for b in batches[k::writers]:
            t = time.perf_counter()
            done = await ledger.write(b)
            latencies.append(time.perf_counter() - t)
            stored += sum(len(s.processed_ids) for s in done)

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(k) for k in range(writers)))
    elapsed = time.perf_counter() - t0
    assert stored == len(msgs) * PER_MESSAGE, f"stored {stored} facts of {len(msgs) * 3}"
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else latencies[0]
    return len(msgs) / elapsed, p99 * 1000


async def retention(
    pool: asyncpg.Pool, history: History, msgs: list[Message], batch: int
) -> tuple[float, int, float, float]:
    """Drop the oldest day of every ledger table while one writer keeps writing today's
    envelopes, as the bridge would. Returns (seconds, facts dropped, the writer's longest
    batch during the retention, and its longest in the second before it) in ms."""
    ledger = Ledger(pool)
    cutoff = history.start + timedelta(days=1)
    phase = "before"
    longest = {"before": 0.0, "during": 0.0}
    started = asyncio.Event()

    async def writer() -> None:
        for i in range(0, len(msgs), batch):
            t, began = time.perf_counter(), phase
            await ledger.write(msgs[i : i + batch])
            took, ended = time.perf_counter() - t, phase
            # A batch that overlaps the retention at all counts as during it.
            at = "before" if ended == "before" else "during" if began != "after" else None
            if at is not None:
                longest[at] = max(longest[at], took * 1000)
            started.set()
            if ended == "after":
                return
        raise RuntimeError("the writer ran out of envelopes before retention ended")

    task = asyncio.create_task(writer())
    await started.wait()
    await asyncio.sleep(1.0)
    phase = "during"
    t0 = time.perf_counter()
    facts = await partitions.drop_before(pool, partitions.FACTS, cutoff)
    await partitions.drop_before(pool, partitions.RAW, cutoff)
    await partitions.drop_before(pool, partitions.ERRORS, cutoff)
    secs = time.perf_counter() - t0
    phase = "after"
    await task
    return secs, facts, longest["during"], longest["before"]


def filesystem_free_s(directory: Path, size: int) -> float:
    """The filesystem's own part of a drop: seconds to truncate and remove a written (and
    synced) file of ``size`` bytes in ``directory``, as PostgreSQL does with a dropped
    table's files at commit."""
    path = directory / "growth-bench-ceiling.bin"
    block = os.urandom(1 << 20)
    with path.open("wb") as f:
        for _ in range(max(size >> 20, 1)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    t0 = time.perf_counter()
    os.truncate(path, 0)
    path.unlink()
    return time.perf_counter() - t0


class Target:
    """One database the bench writes to: its pool, and its history."""

    def __init__(self, url: str, history: History, pool: asyncpg.Pool) -> None:
        self.url, self.history, self.pool = url, history, pool

    @classmethod
    async def open(cls, url: str, args: argparse.Namespace, planned: int) -> Target:
        await db.migrate(url)
        history = History(url, args.days, args.devices, planned)
        conn = await asyncpg.connect(url)
        try:
            await history.prepare(conn)
        finally:
            await conn.close()
        return cls(url, history, await db.create_pool(url, max_size=args.writers + 1))


async def run(
    urls: tuple[str, str], args: argparse.Namespace, sizes: list[int], data_dir: Path | None
) -> None:
    """``urls``: the database that grows, and one that stays empty. Each size is measured in
    rounds that alternate between the two, so a load that comes and goes on the machine
    weighs on both figures alike."""
    grown = await Target.open(urls[0], args, max(sizes))
    empty = await Target.open(urls[1], args, max(sizes))
    version = await grown.pool.fetchval("SHOW server_version")
    decoder = Decoder(
        topics=Topics("picofleet"),
        keys=FleetKeys(b"growth-bench-secret-0123456789ab"),
        record_types=await load_record_types(grown.pool),
        limits=Limits(max_clock_drift_s=86400),
    )
    print(
        f"growth bench {datetime.now(UTC):%Y-%m-%d %H:%M}Z on {platform.node()}: "
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"PostgreSQL {version}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"sizes {', '.join(f'{s:,}' for s in sizes)} facts over {args.days} days, "
        f"{args.devices} devices; {args.messages:,} messages x {PER_MESSAGE} readings per"
        f" round, {args.rounds} rounds, batch {args.batch}, {args.writers} writers"
    )
    print(
        f"{'facts in ledger':>16} {'fill s':>7} {'msg/s':>8} {'p99 ms':>7}"
        f" {'empty msg/s':>11} {'p99 ms':>7} {'ratio':>6}"
    )
    seq0 = 1 << 40  # above every seq of the history

    async def measure(t: Target, n: int) -> tuple[float, float]:
        nonlocal seq0
        msgs = envelopes(decoder, args.devices, n, seq0)
        seq0 += n
        return await ingest(t.pool, msgs, args.batch, args.writers)

    ratio = 1.0
    try:
        for size in sizes:
            fill = await grown.history.fill_to(size)
            # One round on each, not counted: the fill and its VACUUM leave the caches holding
            # history, while in service the partition being written is the hot one.
            await measure(empty, args.messages)
            await measure(grown, args.messages)
            got: dict[str, list[tuple[float, float]]] = {"grown": [], "empty": []}
            for _ in range(args.rounds):
                got["empty"].append(await measure(empty, args.messages))
                got["grown"].append(await measure(grown, args.messages))
            g = [statistics.median(x) for x in zip(*got["grown"], strict=True)]
            e = [statistics.median(x) for x in zip(*got["empty"], strict=True)]
            ratio = g[0] / e[0]
            print(
                f"\r{size:>16,} {fill:>7.1f} {g[0]:>8,.0f} {g[1]:>7.1f}"
                f" {e[0]:>11,.0f} {e[1]:>7.1f} {ratio:>6.0%}",
                flush=True,
            )
        day_mb = await grown.pool.fetchval(Q_DAY_BYTES, grown.history.start.date()) / 1e6
        tail = envelopes(decoder, args.devices, 100_000, seq0)
        secs, dropped, during, before = await retention(
            grown.pool, grown.history, tail, args.batch // 5
        )
    finally:
        await grown.pool.close()
        await empty.pool.close()
    print(
        f"target: msg/s at {sizes[-1]:,} facts within 10% of empty tables: {ratio:.0%}"
        f" -> {'met' if ratio >= 0.9 else 'MISSED'}"
    )
    print(
        f"target: retention of a day < 1 s: {secs:.3f} s for one day ({dropped:,} facts, its"
        f" raw records and errors, {day_mb:,.0f} MB on disk) -> {'met' if secs < 1 else 'MISSED'}"
    )
    print(
        f"  a writer's longest batch ({args.batch // 5} messages) meanwhile: {during:.0f} ms;"
        f" in the second before: {before:.0f} ms"
    )
    if data_dir is not None:
        fs = filesystem_free_s(data_dir, int(day_mb * 1e6))
        print(f"  ceiling: the filesystem frees a synced {day_mb:,.0f} MB file in {fs:.3f} s")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--rows",
        default="0,1M,5M",
        help="facts already in the ledger [0,1M,5M]; issue 18 asks 0,10M,50M",
    )
    ap.add_argument("--days", type=int, default=10, help="days the history spans [10]")
    ap.add_argument("--devices", type=int, default=1000, help="devices [1000]")
    ap.add_argument("--messages", type=int, default=10_000, help="messages per round [10000]")
    ap.add_argument("--batch", type=int, default=500, help="messages per transaction [500]")
    ap.add_argument("--writers", type=int, default=2, help="concurrent writers [2]")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per size (median) [5]")
    ap.add_argument("--url", help="an existing, empty database's URL (migrated here)")
    ap.add_argument("--empty-url", help="with --url: a second one, kept empty")
    args = ap.parse_args()
    if args.url and not args.empty_url:
        ap.error("--url needs --empty-url")
    sizes = parse_rows(args.rows)
    if sizes != sorted(sizes):
        ap.error("--rows must grow")
    if args.url:
        await run((args.url, args.empty_url), args, sizes, None)
        return 0
    from picofleet.core.pgembed import EmbeddedPostgres

    tmp = tempfile.mkdtemp(prefix="picofleet-bench-")
    os.chmod(tmp, 0o755)
    pg = EmbeddedPostgres(Path(tmp))
    try:
        pg.start()
        pg.ensure_database("bench_growth")
        pg.ensure_database("bench_empty")
        await run((pg.url("bench_growth"), pg.url("bench_empty")), args, sizes, Path(tmp))
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
