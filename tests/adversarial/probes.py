"""Shared pieces of the adversarial tests: the hub's HTTP probes and a paced device stream."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import httpx

from picofleet.core.credentials import FleetKeys
from picofleet.core.topics import Kind, Topics
from picofleet.sim.mqttlite import Publisher
from tests.delivery.conftest import DEVICES, envelope


async def ready_status(http_port: int) -> int:
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(f"http://127.0.0.1:{http_port}/ready")).status_code


async def post_ingest_status(http_port: int, body: bytes) -> int:
    async with httpx.AsyncClient(timeout=30) as http:
        return (await http.post(f"http://127.0.0.1:{http_port}/ingest", content=body)).status_code


async def metric(http_port: int, name: str) -> float | None:
    """One sample of /metrics by its exact name and labels, e.g. 'x{task="bridge"}'."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"http://127.0.0.1:{http_port}/metrics")).text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return None if m is None else float(m.group(1))


@dataclass
class PacedStream:
    """Every device publishes numbered envelopes at QoS 1 until ``stop`` is set."""

    port: int
    keys: FleetKeys
    every_s: float = 0.01
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    pubs: list[Publisher] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(p.sent for p in self.pubs)

    @property
    def acked(self) -> int:
        return sum(p.acked for p in self.pubs)

    async def run(self) -> None:
        topics = Topics()
        self.pubs = [
            Publisher(
                host="127.0.0.1",
                port=self.port,
                username=d,
                password=self.keys.device_password(d),
                max_inflight=200,
            )
            for d in DEVICES
        ]
        await asyncio.gather(*(p.connect() for p in self.pubs))

        async def one(dev: str, pub: Publisher) -> None:
            topic = topics.device(dev, Kind.TELEMETRY)
            seq = 0
            while not self.stop.is_set():
                seq += 1
                await pub.publish(topic, envelope(seq))
                await asyncio.sleep(self.every_s)
            assert await pub.wait_acked(120), f"{dev}: messages never acknowledged"

        try:
            await asyncio.gather(*(one(d, p) for d, p in zip(DEVICES, self.pubs, strict=True)))
        finally:
            await asyncio.gather(*(p.close() for p in self.pubs))
