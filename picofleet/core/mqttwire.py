"""The MQTT 3.1.1 wire format, as far as the hub's own code reads or writes it by hand.

One codec for every CPython part that handles raw packets: the embedded broker's guard and
tap (picofleet/broker/), the load generator (picofleet/sim/mqttlite.py) and the tests that
speak raw MQTT. Clients that only need a session use paho; the firmware has its own
(pico_w/mqtt.py, MicroPython). Section numbers are the OASIS MQTT 3.1.1 standard's.
"""

from __future__ import annotations

import asyncio
import struct

# Control packet types (§2.2.1): the high nibble of the first byte.
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
MAX_LENGTH_BYTES = 4  # the remaining length takes 1..4 bytes (§2.2.3)


class WireError(ValueError):
    """Bytes that are not a well-formed MQTT 3.1.1 packet."""


def encode_length(n: int) -> bytes:
    """The remaining-length field for a body of ``n`` bytes (§2.2.3)."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_length(field: bytes | bytearray) -> int:
    """The value of a complete remaining-length field (its last byte has no 0x80 bit)."""
    if not 1 <= len(field) <= MAX_LENGTH_BYTES:
        raise WireError("malformed remaining length")
    return sum((b & 0x7F) << (7 * i) for i, b in enumerate(field))


def encode_str(s: str) -> bytes:
    """A length-prefixed UTF-8 string (§1.5.3)."""
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def decode_str(buf: bytes, at: int) -> tuple[str, int]:
    """The string at ``at`` and the offset after it; WireError if the buffer ends first."""
    try:
        (n,) = struct.unpack_from("!H", buf, at)
    except struct.error as exc:
        raise WireError("string length past the end of the packet") from exc
    end = at + 2 + n
    if end > len(buf):
        raise WireError("string past the end of the packet")
    return buf[at + 2 : end].decode("utf-8", "replace"), end


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_length(len(body)) + body


def connect_packet(
    client_id: str, username: str, password: str, keepalive: int, clean: bool = True
) -> bytes:
    flags = 0xC0 | (0x02 if clean else 0)  # username, password, clean session
    var = encode_str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    return packet(
        CONNECT << 4, var + encode_str(client_id) + encode_str(username) + encode_str(password)
    )


def publish_packet(
    topic: str, payload: bytes, qos: int, pid: int, *, retain: bool = False
) -> bytes:
    body = encode_str(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return packet((PUBLISH << 4) | (qos << 1) | int(retain), body)


def ack_packet(kind: int, pid: int) -> bytes:
    """PUBACK, PUBREC, PUBREL (with its required flags 0b0010, §3.6.1) or PUBCOMP."""
    return packet((kind << 4) | (0x02 if kind == PUBREL else 0), struct.pack("!H", pid))


def connect_username(body: bytes) -> str | None:
    """The username of a CONNECT packet's body (variable header + payload), if it has one."""
    _, at = decode_str(body, 0)  # protocol name
    if at + 4 > len(body):
        raise WireError("CONNECT variable header cut short")
    flags = body[at + 1]
    at += 4  # level, flags, keepalive
    _, at = decode_str(body, at)  # client id
    if flags & 0x04:  # will topic and will message
        _, at = decode_str(body, at)
        _, at = decode_str(body, at)
    if flags & 0x80:
        user, _ = decode_str(body, at)
        return user
    return None


def publish_parts(flags: int, body: bytes) -> tuple[str, int, int]:
    """A PUBLISH body's topic, packet id (0 at QoS 0) and the offset of its payload."""
    topic, at = decode_str(body, 0)
    pid = 0
    if (flags >> 1) & 0x03:
        if at + 2 > len(body):
            raise WireError("PUBLISH packet id cut short")
        (pid,) = struct.unpack_from("!H", body, at)
        at += 2
    return topic, pid, at


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One packet from ``reader``: its first byte (type and flags) and its body."""
    first = (await reader.readexactly(1))[0]
    field = bytearray()
    while True:
        field += await reader.readexactly(1)
        if not field[-1] & 0x80:
            break
        if len(field) == MAX_LENGTH_BYTES:
            raise WireError("malformed remaining length")
    n = decode_length(field)
    return first, (await reader.readexactly(n) if n else b"")
