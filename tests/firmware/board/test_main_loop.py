"""The firmware's main loop in real MicroPython against the real hub, on amqtt and Mosquitto.

One board (``picofleet.sim.board``: the unmodified ``pico_w`` files in the WebAssembly
MicroPython, real TCP) is flashed the way ``picofleet usb flash`` does it, provisions itself
with its token, publishes telemetry, obeys pump commands (one with a non-ASCII id, one that
extends a running pump, one out of bounds) and keeps its readings through a Wi-Fi drop and a
restart of the broker. Everything is checked in PostgreSQL: seqs contiguous, none twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from picofleet.core.settings import Settings
from picofleet.sim.board import Board
from tests.conftest import mosquitto_available, need, running_hub
from tests.firmware.board.kit import (
    duplicates,
    provision,
    provisioned,
    readings_past,
    send,
    seqs,
    until,
)

KEY = "BOARD-ML1"
RELAY = 15  # the relay's GPIO in the default wiring (config.json has no "pins")
PUMP = {"max_run_s": 20, "cooldown_s": 0, "auto_below_pct": None}


def hub_settings(settings: Settings, broker: str) -> Settings:
    if broker == "amqtt":
        return settings
    need(mosquitto_available(), "mosquitto")
    return settings.model_copy(update={"broker": "mosquitto"})


async def enrol(pool: asyncpg.Pool, broker: str, key: str) -> None:
    # Mosquitto admits only devices the hub knows (its password file follows the table)
    if broker == "mosquitto":
        await pool.execute("INSERT INTO device (device_key) VALUES ($1)", key)


@pytest.mark.parametrize("broker", ["amqtt", "mosquitto"])
async def test_board_main_loop_against_the_hub(
    broker: str, settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    s = hub_settings(settings, broker)
    await enrol(pool, broker, KEY)
    async with running_hub(s, stop_timeout=30) as hub:
        root = provision(tmp_path / "flash", hub, key=KEY, telemetry_interval_s=2, pump=PUMP)
        board = Board(root, name=broker)
        board.start()
        try:
            await until(board, lambda: provisioned(pool, KEY, "1.0.0"))
            await readings_past(board, pool, 2, KEY)

            # a pump run, one refused, one with an id no ASCII can spell
            ok = await send(board, hub, pool, {"cmd": "pump", "seconds": 5, "id": "c1"}, KEY)
            assert ok["ack"]["ok"] is True and ok["pump"] == 1
            bad = await send(board, hub, pool, {"cmd": "pump", "seconds": 9999, "id": "c2"}, KEY)
            assert bad["ack"]["ok"] is False and bad["ack"]["error"] == "out_of_bounds"
            uni = await send(board, hub, pool, {"cmd": "stop", "id": "pümp-✓"}, KEY)
            assert uni["ack"]["id"] == "pümp-✓" and uni["ack"]["ok"] is True
            assert uni["pump"] == 0 and board.pin(RELAY)[-1][1] == 0

            # a second command extends a running pump: the relay stays on to the new end
            await send(board, hub, pool, {"cmd": "pump", "seconds": 2, "id": "e1"}, KEY)
            ext = await send(board, hub, pool, {"cmd": "pump", "seconds": 12, "id": "e2"}, KEY)
            assert ext["ack"]["ok"] is True and ext["pump"] == 1
            await asyncio.sleep(4)  # past the first run's end and its backstop (2 + 0.5 s)
            probe = await send(board, hub, pool, {"cmd": "nothing", "id": "p1"}, KEY)
            assert probe["pump"] == 1
            assert board.pin(RELAY)[-1][1] == 1, "relay dropped while the pump reports on"
            await send(board, hub, pool, {"cmd": "stop", "id": "s1"}, KEY)

            # the Wi-Fi goes away for a while: the ring keeps the readings
            before = (await seqs(pool, KEY))[-1]
            board.wifi_down()
            await asyncio.sleep(7)
            board.wifi_up()
            await readings_past(board, pool, before + 3, KEY)

            # the broker goes away (the hub restarts) while the board samples on
            before = (await seqs(pool, KEY))[-1]
            await hub.stop()
            await asyncio.sleep(5)
            async with running_hub(s, stop_timeout=30):
                await readings_past(board, pool, before + 3, KEY)
            assert board.resets() == [], board.console()
            assert not [ln for ln in board.lines() if "fatal" in ln], board.console()
        finally:
            board.stop()

    got = await seqs(pool, KEY)
    assert got == list(range(got[0], got[-1] + 1)), "a reading went missing"
    assert await duplicates(pool, KEY) == 0
    errors = await pool.fetch(
        "SELECT e.code, e.detail FROM ingest_error e JOIN raw_record r ON r.id = e.raw_id"
        " WHERE r.device_key = $1",
        KEY,
    )
    assert [dict(e) for e in errors] == []  # every reading in range, every message valid
