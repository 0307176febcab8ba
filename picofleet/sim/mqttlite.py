"""A minimal asyncio MQTT 3.1.1 publisher for load generation.

Thousands of simulated devices need thousands of connections; paho's thread per client does
not scale to that in one process, so the load generator speaks just the part of the protocol
it needs: CONNECT, PUBLISH (QoS 0/1), PUBACK counting, PINGREQ-free short sessions.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from pathlib import Path

from picofleet.core import mqttwire as wire
from picofleet.core.tls import client_context


class MqttLiteError(ConnectionError):
    """The broker refused or dropped the connection."""


class Publisher:
    """One device connection that publishes and counts PUBACKs.

    Args:
        host, port: the broker.
        ca: connect over TLS, trusting only this CA certificate (the hub's).
        username, password: the device's credentials.
        client_id: MQTT client id (default: the username).
        max_inflight: unacknowledged QoS 1 messages allowed before ``publish`` waits.
        on_ack: called with the packet id's send time for each PUBACK (latency sampling).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        client_id: str | None = None,
        max_inflight: int = 100,
        on_ack: Callable[[float], None] | None = None,
        ca: Path | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._ssl = None if ca is None else client_context(ca)
        self.username, self.password = username, password
        self.client_id = client_id or username
        self.max_inflight = max_inflight
        self.on_ack = on_ack
        self.sent = 0
        self.acked = 0
        self._inflight: dict[int, float] = {}
        self._pid = 0
        self._slot = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, ssl=self._ssl
        )
        self._writer.write(wire.connect_packet(self.client_id, self.username, self.password, 60))
        head = await self._reader.readexactly(4)
        if head[0] >> 4 != wire.CONNACK or head[3] != 0:
            raise MqttLiteError(f"CONNACK refused: code {head[3]}")
        self._task = asyncio.create_task(self._read_acks(), name=f"mqttlite[{self.client_id}]")

    async def _read_acks(self) -> None:
        assert self._reader is not None
        try:
            while True:
                first, body = await wire.read_packet(self._reader)
                if first >> 4 == wire.PUBACK:
                    (pid,) = struct.unpack("!H", body[:2])
                    sent_at = self._inflight.pop(pid, None)
                    if sent_at is not None:
                        self.acked += 1
                        if self.on_ack:
                            self.on_ack(sent_at)
                        self._slot.set()
        except (asyncio.IncompleteReadError, ConnectionError, wire.WireError):
            self._slot.set()

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        assert self._writer is not None
        if self._writer.is_closing():
            raise MqttLiteError("connection closed")
        pid = 0
        if qos:
            while len(self._inflight) >= self.max_inflight:
                self._slot.clear()
                await self._slot.wait()
                if self._task is not None and self._task.done():
                    raise MqttLiteError("connection lost")
            self._pid = self._pid % 65535 + 1
            pid = self._pid
            self._inflight[pid] = time.perf_counter()
        self._writer.write(wire.publish_packet(topic, payload, qos, pid))
        self.sent += 1
        if self._writer.transport.get_write_buffer_size() > 256 * 1024:
            await self._writer.drain()

    async def wait_acked(self, limit_s: float = 30.0) -> bool:
        deadline = time.monotonic() + limit_s
        while self._inflight and time.monotonic() < deadline:
            self._slot.clear()
            try:
                await asyncio.wait_for(self._slot.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
        return not self._inflight

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.write(wire.packet(wire.DISCONNECT << 4, b""))
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except ConnectionError:
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, ConnectionError):
                pass
