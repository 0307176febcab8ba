"""Retention: drop raw records and facts older than N whole UTC days, once rolled up.

A fact goes only when the watermark has passed it (its hour and day were recomputed after
it arrived); a raw record goes only when none of its facts remain. First the horizon moves
(under the ETL lock), so no rollup of an hour before it is ever recomputed from the partial
facts that are left; then rows go in bounded batches.

The horizon never passes a day that still has facts beyond the watermark: so every fact that
is before the horizon and beyond the watermark arrived after the freeze, is in no rollup
yet, and the rollup job adds it to its row exactly once (see _rollup.Q_MERGE_PRUNED).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from picofleet.core import db, logs

from ._settings import AnalyticsSettings

Q_STATE = "SELECT last_id FROM analytics_state WHERE name = 'rollup'"
Q_OLDEST_PENDING = """
SELECT min(record_time) FROM processed_record WHERE id > $1 AND record_time < $2
"""
Q_MOVE_HORIZON = """
UPDATE analytics_state
SET pruned_before = greatest(coalesce(pruned_before, $1), $1), updated_at = now()
WHERE name = 'rollup'
RETURNING pruned_before
"""
Q_PRUNE_FACTS = """
WITH doomed AS (
    SELECT id FROM processed_record WHERE record_time < $1 AND id <= $2 LIMIT $3
)
DELETE FROM processed_record p USING doomed WHERE p.id = doomed.id
"""
Q_PRUNE_RAW = """
WITH doomed AS (
    SELECT r.id FROM raw_record r
    WHERE r.received_at < $1
      AND NOT EXISTS (SELECT 1 FROM processed_record p WHERE p.raw_id = r.id)
    LIMIT $2
)
DELETE FROM raw_record r USING doomed WHERE r.id = doomed.id
"""


@dataclass(frozen=True, slots=True)
class PruneResult:
    cutoff: datetime | None
    facts: int = 0
    raw: int = 0


def day_start(t: datetime) -> datetime:
    d = t.astimezone(UTC).date()
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def cutoff_for(now: datetime, days: int) -> datetime:
    """Start of the UTC day ``days`` before ``now``: whole days are kept, whole hours go."""
    return day_start(now - timedelta(days=days))


async def _drain(pool: asyncpg.Pool, query: str, *args: object) -> int:
    total = 0
    while True:
        status = await pool.execute(query, *args)
        n = int(status.split()[-1])
        total += n
        if n == 0:
            return total


async def prune(
    pool: asyncpg.Pool,
    settings: AnalyticsSettings,
    *,
    now: datetime | None = None,
    days: int | None = None,
    batch: int = 50_000,
) -> PruneResult:
    """Apply retention (``days`` overrides the setting; neither set keeps everything)."""
    days = days or settings.retention_days
    if days is None:
        return PruneResult(None)
    cutoff = cutoff_for(now or datetime.now(UTC), days)
    async with pool.acquire() as conn, conn.transaction():
        await db.xact_lock(conn, db.Lock.ETL)
        last_id = await conn.fetchval(Q_STATE)
        pending = await conn.fetchval(Q_OLDEST_PENDING, last_id, cutoff)
        if pending is not None:
            cutoff = day_start(pending)  # not rolled up yet: wait for the next time
        cutoff = await conn.fetchval(Q_MOVE_HORIZON, cutoff)
    facts = await _drain(pool, Q_PRUNE_FACTS, cutoff, last_id, batch)
    raw = await _drain(pool, Q_PRUNE_RAW, cutoff, batch)
    if facts or raw:
        logs.get("analytics.retention").info(
            "retention.pruned", cutoff=cutoff.isoformat(), facts=facts, raw=raw
        )
    return PruneResult(cutoff, facts, raw)
