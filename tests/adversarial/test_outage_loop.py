"""Issue 19, finding 2: a loop of PostgreSQL outages never stops ingest for good.

Devices publish QoS 1 throughout; PostgreSQL goes away N times, each time at another point of
the bridge's commit cycle (idle, mid-batch, while the backlog of the last outage drains) and
in one of three ways: the network cut (connections reset, new ones refused), the server
ending the sessions (``pg_terminate_backend``: a FATAL error mid-statement, as in a fast
shutdown) then the network cut, or the server itself killed (immediate shutdown: no
checkpoint, crash recovery on start) and started again. After each
outage ingest must resume and /ready return to 200; at the end every acknowledged message
is stored exactly once.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from typing import Any

import asyncpg
import pytest

from picofleet.core.credentials import FleetKeys
from picofleet.core.pgembed import EmbeddedPostgres
from picofleet.core.settings import Settings
from tests.adversarial.probes import PacedStream, post_ingest_status, ready_status
from tests.delivery.conftest import DEVICES, fact_counts, in_process_bridge
from tests.faults import TcpProxy
from tests.helpers import wait_for

OUTAGES = 20
STALL_S = 30.0  # no progress this long after PostgreSQL is back counts as a stall
KINDS = ("cut", "terminate", "kill")
LEGACY = b'{"device_id": 3, "event_type": "battery_charge", "value": 50, "timestamp": 1763000000}'


async def _facts(url: str) -> int:
    """Facts stored, through a fresh connection (the server itself restarts in this test)."""
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM processed_record"))
    finally:
        await conn.close()


def _kill(pg: EmbeddedPostgres) -> None:
    """Stop the server the abrupt way: every backend quits at once, nothing is flushed."""
    stop = pg._cmd("pg_ctl", "stop", "-D", str(pg.pgdata), "-m", "immediate", "-w")
    subprocess.run(stop, capture_output=True, check=True)


async def _at_least(url: str, n: int) -> bool:
    return await _facts(url) >= n


async def _terminate_sessions(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()


@pytest.mark.parametrize("broker", ["amqtt", "mosquitto"])
async def test_outage_loop(
    broker: str,
    settings: Settings,
    keys: FleetKeys,
    db_url: str,
    pg_cluster: EmbeddedPostgres,
    mosquitto_factory: Any,
) -> None:
    rng = random.Random(19)
    host, port = db_url.split("@")[1].split("/")[0].split(":")
    async with TcpProxy(host, int(port)) as proxy:
        proxied = db_url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
        s = settings.model_copy(update={"database_url": proxied, "batch_max_age_ms": 20})
        embedded = broker == "amqtt"
        mqtt_port = s.mqtt_port
        if not embedded:
            mosq = await mosquitto_factory(DEVICES)
            mqtt_port = mosq.port
            s = s.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{mosq.hub_port}"})
        async with in_process_bridge(s, embedded=embedded):
            stream = PacedStream(mqtt_port, keys, every_s=0.05)
            pub = asyncio.create_task(stream.run())
            await wait_for(lambda: _at_least(db_url, 100), timeout=30)
            outages = stalls = 0
            took: list[str] = []  # seconds from PostgreSQL's return to ingest's, per outage
            for i in range(OUTAGES):
                kind = KINDS[i % len(KINDS)]
                await asyncio.sleep(rng.uniform(0.0, 0.6))  # another point of the cycle
                if kind == "terminate":
                    await _terminate_sessions(db_url)
                if kind == "kill":
                    await asyncio.to_thread(_kill, pg_cluster)
                else:
                    await proxy.cut()
                outages += 1
                assert await ready_status(s.http_port) == 503, f"outage {outages} ({kind})"
                # The HTTP senders hear "retry later", not an internal error.
                assert await post_ingest_status(s.http_port, LEGACY) == 503
                await asyncio.sleep(rng.uniform(0.1, 1.5))
                if kind == "kill":
                    await asyncio.to_thread(pg_cluster.start)
                else:
                    await proxy.start()
                back_at = await _facts(db_url)

                async def resumed(after: int = back_at) -> bool:
                    facts = await _facts(db_url)
                    return facts > after and await ready_status(s.http_port) == 200

                t0 = time.monotonic()
                try:
                    await wait_for(resumed, timeout=STALL_S, interval=0.1)
                    took.append(f"{kind}:{time.monotonic() - t0:.1f}")
                except AssertionError:
                    stalls += 1
                    print(f"stalled after outage {outages} ({kind})")
                    break
            stream.stop.set()
            print(f"outage loop ({broker}): {outages} outages, {stalls} stalls; resumed {took}")
            assert stalls == 0, f"ingest stalled after outage {outages}"
            await pub
            await wait_for(lambda: _at_least(db_url, stream.sent), timeout=60, interval=0.2)
            await asyncio.sleep(0.5)
        final = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
        try:
            facts, distinct, raw = await fact_counts(final)
        finally:
            await final.close()
        print(
            f"outage loop ({broker}): sent {stream.sent}, acked {stream.acked},"
            f" facts {facts}, raw {raw}"
        )
        assert stream.acked == stream.sent
        assert (facts, distinct) == (stream.sent, stream.sent)
