"""The ledger's day partitions (sql/0080): created ahead by the hub, dropped whole by retention.

The work is done by owner functions in the database (the runtime role owns no table); here
they are called under one advisory lock, so two hubs never create the same partition. The
functions lock in the writers' order (sql/0081: device and record_type, which the facts'
foreign keys name, then the ledger tables), so the upkeep never deadlocks with the write path.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import asyncpg

from picofleet.core import db, logs

RAW, FACTS, ERRORS = "raw_record", "processed_record", "ingest_error"
Q_ENSURE = "SELECT picofleet_ensure_ledger_partitions($1)"
Q_DETACH = "SELECT picofleet_drop_partitions($1::regclass, $2, $3)"
Q_UNLINK_DETACHED = "SELECT picofleet_unlink_detached($1::regclass)"
Q_DROP_DETACHED = "SELECT picofleet_drop_detached($1::regclass)"
LOCK_TIMEOUT = "2s"


async def ensure(pool: asyncpg.Pool, ahead_days: int) -> int:
    """Partitions from yesterday to ``ahead_days`` ahead, and for every day waiting in a
    default partition; returns how many were created (0 when a long reader held a table
    past ``LOCK_TIMEOUT``: days ahead leave the next run time enough)."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            await db.xact_lock(conn, db.Lock.PARTITIONS)
            # Creating a partition locks its table exclusively: see drop_before.
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            return int(await conn.fetchval(Q_ENSURE, ahead_days))
    except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as exc:
        logs.get("picofleet.core.partitions").warning(
            "partitions.ensure_postponed", reason=type(exc).__name__
        )
        return 0


async def drop_before(
    pool: asyncpg.Pool, table: str, cutoff: datetime, *, max_id: int | None = None
) -> int:
    """Detach and drop ``table``'s partitions of days that end by ``cutoff``; with ``max_id``,
    a partition holding a greater id stays. Returns the rows detached (0 when a long reader
    held a table past ``LOCK_TIMEOUT``: the next run takes them). Three transactions, so that
    writers wait only for the first two, which take milliseconds: detach (the day leaves the
    ledger), unlink (a detached day's foreign keys go), drop (the filesystem frees the files,
    holding no lock anybody else needs). A step that gives up leaves the rest to the next run."""
    took: dict[str, float] = {}
    rows = await _step(pool, "detach", took, Q_DETACH, table, cutoff, max_id)
    if await _step(pool, "unlink", took, Q_UNLINK_DETACHED, table) is not None:
        await _step(pool, "drop", took, Q_DROP_DETACHED, table)
    if rows:
        logs.get("picofleet.core.partitions").info(
            "partitions.dropped", table=table, rows=rows, **{f"{k}_ms": v for k, v in took.items()}
        )
    return rows or 0


async def _step(
    pool: asyncpg.Pool, step: str, took: dict[str, float], query: str, table: str, *args: object
) -> int | None:
    """One upkeep statement on ``table`` in its own transaction, under the upkeep's advisory
    lock and a short lock timeout; None when it gave up on a lock. Its time (commit included:
    the drop's is the filesystem freeing the files) goes into ``took``, in ms."""
    t0 = time.perf_counter()
    try:
        async with pool.acquire() as conn, conn.transaction():
            await db.xact_lock(conn, db.Lock.PARTITIONS)
            # Writers queue behind a waiting exclusive lock: never wait long for one.
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            n = int(await conn.fetchval(query, table, *args))
        took[step] = round((time.perf_counter() - t0) * 1000, 1)
        return n
    except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as exc:
        # A reader that takes the ledger, then device (or record_type before device) can
        # still cross the writers' order: PostgreSQL breaks the cycle, the next run goes on.
        logs.get("picofleet.core.partitions").warning(
            "partitions.drop_postponed", table=table, step=step, reason=type(exc).__name__
        )
        return None


async def run(pool: asyncpg.Pool, stop: asyncio.Event, ahead_days: int, interval_s: float) -> None:
    """The hub's loop: ensure now, then every ``interval_s`` until ``stop``."""
    log = logs.get("picofleet.core.partitions")
    while not stop.is_set():
        made = await ensure(pool, ahead_days)
        if made:
            log.info("partitions.created", count=made)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            pass
