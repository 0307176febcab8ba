"""End-to-end throughput benchmark of picofleet, with its ceilings, on this machine.

    (a) broker alone: publish -> one QoS 1 subscriber, no database (ceiling)
    (b) PostgreSQL alone: COPY of the same rows (the other ceiling)
    (c) picofleet: publish -> committed fact (validation, raw ledger, ack after commit)
    (d) a naive bridge: one INSERT per message

Prints messages/s, p50/p99 publish->commit latency at half the maximum rate, bridge CPU
(microseconds per message: what decides how many boards one Pi carries) and peak RSS, and
the ratios c/a, c/b, c/d. Run: ``make bench`` or
``python bench/run.py --broker mosquitto --messages 60000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from picofleet.bridge.ledger import RAW_COLUMNS
from picofleet.broker import mosquitto
from picofleet.broker.policy import Policy
from picofleet.core import db
from picofleet.core.credentials import FleetKeys
from picofleet.core.pgembed import EmbeddedPostgres
from picofleet.core.topics import Topics
from picofleet.sim.mqttlite import Publisher

SECRET = "bench-fleet-secret-0123456789"
KEYS = FleetKeys(SECRET.encode())
DEVICES = [f"BENCH-{i:03d}" for i in range(20)]
TEMPLATE = b'{"v":1,"seq":%d,"ts":%.6f,"readings":[{"type":"soil_moisture_pct","value":%d}]}'


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def publish(port: int, n: int, *, rate: float | None = None, seq0: int = 1) -> float:
    """Publish n envelopes round-robin over the devices; returns seconds until all PUBACKed."""
    pubs = [
        Publisher(
            host="127.0.0.1",
            port=port,
            username=d,
            password=KEYS.device_password(d),
            client_id=f"bench-{d}-{uuid.uuid4().hex[:4]}",
            max_inflight=500,
        )
        for d in DEVICES
    ]
    await asyncio.gather(*(p.connect() for p in pubs))
    topics = [f"picofleet/devices/{d}/telemetry" for d in DEVICES]
    t0 = time.perf_counter()
    for i in range(n):
        k = i % len(pubs)
        seq = seq0 + i // len(pubs)
        await pubs[k].publish(topics[k], TEMPLATE % (seq, time.time(), seq % 100))
        if rate and i % 50 == 0:
            ahead = i / rate - (time.perf_counter() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
    await asyncio.gather(*(p.wait_acked(300) for p in pubs))
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*(p.close() for p in pubs))
    return elapsed


class ProcWatch:
    """CPU seconds and peak RSS of a process, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.p = psutil.Process(pid)
        self.peak = 0
        self.cpu0 = sum(self.p.cpu_times()[:2])
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.p.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._t.join()
        return sum(self.p.cpu_times()[:2]) - self.cpu0, self.peak / 2**20


def subscriber(port: int, expect: int) -> tuple[threading.Event, list[float]]:
    done, stamps = threading.Event(), []
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"ceiling-{uuid.uuid4().hex[:6]}")
    c.username_pw_set("hub", KEYS.role_password("hub"))

    def on_message(cl: Any, u: Any, m: Any) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) >= expect:
            done.set()

    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe("picofleet/devices/+/telemetry", 1)
    c.loop_start()
    time.sleep(0.5)
    done.client = c  # type: ignore[attr-defined]
    return done, stamps


async def broker_alone(port: int, n: int, hub_port: int | None = None) -> float:
    done, stamps = subscriber(hub_port or port, n)
    t0 = time.perf_counter()
    await publish(port, n)
    await asyncio.to_thread(done.wait, 120)
    done.client.loop_stop()  # type: ignore[attr-defined]
    return len(stamps) / (stamps[-1] - t0)


async def new_db(pg: EmbeddedPostgres) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    pg.ensure_database(name)
    url = pg.url(name)
    await db.migrate(url)
    return url


async def wait_facts(url: str, n: int, limit_s: float = 300) -> float:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if await conn.fetchval("SELECT count(*) FROM processed_record") >= n:
                return time.perf_counter()
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    raise TimeoutError(f"{n} facts not committed within {limit_s}s")


async def wait_facts_or_stall(url: str, n: int, stall_s: float = 15) -> tuple[float, int]:
    """When ``n`` facts are in, or the count stopped growing for ``stall_s``: the time of the
    last growth and the count."""
    conn = await asyncpg.connect(url)
    try:
        got, t_last = 0, time.perf_counter()
        while got < n and time.perf_counter() - t_last < stall_s:
            now_count = await conn.fetchval("SELECT count(*) FROM processed_record")
            if now_count > got:
                got, t_last = now_count, time.perf_counter()
            await asyncio.sleep(0.02)
        return t_last, got
    finally:
        await conn.close()


