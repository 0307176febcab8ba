"""A message the database refuses for its data is isolated, not retried forever.

The decoder accepts everything the schema accepts, so the refusal is staged with a CHECK
constraint the test adds: the batch fails as a whole, the ingest core falls back to one
message per transaction, and only the culprit ends up as raw + ``store_refused``.
"""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg

from picofleet.bridge.service import Ingest
from picofleet.core.codes import Code
from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.topics import Kind, Topics
from tests.conftest import RunningHub
from tests.helpers import Client, wait_for

POISON = 42.5


def _event(device_id: int, value: float, ts: int) -> bytes:
    body = {"device_id": device_id, "event_type": "battery_charge", "value": value, "timestamp": ts}
    return json.dumps(body).encode()


async def _poison(pool: asyncpg.Pool) -> None:
    await pool.execute(
        f"ALTER TABLE processed_record ADD CONSTRAINT test_poison CHECK (value <> {POISON})"
    )


async def test_refused_message_is_kept_raw_and_the_rest_commit(
    settings: Settings, pool: asyncpg.Pool, keys: FleetKeys
) -> None:
    await _poison(pool)
    ingest = Ingest(settings=settings, pool=pool, keys=keys)
    await ingest.refresh_record_types(force=True)
    topic = Topics(settings.topic_prefix).ingest
    now = time.time()
    payloads = [_event(3, 50.0, 1_763_000_000), _event(4, POISON, 1_763_000_001)]
    payloads.append(_event(5, 51.0, 1_763_000_002))

    dec = ingest.decoder
    msgs = await ingest.store([dec.decode(topic, p, received_at=now) for p in payloads])

    assert [bool(m.processed_ids) for m in msgs] == [True, False, True]
    assert [e.code for e in msgs[1].errors] == [Code.STORE_REFUSED]
    raws = await pool.fetch("SELECT id, payload FROM raw_record ORDER BY id")
    assert [bytes(r["payload"]) for r in raws] == payloads
    errs = await pool.fetch("SELECT raw_id, code FROM ingest_error")
    assert [(e["raw_id"], e["code"]) for e in errs] == [(msgs[1].raw_id, "store_refused")]
    assert ingest.metrics.rejected["store_refused"] == 1


async def test_bridge_acks_past_a_refused_message(hub: RunningHub, pool: asyncpg.Pool) -> None:
    """Over MQTT the device's publishes all get their PUBACK; nothing is retried forever."""
    await _poison(pool)
    key = "AI-POISON1"
    dev = Client(hub.mqtt_port, key, hub.keys.device_password(key), client_id="poison")
    assert await asyncio.to_thread(dev.connect)
    topic = hub.topics.device(key, Kind.TELEMETRY)
    try:
        for seq, value in enumerate((10.0, POISON, 11.0), start=1):
            body = {"v": 1, "seq": seq, "readings": [{"type": "soil_moisture_pct", "value": value}]}
            info = dev.c.publish(topic, json.dumps(body), qos=1)
            await asyncio.to_thread(info.wait_for_publish, 10)
            assert info.is_published(), f"message {seq} was never acknowledged"
    finally:
        await asyncio.to_thread(dev.close)

    async def settled() -> list[asyncpg.Record]:
        rows = await pool.fetch("SELECT code FROM ingest_error")
        return rows if rows else []

    assert [r["code"] for r in await wait_for(settled)] == ["store_refused"]
    values = await pool.fetch("SELECT value FROM processed_record ORDER BY value")
    assert [float(v["value"]) for v in values] == [10.0, 11.0]
