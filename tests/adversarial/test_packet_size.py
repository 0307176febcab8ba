"""Finding 9 (issue 19): a packet size limit on both brokers.

A device that announces a 200 MiB PUBLISH is disconnected as soon as the fixed header is
read, before its body is buffered (the embedded broker took 4 x 200 MiB into memory). The
limit is ``mqtt_max_packet_bytes``, counted as Mosquitto counts its ``max_packet_size``
(remaining length + 1), so the boundary is the same on both brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import struct

import asyncpg
import pytest

from picofleet.core.credentials import FleetKeys
from picofleet.core.mqttwire import encode_length, encode_str
from picofleet.core.settings import Settings
from picofleet.core.topics import Kind, Topics
from tests.adversarial.raw import PUBACK, RawClient, publish_packet
from tests.conftest import mosquitto_available, need, running_hub

DEV = "AI-HUGE01"
LIMIT = 64 * 1024


def sized_publish(topic: str, total: int, pid: int) -> bytes:
    """A QoS 1 PUBLISH whose remaining length + 1 is exactly ``total``."""
    head = encode_str(topic) + struct.pack("!H", pid)
    filler = total - 1 - len(head) - len(b'{"pad":""}')
    packet = publish_packet(topic, b'{"pad":"' + b"x" * filler + b'"}', 1, pid)
    assert packet[1:4] == encode_length(total - 1)
    return packet


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("broker", ["amqtt", "mosquitto"])
async def test_an_oversized_packet_ends_the_connection_before_its_body_is_read(
    settings: Settings, keys: FleetKeys, pool: asyncpg.Pool, broker: str
) -> None:
    if broker == "mosquitto":
        need(mosquitto_available(), "mosquitto")
    await pool.execute("INSERT INTO device (device_key) VALUES ($1)", DEV)
    s = settings.model_copy(update={"broker": broker, "mqtt_max_packet_bytes": LIMIT})
    topic = Topics(s.topic_prefix).device(DEV, Kind.TELEMETRY)
    password = keys.device_password(DEV)
    async with running_hub(s, keys, stop_timeout=30):
        # At the limit: taken and acknowledged.
        c = await RawClient.connected(s.mqtt_port, DEV, password)
        c.send(sized_publish(topic, LIMIT, 1))
        ack = await c.packet(timeout=30)
        assert ack is not None and (ack.type, ack.pid) == (PUBACK, 1)
        # One byte over: the connection ends, nothing acknowledged.
        c.send(sized_publish(topic, LIMIT + 1, 2))
        got, closed = await c.until_closed(timeout=10)
        assert (closed, [p for p in got if p.type == PUBACK]) == (True, [])
        c.close()

        # 200 MiB announced, 8 MiB sent: the connection ends before the body is buffered.
        before = rss_mib()
        c = await RawClient.connected(s.mqtt_port, DEV, password)
        body_head = encode_str(topic) + struct.pack("!H", 3)
        c.send(bytes([0x32]) + encode_length(200 * 1024 * 1024) + body_head)
        sent = 0
        with contextlib.suppress(ConnectionError, TimeoutError):
            for _ in range(32):
                c.send(b"x" * (256 * 1024))
                await asyncio.wait_for(c.writer.drain(), 5)
                sent += 256 * 1024
        got, closed = await c.until_closed(timeout=10)
        c.close()
        after = rss_mib()
        print(f"[{broker}] body sent: {sent >> 20} MiB; max RSS {before:.0f}->{after:.0f} MiB")
        assert (closed, [p for p in got if p.type == PUBACK]) == (True, [])

        # A fresh connection works, and only the message at the limit and this one are stored.
        c = await RawClient.connected(s.mqtt_port, DEV, password)
        c.send(publish_packet(topic, b'{"v":1,"seq":9,"readings":[]}', 1, 4))
        ack = await c.packet(timeout=30)
        assert ack is not None and (ack.type, ack.pid) == (PUBACK, 4)
        c.close()

        async def stored() -> list[int]:
            rows = await pool.fetch(
                "SELECT payload_size FROM raw_record WHERE device_key = $1 ORDER BY id", DEV
            )
            return [r["payload_size"] for r in rows]

        sizes = await stored()
        for _ in range(100):
            if len(sizes) >= 2:
                break
            await asyncio.sleep(0.1)
            sizes = await stored()
        assert len(sizes) == 2 and sizes[1] == len(b'{"v":1,"seq":9,"readings":[]}'), sizes
