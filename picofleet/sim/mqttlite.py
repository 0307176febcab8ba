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

from picofleet.core.tls import client_context

_CONNECT, _CONNACK, _PUBLISH, _PUBACK = 0x10, 0x20, 0x30, 0x40


class MqttLiteError(ConnectionError):
    """The broker refused or dropped the connection."""


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One packet from ``reader``: its first byte (type and flags) and its body."""
    head = await reader.readexactly(2)
    n, mult, b = 0, 1, head[1]
    while True:
        n += (b & 0x7F) * mult
        if not b & 0x80:
            break
        mult *= 128
        b = (await reader.readexactly(1))[0]
    return head[0], (await reader.readexactly(n) if n else b"")


def connect_packet(
    client_id: str, username: str, password: str, keepalive: int, clean: bool = True
) -> bytes:
    flags = 0xC0 | (0x02 if clean else 0)
    var = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body = var + _str(client_id) + _str(username) + _str(password)
    return bytes([_CONNECT]) + _length(len(body)) + body


def publish_packet(topic: str, payload: bytes, qos: int, pid: int) -> bytes:
    body = _str(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return bytes([_PUBLISH | (qos << 1)]) + _length(len(body)) + body


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
        self._writer.write(connect_packet(self.client_id, self.username, self.password, 60))
        head = await self._reader.readexactly(4)
        if head[0] != _CONNACK or head[3] != 0:
            raise MqttLiteError(f"CONNACK refused: code {head[3]}")
        self._task = asyncio.create_task(self._read_acks(), name=f"mqttlite[{self.client_id}]")

    async def _read_acks(self) -> None:
        assert self._reader is not None
        try:
            while True:
                first, body = await read_packet(self._reader)
                if first == _PUBACK:
                    (pid,) = struct.unpack("!H", body[:2])
                    sent_at = self._inflight.pop(pid, None)
                    if sent_at is not None:
                        self.acked += 1
                        if self.on_ack:
                            self.on_ack(sent_at)
                        self._slot.set()
        except (asyncio.IncompleteReadError, ConnectionError):
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
        self._writer.write(publish_packet(topic, payload, qos, pid))
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
            self._writer.write(b"\xe0\x00")  # DISCONNECT
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
