"""What TLS costs the broker: MQTT over TLS vs plain, same broker process, same run.

For each broker (Mosquitto, and amqtt with picofleet's auth/ACL plugins), one process serves a
plain and a TLS listener with the hub's CA (picofleet/core/tls.py). 20 devices publish QoS 1
messages (each waits for its PUBACK) over one listener, then over the other, alternating for
``--rounds`` rounds; printed are the median msg/s and the CPU microseconds per message of the
broker process and of the publishing client, and the time to open a connection (TCP + TLS
handshake + CONNECT/CONNACK).

    python bench/tls_bench.py --messages 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import DEVICES, KEYS, SECRET, TEMPLATE, ProcWatch, free_port, wait_port
from picofleet.broker import mosquitto
from picofleet.broker.policy import Policy
from picofleet.core.settings import Settings
from picofleet.core.tls import TlsFiles, ensure_tls
from picofleet.core.topics import Topics
from picofleet.sim.mqttlite import Publisher


async def one_pass(port: int, n: int, ca: Path | None) -> dict[str, float]:
    pubs = [
        Publisher(
            host="127.0.0.1",
            port=port,
            ca=ca,
            username=d,
            password=KEYS.device_password(d),
            client_id=f"tlsb-{d}-{uuid.uuid4().hex[:4]}",
            max_inflight=500,
        )
        for d in DEVICES
    ]
    t0 = time.perf_counter()
    for p in pubs:  # one at a time: the connect time is the handshake's, not a queue's
        await p.connect()
    connect_ms = (time.perf_counter() - t0) * 1000 / len(pubs)
    topics = [f"picofleet/devices/{d}/telemetry" for d in DEVICES]
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        k = i % len(pubs)
        await pubs[k].publish(topics[k], TEMPLATE % (i, time.time(), i % 100))
    await asyncio.gather(*(p.wait_acked(300) for p in pubs))
    elapsed, client_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await asyncio.gather(*(p.close() for p in pubs))
    return {"rate": n / elapsed, "client_us": client_cpu * 1e6 / n, "connect_ms": connect_ms}


async def measure(pid: int, plain: int, tls: int, ca: Path, n: int, rounds: int) -> dict[str, Any]:
    out: dict[str, dict[str, list[float]]] = {"plain": {}, "tls": {}}
    await one_pass(plain, 1000, None)  # warm-up: sessions, JIT-free but caches and pages
    await one_pass(tls, 1000, ca)
    for _ in range(rounds):
        for name, port, cafile in (("plain", plain, None), ("tls", tls, ca)):
            watch = ProcWatch(pid)
            got = await one_pass(port, n, cafile)
            cpu, _ = watch.stop()
            got["broker_us"] = cpu * 1e6 / n
            for k, v in got.items():
                out[name].setdefault(k, []).append(v)
    return {name: {k: statistics.median(v) for k, v in m.items()} for name, m in out.items()}


async def bench_mosquitto(files: TlsFiles, work: Path, n: int, rounds: int) -> dict[str, Any]:
    policy = Policy(Topics(), KEYS)
    plain, tls, hub = free_port(), free_port(), free_port()
    conf = mosquitto.write_config(
        work / "mosquitto",
        policy,
        device_keys=DEVICES,
        bind="127.0.0.1",
        port=plain,
        hub_port=hub,
        tls=files,
        tls_port=tls,
    )
    async with mosquitto.ManagedMosquitto(conf, port=plain, hub_port=hub, tls_port=tls) as m:
        assert m.proc is not None
        await wait_port(tls)
        return await measure(m.proc.pid, plain, tls, files.ca_cert, n, rounds)


async def bench_amqtt(files: TlsFiles, work: Path, n: int, rounds: int) -> dict[str, Any]:
    plain, tls = free_port(), free_port()
    here = Path(__file__).resolve().parent
    proc = subprocess.Popen(
        [sys.executable, str(here / "amqtt_broker.py"), str(plain), SECRET, str(tls), str(work)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        return await measure(proc.pid, plain, tls, files.ca_cert, n, rounds)
    finally:
        proc.terminate()
        proc.wait(10)


def show(broker: str, r: dict[str, Any]) -> None:
    p, t = r["plain"], r["tls"]
    print(f"{broker}")
    for name, m in (("plain", p), ("tls", t)):
        print(
            f"  {name:<5} {m['rate']:>8.0f} msg/s  broker {m['broker_us']:>6.1f} us/msg  "
            f"client {m['client_us']:>6.1f} us/msg  connect {m['connect_ms']:>5.2f} ms"
        )
    print(
        f"  tls/plain: rate x{t['rate'] / p['rate']:.2f}, broker CPU "
        f"x{t['broker_us'] / p['broker_us']:.2f}, client CPU x{t['client_us'] / p['client_us']:.2f}"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--broker", choices=["both", "mosquitto", "amqtt"], default="both")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="picofleet-tls-bench-") as tmp:
        work = Path(tmp)
        files = ensure_tls(Settings(data_dir=work, tls_hosts=["127.0.0.1"]))
        if a.broker in ("both", "mosquitto"):
            show("mosquitto", await bench_mosquitto(files, work, a.messages, a.rounds))
        if a.broker in ("both", "amqtt"):
            show("amqtt", await bench_amqtt(files, work, a.messages, a.rounds))


if __name__ == "__main__":
    asyncio.run(main())
