"""Issue 3: at-least-once end to end. Every message a broker acknowledged ends up in
PostgreSQL exactly once as a fact, whatever crashes in between."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from picofleet.broker import mosquitto
from picofleet.broker.embedded import EmbeddedBroker
from picofleet.broker.policy import Policy
from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from tests.conftest import mosquitto_available, need
from tests.delivery.conftest import (
    DEVICES,
    Stream,
    bridge_process,
    envelope,
    fact_counts,
    in_process_bridge,
    kill9,
    publish_stream,
    wait_bridge_ready,
    wait_facts,
)
from tests.faults import TcpProxy
from tests.helpers import SECRET, Client, free_port, metric, wait_for

PER_DEVICE = 1000  # 10 devices: a 10,000-message stream


async def test_kill9_bridge_mid_stream_mosquitto(
    settings: Settings,
    keys: FleetKeys,
    pool: asyncpg.Pool,
    db_url: str,
    mosquitto_factory: Any,
    tmp_path: Path,
) -> None:
    mosq = await mosquitto_factory(DEVICES)
    client_id = f"bridge-{uuid.uuid4().hex[:6]}"
    proc = bridge_process(db_url, mosq.hub_port, str(tmp_path), client_id)
    await asyncio.to_thread(wait_bridge_ready, str(tmp_path), client_id)
    stream = Stream()
    pub = asyncio.create_task(publish_stream(mosq.port, keys, PER_DEVICE, stream))
    try:
        await wait_for(lambda: _raw_at_least(pool, 3000), timeout=60)
        kill9(proc)
        killed_at = (await fact_counts(pool))[0]
        assert killed_at < 10_000, "the crash should land mid-stream"
        await asyncio.sleep(1)
        proc = bridge_process(db_url, mosq.hub_port, str(tmp_path), client_id)
        await pub
        await wait_facts(pool, 10_000)
        await asyncio.sleep(1)
    finally:
        kill9(proc)
    facts, distinct, raw = await fact_counts(pool)
    assert stream.acked == 10_000
    assert (facts, distinct) == (10_000, 10_000)
    assert raw >= 10_000  # redelivered messages are stored again, never counted twice


async def _raw_at_least(pool: asyncpg.Pool, n: int) -> bool:
    return int(await pool.fetchval("SELECT count(*) FROM raw_record")) >= n


@pytest.mark.parametrize("broker", ["amqtt", "mosquitto"])
async def test_postgres_outage_mid_stream(
    broker: str,
    settings: Settings,
    keys: FleetKeys,
    pool: asyncpg.Pool,
    db_url: str,
    mosquitto_factory: Any,
) -> None:
    host, port = db_url.split("@")[1].split("/")[0].split(":")
    async with TcpProxy(host, int(port)) as proxy:
        proxied = db_url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
        s = settings.model_copy(update={"database_url": proxied, "buffer_max_messages": 2000})
        embedded = broker == "amqtt"
        if not embedded:
            mosq = await mosquitto_factory(DEVICES)
            s = s.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{mosq.hub_port}"})
        mqtt_port = s.mqtt_port if embedded else mosq.port
        async with in_process_bridge(s, embedded=embedded):
            stream = Stream()
            pub = asyncio.create_task(publish_stream(mqtt_port, keys, PER_DEVICE, stream))
            await wait_for(lambda: _raw_at_least(pool, 2000), timeout=60)
            outage = asyncio.create_task(proxy.outage(10))
            await asyncio.sleep(3)
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"http://127.0.0.1:{s.http_port}/ready")
                metrics = (await http.get(f"http://127.0.0.1:{s.http_port}/metrics")).text
            assert ready.status_code == 503
            assert metric(metrics, "picofleet_db_up") == 0
            during = (await fact_counts(pool))[0]
            peak = 0
            while not outage.done():
                buffered = int(metric(metrics, "picofleet_bridge_buffered_messages"))
                async with httpx.AsyncClient() as http:
                    metrics = (await http.get(f"http://127.0.0.1:{s.http_port}/metrics")).text
                peak = max(peak, buffered)
                await asyncio.sleep(0.5)
            assert peak <= 2000, "the bridge's buffer stays bounded while PostgreSQL is down"
            await pub
            await wait_facts(pool, 10_000)
        assert during < 10_000
        assert stream.acked == 10_000
        facts, distinct, _ = await fact_counts(pool)
        assert (facts, distinct) == (10_000, 10_000)


async def test_mosquitto_restart_mid_stream(
    settings: Settings,
    keys: FleetKeys,
    pool: asyncpg.Pool,
    policy: Policy,
    tmp_path: Path,
) -> None:
    need(mosquitto_available(), "mosquitto")
    port, hub_port = free_port(), free_port()
    conf = mosquitto.write_config(
        tmp_path / "mosq",
        policy,
        device_keys=DEVICES,
        bind="127.0.0.1",
        port=port,
        hub_port=hub_port,
    )
    s = settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{hub_port}"})
    # Devices with a persistent session keep unacked messages across the restart (paho).
    clients = []
    acked: set[tuple[int, int]] = set()
    for n, d in enumerate(DEVICES):
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{d}", clean_session=False)
        c.on_publish = lambda cl, u, mid, rc, p, n=n: acked.add((n, mid))
        c.username_pw_set(d, keys.device_password(d))
        c.reconnect_delay_set(0.2, 1)
        c.max_inflight_messages_set(50)
        clients.append(c)
    broker = mosquitto.ManagedMosquitto(conf, port=port)
    await broker.__aenter__()
    try:
        async with in_process_bridge(s, roles=frozenset({"bridge"})):
            for c in clients:
                c.connect("127.0.0.1", port)
                c.loop_start()
            wanted: set[tuple[int, int]] = set()
            for seq in range(1, PER_DEVICE + 1):
                for n, (d, c) in enumerate(zip(DEVICES, clients, strict=True)):
                    # While the broker is down paho queues the message and sends it later.
                    info = c.publish(f"picofleet/devices/{d}/telemetry", envelope(seq), qos=1)
                    wanted.add((n, info.mid))
                if seq == 300:
                    await broker.__aexit__(None, None, None)  # SIGTERM: saves persistence
                    await asyncio.sleep(1)
                    broker = mosquitto.ManagedMosquitto(conf, port=port)
                    await broker.__aenter__()
                if seq % 50 == 0:
                    await asyncio.sleep(0.01)
            deadline = time.monotonic() + 120
            while not wanted <= acked and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert wanted <= acked
            await wait_facts(pool, 10_000)
            await asyncio.sleep(0.5)
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        await broker.__aexit__(None, None, None)
    facts, distinct, _ = await fact_counts(pool)
    assert (facts, distinct) == (10_000, 10_000)


async def test_two_replicas_share_one_subscription(
    settings: Settings,
    keys: FleetKeys,
    pool: asyncpg.Pool,
    mosquitto_factory: Any,
) -> None:
    mosq = await mosquitto_factory(DEVICES)
    base = settings.model_copy(
        update={
            "mqtt_url": f"mqtt://127.0.0.1:{mosq.hub_port}",
            "shared_subscription": "picofleet",
        }
    )
    a = base.model_copy(update={"bridge_client_id": f"bridge-a-{uuid.uuid4().hex[:4]}"})
    b = base.model_copy(update={"bridge_client_id": f"bridge-b-{uuid.uuid4().hex[:4]}"})
    async with (
        in_process_bridge(a, roles=frozenset({"bridge"})),
        in_process_bridge(b, roles=frozenset({"bridge"})),
    ):
        stream = Stream()
        await publish_stream(mosq.port, keys, 500, stream)
        await wait_facts(pool, 5000)
        await asyncio.sleep(0.5)
    facts, distinct, raw = await fact_counts(pool)
    assert (facts, distinct, raw) == (5000, 5000, 5000)
    # Both replicas took a share (each raw row's ingest happened in one of them).
    per_batch = await pool.fetch("SELECT DISTINCT ingested_at FROM processed_record")
    assert len(per_batch) > 1


async def test_amqtt_gives_up_on_unacked_subscriber(keys: FleetKeys, policy: Policy) -> None:
    """The limit that broker/tap.py works around: amqtt drops a QoS 1 message its subscriber
    has not acked within 5 s, and does not redeliver it to the persistent session."""
    async with EmbeddedBroker(policy=policy, bind="127.0.0.1", port=free_port()) as b:
        got: list[bytes] = []
        sub = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="slow-sub", clean_session=False, manual_ack=True
        )
        sub.username_pw_set("hub", keys.role_password("hub"))
        sub.on_message = lambda c, u, m: got.append(m.payload)
        sub.connect("127.0.0.1", b.port)
        sub.loop_start()
        sub.subscribe("picofleet/devices/+/telemetry", 1)
        await asyncio.sleep(0.3)
        dev = Client(b.port, "AI-1", keys.device_password("AI-1"))
        assert await asyncio.to_thread(dev.connect)
        await asyncio.to_thread(dev.publish, "picofleet/devices/AI-1/telemetry", b"{}")
        await wait_for(lambda: _truthy(got))
        await asyncio.sleep(6)  # never acked: amqtt times out after 5 s
        sub.disconnect()
        sub.loop_stop()
        got.clear()
        sub2 = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="slow-sub", clean_session=False, manual_ack=True
        )
        sub2.username_pw_set("hub", keys.role_password("hub"))
        sub2.on_message = lambda c, u, m: got.append(m.payload)
        sub2.connect("127.0.0.1", b.port)
        sub2.loop_start()
        await asyncio.sleep(2)
        sub2.disconnect()
        sub2.loop_stop()
        dev.close()
        assert got == []  # lost for the subscriber: why the embedded hub taps instead


async def _truthy(x: list[bytes]) -> bool:
    return bool(x)


def test_kill9_embedded_hub_keeps_every_acked_message(hub_data: Path) -> None:
    """Stretch: with the tap, a device's PUBACK means committed. kill -9 the whole embedded
    hub mid-stream: every message the device saw acknowledged is in PostgreSQL."""
    data = hub_data
    mqtt_port = free_port()
    env = dict(os.environ, PICOFLEET_PROVISION_SECRET=SECRET, PICOFLEET_LOG_FORMAT="json")
    cmd = [
        sys.executable,
        "-m",
        "picofleet",
        "up",
        "--data-dir",
        str(data),
        "--mqtt-port",
        str(mqtt_port),
        "--http-port",
        str(free_port()),
    ]
    hub = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        assert hub.stderr is not None
        for line in hub.stderr:
            if "hub.ready" in line:
                break
        keys = FleetKeys(SECRET.encode())
        acked: set[int] = set()
        mids: dict[int, int] = {}
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="dev-x", protocol=paho.MQTTv311)
        c.username_pw_set("AI-KILL", keys.device_password("AI-KILL"))
        c.on_publish = lambda cl, u, mid, rc, p: acked.add(mids[mid])
        c.max_inflight_messages_set(20)
        c.connect("127.0.0.1", mqtt_port)
        c.loop_start()
        for seq in range(1, 3001):
            info = c.publish("picofleet/devices/AI-KILL/telemetry", envelope(seq), qos=1)
            mids[info.mid] = seq
            if seq == 1500:
                deadline = time.monotonic() + 30
                while len(acked) < 500 and time.monotonic() < deadline:
                    time.sleep(0.01)
                hub.send_signal(signal.SIGKILL)
                hub.wait(10)
                break
        time.sleep(0.5)
        c.loop_stop()
        seen = set(acked)
        assert len(seen) >= 500
        url = subprocess.run(
            [sys.executable, "-m", "picofleet", "db", "url", "--data-dir", str(data)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

        async def stored() -> set[int]:
            conn = await asyncpg.connect(url)
            try:
                rows = await conn.fetch("SELECT seq FROM processed_record")
            finally:
                await conn.close()
            return {r["seq"] for r in rows}

        in_db = asyncio.run(stored())
        assert seen <= in_db, f"{len(seen - in_db)} acknowledged messages lost"
    finally:
        with contextlib.suppress(ProcessLookupError):
            hub.kill()
        from picofleet.core.pgembed import EmbeddedPostgres

        EmbeddedPostgres(data).stop()
