"""Issue 19, findings 6 and 8: redelivery is harmless, and nothing is dropped without a trace.

6: a message without a device time or seq used to get the receive time as its fact time, so
   every redelivered copy became a new fact. Its copies now share the first copy's time (same
   exact bytes on the same topic within ``untimed_dedupe_window_s``).
8: a repeated seq with other content at the same device time is a coded ``seq_conflict`` (raw
   kept; the seq key holds the time, the ledger's partition key, sql/0080); identical
   readings in one seq'd envelope are all kept; identical items in one unsequenced message
   are one fact plus a coded ``duplicate_item``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import asyncpg
import pytest

from picofleet.core.settings import Settings
from picofleet.core.topics import Kind
from tests.adversarial.conftest import (
    BROKERS,
    AckLossProxy,
    Counts,
    Hub,
    HubFactory,
    RawDevice,
    counts,
    post,
    raw_device,
    wait_raw,
)
from tests.conftest import running_hub

N = 100
LEGACY = "3"
SERIAL = "AI-DEDUPE1"


def legacy_event(i: int) -> bytes:
    """A flat event as the legacy generator sends it when its clock is unset: no timestamp."""
    return json.dumps(
        {"device_id": int(LEGACY), "event_type": "battery_charge", "value": i % 100}
    ).encode()


def untimed_envelope(i: int) -> bytes:
    """An envelope from a board with no seq store and no clock."""
    return json.dumps(
        {"v": 1, "readings": [{"type": "soil_moisture_pct", "value": i % 100}]}
    ).encode()


def envelope(seq: int, *values: float, ts: int = 1_763_000_000) -> bytes:
    readings = [{"type": "soil_moisture_pct", "value": v} for v in values]
    return json.dumps({"v": 1, "seq": seq, "ts": ts + seq, "readings": readings}).encode()


async def send_twice_with_dup(dev: RawDevice, topic: str, payloads: list[bytes]) -> None:
    """Each message once, acknowledged, then again with the same packet id and DUP set, as a
    device resends when the PUBACK was lost."""
    pids = set(range(1, len(payloads) + 1))
    for pid, p in enumerate(payloads, 1):
        dev.send(topic, p, pid)
    await dev.wait_acked(pids)
    for pid, p in enumerate(payloads, 1):
        dev.send(topic, p, pid, dup=True)
    await dev.wait_acked(pids)


@pytest.mark.parametrize("broker", BROKERS)
async def test_untimed_messages_resent_with_dup_are_one_fact(
    broker: str, hub_on: HubFactory, pool: asyncpg.Pool
) -> None:
    async with hub_on(broker, [LEGACY, SERIAL]) as hub:
        async with raw_device(hub, LEGACY) as dev:
            await send_twice_with_dup(dev, hub.topics.ingest, [legacy_event(i) for i in range(N)])
        assert await wait_raw(pool, 2 * N) == Counts(2 * N, N, 0, {})
        async with raw_device(hub, SERIAL) as dev:
            topic = hub.topics.device(SERIAL, Kind.TELEMETRY)
            await send_twice_with_dup(dev, topic, [untimed_envelope(i) for i in range(N)])
        assert await wait_raw(pool, 4 * N) == Counts(4 * N, 2 * N, 0, {})


@pytest.mark.parametrize("broker", BROKERS)
async def test_untimed_message_resent_after_reconnect_is_one_fact(
    broker: str, hub_on: HubFactory, pool: asyncpg.Pool
) -> None:
    """The connection drops after the hub stored the messages but before the device saw the
    PUBACKs; the device reconnects and resends them (the persistent-session redelivery)."""
    async with hub_on(broker, [SERIAL]) as hub:
        topic = hub.topics.device(SERIAL, Kind.TELEMETRY)
        payloads = [untimed_envelope(i) for i in range(N)]
        dev = RawDevice(hub.mqtt_port, SERIAL, hub.keys.device_password(SERIAL), "raw-rc")
        await dev.connect(clean=False)
        for pid, p in enumerate(payloads, 1):
            dev.send(topic, p, pid)
        await wait_raw(pool, N)
        await dev.abort()
        dev = RawDevice(hub.mqtt_port, SERIAL, hub.keys.device_password(SERIAL), "raw-rc")
        await dev.connect(clean=False)
        try:
            for pid, p in enumerate(payloads, 1):
                dev.send(topic, p, pid, dup=True)
            await dev.wait_acked(set(range(1, N + 1)))
        finally:
            await dev.close()
        assert await wait_raw(pool, 2 * N) == Counts(2 * N, N, 0, {})


async def test_untimed_http_resend_is_duplicate(hub_on: HubFactory, pool: asyncpg.Pool) -> None:
    events = [json.loads(legacy_event(i)) for i in range(N)]
    envelopes = [dict(json.loads(untimed_envelope(i)), device=LEGACY) for i in range(N)]
    async with hub_on("amqtt", []) as hub:
        for body in (events, envelopes):
            first = await post(hub, body)
            assert [r["status"] for r in first] == ["ok"] * N
            again = await post(hub, body)  # the sender timed out and posts the same again
            assert [r["status"] for r in again] == ["duplicate"] * N
        assert await counts(pool) == Counts(4 * N, 2 * N, 0, {})
        # The same reading a window later is a new reading: only copies within it are one.
        await pool.execute("UPDATE untimed_message SET first_at = first_at - interval '1 day'")
        assert [r["status"] for r in await post(hub, events[:1])] == ["ok"]
        assert await counts(pool) == Counts(4 * N + 1, 2 * N + 1, 0, {})


@pytest.mark.parametrize("broker", BROKERS)
async def test_repeated_seq_with_other_content_is_a_coded_conflict(
    broker: str, hub_on: HubFactory, pool: asyncpg.Pool
) -> None:
    async with hub_on(broker, [SERIAL]) as hub:
        topic = hub.topics.device(SERIAL, Kind.TELEMETRY)
        async with raw_device(hub, SERIAL) as dev:
            dev.send(topic, envelope(5, 41.2), 1)
            await wait_raw(pool, 1)
            dev.send(topic, envelope(5, 50.0), 2)  # same seq, another reading
            await wait_raw(pool, 2)
            dev.send(topic, envelope(5, 41.2), 3)  # the first again: a harmless duplicate
            # A board whose seq store was wiped starts again at 1 (later clock, other values):
            # readings at another time are readings of their own (sql/0080: the seq key holds
            # the device time, the ledger's partition key).
            for seq in range(1, 4):
                dev.send(topic, envelope(seq, 10.0 + seq), 10 + seq)
            await wait_raw(pool, 6)
            for seq in range(1, 4):
                dev.send(topic, envelope(seq, 20.0 + seq, ts=1_763_100_000), 20 + seq)
            await dev.wait_acked({1, 2, 3, 11, 12, 13, 21, 22, 23})
        got = await wait_raw(pool, 9)
        assert got == Counts(9, 7, 1, {"seq_conflict": 1})
        detail = await pool.fetchval(
            "SELECT e.detail FROM ingest_error e JOIN raw_record r ON r.id = e.raw_id"
            " WHERE r.payload = $1",
            envelope(5, 50.0),
        )
        assert "seq 5" in detail and "41.2" in detail and "50.0" in detail
        stored = await pool.fetchval("SELECT value FROM processed_record WHERE seq = 5")
        assert stored == 41.2  # the first reading stands; the conflict is kept raw


async def test_identical_readings_in_one_envelope(hub_on: HubFactory, pool: asyncpg.Pool) -> None:
    async with hub_on("amqtt", [SERIAL]) as hub:
        topic = hub.topics.device(SERIAL, Kind.TELEMETRY)
        async with raw_device(hub, SERIAL) as dev:
            # With a seq each reading has its own place (device, seq, index): all are kept.
            dev.send(topic, envelope(7, 30.0, 30.0, 30.0), 1)
            await dev.wait_acked({1})
            dev.send(topic, envelope(7, 30.0, 30.0, 30.0), 2, dup=True)
            await dev.wait_acked({2})
        assert await wait_raw(pool, 2) == Counts(2, 3, 0, {})
        # Without a seq, equal readings at one time are one fact; the others are coded.
        same: dict[str, Any] = {
            "v": 1,
            "device": SERIAL,
            "ts": 1_763_000_000,
            "readings": [{"type": "pump_on", "value": 1}] * 2,
        }
        legacy = [{"device_id": 8, "event_type": "pump_on", "value": 0, "timestamp": 1.7e9}] * 2
        res = await post(hub, [legacy])
        assert [r["status"] for r in res] == ["ok"]
        assert await counts(pool) == Counts(3, 4, 1, {"duplicate_item": 1})
        async with raw_device(hub, SERIAL) as dev:
            dev.send(topic, json.dumps(same).encode(), 1)
            await dev.wait_acked({1})
        assert await wait_raw(pool, 4) == Counts(4, 5, 2, {"duplicate_item": 2})


async def test_untimed_redelivery_to_the_bridge_after_its_reconnect(
    settings: Settings, mosquitto_factory: Any, pool: asyncpg.Pool
) -> None:
    """Mosquitto redelivers to the bridge's persistent session what the bridge stored but
    whose PUBACK never arrived (the bridge-side half of at-least-once)."""
    mosq = await mosquitto_factory([LEGACY])
    async with AckLossProxy("127.0.0.1", mosq.hub_port) as proxy:
        s = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{proxy.port}"})
        async with running_hub(s, embedded_broker=False) as running:
            hub = Hub(running, "mosquitto", mosq.port)
            proxy.mute = True
            async with raw_device(hub, LEGACY) as dev:
                for pid in range(1, N + 1):
                    dev.send(hub.topics.ingest, legacy_event(pid), pid)
                await dev.wait_acked(set(range(1, N + 1)))  # Mosquitto's own PUBACKs
            assert await wait_raw(pool, N) == Counts(N, N, 0, {})
            await proxy.cut()  # the bridge's PUBACKs are lost with the connection
            proxy.mute = False
            await proxy.start()
            assert await wait_raw(pool, 2 * N) == Counts(2 * N, N, 0, {})


async def test_concurrent_untimed_copies_are_one_fact(
    hub_on: HubFactory, pool: asyncpg.Pool
) -> None:
    """Copies committed at the same moment by different connections (a sender retrying
    in parallel, or two hub replicas) still take one first time."""
    async with hub_on("amqtt", []) as hub:
        body = [json.loads(legacy_event(i)) for i in range(10)]
        results = await asyncio.gather(*(post(hub, body) for _ in range(8)))
        statuses = Counter(r["status"] for res in results for r in res)
        assert statuses == {"ok": 10, "duplicate": 70}
        assert await counts(pool) == Counts(80, 10, 0, {})
