"""The operator tools' MQTT client on a managed Mosquitto, where the operator has one client id."""

from __future__ import annotations

import asyncio
from typing import Any

from picofleet.core.credentials import OPERATOR_USER, FleetKeys
from picofleet.core.mqttclient import MqttSession, MqttTarget, probe
from tests.helpers import Client

KEY = "AI-TOOL01"


def _follow_after_another_tool(hub_port: int, dev_port: int, keys: FleetKeys) -> bytes:
    op = keys.role_password(OPERATOR_USER)
    target = MqttTarget("127.0.0.1", hub_port)
    tail = MqttSession(
        target=target, username=OPERATOR_USER, password=op, clean_session=True, manual_ack=False
    )
    with tail:
        tail.subscribe(["picofleet/#"])
        # `picofleet doctor` checks the operator's login: under the same client id it drops
        # the long-lived session, which comes back and subscribes again by itself.
        probe(target, OPERATOR_USER, op)
        dev = Client(dev_port, KEY, keys.device_password(KEY))
        assert dev.connect()
        try:
            for seq in range(200):  # until the tail is back: each is a fresh message
                dev.publish(f"picofleet/devices/{KEY}/telemetry", f"{seq}".encode())
                got = tail.get(0.1)
                if got is not None:
                    return got.payload
        finally:
            dev.close()
    raise AssertionError("the tail never came back")


async def test_a_tail_survives_another_operator_tool(
    keys: FleetKeys, mosquitto_factory: Any
) -> None:
    mosq = await mosquitto_factory([KEY])
    got = await asyncio.to_thread(_follow_after_another_tool, mosq.hub_port, mosq.port, keys)
    assert got.isdigit()