async def latency(url: str, seq_from: int) -> tuple[float, float]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS p50,"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY d) AS p99 FROM ("
            " SELECT extract(epoch FROM ingested_at - record_time) AS d"
            " FROM processed_record WHERE seq >= $1) s",
            seq_from,
        )
    finally:
        await conn.close()
    return float(row["p50"]) * 1000, float(row["p99"]) * 1000


async def pg_copy_alone(pg: EmbeddedPostgres, n: int) -> float:
    url = await new_db(pg)
    conn = await asyncpg.connect(url)
    try:
        dev = await conn.fetchval("INSERT INTO device (device_key) VALUES ('x') RETURNING id")
        now = datetime.now(UTC)
        raws = [
            (i, now, "mqtt", "t", "x", TEMPLATE % (i, 0.0, 1), 80, json.dumps({"v": 1}))
            for i in range(1, n + 1)
        ]
        facts = [(i, 0, dev, 5, now, float(i), i) for i in range(1, n + 1)]
        t0 = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table(
                "raw_record",
                records=raws,
                columns=RAW_COLUMNS,
            )
            await conn.copy_records_to_table(
                "processed_record",
                records=facts,
                columns=[
                    "raw_id",
                    "item_idx",
                    "device_id",
                    "record_type_id",
                    "record_time",
                    "value",
                    "seq",
                ],
            )
        return n / (time.perf_counter() - t0)
    finally:
        await conn.close()


def hub_env(url: str, port: int, http_port: int) -> dict[str, str]:
    return dict(
        os.environ,
        PICOFLEET_DATABASE_URL=url,
        PICOFLEET_PROVISION_SECRET=SECRET,
        PICOFLEET_MQTT_URL=f"mqtt://127.0.0.1:{port}",
        PICOFLEET_LOG_LEVEL="INFO",
        PICOFLEET_LOG_FORMAT="json",
        PICOFLEET_BRIDGE_CLIENT_ID="bench-bridge",
        PICOFLEET_HTTP_PORT=str(http_port),
    )


async def wait_port(port: int) -> None:
    for _ in range(300):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


