"""Issue 19, finding 7: one sender must not write, or erase, another device's data.

Who may speak for whom:
- a device's own topic speaks for that device only (the broker's ACL checks the publisher);
- ``picofleet/ingest`` and ``POST /ingest`` carry legacy numeric devices only, never a
  picofleet-firmware (serial) device;
- an identified sender (its MQTT login on the embedded broker, or HTTP Basic credentials on
  /ingest) speaks for itself and for the devices granted to it in ``ingest_grant``;
- an anonymous sender (plain /ingest, and picofleet/ingest through Mosquitto, which does not
  tell subscribers who published) keeps the older senders' contract for legacy devices,
  unless ``ingest_anonymous_legacy`` is switched off.
Everything refused is a raw record plus one ``sender_not_authorized`` error.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from picofleet.core.topics import Kind
from tests.adversarial.conftest import (
    BROKERS,
    Counts,
    HubFactory,
    counts,
    post,
    raw_device,
    wait_raw,
)

VICTIM = "AI-VICTIM1"
LEGACY, OTHER, GRANTED = "3", "4", "5"
TS = 1_763_000_000


def event(device: int | str, value: float, t: int) -> dict[str, Any]:
    return {"device_id": device, "event_type": "battery_charge", "value": value, "timestamp": t}


def envelope(seq: int, value: float, *, device: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "seq": seq,
        "ts": TS + seq,
        "readings": [{"type": "soil_moisture_pct", "value": value}],
    }
    if device is not None:
        body["device"] = device
    return body


async def facts_of(pool: asyncpg.Pool, key: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM processed_record p JOIN device d ON d.id = p.device_id"
            " WHERE d.device_key = $1",
            key,
        )
    )


@pytest.mark.parametrize("broker", BROKERS)
async def test_legacy_mqtt_sender_speaks_only_for_its_devices(
    broker: str, hub_on: HubFactory, pool: asyncpg.Pool
) -> None:
    async with hub_on(broker, [LEGACY, OTHER, VICTIM]) as hub:
        await pool.execute(
            "INSERT INTO ingest_grant (sender, device_key) VALUES ($1, $2)", LEGACY, GRANTED
        )
        bodies = [
            event(int(LEGACY), 50, TS),  # itself
            event(int(GRANTED), 51, TS),  # granted to it
            event(VICTIM, 52, TS),  # a firmware device: never through picofleet/ingest
            [event(VICTIM, 53, TS + 1), event(int(LEGACY), 54, TS + 1)],  # mixed array
            event(int(OTHER), 55, TS),  # another legacy device, not granted
        ]
        async with raw_device(hub, LEGACY) as dev:
            for pid, b in enumerate(bodies, 1):
                dev.send(hub.topics.ingest, json.dumps(b).encode(), pid)
            await dev.wait_acked(set(range(1, len(bodies) + 1)))
        got = await wait_raw(pool, len(bodies))
        assert await facts_of(pool, VICTIM) == 0
        if hub.embedded:
            # The embedded broker knows the publisher: device 4 is not the sender's.
            assert got == Counts(5, 3, 3, {"sender_not_authorized": 3})
            assert await facts_of(pool, OTHER) == 0
        else:
            # Mosquitto does not tell the bridge who published: the anonymous contract holds.
            assert got == Counts(5, 4, 2, {"sender_not_authorized": 2})
        assert await pool.fetchval("SELECT count(*) FROM device WHERE device_key = $1", VICTIM) == 0


async def test_anonymous_ingest_cannot_erase_a_firmware_device(
    hub_on: HubFactory, pool: asyncpg.Pool
) -> None:
    """The red-team run: forged seqs 2..501 first, then the victim's 501 genuine readings."""
    async with hub_on("amqtt", [VICTIM]) as hub:
        forged = [envelope(seq, 99.0, device=VICTIM) for seq in range(2, 502)]
        res = await post(hub, forged)
        assert {r["status"] for r in res} == {"unauthorized"}
        assert await counts(pool) == Counts(500, 0, 500, {"sender_not_authorized": 500})
        topic = hub.topics.device(VICTIM, Kind.TELEMETRY)
        async with raw_device(hub, VICTIM) as dev:
            for seq in range(1, 502):
                dev.send(topic, json.dumps(envelope(seq, seq % 100)).encode(), seq)
            await dev.wait_acked(set(range(1, 502)))
        assert await wait_raw(pool, 1001) == Counts(1001, 501, 500, {"sender_not_authorized": 500})
        assert await facts_of(pool, VICTIM) == 501


