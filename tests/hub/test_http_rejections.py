"""POST /ingest rejections carry their code and reach ``{prefix}/ingest/errors`` like MQTT
ones; ``/metrics`` counts received and committed messages of every source."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import httpx

from picofleet.core.topics import Kind
from tests.conftest import RunningHub
from tests.helpers import Client, metric, wait_for


async def _operator(hub: RunningHub) -> Client:
    c = Client(hub.mqtt_port, "operator", hub.keys.role_password("operator"))
    assert await asyncio.to_thread(c.connect)  # the embedded broker runs in this loop
    return c


async def test_http_rejection_has_code_and_is_published(
    hub: RunningHub, pool: asyncpg.Pool
) -> None:
    errors = await _operator(hub)
    try:
        await asyncio.to_thread(errors.subscribe, hub.topics.ingest_errors, 0)
        batch = [
            {"device_id": 3, "event_type": "battery_charge", "value": 50, "timestamp": 1.7e9},
            {"device_id": 3, "event_type": "no_such_type", "value": 1, "timestamp": 1.7e9},
        ]
        async with httpx.AsyncClient(base_url=hub.http) as client:
            r = await client.post("/ingest", content=json.dumps(batch))
        assert r.status_code == 200, r.text
        ok, bad = r.json()
        assert ok["status"] == "ok" and ok["code"] is None and ok["detail"] is None
        assert bad["status"] == "invalid" and bad["code"] == "unknown_event_type"
        assert bad["processed_id"] is None and "no_such_type" in bad["detail"]
        stored = await pool.fetchval(
            "SELECT code FROM ingest_error WHERE raw_id = $1", bad["raw_id"]
        )
        assert stored == "unknown_event_type"

        async def published() -> list[dict[str, object]]:
            return [json.loads(p) for _t, p in errors.messages]

        notes = await wait_for(published)
        assert len(notes) == 1
        note = notes[0]
        assert note["raw_id"] == bad["raw_id"] and note["code"] == "unknown_event_type"
        assert note["topic"] == hub.topics.ingest and note["source"] == "http"
    finally:
        errors.close()


def _sample(text: str, name: str, source: str) -> int:
    return int(metric(text, name, source=source))


async def test_metrics_count_every_source(hub: RunningHub, pool: asyncpg.Pool) -> None:
    now = time.time() - 60
    dev = Client(hub.mqtt_port, "AI-METRIC1", hub.keys.device_password("AI-METRIC1"))
    assert await asyncio.to_thread(dev.connect)
    try:
        env = {"v": 1, "seq": 1, "ts": now, "readings": [{"type": "battery_charge", "value": 9}]}
        await asyncio.to_thread(
            dev.publish, hub.topics.device("AI-METRIC1", Kind.TELEMETRY), json.dumps(env).encode()
        )
    finally:
        dev.close()
    batch = [
        {"device_id": 5, "event_type": "battery_charge", "value": 55, "timestamp": now},
        {"device_id": 5, "event_type": "battery_charge", "value": 999, "timestamp": now},
        {"device_id": 5, "event_type": "battery_charge", "value": 56, "timestamp": now + 1},
    ]
    async with httpx.AsyncClient(base_url=hub.http) as client:
        assert (await client.post("/ingest", content=json.dumps(batch))).status_code == 200

        async def mqtt_committed() -> str | None:
            text = (await client.get("/metrics")).text
            done = _sample(text, "picofleet_messages_committed_total", "mqtt") >= 1
            return text if done else None

        text = await wait_for(mqtt_committed)
    assert await pool.fetchval("SELECT count(*) FROM raw_record WHERE source = 'http'") == 3
    assert await pool.fetchval("SELECT count(*) FROM raw_record WHERE source = 'mqtt'") == 1
    for name in ("picofleet_messages_received_total", "picofleet_messages_committed_total"):
        assert _sample(text, name, "http") == 3
        assert _sample(text, name, "mqtt") == 1
        assert _sample(text, name, "usb") == 0
