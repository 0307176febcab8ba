"""pico_w/mqtt.py, unmodified, in real MicroPython (picofleet.sim.board: real TCP sockets with
rp2's semantics) against real brokers, amqtt and Mosquitto, each with the hub's access
policy: it connects with a device's credentials and last will, subscribes, receives retained
messages (a non-ASCII one, and one of 300 KB it must read past and acknowledge without
holding it), publishes non-ASCII text the broker hands on intact, wraps its packet id past
65,535 without ever using 0, receives a command published while it polls, keeps an idle
session alive with PINGREQ (keepalive 2 s), and leaves its last will when dropped."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from picofleet.broker.embedded import EmbeddedBroker
from picofleet.broker.policy import Policy
from picofleet.core.credentials import HUB_USER, FleetKeys
from picofleet.core.topics import Kind, Topics
from picofleet.sim.board import Board, flash
from tests.firmware.conftest import FIRMWARE
from tests.helpers import Client, free_port

KEY = "MQTT-CASE-1"
MAIN = Path(__file__).parent / "mp" / "mqtt_broker_main.py"
TEXT = '{"state":"online","note":"\u6c34\u00e9 \u2014 \U0001f331"}'
BIG = 300 * 1024


@pytest.fixture(params=["amqtt", "mosquitto"])
async def broker_port(
    request: pytest.FixtureRequest, policy: Policy, mosquitto_factory: Callable[..., Any]
) -> AsyncIterator[tuple[int, int]]:
    """(the devices' port, the hub's port): one listener on amqtt, two on Mosquitto."""
    if request.param == "amqtt":
        async with EmbeddedBroker(policy=policy, bind="127.0.0.1", port=free_port()) as b:
            yield b.port, b.port
    else:
        m = await mosquitto_factory([KEY])
        yield m.port, m.hub_port


def _hub_client(port: int, keys: FleetKeys) -> Client:
    # the hub's credentials: only the hub may publish OTA metas (retained)
    op = Client(port, HUB_USER, keys.role_password(HUB_USER))
    assert op.connect(), "hub client could not connect"
    return op


async def test_firmware_mqtt_client_on_a_real_broker(
    broker_port: tuple[int, int], keys: FleetKeys, tmp_path: Path
) -> None:
    t = Topics("picofleet")
    topics = {
        "status": t.device(KEY, Kind.STATUS),
        "cmd": t.device(KEY, Kind.CMD),
        "big": t.device(KEY, Kind.OTA),
        "small": t.ota_channel("pico_w", "stable"),
    }
    device_port, hub_port = broker_port
    op = await asyncio.to_thread(_hub_client, hub_port, keys)
    try:
        await asyncio.to_thread(op.publish, topics["big"], b"x" * BIG, 1, True)
        await asyncio.to_thread(op.publish, topics["small"], TEXT.encode(), 1, True)
        await asyncio.to_thread(op.subscribe, topics["status"])
        case = {
            **topics,
            "host": "127.0.0.1",
            "port": device_port,
            "key": KEY,
            "password": keys.device_password(KEY),
            "ssid": "fleet",
            "wifi_password": "fleet-password",
            "text": TEXT,
        }
        root = tmp_path / "flash"
        flash(
            root,
            None,
            source=tmp_path / "none",
            extra={
                "mqtt.py": (FIRMWARE / "mqtt.py").read_bytes(),
                "main.py": MAIN.read_bytes(),
                # raw UTF-8: MicroPython's json.loads turns a \ud83c\udf31 escape pair into
                # two surrogates (CESU-8), not into the character
                "case.json": json.dumps(case, ensure_ascii=False).encode(),
            },
        )
        board = Board(root, ap=("fleet", "fleet-password"), name="mqtt")
        board.start()
        try:
            await asyncio.to_thread(board.wait_line, "READY", timeout=60)
            cmd = '{"cmd":"pump","seconds":5,"id":"\u6c34-1"}'
            await asyncio.to_thread(op.publish, topics["cmd"], cmd.encode())
            line = await asyncio.to_thread(board.wait_line, "RESULT", timeout=60)
        finally:
            console = board.console(60)
            board.stop()
        result = json.loads(line["line"].split("RESULT ", 1)[1])
        assert result["pids"] == [65534, 65535, 1, 2], console
        assert result["dropped"] == 1, console  # the 300 KB retained message, read past
        assert [topics["small"], TEXT] in result["got"], console
        assert [topics["cmd"], cmd] in result["got"], console
        assert not any(t == topics["big"] for t, _ in result["got"])
        # the broker parsed the non-ASCII PUBLISH and handed on exactly its bytes (twice),
        # then, the connection dropped without DISCONNECT, the last will
        offline = b'{"state":"offline"}'
        for _ in range(100):
            status = [p for t, p in op.messages if t == topics["status"]]
            if offline in status:
                break
            await asyncio.sleep(0.1)
        assert status == [TEXT.encode()] * 3 + [offline], (status, console)
    finally:
        await asyncio.to_thread(op.close)
