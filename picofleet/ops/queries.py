"""Every query the operator surface runs: the dashboard, the JSON API, SSE and /metrics.

Each function takes a connection (or pool) and returns plain dicts. Tables of other areas
(OTA rollouts, ...) are looked up with ``to_regclass`` at query time, so the dashboard works
before and after their migrations land.

Paging is keyset on the row id, newest first: ``before_id`` continues where a page ended.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeAlias

import asyncpg

from picofleet.core.charts import order_key

# The deploy log has one query, shared with the OTA CLI: re-exported for this area.
from picofleet.core.deploylog import deploy_log as deploy_log
from picofleet.security.redact import redact_payload

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

# A device is online when its last status was not "offline" and it spoke recently: the
# broker's last will covers clean and unclean disconnects, the window covers a hub that was
# down when the will was published.
ONLINE_WINDOW_S = 900
ONLINE_SQL = (
    "(d.state IS DISTINCT FROM 'offline' AND "
    f"d.last_seen > now() - make_interval(secs => {ONLINE_WINDOW_S}))"
)
PAYLOAD_PREVIEW = 2048  # characters of a raw payload the API and the dashboard show
MAX_LIMIT = 1000

# The seed's metric views by their short API name, with a title for the dashboard.
METRIC_VIEWS: dict[str, tuple[str, str]] = {
    "avg_extension_mm": ("metric_avg_extension_mm", "Average extension (mm)"),
    "extension_vs_retraction": ("metric_extension_vs_retraction", "Extensions vs retractions"),
    "battery_summary": ("metric_battery_summary", "Battery"),
    "platform_height": ("metric_platform_height", "Platform height (mm)"),
    "side_switches": ("metric_side_switches", "Left/right switches"),
}

_LATEST = """
LEFT JOIN LATERAL (
    SELECT p.value, p.record_time FROM processed_record p
    WHERE p.device_id = d.id
      AND p.record_type_id = (SELECT id FROM record_type WHERE name = '{name}')
    ORDER BY p.record_time DESC LIMIT 1
) {alias} ON true"""

Q_DEVICES = f"""
SELECT d.id, d.device_key, d.serial, d.device_type, d.channel, d.firmware, d.state, d.blocked,
       d.first_seen, d.last_seen, d.provisioned_at, d.status, {ONLINE_SQL} AS online,
       b.value AS battery_pct, b.record_time AS battery_at,
       m.value AS moisture_pct, m.record_time AS moisture_at,
       pu.value AS pump_on, pu.record_time AS pump_at
FROM device d
{_LATEST.format(name="battery_charge", alias="b")}
{_LATEST.format(name="soil_moisture_pct", alias="m")}
{_LATEST.format(name="pump_on", alias="pu")}
"""

Q_SERIES = """
SELECT t.name AS type, t.unit, x.record_time, x.value
FROM record_type t
CROSS JOIN LATERAL (
    SELECT p.record_time, p.value FROM processed_record p
    WHERE p.device_id = $1 AND p.record_type_id = t.id
    ORDER BY p.record_time DESC LIMIT $2
) x
ORDER BY t.name, x.record_time
"""

Q_TELEMETRY = """
SELECT p.id, d.device_key, t.name AS type, t.unit, p.record_time, p.value, p.seq, p.raw_id,
       p.ingested_at
FROM processed_record p
JOIN device d ON d.id = p.device_id
JOIN record_type t ON t.id = p.record_type_id
"""

Q_ERRORS = """
SELECT e.id, e.raw_id, e.item_idx, e.code, e.detail, e.created_at, r.topic, r.device_key,
       r.source, r.payload, r.payload_size
FROM ingest_error e
JOIN raw_record r ON r.id = e.raw_id
"""

Q_COUNTERS = f"""
SELECT (SELECT coalesce(max(id), 0) FROM raw_record) AS messages,
       (SELECT count(*) FROM ingest_error
         WHERE created_at > now() - interval '24 hours') AS errors_24h,
       (SELECT count(*) FROM device) AS devices,
       (SELECT count(*) FROM device d WHERE {ONLINE_SQL}) AS online
