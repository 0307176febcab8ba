"""Finding 10 (issue 19): QoS 2 on the embedded broker is acknowledged only after commit.

A QoS 2 PUBREC tells the device the server owns the message: from then on it resends only
PUBREL, never the PUBLISH. So the Tap holds PUBREC exactly as it holds a QoS 1 PUBACK, until
the transaction holding the message's raw record has committed. The test: PostgreSQL down,
a QoS 2 PUBLISH, kill -9 of the hub, PostgreSQL and hub back; the device behaves as MQTT
3.1.1 §4.3.3 says (PUBREC seen: PUBREL only; no PUBREC: the PUBLISH again, DUP set). The
message must be stored exactly once.
"""

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

import asyncpg

from picofleet.core.topics import Kind, Topics
from tests.adversarial.raw import (
    PUBACK,
    PUBCOMP,
    PUBREC,
    RawClient,
    connect_packet,
    publish_packet,
    pubrel_packet,
)
from tests.conftest import RunningHub
from tests.faults import TcpProxy
from tests.helpers import SECRET, free_port

DEV = "AI-QOS201"


def start_hub(data: Path, db_url: str, mqtt_port: int) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        PICOFLEET_PROVISION_SECRET=SECRET,
        PICOFLEET_DATABASE_URL=db_url,
        PICOFLEET_LOG_FORMAT="json",
        PICOFLEET_MQTT_BIND="127.0.0.1",
        PICOFLEET_HTTP_BIND="127.0.0.1",
    )
    log = open(data / "hub.log", "ab")
    cmd = [sys.executable, "-m", "picofleet", "up", "--data-dir", str(data)]
    cmd += ["--mqtt-port", str(mqtt_port), "--http-port", str(free_port())]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


async def wait_ready(data: Path, n: int, proc: subprocess.Popen[bytes]) -> None:
    """Until the hub's log shows its n-th ``hub.ready``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (data / "hub.log").read_text()[-2000:]
        if (data / "hub.log").read_bytes().count(b"hub.ready") >= n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("hub not ready")


async def test_qos2_is_not_acknowledged_before_commit(
    tmp_path: Path, db_url: str, pool: asyncpg.Pool
) -> None:
    from picofleet.core.credentials import FleetKeys

    keys = FleetKeys(SECRET.encode())
    password = keys.device_password(DEV)
    topic = Topics().device(DEV, Kind.TELEMETRY)
    payload = f'{{"v":1,"seq":1,"readings":[],"m":"{uuid.uuid4().hex}"}}'.encode()
    host, port = db_url.split("@")[1].split("/")[0].split(":")
    mqtt_port = free_port()
    async with TcpProxy(host, int(port)) as proxy:
        proxied = db_url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
        hub = start_hub(tmp_path, proxied, mqtt_port)
        try:
            await wait_ready(tmp_path, 1, hub)
            await proxy.cut()  # PostgreSQL down for the hub
            c = await RawClient.open(mqtt_port)
            c.send(connect_packet("qos2-dev", DEV, password, 60, clean=False))
            ack = await c.packet()
            assert ack is not None and ack.body[1] == 0
            c.send(publish_packet(topic, payload, 2, 1))
            try:
                first = await c.packet(timeout=3)
            except TimeoutError:
                first = None
            pubrec_before_commit = first is not None and first.type == PUBREC
            hub.send_signal(signal.SIGKILL)
            hub.wait(10)
            c.close()

            await proxy.start()
            hub = start_hub(tmp_path, proxied, mqtt_port)
            await wait_ready(tmp_path, 2, hub)
            c = await RawClient.open(mqtt_port)
            c.send(connect_packet("qos2-dev", DEV, password, 60, clean=False))
            ack = await c.packet()
            assert ack is not None and ack.body[1] == 0
            if pubrec_before_commit:  # the server owns it: release it, never resend
                c.send(pubrel_packet(1))
            else:  # not acknowledged: send it again, DUP set
                again = bytearray(publish_packet(topic, payload, 2, 1))
                again[0] |= 0x08
                c.send(bytes(again))
                rec = await c.packet(timeout=30)
                assert rec is not None and (rec.type, rec.pid) == (PUBREC, 1)
                c.send(pubrel_packet(1))
                comp = await c.packet(timeout=10)
                assert comp is not None and (comp.type, comp.pid) == (PUBCOMP, 1)
            # A QoS 1 sentinel after it: once stored, everything before it is too.
            c.send(publish_packet(topic, b'{"v":1,"seq":2,"readings":[]}', 1, 2))
            while (p := await c.packet(timeout=30)) is not None and p.type != PUBACK:
                pass
            c.close()
        finally:
            with contextlib.suppress(ProcessLookupError):
                hub.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                hub.wait(20)
            with contextlib.suppress(ProcessLookupError):
                hub.kill()
    stored = await pool.fetchval("SELECT count(*) FROM raw_record WHERE payload = $1", payload)
    assert (pubrec_before_commit, stored) == (False, 1)


async def test_qos2_flow_completes_and_stores_once(hub: RunningHub, pool: asyncpg.Pool) -> None:
    """With PostgreSQL up, the whole QoS 2 flow runs (PUBREC after the commit), 3 messages."""
    c = await RawClient.connected(hub.mqtt_port, DEV, hub.keys.device_password(DEV))
    topic = hub.topics.device(DEV, Kind.TELEMETRY)
    for pid in (1, 2, 3):
        c.send(publish_packet(topic, f'{{"v":1,"seq":{pid},"readings":[]}}'.encode(), 2, pid))
        rec = await c.packet()
        assert rec is not None and (rec.type, rec.pid) == (PUBREC, pid)
        # The PUBREC means committed: the row is there before the flow goes on.
        n = await pool.fetchval("SELECT count(*) FROM raw_record WHERE device_key = $1", DEV)
        assert n == pid
        c.send(pubrel_packet(pid))
        comp = await c.packet()
        assert comp is not None and (comp.type, comp.pid) == (PUBCOMP, pid)
    c.close()
