"""Finding 1 (issue 19): a second CONNECT on an open connection is a protocol violation.

MQTT 3.1.1 §3.1: a client may send CONNECT once per network connection; the server MUST
treat a second one as a violation and disconnect. The attack: a device logs in, then writes
``CONNECT(user="hub", password=<anything>)`` and a PUBLISH on another device's topic in the
same TCP write, hoping the hub takes the new username at its word. Raw sockets control the
packet boundaries; every assertion is on rows in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest

from picofleet.core.credentials import HUB_USER, FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.topics import Kind
from tests.adversarial.raw import PUBACK, RawClient, connect_packet, publish_packet
from tests.conftest import RunningHub, mosquitto_available, need, running_hub
from tests.helpers import startup_body, wait_for

ATTACKER, VICTIM = "AI-ATTK01", "AI-VICT01"
HUGE_SEQ = 2**62 - 1


def forged(hub: RunningHub, kind: Kind) -> bytes:
    match kind:
        case Kind.STARTUP:
            body = startup_body(hub.keys, VICTIM, provision_token="00" * 32, firmware="6.6.6")
        case Kind.STATUS:
            body = {"state": "online", "fw": "6.6.6"}
        case Kind.OTA_STATUS:
            body = {"version": "6.6.6", "state": "booted_ok", "seq": HUGE_SEQ}
        case _:
            body = {"v": 1, "seq": 1, "ts": 1_763_900_000, "readings": [
                {"type": "battery_charge", "value": 1.0}]}  # fmt: skip
    return json.dumps(body).encode()


async def sentinel(hub: RunningHub, pool: asyncpg.Pool, marker: str) -> None:
    """The attacker's own message on a fresh connection, waited for in raw_record: anything
    the hub took from the attack before it would be stored by now."""
    c = await RawClient.connected(hub.mqtt_port, ATTACKER, hub.keys.device_password(ATTACKER))
    payload = json.dumps({"v": 1, "seq": 1, "ts": 1_763_900_000, "readings": [
        {"type": "battery_charge", "value": 50.0}], "m": marker}).encode()  # fmt: skip
    c.send(publish_packet(hub.topics.device(ATTACKER, Kind.TELEMETRY), payload, 1, 1))
    ack = await c.packet()
    assert ack is not None and ack.type == PUBACK
    c.close()

    async def stored() -> int:  # at once on amqtt (PUBACK after commit), soon on Mosquitto
        return int(
            await pool.fetchval("SELECT count(*) FROM raw_record WHERE payload = $1", payload)
        )

    assert await wait_for(stored, timeout=30) == 1


@pytest.mark.parametrize("split", [False, True], ids=["same-write", "separate-writes"])
@pytest.mark.parametrize("broker", ["amqtt", "mosquitto"])
async def test_second_connect_closes_the_connection_and_nothing_is_stored_as_the_victim(
    settings: Settings, keys: FleetKeys, pool: asyncpg.Pool, broker: str, split: bool
) -> None:
    if broker == "mosquitto":
        need(mosquitto_available(), "mosquitto")
    await pool.executemany("INSERT INTO device (device_key) VALUES ($1)", [(ATTACKER,), (VICTIM,)])
    s = settings.model_copy(update={"broker": broker})
    async with running_hub(s, keys, stop_timeout=30) as hub:
        await attack(hub, pool, split)


async def attack(hub: RunningHub, pool: asyncpg.Pool, split: bool) -> None:
    kinds = [Kind.STARTUP, Kind.STATUS, Kind.OTA_STATUS, Kind.TELEMETRY]
    outcome = {}
    for i, kind in enumerate(kinds, start=1):
        c = await RawClient.connected(hub.mqtt_port, ATTACKER, hub.keys.device_password(ATTACKER))
        again = connect_packet(f"x-{uuid.uuid4().hex[:6]}", HUB_USER, "anything", 60)
        forge = publish_packet(hub.topics.device(VICTIM, kind), forged(hub, kind), 1, i)
        if split:
            c.send(again)
            await c.writer.drain()
            await asyncio.sleep(0.2)
            c.send(forge)
        else:
            c.send(again + forge)
        got, closed = await c.until_closed(timeout=5)
        outcome[kind.value] = (closed, sum(p.type == PUBACK for p in got))
        c.close()
    await sentinel(hub, pool, uuid.uuid4().hex)

    assert (
        await pool.fetchval(
            "SELECT count(*) FROM raw_record WHERE device_key = $1 OR topic LIKE $2",
            VICTIM,
            f"%/{VICTIM}/%",
        )
        == 0
    )
    assert (
        await pool.fetchval("SELECT count(*) FROM deploy_event WHERE device_key = $1", VICTIM) == 0
    )
    untouched = await pool.fetchval(
        "SELECT count(*) FROM device WHERE device_key = $1 AND firmware IS NULL"
        " AND status IS NULL AND state IS NULL AND provisioned_at IS NULL",
        VICTIM,
    )
    assert untouched == 1, "the victim's device row was written by the attack"
    assert (
        await pool.fetchval("SELECT count(*) FROM raw_record WHERE device_key = $1", ATTACKER) == 1
    )
    # Closed by the server, and no PUBACK for the forged PUBLISH.
    assert outcome == {k.value: (True, 0) for k in kinds}

    # The victim's real report after the attack moves its state: nothing forged made it stale.
    v = await RawClient.connected(hub.mqtt_port, VICTIM, hub.keys.device_password(VICTIM))
    real = json.dumps({"version": "1.0.1", "state": "booted_ok", "seq": 1}).encode()
    v.send(publish_packet(hub.topics.device(VICTIM, Kind.OTA_STATUS), real, 1, 7))
    ack = await v.packet()
    assert ack is not None and ack.type == PUBACK
    v.close()

    async def logged() -> list[asyncpg.Record]:
        return await pool.fetch("SELECT * FROM deploy_event WHERE device_key = $1", VICTIM)

    rows = await wait_for(logged)
    assert [(r["seq"], json.loads(r["detail"]).get("stale")) for r in rows] == [(1, None)]
    state = await pool.fetchrow("SELECT * FROM ota_device_state WHERE device_key = $1", VICTIM)
    assert (state["seq"], state["version"], state["state"]) == (1, "1.0.1", "booted_ok")
