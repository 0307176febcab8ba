"""The naive bridge the benchmark compares against: one INSERT per message, ack on receipt.

Run as ``python bench/naive_bridge.py MQTT_PORT DB_URL``; it decodes with the same Decoder
so the difference is only the write path.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime

import asyncpg
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from picofleet.bridge.decode import Decoder, Limits
from picofleet.bridge.ledger import load_record_types
from picofleet.core.credentials import FleetKeys
from picofleet.core.topics import Topics

SECRET = sys.argv[3].encode() if len(sys.argv) > 3 else b"bench-fleet-secret-0123456789"


async def main(port: int, url: str) -> None:
    conn = await asyncpg.connect(url)
    dec = Decoder(
        topics=Topics(),
        keys=FleetKeys(SECRET),
        record_types=await load_record_types(conn),
        limits=Limits(),
    )
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="naive-bridge", clean_session=True)
    c.username_pw_set("hub", FleetKeys(SECRET).role_password("hub"))

    def on_message(cl: paho.Client, u: object, m: paho.MQTTMessage) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (m.topic, bytes(m.payload)))

    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe("picofleet/devices/+/telemetry", 1)
    c.loop_start()
    devices: dict[str, int] = {}
    while True:
        topic, payload = await queue.get()
        msg = dec.decode(topic, payload, received_at=time.time())
        raw_id = await conn.fetchval(
            "INSERT INTO raw_record (received_at, source, topic, device_key, payload,"
            " payload_size, body) VALUES (now(), 'mqtt', $1, $2, $3, $4, $5::jsonb) RETURNING id",
            topic,
            msg.device_key,
            payload,
            len(payload),
            msg.body,
        )
        for f in msg.facts:
            if f.device_key not in devices:
                devices[f.device_key] = await conn.fetchval(
                    "INSERT INTO device (device_key) VALUES ($1) ON CONFLICT (device_key)"
                    " DO UPDATE SET last_seen = now() RETURNING id",
                    f.device_key,
                )
            await conn.execute(
                "INSERT INTO processed_record (raw_id, item_idx, device_id, record_type_id,"
                " record_time, value, seq) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT DO NOTHING",
                raw_id,
                f.idx,
                devices[f.device_key],
                f.type_id,
                datetime.fromtimestamp(f.time, UTC),
                f.value,
                f.seq,
            )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
