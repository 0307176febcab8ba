"""Issue 18, past one Pi: bridge replicas share one subscription (``$share``) on a real
Mosquitto. One replica is SIGKILLed mid-stream: the others carry their shares, and when the
dead one comes back under its own client id its persistent session gives up what it held
(Mosquitto keeps a dead member's share for it: a replica needs a stable client id).
Nothing lost, nothing counted twice, counted in PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from picofleet.core.credentials import FleetKeys
from tests.delivery.conftest import (
    Stream,
    bridge_process,
    fact_counts,
    kill9,
    publish_stream,
    wait_bridge_ready,
    wait_facts,
)
from tests.helpers import wait_for

PER_DEVICE = 1000  # 10 devices: a 10,000-message stream
REPLICAS = 3


async def _raw(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM raw_record"))


async def test_three_replicas_one_killed_mid_stream(
    keys: FleetKeys,
    pool: asyncpg.Pool,
    db_url: str,
    mosquitto_factory: Any,
    tmp_path: Path,
) -> None:
    mosq = await mosquitto_factory([f"DLV-{i:02d}" for i in range(10)])
    ids = [f"bridge-{n}-{uuid.uuid4().hex[:4]}" for n in range(REPLICAS)]
    share = {"PICOFLEET_SHARED_SUBSCRIPTION": "picofleet"}
    procs = [bridge_process(db_url, mosq.hub_port, str(tmp_path), c, **share) for c in ids]
    try:
        for c in ids:
            await asyncio.to_thread(wait_bridge_ready, str(tmp_path), c)
        stream = Stream()
        pub = asyncio.create_task(publish_stream(mosq.port, keys, PER_DEVICE, stream))
        await wait_for(lambda: _at_least(pool, 2000), timeout=60)
        kill9(procs[0])
        killed_at = await _raw(pool)
        assert killed_at < 10_000, "the kill should land mid-stream"
        await pub
        assert stream.acked == 10_000
        # The two survivors keep committing their shares while the dead one is away.
        await wait_for(lambda: _at_least(pool, killed_at + 3000), timeout=60)
        away = await _settled(pool)
        # Mosquitto 2.0 keeps the dead member's unacked messages, and keeps queueing its
        # round-robin turns, in its persistent session: they wait for that client id.
        assert away < 10_000
        procs[0] = bridge_process(db_url, mosq.hub_port, str(tmp_path), ids[0], **share)
        await wait_facts(pool, 10_000)
        await asyncio.sleep(1)  # a late duplicate would land now
    finally:
        for p in procs:
            kill9(p)
    facts, distinct, raw = await fact_counts(pool)
    assert (facts, distinct) == (10_000, 10_000)
    assert raw >= 10_000  # redelivered copies are stored as raw, never as facts twice


async def _settled(pool: asyncpg.Pool) -> int:
    """The fact count once it stopped growing for two seconds."""
    last, still = -1, 0
    while still < 10:
        n = (await fact_counts(pool))[0]
        still = still + 1 if n == last else 0
        last = n
        await asyncio.sleep(0.2)
    return last


async def _at_least(pool: asyncpg.Pool, n: int) -> bool:
    return await _raw(pool) >= n
