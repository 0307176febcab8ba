"""POST /ingest keeps the older HTTP senders working: same core, per-item statuses."""

from __future__ import annotations

import json
import time

import asyncpg
import httpx

from tests.conftest import RunningHub
from tests.helpers import metric


async def post(hub: RunningHub, body: bytes) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=hub.http) as client:
        r = await client.post("/ingest", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_single_array_invalid_and_duplicate(hub: RunningHub, pool: asyncpg.Pool) -> None:
    ts = time.time() - 60
    event = {"device_id": 3, "event_type": "battery_charge", "value": 55.2, "timestamp": ts}
    one = await post(hub, json.dumps(event).encode())
    assert [r["status"] for r in one] == ["ok"] and one[0]["processed_id"]
    batch = [
        event,  # same fact again
        {"device_id": 3, "event_type": "battery_charge", "value": "high"},
        {"device_id": 4, "event_type": "platform_extension_ticks", "value": 400, "timestamp": ts},
        {},
    ]
    res = await post(hub, json.dumps(batch).encode())
    assert [r["status"] for r in res] == ["duplicate", "invalid", "ok", "invalid"]
    assert len({r["raw_id"] for r in res}) == 4
    bad = await post(hub, b"{not json")
    assert [r["status"] for r in bad] == ["invalid"] and bad[0]["processed_id"] is None
    assert await pool.fetchval("SELECT count(*) FROM raw_record") == 6
    assert await pool.fetchval("SELECT count(*) FROM processed_record") == 2
    codes = [r["code"] for r in await pool.fetch("SELECT code FROM ingest_error ORDER BY raw_id")]
    assert codes == ["validation_error", "validation_error", "invalid_json"]
    sources = {r["source"] for r in await pool.fetch("SELECT source FROM raw_record")}
    assert sources == {"http"}


async def test_http_startup_and_legacy_token(hub: RunningHub, pool: asyncpg.Pool) -> None:
    good = {
        "event_type": "device_startup",
        "serial": "AI-ABCDE1",
        "provision_token": hub.keys.legacy_token("AI-ABCDE1"),
        "firmware": "1.0.0",
    }
    bad = dict(good, provision_token="deadbeef")
    res = await post(hub, json.dumps([good, bad]).encode())
    assert [r["status"] for r in res] == ["provisioned", "unauthorized"]
    assert (
        await pool.fetchval("SELECT firmware FROM device WHERE device_key = 'AI-ABCDE1'") == "1.0.0"
    )


async def test_health_ready_metrics(hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=hub.http) as client:
        assert (await client.get("/health")).json()["status"] == "ok"
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": True, "broker": True, "tasks": True}
        await client.post("/ingest", content=b"[]")
        text = (await client.get("/metrics")).text
    assert metric(text, "picofleet_messages_committed_total", source="http") == 1
    assert metric(text, "picofleet_messages_committed_total", outcome="invalid") == 1
    assert metric(text, "picofleet_messages_rejected_total", code="validation_error") == 1
