"""Every query of the Home Assistant area."""

from __future__ import annotations

from typing import Any

import asyncpg

# On a first start, facts this far back from the newest seed the entities (a fleet's devices
# report every few seconds); later starts resume after the newest fact already published.
SEED_FACTS = 20_000
PAGE = 5_000
# Ids are taken at insert and rows become visible at commit, so a slower transaction (a big
# bridge batch beside a POST /ingest) can commit facts behind the watermark: every round reads
# the last OVERLAP ids again. The upsert keeps only what is newer than what was published.
OVERLAP = 1_000

Q_WATERMARK = """
SELECT coalesce((SELECT max(fact_id) FROM ha_entity),
                greatest((SELECT max(id) FROM processed_record) - $1, 0), 0)
"""

# New facts of devices that may be shown (not blocked), in commit-id order.
Q_FACTS = """
SELECT p.id, d.device_key, t.name AS record_type, t.unit, p.value
FROM processed_record p
JOIN device d ON d.id = p.device_id
JOIN record_type t ON t.id = p.record_type_id
WHERE p.id > $1 AND NOT d.blocked
ORDER BY p.id
LIMIT $2
"""

Q_UPSERT = """
INSERT INTO ha_entity (device_key, record_type, unit, fact_id, value)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::float8[])
ON CONFLICT (device_key, record_type) DO UPDATE
    SET unit = excluded.unit, fact_id = excluded.fact_id, value = excluded.value
    WHERE ha_entity.fact_id < excluded.fact_id
RETURNING device_key, record_type, value
"""

# Every announced entity with its device as it is now (no device row: deleted).
Q_ENTITIES = """
SELECT e.device_key, e.record_type, e.unit, e.value,
       d.id IS NULL OR d.blocked AS gone,
       d.device_type, d.firmware, d.serial, d.status IS NOT NULL AS has_status
FROM ha_entity e
LEFT JOIN device d ON d.device_key = e.device_key
ORDER BY e.device_key, e.record_type
"""

Q_FORGET = "DELETE FROM ha_entity WHERE device_key = ANY($1::text[])"


async def watermark(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(Q_WATERMARK, SEED_FACTS))


async def new_facts(conn: asyncpg.Connection, after: int) -> list[asyncpg.Record]:
    """Facts after the watermark, and those of the OVERLAP ids before it."""
    return list(await conn.fetch(Q_FACTS, max(after - OVERLAP, 0), PAGE))


async def remember(conn: asyncpg.Connection, latest: list[asyncpg.Record]) -> list[asyncpg.Record]:
    """Upsert the newest fact per entity; returns the entities that changed (new or newer)."""
    return await conn.fetch(
        Q_UPSERT,
        [r["device_key"] for r in latest],
        [r["record_type"] for r in latest],
        [r["unit"] for r in latest],
        [r["id"] for r in latest],
        [r["value"] for r in latest],
    )


async def entities(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(Q_ENTITIES)]


async def forget(conn: asyncpg.Connection, keys: list[str]) -> None:
    await conn.execute(Q_FORGET, keys)


async def announced(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM ha_entity"))
