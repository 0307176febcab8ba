"""Alerts: rules over facts, devices, the error ledger and OTA rollouts, with a lifecycle.

    evaluate     each rule lists what fires now -> open an alert per new (kind, subject),
                 close open alerts whose condition cleared; one transaction, advisory lock
    publish      the outbox: alerts whose state was not announced yet go out on
                 {prefix}/alerts/{kind} (QoS 1), then are marked announced

A rule answers with conditions at two levels: ``fire`` opens (or keeps) an alert, ``hold``
only keeps one that is already open (hysteresis, so a value hovering at the threshold does
not flap). A subject the rule does not mention has cleared. A rule that cannot judge (its
table does not exist) answers None and its alerts are left as they are.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import asyncpg

from picofleet.core import db, logs
from picofleet.core.codes import Code
from picofleet.core.topics import Topics

from ._models import AlertOut
from ._settings import AnalyticsSettings

FLEET = ""  # subject of fleet-wide alerts


class AlertKind(StrEnum):
    BATTERY_LOW = "battery_low"
    SOIL_DRY = "soil_dry"
    DEVICE_OFFLINE = "device_offline"
    STARTUP_AUTH_SPIKE = "startup_auth_spike"
    INGEST_ERROR_RATE = "ingest_error_rate"
    OTA_ROLLOUT_HALTED = "ota_rollout_halted"


@dataclass(frozen=True, slots=True)
class Condition:
    subject: str
    device_key: str | None
    fire: bool  # False: only keeps an open alert open
    detail: dict[str, Any]


@dataclass(slots=True)
class AlertChanges:
    ran: bool = True
    opened: list[int] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)


Rule = Callable[
    [asyncpg.Connection, AnalyticsSettings, datetime], Awaitable[list[Condition] | None]
]

# Candidate devices come from the hourly rollups (cheap), the value from the latest facts.
Q_BATTERY = """
SELECT d.device_key, b.value, b.record_time
FROM device d
CROSS JOIN LATERAL (
    SELECT p.value, p.record_time FROM processed_record p
    WHERE p.device_id = d.id
      AND p.record_type_id = (SELECT id FROM record_type WHERE name = 'battery_charge')
      AND p.record_time <= $1 AND p.record_time > $1::timestamptz - make_interval(secs => $2)
    ORDER BY p.record_time DESC LIMIT 1
) b
WHERE NOT d.blocked AND b.value < $3
  AND EXISTS (SELECT 1 FROM rollup_hourly r
              WHERE r.device_id = d.id AND r.series = 'battery_charge'
                AND r.hour > $1::timestamptz - make_interval(secs => $2) - interval '1 hour')
"""
# Dry for too long: every reading of the last window below the threshold, and the reading
# just before the window too (so the soil has been dry for at least the whole window).
Q_SOIL = """
SELECT d.device_key, w.n, w.max_value, w.last_value, w.last_time, before.value AS before_value
FROM device d
CROSS JOIN LATERAL (
    SELECT count(*) AS n, max(p.value) AS max_value, max(p.record_time) AS last_time,
           (array_agg(p.value ORDER BY p.record_time DESC))[1] AS last_value
    FROM processed_record p
    WHERE p.device_id = d.id
      AND p.record_type_id = (SELECT id FROM record_type WHERE name = 'soil_moisture_pct')
      AND p.record_time > $1::timestamptz - make_interval(secs => $2)
      AND p.record_time <= $1::timestamptz
) w
LEFT JOIN LATERAL (
    SELECT p.value FROM processed_record p
    WHERE p.device_id = d.id
      AND p.record_type_id = (SELECT id FROM record_type WHERE name = 'soil_moisture_pct')
      AND p.record_time <= $1::timestamptz - make_interval(secs => $2)
    ORDER BY p.record_time DESC LIMIT 1
) before ON true
WHERE NOT d.blocked AND w.n > 0
  AND EXISTS (SELECT 1 FROM rollup_hourly r
              WHERE r.device_id = d.id AND r.series = 'soil_moisture_pct'
                AND r.hour > $1::timestamptz - make_interval(secs => $2) - interval '1 hour')
"""
Q_OFFLINE = """
SELECT device_key, state, last_seen FROM device
WHERE NOT blocked AND (state = 'offline' OR last_seen < $1::timestamptz - make_interval(secs => $2))
"""
Q_AUTH_ERRORS = """
SELECT count(*) AS n,
       (array_agg(DISTINCT r.device_key) FILTER (WHERE r.device_key IS NOT NULL))[1:10] AS keys
