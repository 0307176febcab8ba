"""Finding 4 (issue 19): on Mosquitto, a device that connects with the bridge's client id
must not make acknowledged data vanish.

Mosquitto lets a newcomer take over a connected client id, and a clean-session newcomer
discards the old persistent session with every message queued in it: 1,155 of 2,000
acknowledged messages were lost. The generated config puts devices on a listener with
``use_username_as_clientid``, so a device's client id is its key whatever it asks for, and
the hub and operators on a listener of their own that devices cannot log in to.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from tests.adversarial.raw import RawClient, connect_packet
from tests.conftest import mosquitto_available, need, running_hub
from tests.delivery.conftest import DEVICES, Stream, fact_counts, publish_stream, wait_facts

PER_DEVICE = 200  # 10 devices: 2,000 QoS 1 messages
ATTACKER = "AI-ATTK02"


async def squat(
    port: int, keys: FleetKeys, client_id: str, stop: asyncio.Event, first: asyncio.Event
) -> int:
    """Connect again and again as a device with the bridge's client id (clean session)."""
    n = 0
    while not stop.is_set():
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            c = await RawClient.open(port)
            c.send(connect_packet(client_id, ATTACKER, keys.device_password(ATTACKER), 60))
            ack = await c.packet(timeout=5)
            n += ack is not None and ack.body[1] == 0
            first.set()
            await asyncio.sleep(0.01)
            c.close()
    return n


async def test_a_device_with_the_bridge_client_id_loses_nothing(
    settings: Settings, keys: FleetKeys, pool: asyncpg.Pool
) -> None:
    need(mosquitto_available(), "mosquitto")
    await pool.executemany(
        "INSERT INTO device (device_key) VALUES ($1)", [(d,) for d in [*DEVICES, ATTACKER]]
    )
    s = settings.model_copy(update={"broker": "mosquitto"})
    async with running_hub(s, keys, stop_timeout=30):
        stop, first = asyncio.Event(), asyncio.Event()
        attacker = asyncio.create_task(squat(s.mqtt_port, keys, s.bridge_client_id, stop, first))
        await asyncio.wait_for(first.wait(), 10)  # the attack runs before and during the stream
        stream = Stream()
        try:
            await publish_stream(s.mqtt_port, keys, PER_DEVICE, stream)
        finally:
            stop.set()
            squats = await attacker
        assert stream.acked == 2000, "Mosquitto acknowledged every message"
        with contextlib.suppress(AssertionError):
            await wait_facts(pool, 2000, timeout=60)
        facts, distinct, _ = await fact_counts(pool)
    print(f"attacker connections accepted: {squats}; facts {facts}, distinct {distinct}")
    assert squats > 0, "the attacker did connect (as itself)"
    assert (facts, distinct) == (2000, 2000)
