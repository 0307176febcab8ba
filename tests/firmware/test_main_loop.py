"""The real ``pico_w`` main loop on CPython against the real hub.

One virtual Pico W (``picofleet.sim.firmware``: the firmware's own files, thin fakes of
``machine``, ``network``, the clock and the flash) provisions itself, publishes, keeps its
readings through a Wi-Fi drop and a restart of the hub's broker, obeys a pump command and
refuses one out of bounds. Everything is checked in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg

from picofleet.credentials import OPERATOR_USER
from picofleet.settings import Settings
from picofleet.sim.firmware import FirmwareDevice, FirmwareFleet
from picofleet.topics import Kind, Topics
from tests.conftest import RunningHub, running_hub
from tests.helpers import Client, wait_for

KEY = "SIMW-000"


async def _seqs(pool: asyncpg.Pool) -> list[int]:
    rows = await pool.fetch(
        "SELECT DISTINCT p.seq FROM processed_record p JOIN device d ON d.id = p.device_id"
        " WHERE d.device_key = $1 AND p.seq IS NOT NULL ORDER BY 1",
        KEY,
    )
    return [r["seq"] for r in rows]


async def _more_readings(pool: asyncpg.Pool, than: int, timeout: float = 30) -> list[int]:
    async def grown() -> list[int] | None:
        seqs = await _seqs(pool)
        return seqs if seqs and seqs[-1] > than else None

    result: list[int] = await wait_for(grown, timeout=timeout, interval=0.2)
    return result


async def _acks(pool: asyncpg.Pool) -> dict[str, dict[str, Any]]:
    """Command acknowledgements the device published on its status topic, by command id."""
    rows = await pool.fetch(
        "SELECT payload FROM raw_record WHERE topic = $1 ORDER BY id",
        Topics().device(KEY, Kind.STATUS),
    )
    acks = (json.loads(bytes(r["payload"])).get("ack") for r in rows)
    return {a["id"]: a for a in acks if isinstance(a, dict) and a.get("id")}


def _command(hub: RunningHub, body: dict[str, Any]) -> None:
    op = Client(hub.mqtt_port, OPERATOR_USER, hub.keys.role_password(OPERATOR_USER))
    assert op.connect(), "operator could not connect"
    try:
        op.publish(hub.topics.device(KEY, Kind.CMD), json.dumps(body))
    finally:
        op.close()


async def _wifi_drop(device: FirmwareDevice, pool: asyncpg.Pool, seconds: float) -> None:
    before = await _seqs(pool)
    device.set_wifi(False)
    await asyncio.sleep(seconds)  # the sampler keeps filling the ring meanwhile
    device.set_wifi(True)
    await _more_readings(pool, before[-1] + int(seconds))


async def test_firmware_main_loop_against_the_hub(settings: Settings, pool: asyncpg.Pool) -> None:
    async with running_hub(settings) as hub:
        fleet = FirmwareFleet(
            n=1,
            mqtt_host="127.0.0.1",
            mqtt_port=hub.mqtt_port,
            http_base=hub.http,
            keys=hub.keys,
            telemetry_interval_s=1,
            config={"pump": {"max_run_s": 20, "cooldown_s": 0, "auto_below_pct": 0}},
        )
        async with fleet:
            device = fleet[0]

            async def provisioned() -> bool:
                row = await pool.fetchrow(
                    "SELECT provisioned_at, firmware FROM device WHERE device_key = $1", KEY
                )
                return bool(row and row["provisioned_at"] and row["firmware"] == "1.0.0")

            await wait_for(provisioned, timeout=60, interval=0.2)
            await _more_readings(pool, 2)

            await asyncio.to_thread(_command, hub, {"cmd": "pump", "seconds": 5, "id": "c1"})
            await asyncio.to_thread(_command, hub, {"cmd": "pump", "seconds": 9999, "id": "c2"})
            acks = await wait_for(lambda: _has_acks(pool, {"c1", "c2"}), timeout=30, interval=0.2)
            assert acks["c1"]["ok"] is True and acks["c1"]["error"] is None
            assert acks["c2"]["ok"] is False and acks["c2"]["error"] == "out_of_bounds"

            async def pump_ran() -> bool:
                n = await pool.fetchval(
                    "SELECT count(*) FROM processed_record p JOIN record_type t"
                    " ON t.id = p.record_type_id WHERE t.name = 'pump_on' AND p.value = 1"
                )
                return bool(n)

            await wait_for(pump_ran, timeout=30, interval=0.2)
            await _wifi_drop(device, pool, 4)

            # The broker goes away (the embedded hub restarts) while the device samples on.
            before = (await _seqs(pool))[-1]
            await hub.stop()
            await asyncio.sleep(3)
            async with running_hub(settings):
                await _more_readings(pool, before + 3, timeout=60)
            assert device.repl is None, device.console[-20:]

    seqs = await _seqs(pool)
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a reading went missing"
    dupes = await pool.fetchval(
        "SELECT count(*) FROM (SELECT p.seq, p.item_idx FROM processed_record p"
        " JOIN device d ON d.id = p.device_id WHERE d.device_key = $1"
        " GROUP BY 1, 2 HAVING count(*) > 1) x",
        KEY,
    )
    assert dupes == 0


async def _has_acks(pool: asyncpg.Pool, ids: set[str]) -> dict[str, dict[str, Any]] | None:
    acks = await _acks(pool)
    return acks if ids <= set(acks) else None
