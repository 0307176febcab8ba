"""The hub on either broker, a raw MQTT device that can resend with DUP, and row counts."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from picofleet.core.credentials import FleetKeys
from picofleet.core.mqttwire import connect_packet, publish_packet, read_packet
from picofleet.core.settings import Settings
from picofleet.core.topics import Topics
from tests.conftest import RunningHub, running_hub
from tests.faults import TcpProxy
from tests.helpers import wait_for

BROKERS = ["amqtt", "mosquitto"]
_PUBACK = 0x40


@dataclass
class Hub:
    """A running hub and the port its devices publish to (amqtt's or Mosquitto's)."""

    running: RunningHub
    broker: str
    mqtt_port: int

    @property
    def topics(self) -> Topics:
        return self.running.topics

    @property
    def keys(self) -> FleetKeys:
        return self.running.keys

    @property
    def embedded(self) -> bool:
        return self.broker == "amqtt"


HubFactory = Callable[..., contextlib.AbstractAsyncContextManager[Hub]]


@pytest.fixture
def hub_on(settings: Settings, mosquitto_factory: Any) -> HubFactory:
    """``async with hub_on(broker, device_keys, **settings_overrides) as hub``."""

    @contextlib.asynccontextmanager
    async def start(broker: str, device_keys: list[str], **over: Any) -> AsyncIterator[Hub]:
        s = settings.model_copy(update=over)
        if broker == "amqtt":
            async with running_hub(s) as running:
                yield Hub(running, broker, s.mqtt_port)
            return
        mosq = await mosquitto_factory(device_keys)
        s = s.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{mosq.hub_port}"})
        async with running_hub(s, embedded_broker=False) as running:
            yield Hub(running, broker, mosq.port)

    return start


class AckLossProxy(TcpProxy):
    """Between the bridge and Mosquitto: while ``mute`` is set, the bridge's bytes (its
    PUBACKs) never reach the broker, as on a link that fails after the commit; ``cut`` then
    makes the bridge reconnect, and the broker redelivers what it never saw acknowledged."""

    mute = False

    def _forward(self, upstream: bool) -> bool:
        return not (upstream and self.mute)


class RawDevice:
    """A device speaking bare MQTT 3.1.1, so a test can resend a PUBLISH exactly as a device
    does after a lost PUBACK: same packet id, DUP flag set."""

    def __init__(self, port: int, user: str, password: str, client_id: str | None = None) -> None:
        self.port, self.user, self.password = port, user, password
        self.client_id = client_id or f"raw-{user}"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.acked: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    async def connect(self, *, clean: bool = True) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(connect_packet(self.client_id, self.user, self.password, 60, clean))
        head = await self.reader.readexactly(4)
        assert head[0] == 0x20 and head[3] == 0, f"CONNACK refused: {head!r}"
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.reader is not None
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                first, body = await read_packet(self.reader)
                if first == _PUBACK:
                    self.acked.add(struct.unpack("!H", body[:2])[0])

    def send(self, topic: str, payload: bytes, pid: int, *, dup: bool = False) -> None:
        assert self.writer is not None
        packet = bytearray(publish_packet(topic, payload, 1, pid))
        if dup:
            packet[0] |= 0x08
        self.acked.discard(pid)
        self.writer.write(bytes(packet))

    async def wait_acked(self, pids: set[int], timeout: float = 30) -> None:
        async def done() -> bool:
            return pids <= self.acked

        await wait_for(done, timeout=timeout)

    async def abort(self) -> None:
        """Drop the connection without DISCONNECT (a Wi-Fi loss)."""
        assert self.writer is not None
        self.writer.transport.abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def close(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(b"\xe0\x00")
            self.writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.asynccontextmanager
async def raw_device(hub: Hub, user: str, **kw: Any) -> AsyncIterator[RawDevice]:
    dev = RawDevice(hub.mqtt_port, user, hub.keys.device_password(user), **kw)
    await dev.connect()
    try:
        yield dev
    finally:
        await dev.close()


@dataclass(frozen=True)
class Counts:
    raw: int
    facts: int
    errors: int
    codes: dict[str, int]


async def counts(pool: asyncpg.Pool) -> Counts:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM raw_record) AS raw,"
        " (SELECT count(*) FROM processed_record) AS facts,"
        " (SELECT count(*) FROM ingest_error) AS errors"
    )
    assert row is not None
    codes = Counter(r["code"] for r in await pool.fetch("SELECT code FROM ingest_error"))
    return Counts(row["raw"], row["facts"], row["errors"], dict(codes))


async def wait_raw(pool: asyncpg.Pool, n: int, timeout: float = 60) -> Counts:
    """Wait until ``n`` raw records are committed (the bridge is done with them), then count."""

    async def done() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM raw_record") >= n)

    await wait_for(done, timeout=timeout, interval=0.1)
    await asyncio.sleep(0.2)  # nothing more may arrive: the count must then stay exact
    return await counts(pool)


async def post(hub: Hub, body: Any, *, auth: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=hub.running.http, timeout=30) as c:
        r = await c.post("/ingest", json=body, auth=auth)
    assert r.status_code == 200, r.text
    return list(r.json())