"""

Q_TABLE_EXISTS = "SELECT to_regclass($1) IS NOT NULL"


class _Where:
    """A WHERE clause built from optional filters, with numbered parameters."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def add(self, template: str, value: Any) -> None:
        """``template`` holds one ``{}`` for the parameter; None values add nothing."""
        if value is None:
            return
        self.args.append(value)
        self.clauses.append(template.format(f"${len(self.args)}"))

    def param(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def sql(self) -> str:
        return f"WHERE {' AND '.join(self.clauses)}" if self.clauses else ""


def _page(
    query: str, where: _Where, id_col: str, limit: int, after_id: int | None
) -> tuple[str, list[Any]]:
    """Newest first (``before_id``) or, for followers, oldest first after ``after_id``."""
    where.add(f"{id_col} > {{}}", after_id)
    order = "ASC" if after_id is not None else "DESC"
    lim = where.param(min(max(limit, 1), MAX_LIMIT))
    return f"{query} {where.sql()} ORDER BY {id_col} {order} LIMIT {lim}", where.args


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


async def table_exists(conn: Conn, name: str) -> bool:
    return bool(await conn.fetchval(Q_TABLE_EXISTS, name))


def _device(row: asyncpg.Record) -> dict[str, Any]:
    d = dict(row)
    d["status"] = _json(d.get("status"))
    return d


async def devices(conn: Conn) -> list[dict[str, Any]]:
    return [_device(r) for r in await conn.fetch(f"{Q_DEVICES} ORDER BY d.device_key")]


async def device(conn: Conn, key: str, *, points: int = 200) -> dict[str, Any] | None:
    """One device with its recent readings per record type (``points`` per type)."""
    row = await conn.fetchrow(f"{Q_DEVICES} WHERE d.device_key = $1", key)
    if row is None:
        return None
    out = _device(row)
    by_type: dict[str, dict[str, Any]] = {}
    for r in await conn.fetch(Q_SERIES, row["id"], points):
        s = by_type.setdefault(r["type"], {"type": r["type"], "unit": r["unit"], "points": []})
        s["points"].append((r["record_time"], r["value"]))
    out["series"] = sorted(by_type.values(), key=lambda s: order_key(s["type"]))
    return out


async def telemetry(
    conn: Conn,
    *,
    device: str | None = None,
    type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    w = _Where()
    w.add("d.device_key = {}", device)
    w.add("t.name = {}", type)
    w.add("p.record_time >= {}", since)
    w.add("p.record_time < {}", until)
    w.add("p.id < {}", before_id)
    query, args = _page(Q_TELEMETRY, w, "p.id", limit, None)
    return [dict(r) for r in await conn.fetch(query, *args)]


def _error(row: asyncpg.Record) -> dict[str, Any]:
    d = dict(row)
    # Refused startups are kept byte for byte; their tokens must not be shown to anyone.
    text = redact_payload(bytes(d.pop("payload")).decode("utf-8", "replace"))
    d["payload_truncated"] = len(text) > PAYLOAD_PREVIEW or d["payload_size"] > len(text)
    d["payload"] = text[:PAYLOAD_PREVIEW]
    return d


async def errors(
    conn: Conn,
    *,
    device: str | None = None,
    code: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Ingest errors with their raw payloads (text, cut at PAYLOAD_PREVIEW characters)."""
    w = _Where()
    w.add("r.device_key = {}", device)
    w.add("e.code = {}", code)
    w.add("e.created_at >= {}", since)
    w.add("e.created_at < {}", until)
    w.add("e.id < {}", before_id)
    query, args = _page(Q_ERRORS, w, "e.id", limit, after_id)
    return [_error(r) for r in await conn.fetch(query, *args)]


async def last_ids(conn: Conn) -> tuple[int, int]:
    """Newest ingest_error and deploy_event ids: where a live feed starts."""
    row = await conn.fetchrow(
        "SELECT (SELECT coalesce(max(id), 0) FROM ingest_error) AS e,"
        " (SELECT coalesce(max(id), 0) FROM deploy_event) AS d"
    )
    assert row is not None
    return int(row["e"]), int(row["d"])


async def metric(conn: Conn, name: str) -> list[dict[str, Any]]:
    """Rows of one metric view (short name from METRIC_VIEWS), with the device key."""
    view = METRIC_VIEWS[name][0]  # KeyError for anything not in the allow-list
    rows = await conn.fetch(
        f"SELECT d.device_key, v.* FROM {view} v LEFT JOIN device d ON d.id = v.device_id "
        "ORDER BY v.device_id"
    )
    # numeric columns (avg_pct numeric(10,2), ...) as JSON numbers, not strings
    return [{k: float(v) if isinstance(v, Decimal) else v for k, v in r.items()} for r in rows]


async def counters(conn: Conn) -> dict[str, int]:
    row = await conn.fetchrow(Q_COUNTERS)
    assert row is not None
    return {k: int(v) for k, v in dict(row).items()}


# -- OTA (tables owned by picofleet.ota; shown when they exist) ------------------------------
Q_ROLLOUTS = "SELECT r.id, to_jsonb(r) - 'meta' AS j FROM ota_rollout r ORDER BY r.id DESC LIMIT $1"
Q_ROLLOUT_WAVES = """
SELECT rollout_id, wave, state, count(*) AS n
FROM ota_rollout_device
WHERE rollout_id = ANY($1::bigint[])
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""


def _wave_label(rollout: dict[str, Any], wave: int) -> str:
    pct = rollout.get("waves") or []
    return f"{wave + 1} ({pct[wave]}%)" if 0 <= wave < len(pct) else str(wave + 1)


async def rollouts(conn: Conn, *, limit: int = 10) -> list[dict[str, Any]]:
    """Recent rollouts with device counts per wave and state; [] before OTA lands.

    The rollout row is passed through as JSON (its signed meta left out), so a column the
    OTA area adds later shows up without a change here.
    """
    if not await table_exists(conn, "ota_rollout"):
        return []
    rows = await conn.fetch(Q_ROLLOUTS, limit)
    out = {r["id"]: {"rollout": _json(r["j"]), "waves": []} for r in rows}
    if out and await table_exists(conn, "ota_rollout_device"):
        per_wave: dict[tuple[int, int], dict[str, int]] = {}
        for c in await conn.fetch(Q_ROLLOUT_WAVES, list(out)):
            per_wave.setdefault((c["rollout_id"], c["wave"]), {})[c["state"]] = int(c["n"])
        for (rid, wave), states in sorted(per_wave.items()):
            ro = out[rid]
            ro["waves"].append(
                {
                    "wave": _wave_label(ro["rollout"], wave),
                    "states": states,
                    "total": sum(states.values()),
                }
            )
    return list(out.values())


async def rollout_states(conn: Conn) -> dict[str, int]:
    """Rollouts by state (for /metrics); {} before OTA lands."""
    if not await table_exists(conn, "ota_rollout"):
        return {}
    rows = await conn.fetch(
        "SELECT state::text AS state, count(*) AS n FROM ota_rollout GROUP BY 1"
    )
    return {r["state"]: int(r["n"]) for r in rows}


# -- alerts (table owned by picofleet.analytics; shown when it exists) ------------------------
# Open alerts (acknowledged or not) and the latest closed ones.
Q_ALERTS = """
(SELECT id, kind, subject, device_key, state, opened_at, closed_at, acked_at, detail
 FROM alert WHERE state = 'open' ORDER BY id DESC LIMIT $1)
UNION ALL
(SELECT id, kind, subject, device_key, state, opened_at, closed_at, acked_at, detail
 FROM alert WHERE state = 'closed' ORDER BY id DESC LIMIT $1)
"""


async def alerts(conn: Conn, *, limit: int = 20) -> list[dict[str, Any]]:
    """Open alerts and the ``limit`` newest closed ones, newest first; [] before they exist."""
    if not await table_exists(conn, "alert"):
        return []
    rows = [dict(r) for r in await conn.fetch(Q_ALERTS, limit)]
    for r in rows:
        r["detail"] = _json(r["detail"]) or {}
    return rows


# -- sparklines --------------------------------------------------------------------------------
SPARK_TYPES = ("soil_moisture_pct", "battery_charge")  # the first a device has is drawn
SPARK_HOURS = 24
SPARK_BUCKET_S = 1800
Q_SPARKS = f"""
SELECT d.device_key, t.name AS type,
       to_timestamp(floor(extract(epoch FROM p.record_time) / {SPARK_BUCKET_S})
                    * {SPARK_BUCKET_S}) AS t,
       avg(p.value) AS v
FROM processed_record p
JOIN device d ON d.id = p.device_id
JOIN record_type t ON t.id = p.record_type_id
WHERE t.name = ANY($1::text[]) AND p.record_time > now() - interval '{SPARK_HOURS} hours'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""


async def sparklines(conn: Conn) -> dict[str, tuple[str, list[tuple[datetime, float]]]]:
    """Per device: (record type, half-hour means over the last day) of its first SPARK_TYPE."""
    found: dict[str, dict[str, list[tuple[datetime, float]]]] = {}
    for r in await conn.fetch(Q_SPARKS, list(SPARK_TYPES)):
        found.setdefault(r["device_key"], {}).setdefault(r["type"], []).append(
            (r["t"], float(r["v"]))
        )
    out = {}
    for key, by_type in found.items():
        name = next(t for t in SPARK_TYPES if t in by_type)
        out[key] = (name, by_type[name])
    return out


# -- mutations ---------------------------------------------------------------------------------
async def delete_device(conn: asyncpg.Connection, key: str) -> dict[str, Any] | None:
    """Remove a device and everything it sent (the smoke test's clean-up, decommissioning).

    None when there was nothing to delete. Raises asyncpg.ForeignKeyViolationError when
    another area's table still refers to the device.
    """
    async with conn.transaction():
        dev_id = await conn.fetchval("SELECT id FROM device WHERE device_key = $1", key)
        facts = 0
        if dev_id is not None:
            facts = _count(
                await conn.execute("DELETE FROM processed_record WHERE device_id = $1", dev_id)
            )
        # No foreign key cascades from raw_record (partitioned, sql/0080): its errors first.
        await conn.execute(
            "DELETE FROM ingest_error WHERE raw_id IN"
            " (SELECT id FROM raw_record WHERE device_key = $1)",
            key,
        )
        raw = _count(await conn.execute("DELETE FROM raw_record WHERE device_key = $1", key))
        deploys = _count(await conn.execute("DELETE FROM deploy_event WHERE device_key = $1", key))
        await conn.execute("DELETE FROM provision_nonce WHERE serial = $1", key)
        devs = _count(await conn.execute("DELETE FROM device WHERE device_key = $1", key))
    if not (devs or raw or deploys):
        return None
    return {
        "device_key": key,
        "devices": devs,
        "raw_records": raw,
        "facts": facts,
        "deploy_events": deploys,
    }


def _count(status: str) -> int:
    """Row count of a command tag like 'DELETE 3'."""
    return int(status.rsplit(" ", 1)[-1])


async def command_ack(
    conn: Conn, key: str, topic: str, cid: str, since: datetime
) -> dict[str, Any] | None:
    """A device's acknowledgement of command ``cid``, stored at or after ``since``."""
    body = await conn.fetchval(
        "SELECT body -> 'ack' FROM raw_record WHERE device_key = $1 AND topic = $2"
        " AND received_at >= $3 AND body -> 'ack' ->> 'id' = $4 ORDER BY id LIMIT 1",
        key,
        topic,
        since,
        cid,
    )
    return json.loads(body) if isinstance(body, str) else body
