"""Commands to a device through the hub: HTTP API and ``picofleet device``, on a live hub.

The device here is an MQTT client that answers like the firmware does (an ``ack`` in a
status message, refusing a pump run above its limit); the hub, broker, bridge and ledger are
the real ones, on non-default ports and data dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from typing import Any

import asyncpg
import httpx
import paho.mqtt.client as paho
import pytest

from picofleet.core.topics import Kind
from tests.conftest import SECRET, RunningHub
from tests.helpers import CLI, Client, run_cli, wait_for

KEY = "AI-CMD001"
LIMIT_S = 30


class AckingDevice(Client):
    """Acks every command the way pico_w/app.py does; pump runs past LIMIT_S are refused."""

    def __init__(self, hub: RunningHub) -> None:
        super().__init__(hub.mqtt_port, KEY, hub.keys.device_password(KEY), client_id=KEY)
        self.status_topic = hub.topics.device(KEY, Kind.STATUS)
        self.cmd_topic = hub.topics.device(KEY, Kind.CMD)
        self.commands: list[dict[str, Any]] = []

    def _on_message(self, c: Any, u: Any, m: paho.MQTTMessage) -> None:
        cmd = json.loads(m.payload)
        self.commands.append(cmd)
        refused = cmd["cmd"] == "pump" and cmd["seconds"] > LIMIT_S
        ack = {
            "cmd": cmd["cmd"],
            "id": cmd["id"],
            "ok": not refused,
            "error": "out_of_bounds" if refused else None,
            "detail": f"limit {LIMIT_S} s" if refused else "done",
        }
        body = {"state": "online", "fw": "1.4.0", "ack": ack}
        c.publish(self.status_topic, json.dumps(body), qos=1, retain=True)


async def _online(hub: RunningHub, pool: asyncpg.Pool) -> AckingDevice:
    dev = AckingDevice(hub)
    assert await asyncio.to_thread(dev.connect)
    await asyncio.to_thread(dev.subscribe, dev.cmd_topic)
    await asyncio.to_thread(
        dev.publish, dev.status_topic, json.dumps({"state": "online", "fw": "1.4.0"}), retain=True
    )

    async def known() -> bool:
        return bool(await pool.fetchval("SELECT 1 FROM device WHERE device_key = $1", KEY))

    await wait_for(known)
    return dev


async def test_http_command_waits_for_the_ack(hub: RunningHub, pool: asyncpg.Pool) -> None:
    dev = await _online(hub, pool)
    auth = {"Authorization": f"Bearer {hub.keys.operator_token}"}
    try:
        async with httpx.AsyncClient(base_url=hub.http, timeout=30) as http:
            path = f"/api/devices/{KEY}/cmd"
            assert (await http.post(path, json={"cmd": "stop"})).status_code == 401
            bad = await http.post(path, json={"cmd": "pump"}, headers=auth)
            assert bad.status_code == 422  # pump needs seconds
            gone = await http.post("/api/devices/AI-NOPE/cmd", json={"cmd": "stop"}, headers=auth)
            assert gone.status_code == 404

            ok = await http.post(path, json={"cmd": "pump", "seconds": 5}, headers=auth)
            assert ok.status_code == 200, ok.text
            body = ok.json()
            assert body["acked"] and body["ack"]["ok"] and body["ack"]["id"] == body["id"]
            assert dev.commands[-1] == {"cmd": "pump", "id": body["id"], "seconds": 5}

            no = await http.post(path, json={"cmd": "pump", "seconds": 600}, headers=auth)
            assert no.status_code == 200 and no.json()["ack"]["error"] == "out_of_bounds"
            # every ack the device sent is in the ledger, exactly once
            acks = await pool.fetchval(
                "SELECT count(*) FROM raw_record WHERE topic = $1 AND body ? 'ack'",
                dev.status_topic,
            )
            assert acks == 2

            await asyncio.to_thread(dev.close)
            late = await http.post(f"{path}?wait=1", json={"cmd": "reboot"}, headers=auth)
            assert late.status_code == 202 and late.json()["acked"] is False
    finally:
        await asyncio.to_thread(dev.close)


async def test_device_cli_lists_and_commands(
    hub: RunningHub, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test hub takes its fleet secret from settings, not from a file in its data dir.
    monkeypatch.setenv("PICOFLEET_PROVISION_SECRET", SECRET)
    dev = await _online(hub, pool)
    data = hub.settings.data_dir
    try:
        listing = await asyncio.to_thread(
            run_cli, "device", "list", "--http", hub.http, data_dir=data
        )
        assert KEY in listing and "yes" in listing
        shown = await asyncio.to_thread(
            run_cli, "device", "show", KEY, "--http", hub.http, data_dir=data
        )
        assert "device_key   AI-CMD001" in shown
        out = await asyncio.to_thread(
            run_cli, "device", "pump", KEY, "--seconds", "5", "--http", hub.http, data_dir=data
        )
        assert out.strip() == f"{KEY}: pump ok done"
        await asyncio.to_thread(
            run_cli, "device", "config", KEY, "pump.max_run_s=60", "--http", hub.http, data_dir=data
        )
        assert dev.commands[-1]["set"] == {"pump": {"max_run_s": 60}}

        refused = await asyncio.to_thread(
            subprocess.run,
            [*CLI, "device", "pump", KEY, "--seconds", "600", "--http", hub.http],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PICOFLEET_DATA_DIR": str(data)},
        )
        assert refused.returncode == 1
        assert f"{KEY} refused pump: out_of_bounds: limit {LIMIT_S} s" in refused.stderr
    finally:
        await asyncio.to_thread(dev.close)


def test_help_reads_well_at_80_columns() -> None:
    """Defaults in [brackets] survive (no rich markup), flags carry no <bool> placeholder."""
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    for args in (["smoke", "--help"], ["device", "pump", "--help"], ["--help"]):
        out = subprocess.run(
            [*CLI, *args], capture_output=True, text=True, env=env, timeout=60, check=True
        ).stdout
        assert "<bool>" not in out, out
        assert max(len(line) for line in out.splitlines()) <= 80, out
    smoke = subprocess.run(
        [*CLI, "smoke", "--help"], capture_output=True, text=True, env=env, timeout=60
    ).stdout
    assert "[http(s)://127.0.0.1:http_port]" in smoke
