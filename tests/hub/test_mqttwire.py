"""The one CPython MQTT codec (picofleet/core/mqttwire.py) against the standard's examples."""

from __future__ import annotations

import asyncio

import pytest

from picofleet.core import mqttwire as wire

# MQTT 3.1.1 §2.2.3, Table 2.4: the edges of each remaining-length size.
EDGES = [
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"),
    (2_097_151, b"\xff\xff\x7f"),
    (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
]


@pytest.mark.parametrize(("n", "field"), EDGES)
def test_remaining_length(n: int, field: bytes) -> None:
    assert wire.encode_length(n) == field
    assert wire.decode_length(field) == n


def test_a_fifth_length_byte_is_malformed() -> None:
    with pytest.raises(wire.WireError):
        wire.decode_length(b"\xff\xff\xff\xff\x01")


def test_connect_username_and_a_cut_packet() -> None:
    pkt = wire.connect_packet("AI-CLIENT1", "AI-USER1", "secret", 60)
    assert pkt[0] == 0x10
    first, parsed = asyncio.run(_read(pkt))
    assert first == 0x10 and parsed == pkt[2:]  # a body under 128 bytes: one length byte
    assert wire.connect_username(parsed) == "AI-USER1"
    with pytest.raises(wire.WireError):
        wire.connect_username(parsed[:20])  # ends inside the client id


def test_publish_parts() -> None:
    pkt = wire.publish_packet("picofleet/dev/AI-1/telemetry", b"{}", 1, 513, retain=True)
    first, body = asyncio.run(_read(pkt))
    assert first == 0x33  # PUBLISH, QoS 1, retain
    assert wire.publish_parts(first & 0x0F, body) == ("picofleet/dev/AI-1/telemetry", 513, 32)
    assert body[32:] == b"{}"
    assert wire.ack_packet(wire.PUBREL, 513) == b"\x62\x02\x02\x01"


async def _read(data: bytes) -> tuple[int, bytes]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await wire.read_packet(reader)
