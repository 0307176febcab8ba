"""Issue 19, finding 2 (second half): a hub task that dies is restarted, and the hub tells
the truth meanwhile; one that keeps dying takes the hub down (non-zero exit for systemd).

The poison is a decoder that raises an error of a kind the bridge does not expect, with the
real database and broker behind it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest

from picofleet.bridge.decode import Decoder, Message
from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.supervise import HubFailed
from picofleet.core.topics import Kind, Topics
from picofleet.hub import run_hub
from tests.adversarial.probes import metric, ready_status
from tests.conftest import running_hub
from tests.helpers import Client, wait_for

BRIDGE_UP = 'picofleet_task_up{task="bridge"}'
BRIDGE_RESTARTS = 'picofleet_task_restarts_total{task="bridge"}'
KEY = "AI-SUPERV1"


class Poison:
    """While armed, decoding raises an error no part of the bridge handles."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = True
        self.raised = 0
        real = Decoder.decode

        def decode(dec: Decoder, topic: str, payload: bytes, **kw: Any) -> Message:
            if self.armed:
                self.raised += 1
                raise LookupError("poisoned decoder")
            return real(dec, topic, payload, **kw)

        monkeypatch.setattr(Decoder, "decode", decode)


def _reading() -> bytes:
    return json.dumps({"v": 1, "seq": 1, "readings": [{"type": "soil_moisture_pct", "value": 7}]})


async def _counts(pool: asyncpg.Pool) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM raw_record) AS raw,"
        " (SELECT count(*) FROM processed_record) AS facts"
    )
    assert row is not None
    return row["raw"], row["facts"]


async def test_dead_bridge_is_restarted_and_ready_says_so(
    settings: Settings, keys: FleetKeys, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison = Poison(monkeypatch)
    port = settings.http_port
    async with running_hub(settings, keys) as hub:
        assert await ready_status(port) == 200
        dev = Client(hub.mqtt_port, KEY, keys.device_password(KEY), client_id="superv")
        assert await asyncio.to_thread(dev.connect)
        try:
            info = dev.c.publish(Topics().device(KEY, Kind.TELEMETRY), _reading(), qos=1)

            async def down() -> bool:
                restarts = await metric(port, BRIDGE_RESTARTS)
                return (
                    await ready_status(port) == 503
                    and await metric(port, BRIDGE_UP) == 0
                    and restarts is not None
                    and restarts >= 1
                )

            await wait_for(down, timeout=20)
            assert not info.is_published(), "acknowledged while the bridge was dead"
            assert await _counts(pool) == (0, 0)
            poison.armed = False

            async def recovered() -> bool:
                return (
                    await _counts(pool) == (1, 1)
                    and await ready_status(port) == 200
                    and await metric(port, BRIDGE_UP) == 1
                )

            await wait_for(recovered, timeout=40)
            await asyncio.to_thread(info.wait_for_publish, 10)
            assert info.is_published()
        finally:
            await asyncio.to_thread(dev.close)
    assert poison.raised >= 2
    assert await _counts(pool) == (1, 1)


async def test_a_task_that_keeps_dying_takes_the_hub_down(
    settings: Settings, keys: FleetKeys, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    Poison(monkeypatch)
    s = settings.model_copy(update={"task_max_failures": 2})
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_hub(s, roles={"bridge", "http"}, stop=stop, ready=ready, handle_signals=False)
    )
    await asyncio.wait_for(ready.wait(), 30)
    dev = Client(s.mqtt_port, KEY, keys.device_password(KEY), client_id="superv")
    assert await asyncio.to_thread(dev.connect)
    try:
        dev.c.publish(Topics().device(KEY, Kind.TELEMETRY), _reading(), qos=1)
        with pytest.raises(HubFailed, match="bridge failed 3 times"):
            await asyncio.wait_for(task, 60)
    finally:
        await asyncio.to_thread(dev.close)
        if not task.done():
            stop.set()
            await asyncio.wait_for(task, 20)
    assert await _counts(pool) == (0, 0)