async def test_http_sender_credentials_and_firmware_devices(
    hub_on: HubFactory, pool: asyncpg.Pool
) -> None:
    async with hub_on("amqtt", []) as hub:
        # Device 900 ran a legacy startup: it is a picofleet-firmware device from now on.
        startup = {
            "event_type": "device_startup",
            "serial": "900",
            "provision_token": hub.keys.legacy_token("900"),
        }
        assert [r["status"] for r in await post(hub, startup)] == ["provisioned"]
        anonymous = [event(7, 10, TS), event(900, 11, TS), event(VICTIM, 12, TS)]
        assert [r["status"] for r in await post(hub, anonymous)] == [
            "ok",
            "unauthorized",
            "unauthorized",
        ]
        # A legacy sender may log in with its MQTT credentials: then it speaks for itself only.
        own = (LEGACY, hub.keys.device_password(LEGACY))
        mine = [event(int(LEGACY), 20, TS), event(int(OTHER), 21, TS)]
        assert [r["status"] for r in await post(hub, mine, auth=own)] == ["ok", "unauthorized"]
        wrong = (LEGACY, "not-the-password")
        bad = [event(int(LEGACY), 30, TS)]
        assert [r["status"] for r in await post(hub, bad, auth=wrong)] == ["unauthorized"]
        assert await counts(pool) == Counts(7, 2, 4, {"sender_not_authorized": 4})
        # A blocked sender loses its grants too (its HTTP credentials are still valid).
        await pool.execute(
            "INSERT INTO ingest_grant (sender, device_key) VALUES ($1, $2)", LEGACY, GRANTED
        )
        granted = [event(int(GRANTED), 40, TS)]
        assert [r["status"] for r in await post(hub, granted, auth=own)] == ["ok"]
        await pool.execute("UPDATE device SET blocked = true WHERE device_key = $1", LEGACY)
        again = [event(int(GRANTED), 41, TS)]
        assert [r["status"] for r in await post(hub, again, auth=own)] == ["unauthorized"]
        assert await counts(pool) == Counts(9, 3, 5, {"sender_not_authorized": 5})


async def test_anonymous_legacy_contract_can_be_switched_off(
    hub_on: HubFactory, pool: asyncpg.Pool
) -> None:
    async with hub_on("amqtt", [], ingest_anonymous_legacy=False) as hub:
        assert [r["status"] for r in await post(hub, [event(7, 10, TS)])] == ["unauthorized"]
        own = ("7", hub.keys.device_password("7"))
        assert [r["status"] for r in await post(hub, [event(7, 10, TS)], auth=own)] == ["ok"]
        assert await counts(pool) == Counts(2, 1, 1, {"sender_not_authorized": 1})


async def test_forged_seqs_for_a_legacy_device_leave_a_trace(
    hub_on: HubFactory, pool: asyncpg.Pool
) -> None:
    """Anonymous /ingest may still speak for legacy devices (the older contract): a forgery
    that takes a legacy device's seqs makes its later genuine readings coded conflicts, never
    silent drops. (Switching the anonymous contract off closes it; see the test above.)"""
    async with hub_on("amqtt", [OTHER]) as hub:
        await post(hub, [envelope(seq, 99.0, device=OTHER) for seq in range(2, 12)])
        topic = hub.topics.device(OTHER, Kind.TELEMETRY)
        async with raw_device(hub, OTHER) as dev:
            for seq in range(1, 12):
                dev.send(topic, json.dumps(envelope(seq, seq)).encode(), seq)
            await dev.wait_acked(set(range(1, 12)))
        assert await wait_raw(pool, 21) == Counts(21, 11, 10, {"seq_conflict": 10})
