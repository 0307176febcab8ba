"""Raw MQTT 3.1.1 over a socket, for tests that must control packet boundaries.

paho frames every packet itself and never sends a second CONNECT or a lying length; these
helpers write exactly the bytes a test asks for, and read back whole packets.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

from picofleet.core import mqttwire as wire
from picofleet.core.mqttwire import (
    CONNACK,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    connect_packet,
    publish_packet,
)

__all__ = [
    "CONNACK",
    "PUBACK",
    "PUBCOMP",
    "PUBLISH",
    "PUBREC",
    "PUBREL",
    "Packet",
    "RawClient",
    "connect_packet",
    "publish_packet",
    "pubrel_packet",
]


def pubrel_packet(pid: int) -> bytes:
    return wire.ack_packet(PUBREL, pid)


@dataclass(frozen=True)
class Packet:
    type: int
    flags: int
    body: bytes

    @property
    def pid(self) -> int:
        return int(struct.unpack_from("!H", self.body)[0])


class RawClient:
    """One TCP connection that writes raw bytes and reads whole packets."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        return cls(*await asyncio.open_connection(host, port))

    @classmethod
    async def connected(
        cls, port: int, username: str, password: str, client_id: str | None = None
    ) -> RawClient:
        """A connection whose CONNECT was accepted (CONNACK 0 asserted)."""
        c = await cls.open(port)
        c.send(connect_packet(client_id or username, username, password, 60))
        ack = await c.packet()
        assert ack is not None and ack.type == CONNACK and ack.body[1] == 0, ack
        return c

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def packet(self, timeout: float = 10.0) -> Packet | None:
        """The next packet, or None once the server has closed the connection."""
        try:
            return await asyncio.wait_for(self._packet(), timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def _packet(self) -> Packet:
        first, body = await wire.read_packet(self.reader)
        return Packet(first >> 4, first & 0x0F, body)

    async def until_closed(self, timeout: float = 10.0) -> tuple[list[Packet], bool]:
        """The packets the server sends until it closes the connection, and whether it did
        (False: still open after ``timeout`` s of silence)."""
        got: list[Packet] = []
        try:
            while (p := await self.packet(timeout)) is not None:
                got.append(p)
        except TimeoutError:
            return got, False
        return got, True

    def close(self) -> None:
        self.writer.close()
