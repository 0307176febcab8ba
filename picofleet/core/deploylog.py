"""The deploy log's one read: every update step of every device (OTA, USB, hub), newest first.

Shared by the HTTP API (``GET /api/deploy-log``, picofleet.ops), the dashboard, the live
feed and ``picofleet ota log``, so there is one query and one row shape. Paging is keyset on
the row id: ``before_id`` continues a newest-first page, ``after_id`` follows new rows
oldest first (the live feed).
"""

from __future__ import annotations

import json
from typing import Any, TypeAlias

import asyncpg

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

MAX_LIMIT = 5000

Q_DEPLOY_LOG = """
SELECT id, device_key, version, state, reason, source, seq, detail, raw_id, created_at
FROM deploy_event
WHERE ($1::text IS NULL OR device_key = $1)
  AND ($2::text IS NULL OR version = $2)
  AND ($3::bigint IS NULL OR id < $3)
  AND ($4::bigint IS NULL OR id > $4)
ORDER BY CASE WHEN $4::bigint IS NULL THEN -id ELSE id END
LIMIT $5
"""


async def deploy_log(
    conn: Conn,
    *,
    device: str | None = None,
    version: str | None = None,
    before_id: int | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Deploy events as dicts (``detail`` parsed; times stay datetimes)."""
    limit = min(max(limit, 1), MAX_LIMIT)
    rows = await conn.fetch(Q_DEPLOY_LOG, device, version, before_id, after_id, limit)
    out = []
    for r in rows:
        d = dict(r)
        detail = d["detail"]
        d["detail"] = (json.loads(detail) if isinstance(detail, str) else detail) or {}
        out.append(d)
    return out
