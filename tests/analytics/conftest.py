"""Fleet data for the analytics tests: a generated month in SQL, and single messages through
the real decode + ledger path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from picofleet.analytics import AnalyticsSettings
from picofleet.bridge.decode import Decoder, Limits
from picofleet.bridge.ledger import Ledger, Stored, load_record_types
from picofleet.core.credentials import FleetKeys
from picofleet.core.topics import Kind, Topics

MONTH = datetime(2026, 3, 1, tzinfo=UTC)
STEP = timedelta(minutes=10)


@dataclass(frozen=True)
class Series:
    """value = (hash % mod) * scale + offset: deterministic, and dyadic unless scale is not."""

    type: str
    mod: int
    scale: float
    offset: float = 0.0


# Every device sends one reading of each of its types every 10 minutes for a month.
FLEET: dict[str, list[Series]] = {
    # picofleet firmware with pump counters, new extension firmware (mm)
    "AI-00001": [
        Series("soil_moisture_pct", 401, 0.25),
        Series("battery_charge", 401, 0.25),
        Series("pump_runtime_s", 31, 1.0),
        Series("pump_starts", 3, 1.0),
        Series("temperature_c", 400, 0.1),  # not dyadic: sums agree to rounding only
        Series("platform_extension_mm", 1201, 0.25, -150.0),
    ],
    # a legacy numeric sender: extension in ticks (5-tick steps keep mm dyadic), battery
    "7": [
        Series("platform_extension_ticks", 601, 5.0),
        Series("battery_charge", 101, 1.0),
    ],
    # both extension firmwares on one device, moisture
    "AI-00002": [
        Series("platform_extension_ticks", 601, 5.0),
        Series("platform_extension_mm", 1201, 0.25, -150.0),
        Series("soil_moisture_pct", 401, 0.25),
    ],
    # an older pump controller that only reports the relay state
    "AI-00003": [Series("pump_on", 2, 1.0), Series("soil_moisture_pct", 401, 0.25)],
}

Q_DEVICE = """
INSERT INTO device (id, device_key) VALUES (coalesce($2, nextval('device_id_seq')), $1)
ON CONFLICT (device_key) DO UPDATE SET device_key = EXCLUDED.device_key
RETURNING id
"""
Q_RAW = """
INSERT INTO raw_record (received_at, source, topic, device_key, payload, payload_size)
SELECT t, 'mqtt', $3, $4, '\\x7b7d'::bytea, 2
FROM generate_series($1::timestamptz, $2::timestamptz - interval '1 microsecond',
                     interval '10 minutes') AS t
-- a day of silence, so the rollups have gaps
WHERE t < $1::timestamptz + interval '12 days' OR t >= $1::timestamptz + interval '13 days'
"""
Q_FACTS = """
INSERT INTO processed_record (raw_id, item_idx, device_id, record_type_id, record_time, value)
SELECT r.id, s.idx - 1, $2, t.id, r.received_at + (s.idx * interval '1 second'),
       (abs(hashtext(r.id::text || '/' || s.idx)) % s.mod) * s.scale + s.off
FROM raw_record r
CROSS JOIN unnest($3::text[], $4::int[], $5::float8[], $6::float8[])
     WITH ORDINALITY AS s(name, mod, scale, off, idx)
JOIN record_type t ON t.name = s.name
WHERE r.device_key = $1 AND r.received_at >= $7 AND r.received_at < $8
"""


async def generate(
    pool: asyncpg.Pool,
    start: datetime = MONTH,
    end: datetime = MONTH + timedelta(days=30),
    fleet: dict[str, list[Series]] = FLEET,
) -> dict[str, int]:
    """Raw records and facts for the fleet over [start, end); returns device ids by key."""
    ids: dict[str, int] = {}
    async with pool.acquire() as conn, conn.transaction():
        for key, series in fleet.items():
            legacy = int(key) if key.isdigit() else None
            ids[key] = await conn.fetchval(Q_DEVICE, key, legacy)
            topic = Topics().device(key, Kind.TELEMETRY)
            await conn.execute(Q_RAW, start, end, topic, key)
            await conn.execute(
                Q_FACTS,
                key,
                ids[key],
                [s.type for s in series],
                [s.mod for s in series],
                [s.scale for s in series],
                [s.offset for s in series],
                start,
                end,
            )
    return ids


class Feed:
    """Messages through the real decoder and ledger, as the bridge writes them."""

    def __init__(self, pool: asyncpg.Pool, decoder: Decoder) -> None:
        self.pool = pool
        self.decoder = decoder
        self.ledger = Ledger(pool)
        self.topics = decoder.topics

    async def send(self, topic: str, body: Any, *, received_at: datetime) -> Stored:
        msg = self.decoder.decode(
            topic, json.dumps(body).encode(), received_at=received_at.timestamp()
        )
        (stored,) = await self.ledger.write([msg])
        return stored

    async def readings(
        self,
        key: str,
        at: datetime,
        readings: dict[str, float],
        *,
        received_at: datetime | None = None,
        seq: int | None = None,
    ) -> Stored:
        body: dict[str, Any] = {
            "v": 1,
            "ts": at.timestamp(),
            "readings": [{"type": t, "value": v} for t, v in readings.items()],
        }
        if seq is not None:
            body["seq"] = seq
        return await self.send(
            self.topics.device(key, Kind.TELEMETRY), body, received_at=received_at or at
        )

    async def status(self, key: str, state: str, *, received_at: datetime) -> None:
        """A retained status / last will, through the ledger as the bridge writes it."""
        await self.send(
            self.topics.device(key, Kind.STATUS), {"state": state}, received_at=received_at
        )


async def make_feed(pool: asyncpg.Pool, keys: FleetKeys) -> Feed:
    """A feed on ``pool``'s database that accepts any device time (history is written)."""
    decoder = Decoder(
        topics=Topics("picofleet"),
        keys=keys,
        record_types=await load_record_types(pool),
        limits=Limits(max_clock_drift_s=10**9),
    )
    return Feed(pool, decoder)


@pytest.fixture
async def feed(pool: asyncpg.Pool, keys: FleetKeys) -> Feed:
    return await make_feed(pool, keys)


@pytest.fixture
def asettings() -> AnalyticsSettings:
    """Defaults, except the watermark may pass facts as soon as they are committed."""
    return AnalyticsSettings(settle_s=0)
