"""Shared pieces of the delivery tests: a stream of uniquely numbered envelopes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.topics import Kind, Topics
from picofleet.sim.mqttlite import Publisher
from tests.conftest import running_hub
from tests.helpers import SECRET, wait_for

DEVICES = [f"DLV-{i:02d}" for i in range(10)]
TS = 1_763_000_000


def envelope(seq: int) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "seq": seq,
            "ts": TS + seq,
            "readings": [{"type": "soil_moisture_pct", "value": seq % 100}],
        }
    ).encode()


@dataclass
class Stream:
    sent: int = 0
    acked: int = 0


async def publish_stream(
    port: int, keys: FleetKeys, per_device: int, stream: Stream, *, topics: Topics | None = None
) -> None:
    """Publish ``per_device`` numbered envelopes from each device at QoS 1, as fast as the
    broker takes them; ``stream`` shows progress while it runs."""
    topics = topics or Topics()
    pubs = [
        Publisher(
            host="127.0.0.1",
            port=port,
            username=d,
            password=keys.device_password(d),
            max_inflight=50,
        )
        for d in DEVICES
    ]
    await asyncio.gather(*(p.connect() for p in pubs))

    async def one(dev: str, pub: Publisher) -> None:
        topic = topics.device(dev, Kind.TELEMETRY)
        for seq in range(1, per_device + 1):
            await pub.publish(topic, envelope(seq))
            stream.sent += 1
        await pub.wait_acked(120)

    try:
        await asyncio.gather(*(one(d, p) for d, p in zip(DEVICES, pubs, strict=True)))
    finally:
        stream.acked = sum(p.acked for p in pubs)
        await asyncio.gather(*(p.close() for p in pubs))


async def fact_counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM processed_record) AS facts,"
        " (SELECT count(DISTINCT (device_id, seq)) FROM processed_record) AS distinct_facts,"
        " (SELECT count(*) FROM raw_record) AS raw"
    )
    assert row is not None
    return row["facts"], row["distinct_facts"], row["raw"]


async def wait_facts(pool: asyncpg.Pool, n: int, timeout: float = 120) -> None:
    async def done() -> bool:
        facts, _, _ = await fact_counts(pool)
        return facts >= n

    await wait_for(done, timeout=timeout, interval=0.2)


@contextlib.asynccontextmanager
async def in_process_bridge(
    settings: Settings,
    *,
    embedded: bool = False,
    roles: frozenset[str] = frozenset({"bridge", "http"}),
) -> AsyncIterator[asyncio.Task[None]]:
    async with running_hub(
        settings, roles=roles, embedded_broker=embedded, stop_timeout=30
    ) as running:
        yield running.task


def bridge_process(
    db_url: str, mqtt_port: int, data_dir: str, client_id: str, **extra: str
) -> subprocess.Popen[bytes]:
    """``picofleet serve bridge`` as its own process; ``extra``: more environment."""
    env = dict(
        os.environ,
        **extra,
        PICOFLEET_DATABASE_URL=db_url,
        PICOFLEET_MQTT_URL=f"mqtt://127.0.0.1:{mqtt_port}",
        PICOFLEET_PROVISION_SECRET=SECRET,
        PICOFLEET_BRIDGE_CLIENT_ID=client_id,
        PICOFLEET_DATA_DIR=data_dir,
        PICOFLEET_LOG_FORMAT="json",
    )
    with open(os.path.join(data_dir, f"{client_id}.log"), "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "picofleet", "serve", "bridge"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_bridge_ready(data_dir: str, client_id: str, timeout: float = 30) -> None:
    """Block until the bridge process logged that it is subscribed and ready."""
    path = os.path.join(data_dir, f"{client_id}.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, "rb") as f:
            if f.read().count(b"hub.ready") >= 1:
                time.sleep(0.3)  # the SUBACK follows CONNACK closely
                return
        time.sleep(0.05)
    raise AssertionError(f"bridge {client_id} not ready within {timeout}s")


def kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
