"""Issue 2 acceptance: a mixed stream over MQTT lands with exact counts and exact view values,
on the embedded amqtt hub and on `serve bridge` against a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import asyncpg
import pytest

from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.topics import Kind, Topics
from tests.conftest import RunningHub, running_hub
from tests.helpers import Client, startup_body, wait_for
from tests.hub import scenario


def publish_all(port: int, keys: FleetKeys, msgs: list[tuple[str, str, bytes]]) -> None:
    clients = {}
    try:
        for pub in scenario.publishers(msgs):
            c = Client(port, pub, keys.device_password(pub))
            assert c.connect(), f"{pub} could not connect"
            clients[pub] = c
        for pub, topic, payload in msgs:
            clients[pub].publish(topic, payload, qos=1)
    finally:
        for c in clients.values():
            c.close()


async def check_outcome(pool: asyncpg.Pool, exp: scenario.Expected) -> None:
    async def raw_count() -> bool:
        return int(await pool.fetchval("SELECT count(*) FROM raw_record")) >= exp.raw

    await wait_for(raw_count, timeout=20)
    await asyncio.sleep(0.3)
    assert await pool.fetchval("SELECT count(*) FROM raw_record") == exp.raw
    assert await pool.fetchval("SELECT count(*) FROM processed_record") == exp.facts
    rows = await pool.fetch("SELECT code, count(*) AS n FROM ingest_error GROUP BY code")
    assert {r["code"]: r["n"] for r in rows} == exp.errors
    ids = {r["device_key"]: r["id"] for r in await pool.fetch("SELECT id, device_key FROM device")}
    assert ids["3"] == 3  # legacy numeric ids are kept as device ids

    got = {
        r["device_id"]: r["avg_extension_mm"]
        for r in await pool.fetch("SELECT * FROM metric_avg_extension_mm")
    }
    want = exp.avg_extension()
    assert {d: got[ids[d]] for d in want} == {
        d: Decimal(str(v)).quantize(Decimal("0.001")) for d, v in want.items()
    }
    got_er = {
        r["device_id"]: (r["extensions"], r["retractions"])
        for r in await pool.fetch("SELECT * FROM metric_extension_vs_retraction")
    }
    assert {d: got_er[ids[d]] for d in want} == exp.ext_vs_ret()
    bat = {r["device_id"]: r for r in await pool.fetch("SELECT * FROM metric_battery_summary")}
    for d, vals in exp.battery.items():
        r = bat[ids[d]]
        values = [v for _, v in vals]
        assert (r["min_pct"], r["max_pct"]) == (min(values), max(values))
        exact = sum(Decimal(str(v)) for v in values) / len(values)
        assert r["avg_pct"] == exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        assert r["last_seen"].timestamp() == max(t for t, _ in vals)
    hgt = {r["device_id"]: r for r in await pool.fetch("SELECT * FROM metric_platform_height")}
    for d, hs in exp.height.items():
        r = hgt[ids[d]]
        assert (r["min_height_mm"], r["max_height_mm"]) == (min(hs), max(hs))
        assert abs(float(r["avg_height_mm"]) - sum(hs) / len(hs)) < 0.0006
    # ingest_parse: one row per raw message, parse_ok false exactly for the rejected ones
    bad = await pool.fetchval("SELECT count(*) FROM ingest_parse WHERE NOT parse_ok")
    assert bad == sum(exp.errors.values())


async def test_mixed_stream_on_embedded_amqtt(hub: RunningHub, pool: asyncpg.Pool) -> None:
    msgs, exp = scenario.build(hub.keys, hub.topics)
    errors = Client(hub.mqtt_port, "operator", hub.keys.role_password("operator"))
    assert await asyncio.to_thread(errors.connect)
    await asyncio.to_thread(errors.subscribe, hub.topics.ingest_errors, 0)
    await asyncio.to_thread(publish_all, hub.mqtt_port, hub.keys, msgs)
    await check_outcome(pool, exp)

    async def published() -> bool:
        return len(errors.messages) >= sum(exp.errors.values())

    await wait_for(published)
    codes = sorted(json.loads(p)["code"] for _, p in errors.messages)
    assert codes == sorted(c for c, n in exp.errors.items() for _ in range(n))
    errors.close()


def bridge_role(settings: Settings) -> contextlib.AbstractAsyncContextManager[RunningHub]:
    """The bridge and HTTP roles against an external broker (``settings.mqtt_url``)."""
    return running_hub(settings, embedded_broker=False)


async def test_serve_bridge_against_mosquitto(
    settings: Settings, keys: FleetKeys, pool: asyncpg.Pool, mosquitto_factory: Any
) -> None:
    topics = Topics(settings.topic_prefix)
    msgs, exp = scenario.build(keys, topics, seed=11)
    mosq = await mosquitto_factory(scenario.publishers(msgs))
    s = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{mosq.hub_port}"})
    async with bridge_role(s):
        await asyncio.to_thread(publish_all, mosq.port, keys, msgs)
        await check_outcome(pool, exp)


def _startup(keys: FleetKeys, serial: str, nonce: str, ts: int | None = None) -> bytes:
    return json.dumps(startup_body(keys, serial, ts=ts, nonce=nonce)).encode()


async def test_startup_forged_and_replayed_are_refused(hub: RunningHub, pool: asyncpg.Pool) -> None:
    key = "AI-PROV01"
    c = Client(hub.mqtt_port, key, hub.keys.device_password(key))
    assert await asyncio.to_thread(c.connect)
    topic = hub.topics.device(key, Kind.STARTUP)
    good = _startup(hub.keys, key, uuid.uuid4().hex[:16])
    forged = json.loads(good)
    forged["provision_token"] = "ab" * 32
    for payload in (good, good, json.dumps(forged).encode()):  # accept, replay, forgery
        await asyncio.to_thread(c.publish, topic, payload)
    c.close()

    async def three() -> bool:
        return int(await pool.fetchval("SELECT count(*) FROM raw_record")) == 3

    await wait_for(three)
    await asyncio.sleep(0.2)
    rows = await pool.fetch("SELECT e.code, e.detail FROM ingest_error e ORDER BY raw_id")
    assert [r["code"] for r in rows] == ["startup_auth_error", "startup_auth_error"]
    assert "replay" in rows[0]["detail"]
    dev = await pool.fetchrow(
        "SELECT serial, firmware, provisioned_at FROM device WHERE device_key = $1", key
    )
    assert dev["serial"] == key and dev["firmware"] == "1.4.0" and dev["provisioned_at"]


async def test_device_cannot_publish_under_another_device(
    hub: RunningHub, pool: asyncpg.Pool
) -> None:
    mallory = Client(hub.mqtt_port, "AI-MALLORY", hub.keys.device_password("AI-MALLORY"))
    assert await asyncio.to_thread(mallory.connect)
    body = json.dumps({"v": 1, "seq": 1, "readings": [{"type": "battery_charge", "value": 1}]})
    await asyncio.to_thread(mallory.publish, hub.topics.device("AI-VICTIM", Kind.TELEMETRY), body)
    await asyncio.to_thread(mallory.publish, hub.topics.device("AI-MALLORY", Kind.TELEMETRY), body)
    mallory.close()

    async def own() -> bool:
        return int(await pool.fetchval("SELECT count(*) FROM raw_record")) >= 1

    await wait_for(own)
    await asyncio.sleep(0.3)
    topics = [r["topic"] for r in await pool.fetch("SELECT topic FROM raw_record")]
    assert topics == [hub.topics.device("AI-MALLORY", Kind.TELEMETRY)]


@pytest.mark.parametrize("password", [None, "wrong"])
async def test_anonymous_and_wrong_password_refused(hub: RunningHub, password: str | None) -> None:
    c = Client(hub.mqtt_port, None if password is None else "AI-1", password)
    assert not await asyncio.to_thread(c.connect)


async def test_up_with_managed_mosquitto_learns_new_devices(
    settings: Settings, keys: FleetKeys, pool: asyncpg.Pool
) -> None:
    """`up --broker mosquitto`: generated config, and a device recorded later gets in."""
    from tests.conftest import mosquitto_available, need

    need(mosquitto_available(), "mosquitto")
    s = settings.model_copy(update={"broker": "mosquitto"})
    async with running_hub(s, keys, stop_timeout=30):
        conf = (s.data_path / "mosquitto" / "mosquitto.conf").read_text()
        assert "persistence true" in conf and "max_queued_messages 0" in conf
        newcomer = Client(s.mqtt_port, "AI-NEW01", keys.device_password("AI-NEW01"))
        assert not await asyncio.to_thread(newcomer.connect)  # unknown to Mosquitto yet
        await pool.execute("INSERT INTO device (device_key) VALUES ('AI-NEW01')")

        async def admitted() -> bool:
            c = Client(s.mqtt_port, "AI-NEW01", keys.device_password("AI-NEW01"))
            ok = await asyncio.to_thread(c.connect, 1.0)
            if ok:
                body = json.dumps(
                    {"v": 1, "seq": 1, "readings": [{"type": "battery_charge", "value": 9}]}
                )
                await asyncio.to_thread(
                    c.publish, topics_of(s).device("AI-NEW01", Kind.TELEMETRY), body
                )
                c.close()
            return ok

        await wait_for(admitted, timeout=20, interval=0.5)

        async def stored() -> bool:
            return bool(await pool.fetchval("SELECT count(*) FROM processed_record"))

        await wait_for(stored)


def topics_of(s: Settings) -> Topics:
    return Topics(s.topic_prefix)
