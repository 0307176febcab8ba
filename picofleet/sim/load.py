"""Fleet load generator: many simulated devices per process over real MQTT credentials.

Formats: ``legacy`` (numeric ids, flat events on the ingest topic: ticks, battery, height),
``v1`` (serial keys, firmware envelopes with a per-run seq base so reruns are new facts),
``mixed`` (half of each, legacy ticks beside new-firmware millimetres).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from picofleet.core.credentials import FleetKeys
from picofleet.core.topics import Kind, Topics
from picofleet.sim.mqttlite import Publisher

Format = Literal["legacy", "v1", "mixed"]
MALFORMED: tuple[bytes, ...] = (
    b"{}",
    b'{"device_id": 1}',
    b'{"event_type": "battery_charge", "value": "high"}',
    b"{not json",
    b'{"v":1,"seq":-1,"readings":[]}',
    b'{"device_id": 1, "event_type": "warp_drive", "value": 1}',
)


@dataclass
class LoadResult:
    devices: int
    sent: int = 0
    acked: int = 0
    malformed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


@dataclass
class SimDevice:
    key: str
    legacy: bool
    topic: str
    seq: int
    rng: random.Random

    def payload(self, now: float) -> bytes:
        if self.legacy:
            kind = self.rng.randrange(3)
            if kind == 0:
                body = {
                    "device_id": int(self.key),
                    "event_type": "platform_extension_ticks",
                    "value": self.rng.randrange(0, 3001),
                    "timestamp": now,
                }
            elif kind == 1:
                body = {
                    "device_id": int(self.key),
                    "event_type": "battery_charge",
                    "value": round(self.rng.uniform(5, 100), 1),
                    "timestamp": now,
                }
            else:
                body = {
                    "device_id": int(self.key),
                    "event_type": "platform_height_mm",
                    "value": round(self.rng.uniform(0, 200), 1),
                    "timestamp": now,
                }
            return json.dumps(body).encode()
        self.seq += 1
        body = {
            "v": 1,
            "seq": self.seq,
            "ts": now,
            "readings": [
                {"type": "platform_extension_mm", "value": round(self.rng.uniform(-150, 150), 2)},
                {"type": "soil_moisture_pct", "value": round(self.rng.uniform(10, 90), 1)},
            ],
        }
        return json.dumps(body).encode()


def make_devices(
    n: int, fmt: Format, topics: Topics, *, first: int = 0, seed: int = 1
) -> list[SimDevice]:
    base = int(time.time() * 1000)  # a new seq range per run: reruns are new facts
    out = []
    for i in range(first, first + n):
        legacy = fmt == "legacy" or (fmt == "mixed" and i % 2 == 0)
        key = str(1000 + i) if legacy else f"SIM-{i:06d}"
        topic = topics.ingest if legacy else topics.device(key, Kind.TELEMETRY)
        out.append(SimDevice(key, legacy, topic, base, random.Random(seed + i)))
    return out


async def run_load(
    *,
    host: str,
    port: int,
    keys: FleetKeys,
    topics: Topics,
    devices: int,
    rate: float,
    duration: float,
    fmt: Format = "mixed",
    malformed: float = 0.0,
    first: int = 0,
    qos: int = 1,
    max_inflight: int = 200,
    ca: Path | None = None,
) -> LoadResult:
    """Publish at ``rate`` msg/s in total for ``duration`` s; waits for every PUBACK."""
    fleet = make_devices(devices, fmt, topics, first=first)
    result = LoadResult(devices=devices)
    rng = random.Random(99 + first)
    pubs = [
        Publisher(
            host=host,
            port=port,
            ca=ca,
            username=d.key,
            password=keys.device_password(d.key),
            client_id=f"sim-{d.key}",
            max_inflight=max_inflight,
            on_ack=lambda t: result.latencies.append(time.perf_counter() - t),
        )
        for d in fleet
    ]
    for i in range(0, len(pubs), 100):  # connect in bursts: brokers dislike 1,000 at once
        await asyncio.gather(*(p.connect() for p in pubs[i : i + 100]))
    t0 = time.perf_counter()
    due, idx = 0.0, 0
    try:
        while (elapsed := time.perf_counter() - t0) < duration:
            target = rate * elapsed
            while due < target:
                dev, pub = fleet[idx], pubs[idx]
                idx = (idx + 1) % len(fleet)
                if malformed and rng.random() < malformed:
                    payload = rng.choice(MALFORMED)
                    result.malformed += 1
                else:
                    payload = dev.payload(time.time())
                await pub.publish(dev.topic, payload, qos)
                due += 1
            await asyncio.sleep(0.005)
        result.seconds = time.perf_counter() - t0
        await asyncio.gather(*(p.wait_acked(60) for p in pubs))
    finally:
        result.sent = sum(p.sent for p in pubs)
        result.acked = sum(p.acked for p in pubs)
        await asyncio.gather(*(p.close() for p in pubs))
    return result