async def wait_log(path: Path, marker: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if marker in path.read_text(errors="replace"):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{marker!r} not in {path} within {limit_s}s")


async def picofleet_path(
    kind: str, pg: EmbeddedPostgres, port: int, n: int, workdir: Path, hub_port: int | None = None
) -> dict[str, float]:
    url = await new_db(pg)
    http_port = free_port()
    env = hub_env(url, hub_port or port, http_port)
    if kind == "mosquitto":
        cmd = [sys.executable, "-m", "picofleet", "serve", "bridge", "--data-dir", str(workdir)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "picofleet",
            "up",
            "--data-dir",
            str(workdir),
            "--mqtt-port",
            str(port),
            "--http-port",
            str(http_port),
        ]
    log = open(workdir / f"{kind}-hub.log", "ab")  # the child process writes to it
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    try:
        await wait_log(workdir / f"{kind}-hub.log", "hub.ready")
        await asyncio.sleep(0.3)  # the SUBACK follows the CONNACK closely
        watch = ProcWatch(proc.pid)
        t0 = time.perf_counter()
        pub = asyncio.create_task(publish(port, n))
        t_end = await wait_facts(url, n)
        await pub
        rate = n / (t_end - t0)
        cpu, rss = watch.stop()
        # Latency at half the maximum rate, on a fresh stretch of sequence numbers.
        half_n = max(2000, int(rate * 0.5 * 5))
        seq0 = n // len(DEVICES) + 1000
        await publish(port, half_n, rate=rate * 0.5, seq0=seq0)
        await wait_facts(url, n + half_n)
        p50, p99 = await latency(url, seq0)
        return {
            "rate": rate,
            "cpu_s_per_10k": cpu / n * 10_000,
            "cpu_us_per_msg": cpu / n * 1e6,
            "peak_rss_mb": rss,
            "p50_ms": p50,
            "p99_ms": p99,
        }
    finally:
        proc.terminate()
        proc.wait(30)


async def naive_path(pg: EmbeddedPostgres, port: int, n: int, hub_port: int | None = None) -> float:
    url = await new_db(pg)
    here = Path(__file__).resolve().parent
    proc = subprocess.Popen(
        [sys.executable, str(here / "naive_bridge.py"), str(hub_port or port), url, SECRET],
        env=dict(os.environ, PYTHONPATH=str(here.parent)),
    )
    try:
        await asyncio.sleep(2.0)
        t0 = time.perf_counter()
        await publish(port, n)
        t_end, got = await wait_facts_or_stall(url, n)
        if got < n:  # amqtt drops what a slow subscriber leaves unacked for 5 s (README)
            print(f"    naive bridge: {n - got} of {n} messages never arrived (dropped)")
        return got / (t_end - t0)
    finally:
        proc.terminate()
        proc.wait(30)


async def run(broker: str, n: int, naive_n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"broker": broker, "messages": n, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="picofleet-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        pg = EmbeddedPostgres(work / "pg")
        pg.start()
        try:
            out["b_postgres_copy_rows_s"] = await pg_copy_alone(pg, n)
            port = free_port()
            policy = Policy(Topics(), KEYS)
            if broker == "mosquitto":
                hub_port = free_port()  # the hub's listener; devices publish on port
                conf = mosquitto.write_config(
                    work / "mosq",
                    policy,
                    device_keys=DEVICES,
                    bind="127.0.0.1",
                    port=port,
                    hub_port=hub_port,
                )
                async with mosquitto.ManagedMosquitto(conf, port=port, hub_port=hub_port):
                    out["a_broker_alone_msg_s"] = await broker_alone(port, n, hub_port)
                    out["c_picofleet"] = await picofleet_path(
                        "mosquitto", pg, port, n, work, hub_port
                    )
                    out["d_naive_msg_s"] = await naive_path(pg, port, naive_n, hub_port)
            else:
                here = Path(__file__).resolve().parent
                proc = subprocess.Popen(
                    [sys.executable, str(here / "amqtt_broker.py"), str(port), SECRET],
                    stdout=subprocess.PIPE,
                    env=dict(os.environ, PYTHONPATH=str(here.parent)),
                )
                try:
                    await wait_port(port)
                    out["a_broker_alone_msg_s"] = await broker_alone(port, n)
                    out["d_naive_msg_s"] = await naive_path(pg, port, naive_n)
                finally:
                    proc.terminate()
                    proc.wait(30)
                out["c_picofleet"] = await picofleet_path("amqtt", pg, free_port(), n, work)
        finally:
            pg.stop()
    c = out["c_picofleet"]["rate"]
    out["ratio_c_a"] = c / out["a_broker_alone_msg_s"]
    out["ratio_c_b"] = c / out["b_postgres_copy_rows_s"]
    out["ratio_c_d"] = c / out["d_naive_msg_s"]
    return out


def show(r: dict[str, Any]) -> None:
    c = r["c_picofleet"]
    print(f"== {r['broker']}: {r['messages']} messages, {r['cpus']} CPUs ==")
    print(f"(a) broker alone          {r['a_broker_alone_msg_s']:10.0f} msg/s")
    print(f"(b) PostgreSQL COPY       {r['b_postgres_copy_rows_s']:10.0f} rows/s")
    print(f"(c) picofleet end to end  {c['rate']:10.0f} msg/s")
    print(f"    p50/p99 publish->commit at half rate: {c['p50_ms']:.1f} / {c['p99_ms']:.1f} ms")
    print(
        f"    bridge CPU {c['cpu_us_per_msg']:.0f} µs per message"
        f" ({c['cpu_s_per_10k']:.2f} s per 10k), peak RSS {c['peak_rss_mb']:.0f} MB"
    )
    print(f"(d) naive bridge          {r['d_naive_msg_s']:10.0f} msg/s")
    print(f"ratios: c/a {r['ratio_c_a']:.2f}  c/b {r['ratio_c_b']:.3f}  c/d {r['ratio_c_d']:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--broker", choices=["mosquitto", "amqtt", "both"], default="both")
    ap.add_argument("--messages", type=int, default=0, help="per run (default by broker)")
    ap.add_argument("--naive-messages", type=int, default=5000)
    args = ap.parse_args()
    results = []
    for b in ["mosquitto", "amqtt"] if args.broker == "both" else [args.broker]:
        n = args.messages or (60_000 if b == "mosquitto" else 20_000)
        r = asyncio.run(run(b, n, args.naive_messages))
        show(r)
        results.append(r)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
