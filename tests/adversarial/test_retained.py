"""Issue 19, finding 5: a retained message is stored once, however often the bridge
restarts and the broker replays it on the new subscription (see picofleet/bridge/replay.py).

A legacy device publishes one retained event; the bridge then restarts three times. After
each restart a marker (not retained) proves the bridge is subscribed and draining, and the
retained event must still be one raw row and one fact. On both brokers: Mosquitto and
amqtt with the bridge's own MQTT session (``serve bridge``), and the embedded hub whose
bridge taps amqtt (restarted whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from picofleet.broker.embedded import EmbeddedBroker
from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.topics import Kind, Topics
from tests.conftest import running_hub
from tests.helpers import Client, wait_for

DEVICE = "3"  # a legacy numeric sender
TS = 1_763_000_000
RESTARTS = 3


def _event(value: float, ts: int | None) -> bytes:
    body: dict[str, Any] = {"device_id": 3, "event_type": "battery_charge", "value": value}
    if ts is not None:
        body["timestamp"] = ts
    return json.dumps(body).encode()


# Without a timestamp, as in the report: the fact's time would be the receive time, so
# nothing downstream could tell a replay from a new reading.
RETAINED = _event(55.2, None)


async def _stored(pool: asyncpg.Pool, payload: bytes) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT count(DISTINCT r.id) AS raw, count(p.id) AS facts FROM raw_record r"
        " LEFT JOIN processed_record p ON p.raw_id = r.id WHERE r.payload = $1",
        payload,
    )
    assert row is not None
    return row["raw"], row["facts"]


async def _facts_of(pool: asyncpg.Pool, payload: bytes) -> int:
    return (await _stored(pool, payload))[1]


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt", "embedded"])
async def test_retained_event_stored_once_across_bridge_restarts(
    broker: str,
    settings: Settings,
    keys: FleetKeys,
    pool: asyncpg.Pool,
    amqtt_broker: EmbeddedBroker,
    mosquitto_factory: Any,
) -> None:
    s, port, bridge_port = settings, settings.mqtt_port, settings.mqtt_port
    if broker == "mosquitto":
        mosq = await mosquitto_factory([DEVICE])
        port, bridge_port = mosq.port, mosq.hub_port  # devices and the hub: two listeners
    elif broker == "amqtt":
        port = bridge_port = amqtt_broker.port
    embedded = broker == "embedded"
    if not embedded:
        s = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{bridge_port}"})

    @contextlib.asynccontextmanager
    async def bridge() -> AsyncIterator[Client]:
        roles = frozenset({"bridge", "http"} if embedded else {"bridge"})
        async with running_hub(s, keys, roles=roles, embedded_broker=embedded):
            await asyncio.sleep(0.3)  # the SUBACK (and its retained replay) follows CONNACK
            dev = Client(port, DEVICE, keys.device_password(DEVICE), client_id="legacy-3")
            assert await asyncio.to_thread(dev.connect)
            try:
                yield dev
            finally:
                await asyncio.to_thread(dev.close)

    topic = Topics(s.topic_prefix).device(DEVICE, Kind.TELEMETRY)
    async with bridge() as dev:
        await asyncio.to_thread(dev.publish, topic, RETAINED, 1, True)
        await wait_for(lambda: _facts_of(pool, RETAINED))
    for i in range(1, RESTARTS + 1):
        async with bridge() as dev:
            marker = _event(10.0 + i, TS + i)
            await asyncio.to_thread(dev.publish, topic, marker, 1, False)
            await wait_for(lambda m=marker: _facts_of(pool, m))  # type: ignore[misc]
            assert await _stored(pool, RETAINED) == (1, 1), f"after restart {i}"
    raw = await pool.fetchval("SELECT count(*) FROM raw_record")
    facts = await pool.fetchval("SELECT count(*) FROM processed_record")
    assert (raw, facts) == (1 + RESTARTS, 1 + RESTARTS)
