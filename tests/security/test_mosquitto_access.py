"""A managed Mosquitto hub keeps the broker's access in step with the device table and binds
client ids: a device blocked in the table loses the connection it holds, and nobody but the
hub can take the bridge's client id (its persistent session) with credentials of their own."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import stat
from pathlib import Path

import asyncpg
import pytest

from picofleet.broker import access, mosquitto
from picofleet.broker.policy import Policy
from picofleet.core.credentials import HUB_USER, OPERATOR_USER, FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.topics import Topics
from tests.conftest import mosquitto_available, need, running_hub
from tests.helpers import wait_for
from tests.security.peers import Peer

P = "picofleet"


async def rows_of(pool: asyncpg.Pool, key: str) -> int:
    n: int = await pool.fetchval("SELECT count(*) FROM raw_record WHERE device_key = $1", key)
    return n


async def test_a_device_blocked_in_the_table_is_disconnected(
    settings: Settings, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    need(mosquitto_available(), "mosquitto")
    monkeypatch.setattr(access, "POLICY_SYNC_S", 0.2)
    bad, good = "AI-BLKMQ1", "AI-OKMQ02"
    await pool.execute("INSERT INTO device (device_key) VALUES ($1), ($2)", bad, good)
    s = settings.model_copy(update={"broker": "mosquitto"})
    async with running_hub(s) as hub:
        dev = Peer(s.mqtt_port, bad, hub.keys.device_password(bad))
        ok = Peer(s.mqtt_port, good, hub.keys.device_password(good))
        try:
            assert await dev.connect() and await ok.connect()
            await dev.publish(f"{P}/devices/{bad}/telemetry", b'{"v":1,"seq":1,"readings":[]}')

            async def landed() -> bool:
                return await rows_of(pool, bad) == 1

            await wait_for(landed, timeout=10)
            await pool.execute("UPDATE device SET blocked = true WHERE device_key = $1", bad)

            async def dropped() -> bool:
                return dev.disconnects > 0

            # A few sync intervals: the block must not wait for the device to reconnect.
            await wait_for(dropped, timeout=3)
            with contextlib.suppress(RuntimeError):  # not connected any more
                await dev.publish(f"{P}/devices/{bad}/telemetry", b'{"v":1,"seq":2}')
            again = Peer(s.mqtt_port, bad, hub.keys.device_password(bad))
            assert not await again.connect(), "a blocked device got back in"
            again.close()
            # A sentinel from another device marks the point after which nothing of the
            # blocked one's can still be on its way.
            await ok.publish(f"{P}/devices/{good}/telemetry", b'{"v":1,"seq":1,"readings":[]}')

            async def sentinel() -> bool:
                return await rows_of(pool, good) == 1

            await wait_for(sentinel, timeout=10)
            await asyncio.sleep(0.2)
            assert await rows_of(pool, bad) == 1
            # The reload that cut the device left the hub's listener as it was: the operator
            # gets in under its own client id only.
            op = hub.keys.role_password(OPERATOR_USER)
            for client_id, admitted in ((OPERATOR_USER, True), ("laptop-2", False)):
                peer = Peer(s.hub_mqtt_port, OPERATOR_USER, op, client_id=client_id)
                assert await peer.connect() is admitted, client_id
                peer.close()
        finally:
            dev.close()
            ok.close()


@pytest.mark.parametrize("who", ["operator", "device", "device keyed as the bridge"])
async def test_the_bridge_client_id_cannot_be_taken(
    who: str, settings: Settings, pool: asyncpg.Pool
) -> None:
    """A client with credentials of its own asking for the bridge's exact client id does not
    kick the bridge: the bridge keeps its session and the rows keep landing. A device's client
    id is its key there, so a device registered under the bridge's id is not admitted."""
    need(mosquitto_available(), "mosquitto")
    dev_key = "AI-KEEP01"
    intruder_key = settings.bridge_client_id if who.endswith("bridge") else "AI-INTR02"
    await pool.execute("INSERT INTO device (device_key) VALUES ($1), ($2)", dev_key, intruder_key)
    s = settings.model_copy(update={"broker": "mosquitto"})
    async with running_hub(s) as hub:
        if who == "operator":
            port, user, pw = s.hub_mqtt_port, OPERATOR_USER, hub.keys.role_password(OPERATOR_USER)
        else:
            port, user, pw = s.mqtt_port, intruder_key, hub.keys.device_password(intruder_key)
        intruder = Peer(port, user, pw, client_id=s.bridge_client_id, clean_session=True)
        dev = Peer(s.mqtt_port, dev_key, hub.keys.device_password(dev_key))
        try:
            took = await intruder.connect()
            if who != "device":  # a device gets in, as itself
                assert not took, f"{who} was admitted under the bridge's client id"
            assert await dev.connect()
            for seq in range(1, 21):
                body = f'{{"v":1,"seq":{seq},"readings":[]}}'.encode()
                await dev.publish(f"{P}/devices/{dev_key}/telemetry", body)

            async def landed() -> bool:
                return await rows_of(pool, dev_key) == 20

            await wait_for(landed, timeout=15)
            await asyncio.sleep(0.2)
            assert await rows_of(pool, dev_key) == 20
        finally:
            intruder.close()
            dev.close()


def test_the_staff_file_changes_only_with_the_secret(tmp_path: Path, policy: Policy) -> None:
    """dynamic-security.json holds salted PBKDF2-SHA512 hashes (never a password), 0600, and a
    rewrite for other devices leaves it byte for byte (compose's run.sh restarts Mosquitto
    when it changes)."""

    def write(p: Policy, devices: list[str]) -> bytes:
        mosquitto.write_config(
            tmp_path, p, device_keys=devices, bind="127.0.0.1", port=1, hub_port=2
        )
        return (tmp_path / mosquitto.DYNSEC_FILE).read_bytes()

    first = write(policy, ["AI-STAF01"])
    assert write(policy, ["AI-STAF01", "AI-STAF02"]) == first
    assert stat.S_IMODE((tmp_path / mosquitto.DYNSEC_FILE).stat().st_mode) == 0o600
    clients = {c["username"]: c for c in json.loads(first)["clients"]}
    assert set(clients) == {HUB_USER, OPERATOR_USER}
    for user, c in clients.items():
        password = policy.keys.role_password(user)
        assert password.encode() not in first
        digest = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(c["salt"]), c["iterations"]
        )
        assert base64.b64decode(c["password"]) == digest
    rotated = Policy(Topics("picofleet"), FleetKeys(b"r" * 32))
    assert write(rotated, ["AI-STAF01"]) != first
