"""Retention: drop the ledger's day partitions older than N whole UTC days, once rolled up.

The ledger is partitioned by UTC day (sql/0080): facts by their device time, raw records by
when they were received, errors by when they were written; whole partitions are detached and
dropped, never DELETEd (no bloat, no vacuum). First the horizon moves (under the ETL lock), so
no rollup of an hour before it is ever recomputed from the partial facts that are left; then
each table's partitions before the horizon go, one table per transaction.

The horizon never passes a day that still has facts beyond the watermark, and a facts
partition that gained such a fact meanwhile is kept for a later run: so every fact that is
before the horizon and beyond the watermark arrived after the freeze, is in no rollup yet, and
the rollup job adds it to its row exactly once (see _rollup.Q_MERGE_PRUNED). Raw records and
errors go by their own day: a fact whose device clock ran ahead may outlive its raw record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from picofleet.core import db, logs, partitions

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


@dataclass(frozen=True, slots=True)
class PruneResult:
    cutoff: datetime | None
    facts: int = 0
    raw: int = 0
    errors: int = 0


def day_start(t: datetime) -> datetime:
    d = t.astimezone(UTC).date()
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def cutoff_for(now: datetime, days: int) -> datetime:
    """Start of the UTC day ``days`` before ``now``: whole days are kept, whole hours go."""
    return day_start(now - timedelta(days=days))


async def prune(
    pool: asyncpg.Pool,
    settings: AnalyticsSettings,
    *,
    now: datetime | None = None,
    days: int | None = None,
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
    facts = await partitions.drop_before(pool, partitions.FACTS, cutoff, max_id=last_id)
    raw = await partitions.drop_before(pool, partitions.RAW, cutoff)
    errors = await partitions.drop_before(pool, partitions.ERRORS, cutoff)
    if facts or raw or errors:
        logs.get("analytics.retention").info(
            "retention.pruned", cutoff=cutoff.isoformat(), facts=facts, raw=raw, errors=errors
        )
    return PruneResult(cutoff, facts, raw, errors)
