"""Read side shared by ``picofleet ota status|log`` and the HTTP API: plain JSON-ready dicts."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

Q_RELEASES = """
SELECT id, device_type, version, sha256, size, notes, key_id, bad_at, bad_reason, created_at
FROM ota_release WHERE ($1::text IS NULL OR device_type = $1)
ORDER BY device_type, semver DESC
"""
Q_ROLLOUTS = """
SELECT r.id, r.version, r.device_type, r.kind, r.channel, r.action, r.state, r.reason,
       r.current_wave + 1 AS wave, cardinality(r.waves) AS waves, r.waves AS wave_pcts,
       r.max_failure_rate, r.min_booted, r.soak_s, r.timeout_s, r.pause_between_waves,
       r.created_at, r.updated_at, r.finished_at,
       count(rd.device_key) AS devices,
       count(rd.device_key) FILTER (WHERE rd.offered_at IS NOT NULL) AS offered,
       count(rd.device_key) FILTER (WHERE rd.state = 'booted_ok') AS booted_ok,
       count(rd.device_key) FILTER (WHERE rd.healthy_at IS NOT NULL
                                    AND rd.state = 'booted_ok') AS healthy,
       count(rd.device_key) FILTER (WHERE rd.state = 'failed') AS failed,
       count(rd.device_key) FILTER (WHERE rd.state = 'rolled_back') AS rolled_back,
       count(rd.device_key) FILTER (WHERE rd.state = 'timed_out') AS timed_out,
       count(rd.device_key) FILTER (WHERE rd.state = 'skipped') AS skipped,
       -- members whose newest booted_ok report is of this version: what they run now
       count(rd.device_key) FILTER (WHERE s.running_version = r.version) AS running
FROM ota_rollout r LEFT JOIN ota_rollout_device rd ON rd.rollout_id = r.id
LEFT JOIN ota_device_state s ON s.device_key = rd.device_key
WHERE ($1::text IS NULL OR r.version = $1) AND ($2::bigint IS NULL OR r.id = $2)
GROUP BY r.id ORDER BY r.id DESC LIMIT $3
"""
# Per device: its membership in the latest rollout (of the version, when given).
Q_DEVICES = """
SELECT DISTINCT ON (rd.device_key)
       rd.device_key, rd.rollout_id::text AS rollout, r.version, r.kind, rd.wave + 1 AS wave,
       rd.state, rd.reason, rd.seq, rd.offered_at, rd.booted_at, rd.healthy_at, rd.updated_at,
       s.version AS reported_version, s.state AS reported_state, s.running_version
FROM ota_rollout_device rd
JOIN ota_rollout r ON r.id = rd.rollout_id
LEFT JOIN ota_device_state s ON s.device_key = rd.device_key
WHERE ($1::text IS NULL OR r.version = $1) AND ($2::bigint IS NULL OR r.id = $2)
ORDER BY rd.device_key, rd.rollout_id DESC
"""
Q_PINS = """
SELECT p.device_key, rel.version, rel.device_type, p.rollout_id::text AS rollout, p.created_at
FROM ota_pin p JOIN ota_release rel ON rel.id = p.release_id ORDER BY p.device_key
"""
Q_ROLLOUT_EVENTS = """
SELECT event, wave + 1 AS wave, detail, created_at FROM ota_rollout_event
WHERE rollout_id = $1 ORDER BY id
"""


def jsonable(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in dict(row).items():
        if isinstance(v, datetime):
            v = v.isoformat()
        elif k == "detail" and isinstance(v, str):
            v = json.loads(v)  # jsonb arrives as text
        out[k] = v
    return out


async def releases(
    conn: asyncpg.Connection, device_type: str | None = None
) -> list[dict[str, Any]]:
    return [jsonable(r) for r in await conn.fetch(Q_RELEASES, device_type)]


async def rollouts(
    conn: asyncpg.Connection,
    *,
    version: str | None = None,
    rollout_id: int | None = None,
    limit: int = 20,
) -> list[dict[str, Any]]:
    rows = await conn.fetch(Q_ROLLOUTS, version, rollout_id, limit)
    return [jsonable(r) for r in rows]


async def rollout_events(conn: asyncpg.Connection, rollout_id: int) -> list[dict[str, Any]]:
    return [jsonable(r) for r in await conn.fetch(Q_ROLLOUT_EVENTS, rollout_id)]


async def devices(
    conn: asyncpg.Connection, *, version: str | None = None, rollout_id: int | None = None
) -> list[dict[str, Any]]:
    return [jsonable(r) for r in await conn.fetch(Q_DEVICES, version, rollout_id)]


async def status(conn: asyncpg.Connection, version: str | None = None) -> dict[str, Any]:
    return {
        "rollouts": await rollouts(conn, version=version),
        "devices": await devices(conn, version=version),
        "pins": await pins(conn),
    }


async def pins(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [jsonable(r) for r in await conn.fetch(Q_PINS)]
