"""Seven days of a small fleet, written server-side in SQL and rolled up by the real job.

Every device sends soil moisture, pump state, battery and free heap every 10 minutes, with a
six-hour hole (so charts must show a gap), two reboots (startup messages), one confirmed OTA
install and one open alert on the first device.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from picofleet.analytics import AnalyticsSettings, refresh
from picofleet.core.topics import Kind, Topics
from tests.analytics.conftest import Series, generate

DAYS = 7
HOLE_HOURS_AGO = (36, 30)  # from, to: hours before the end with no data at all
FLEET = {
    "AI-WEEK01": [
        Series("free_mem_bytes", 5, 1024.0, 60_000.0),  # listed first, shown last
        Series("soil_moisture_pct", 401, 0.25),
        Series("pump_on", 2, 1.0),
        Series("battery_charge", 101, 1.0),
    ],
    "AI-WEEK02": [
        Series("soil_moisture_pct", 401, 0.25),
        Series("battery_charge", 101, 1.0),
        Series("pump_runtime_s", 31, 1.0),  # seconds run since the previous reading
    ],
    "AI-WEEK03": [Series("soil_moisture_pct", 401, 0.25)],
}
FIRST = "AI-WEEK01"
# The fleet's series in the order charts show them.
FLEET_ORDER = ["soil_moisture_pct", "pump_on", "pump_runtime_s", "battery_charge", "free_mem_bytes"]


@dataclass(frozen=True)
class Week:
    end: datetime
    ids: dict[str, int]
    alert_id: int

    @property
    def hole(self) -> tuple[datetime, datetime]:
        return tuple(self.end - timedelta(hours=h) for h in HOLE_HOURS_AGO)  # type: ignore[return-value]


async def fill(pool: asyncpg.Pool, topics: Topics, *, end: datetime | None = None) -> Week:
    end = (end or datetime.now(UTC)).replace(second=0, microsecond=0)
    end -= timedelta(minutes=end.minute % 10)
    start = end - timedelta(days=DAYS)
    ids = await generate(pool, start, end, FLEET)
    await pool.execute(
        "DELETE FROM processed_record WHERE record_time >= $1 AND record_time < $2",
        *(end - timedelta(hours=h) for h in HOLE_HOURS_AGO),
    )
    await pool.execute(
        "UPDATE device SET firmware = '1.4.0', state = 'online',"
        " first_seen = $1, last_seen = $2 WHERE device_key = ANY($3::text[])",
        start,
        end,
        list(FLEET),
    )
    # Two reboots of the first device inside the week, one before it (not shown).
    startup = topics.device(FIRST, Kind.STARTUP)
    for hours in (50, 100, DAYS * 24 + 5):
        await pool.execute(
            "INSERT INTO raw_record (received_at, source, topic, device_key, payload,"
            " payload_size, body) VALUES ($1, 'mqtt', $2, $3, '\\x7b7d'::bytea, 2,"
            " jsonb_build_object('event_type', 'device_startup', 'firmware', '1.4.0'))",
            end - timedelta(hours=hours),
            startup,
            FIRST,
        )
    # One confirmed install; "received" is progress, not an install.
    for state, hours in (("received", 20.1), ("booted_ok", 20)):
        await pool.execute(
            "INSERT INTO deploy_event (device_key, version, state, source, created_at)"
            " VALUES ($1, '1.4.0', $2, 'ota', $3)",
            FIRST,
            state,
            end - timedelta(hours=hours),
        )
    alert_id = await pool.fetchval(
        "INSERT INTO alert (kind, subject, device_key, opened_at, detail)"
        " VALUES ('battery_low', $1, $1, $2, '{\"value\": 12.0}') RETURNING id",
        FIRST,
        end - timedelta(hours=3),
    )
    await refresh(pool, AnalyticsSettings(settle_s=0), wait=True)
    return Week(end=end, ids=ids, alert_id=alert_id)
