"""The fixtures themselves: a hub comes up, a device publishes, the row is in PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from picofleet.core.topics import Kind
from tests.conftest import RunningHub
from tests.helpers import Client, wait_for


async def test_device_publish_lands_in_postgres(hub: RunningHub, pool: asyncpg.Pool) -> None:
    key = "AI-ABCDE1"
    c = Client(hub.mqtt_port, key, hub.keys.device_password(key))
    assert await asyncio.to_thread(c.connect)
    body = {
        "v": 1,
        "seq": 7,
        "ts": 1_763_000_000,
        "readings": [{"type": "soil_moisture_pct", "value": 41.2}],
    }
    await asyncio.to_thread(c.publish, hub.topics.device(key, Kind.TELEMETRY), json.dumps(body))
    c.close()

    async def facts() -> list[asyncpg.Record]:
        return await pool.fetch("SELECT value, seq FROM processed_record")

    rows = await wait_for(facts)
    assert [(r["value"], r["seq"]) for r in rows] == [(41.2, 7)]