FROM ingest_error e JOIN raw_record r ON r.id = e.raw_id
WHERE e.code = $3
  AND e.created_at > $1::timestamptz - make_interval(secs => $2) AND e.created_at <= $1
"""
Q_ERROR_RATE = """
SELECT count(*) AS messages,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM ingest_error e WHERE e.raw_id = r.id))
           AS errors
FROM raw_record r
WHERE r.received_at > $1::timestamptz - make_interval(secs => $2) AND r.received_at <= $1
"""
Q_HALTED_ROLLOUTS = """
SELECT id, device_type, version, reason, updated_at FROM ota_rollout WHERE state = 'halted'
"""
Q_OPEN = "SELECT id, subject FROM alert WHERE kind = $1 AND state = 'open'"
Q_OPEN_ALERTS = """
INSERT INTO alert (kind, subject, device_key, opened_at, detail)
SELECT $1, u.subject, u.device_key, $2, u.detail::jsonb
FROM unnest($3::text[], $4::text[], $5::text[]) AS u(subject, device_key, detail)
ON CONFLICT (kind, subject) WHERE state = 'open' DO NOTHING
RETURNING id
"""
Q_CLOSE_ALERTS = """
UPDATE alert SET state = 'closed', closed_at = $2
WHERE id = ANY($1::bigint[]) AND state = 'open'
RETURNING id
"""
Q_UNPUBLISHED = """
SELECT id, kind, subject, device_key, state, opened_at, closed_at, detail FROM alert
WHERE published_state IS DISTINCT FROM state
ORDER BY id LIMIT $1
FOR UPDATE SKIP LOCKED
"""
Q_MARK_PUBLISHED = "UPDATE alert SET published_state = state WHERE id = ANY($1::bigint[])"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


async def battery_low(
    conn: asyncpg.Connection, s: AnalyticsSettings, now: datetime
) -> list[Condition]:
    rows = await conn.fetch(
        Q_BATTERY, now, s.battery_lookback_h * 3600, s.battery_low_pct + s.battery_hysteresis_pct
    )
    return [
        Condition(
            r["device_key"],
            r["device_key"],
            r["value"] < s.battery_low_pct,
            {"battery_pct": r["value"], "at": _iso(r["record_time"]), "below": s.battery_low_pct},
        )
        for r in rows
    ]


async def soil_dry(
    conn: asyncpg.Connection, s: AnalyticsSettings, now: datetime
) -> list[Condition]:
    rows = await conn.fetch(Q_SOIL, now, s.soil_dry_minutes * 60)
    out = []
    for r in rows:
        fire = (
            r["max_value"] < s.soil_dry_pct
            and r["before_value"] is not None
            and r["before_value"] < s.soil_dry_pct
        )
        if fire or r["last_value"] < s.soil_dry_pct + s.soil_hysteresis_pct:
            detail = {
                "moisture_pct": r["last_value"],
                "at": _iso(r["last_time"]),
                "below": s.soil_dry_pct,
                "for_minutes": s.soil_dry_minutes,
            }
            out.append(Condition(r["device_key"], r["device_key"], fire, detail))
    return out


async def device_offline(
    conn: asyncpg.Connection, s: AnalyticsSettings, now: datetime
) -> list[Condition]:
    rows = await conn.fetch(Q_OFFLINE, now, s.offline_minutes * 60)
    return [
        Condition(
            r["device_key"],
            r["device_key"],
            True,
            {
                "reason": "last_will" if r["state"] == "offline" else "silent",
                "last_seen": _iso(r["last_seen"]),
                "after_minutes": s.offline_minutes,
            },
        )
        for r in rows
    ]


async def startup_auth_spike(
    conn: asyncpg.Connection, s: AnalyticsSettings, now: datetime
) -> list[Condition]:
    row = await conn.fetchrow(
        Q_AUTH_ERRORS, now, s.auth_error_window_minutes * 60, Code.STARTUP_AUTH_ERROR.value
    )
    assert row is not None
    if row["n"] < s.auth_error_threshold:
        return []
    detail = {
        "errors": row["n"],
        "window_minutes": s.auth_error_window_minutes,
        "threshold": s.auth_error_threshold,
        "devices": list(row["keys"] or []),
    }
    return [Condition(FLEET, None, True, detail)]


async def ingest_error_rate(
    conn: asyncpg.Connection, s: AnalyticsSettings, now: datetime
) -> list[Condition]:
    row = await conn.fetchrow(Q_ERROR_RATE, now, s.error_rate_window_minutes * 60)
    assert row is not None
    messages, errors = row["messages"], row["errors"]
    if messages < s.error_rate_min_messages or errors / messages <= s.error_rate_max:
        return []
    detail = {
        "rate": round(errors / messages, 4),
        "errors": errors,
        "messages": messages,
        "window_minutes": s.error_rate_window_minutes,
        "max_rate": s.error_rate_max,
    }
    return [Condition(FLEET, None, True, detail)]


async def ota_rollout_halted(
    conn: asyncpg.Connection, s: AnalyticsSettings, now: datetime
) -> list[Condition] | None:
    if await conn.fetchval("SELECT to_regclass('ota_rollout')") is None:
        return None  # no OTA schema: nothing to judge
    rows = await conn.fetch(Q_HALTED_ROLLOUTS)
    return [
        Condition(
            str(r["id"]),
            None,
            True,
            {
                "rollout": r["id"],
                "device_type": r["device_type"],
                "version": r["version"],
                "reason": r["reason"],
                "halted_at": _iso(r["updated_at"]),
            },
        )
        for r in rows
    ]


RULES: dict[AlertKind, Rule] = {
    AlertKind.BATTERY_LOW: battery_low,
    AlertKind.SOIL_DRY: soil_dry,
    AlertKind.DEVICE_OFFLINE: device_offline,
    AlertKind.STARTUP_AUTH_SPIKE: startup_auth_spike,
    AlertKind.INGEST_ERROR_RATE: ingest_error_rate,
    AlertKind.OTA_ROLLOUT_HALTED: ota_rollout_halted,
}


async def _apply(
    conn: asyncpg.Connection, kind: AlertKind, conds: list[Condition], now: datetime
) -> tuple[list[int], list[int]]:
    open_now = {r["subject"]: r["id"] for r in await conn.fetch(Q_OPEN, kind.value)}
    firing = {c.subject: c for c in conds if c.fire or c.subject in open_now}
    new = [c for subject, c in firing.items() if subject not in open_now]
    opened: list[int] = []
    if new:
        rows = await conn.fetch(
            Q_OPEN_ALERTS,
            kind.value,
            now,
            [c.subject for c in new],
            [c.device_key for c in new],
            [json.dumps(c.detail) for c in new],
        )
        opened = [r["id"] for r in rows]
    cleared = [i for subject, i in open_now.items() if subject not in firing]
    closed: list[int] = []
    if cleared:
        closed = [r["id"] for r in await conn.fetch(Q_CLOSE_ALERTS, cleared, now)]
    return opened, closed


async def evaluate(
    pool: asyncpg.Pool,
    settings: AnalyticsSettings,
    *,
    now: datetime | None = None,
    wait: bool = False,
) -> AlertChanges:
    """Open and close alerts for the state of the fleet at ``now`` (default: the clock)."""
    now = now or datetime.now(UTC)
    changes = AlertChanges()
    async with pool.acquire() as conn, conn.transaction():
        if not await db.xact_lock(conn, db.Lock.ALERTS, wait=wait):
            return AlertChanges(ran=False)
        for kind, rule in RULES.items():
            conds = await rule(conn, settings, now)
            if conds is None:
                continue
            opened, closed = await _apply(conn, kind, conds, now)
            changes.opened += opened
            changes.closed += closed
    if changes.opened or changes.closed:
        logs.get("analytics.alerts").info(
            "alerts.changed", opened=changes.opened, closed=changes.closed
        )
    return changes


def alert_out(row: asyncpg.Record) -> AlertOut:
    detail = row["detail"]
    return AlertOut(
        id=row["id"],
        kind=row["kind"],
        subject=row["subject"],
        device=row["device_key"],
        state=row["state"],
        opened_at=row["opened_at"],
        closed_at=row["closed_at"],
        acked_at=row.get("acked_at"),
        detail=json.loads(detail) if isinstance(detail, str) else dict(detail),
    )


Publish = Callable[[str, bytes], None]


async def publish_pending(
    pool: asyncpg.Pool, publish: Publish, topics: Topics, *, limit: int = 1000
) -> int:
    """Announce every alert state change not announced yet; returns how many went out.

    Marked only after publishing, in the same transaction: a crash in between announces
    again (at least once), and replicas skip each other's rows (SKIP LOCKED).
    """
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(Q_UNPUBLISHED, limit)
        for r in rows:
            publish(topics.alert(r["kind"]), alert_out(r).model_dump_json().encode())
        if rows:
            await conn.execute(Q_MARK_PUBLISHED, [r["id"] for r in rows])
    return len(rows)
