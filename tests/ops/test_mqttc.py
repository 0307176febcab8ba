"""The operator tools' MQTT client on a managed Mosquitto, where the operator has one client id."""

from __future__ import annotations

import asyncio
import queue
from typing import Any

from picofleet.core.credentials import OPERATOR_USER, FleetKeys
from picofleet.ops.mqttc import BlockingClient, probe
from tests.helpers import Client

KEY = "AI-TOOL01"


def _follow_after_another_tool(hub_port: int, dev_port: int, keys: FleetKeys) -> bytes:
    op = keys.role_password(OPERATOR_USER)
    with BlockingClient("127.0.0.1", hub_port, OPERATOR_USER, op) as tail:
        tail.subscribe(["picofleet/#"])
        # `picofleet doctor` checks the operator's login: under the same client id it drops
        # the long-lived session, which comes back and subscribes again by itself.
        probe("127.0.0.1", hub_port, OPERATOR_USER, op)
        dev = Client(dev_port, KEY, keys.device_password(KEY))
        assert dev.connect()
        try:
            for seq in range(200):  # until the tail is back: each is a fresh message
                dev.publish(f"picofleet/devices/{KEY}/telemetry", f"{seq}".encode())
                try:
                    return tail.messages.get(timeout=0.1).payload
                except queue.Empty:
                    continue
        finally:
            dev.close()
    raise AssertionError("the tail never came back")


async def test_a_tail_survives_another_operator_tool(
    keys: FleetKeys, mosquitto_factory: Any
) -> None:
    mosq = await mosquitto_factory([KEY])
    got = await asyncio.to_thread(_follow_after_another_tool, mosq.hub_port, mosq.port, keys)
    assert got.isdigit()
