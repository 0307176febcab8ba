"""``picofleet simulate``: a fleet load generator (or the real firmware loop, --firmware)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, cast

import typer

from picofleet.core.command import CommandError, DataDir, settings_for
from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


def _reach_broker(host: str, port: int, keys: FleetKeys, ca: Path | None = None) -> None:
    """Log in once as a device before simulating anything: a simulator that cannot reach
    the hub must say so and exit non-zero, not report boards that never got online."""
    from picofleet.sim.mqttlite import Publisher

    probe = "SIMW-000"

    async def attempt() -> None:
        pub = Publisher(
            host=host, port=port, ca=ca, username=probe, password=keys.device_password(probe)
        )
        try:
            await asyncio.wait_for(pub.connect(), 10)
        finally:
            await pub.close()

    try:
        asyncio.run(attempt())
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        raise CommandError(
            f"cannot reach the hub's MQTT broker at {host}:{port} ({exc or type(exc).__name__})."
            " Is `picofleet up` running? Give simulate the hub's data dir (--data-dir or"
            " PICOFLEET_DATA_DIR), or --host/--port"
        ) from exc


def simulate(
    data_dir: DataDir = None,
    devices: Annotated[int, typer.Option(help="Simulated devices.")] = 10,
    rate: Annotated[float, typer.Option(help="Messages per second, all devices.")] = 10.0,
    duration: Annotated[float, typer.Option(help="Seconds to run.")] = 10.0,
    fmt: Annotated[str, typer.Option("--format", help="legacy, v1 or mixed.")] = "mixed",
    malformed: Annotated[float, typer.Option(help="Fraction of malformed messages.")] = 0.0,
    processes: Annotated[int, typer.Option(help="Generator processes.")] = 1,
    host: Annotated[
        str | None, typer.Option(help="Broker host [the hub's, from its data dir].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Broker port [mqtt_port].")] = None,
    shard: Annotated[str | None, typer.Option(hidden=True)] = None,
    firmware: Annotated[
        bool,
        typer.Option(help="Run N boards of the real pico_w firmware in MicroPython instead."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON summary.")] = False,
) -> None:
    """Simulate a fleet over MQTT with real device credentials; prints what it sent."""
    from picofleet.core.endpoints import fleet_keys, local_host
    from picofleet.core.mqttclient import hub_target
    from picofleet.core.tls import TlsError
    from picofleet.core.topics import Topics

    settings = settings_for(data_dir)
    keys = fleet_keys(settings)
    ca = None
    if host is None and port is None and not firmware:
        try:  # the hub's own devices' listener: over TLS when the hub speaks it
            target = hub_target(settings, device=True)
        except TlsError as exc:
            raise CommandError(str(exc)) from None
        host, port, ca = target.host, target.port, target.ca
    # The firmware boards' TLS is the board harness's (picofleet.sim.board).
    host = host or local_host(settings.mqtt_bind)
    port = port or settings.mqtt_port
    topics = Topics(settings.topic_prefix)
    if fmt not in ("legacy", "v1", "mixed"):
        raise CommandError("--format must be legacy, v1 or mixed")
    if shard is None:
        _reach_broker(host, port, keys, ca)
    if firmware:
        _boards(settings, keys, devices, duration)
        return
    if processes > 1 and shard is None:
        _fan_out(processes, devices, rate)
        return
    first, count = 0, devices
    if shard:
        i, k = (int(x) for x in shard.split("/"))
        count = devices // k + (1 if i < devices % k else 0)
        first = i * (devices // k) + min(i, devices % k)
        rate = rate / k
    from picofleet.sim.load import Format, run_load

    res = asyncio.run(
        run_load(
            host=host,
            port=port,
            ca=ca,
            keys=keys,
            topics=topics,
            devices=count,
            rate=rate,
            duration=duration,
            fmt=cast(Format, fmt),
            malformed=malformed,
            first=first,
        )
    )
    summary = {
        "devices": res.devices,
        "sent": res.sent,
        "acked": res.acked,
        "malformed": res.malformed,
        "seconds": round(res.seconds, 3),
        "rate": round(res.rate, 1),
        "puback_p50_ms": round(_percentile(res.latencies, 0.5) * 1000, 2),
        "puback_p99_ms": round(_percentile(res.latencies, 0.99) * 1000, 2),
    }
    if as_json or shard:
        typer.echo(json.dumps(summary))
    else:
        for k2, v in summary.items():
            typer.echo(f"{k2}: {v}")


def _boards(settings: Settings, keys: FleetKeys, n: int, duration: float) -> None:
    # real MicroPython boards (picofleet.sim.board), flashed as `usb flash` would: with
    # the hub's CA and its TLS port when the hub speaks TLS
    from picofleet.core.devconfig import ota_public_key
    from picofleet.core.endpoints import local_host
    from picofleet.core.tls import ca_pem
    from picofleet.sim.board import available
    from picofleet.sim.board.fleet import run_board_fleet

    host = local_host(settings.mqtt_bind)
    if not available():
        raise CommandError(
            "--firmware needs node and npm @micropython/micropython-webassembly-pyscript"
            " (make node_modules/.installed, or set PICOFLEET_MPY_DIR)"
        )
    reports = asyncio.run(
        run_board_fleet(
            n=n,
            mqtt_host=host,
            mqtt_port=settings.mqtts_port if settings.tls else settings.mqtt_port,
            http_base=f"http://{host}:{settings.http_port}",
            ca_pem=ca_pem(settings) if settings.tls else None,
            keys=keys,
            prefix=settings.topic_prefix,
            duration=duration,
            ota_key=ota_public_key(settings.data_path),
        )
    )
    for r in reports:
        typer.echo(f"{r.key}: boots {r.boots}, resets {r.resets or 'none'}")
        for line in r.last_lines:
            typer.echo(f"    {line}")


def _fan_out(processes: int, devices: int, rate: float) -> None:
    argv = [a for a in sys.argv[1:] if not a.startswith("--processes")]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "picofleet",
                *argv,
                "--shard",
                f"{i}/{processes}",
                "--processes",
                "1",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for i in range(processes)
    ]
    totals = {"devices": 0, "sent": 0, "acked": 0, "malformed": 0}
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise CommandError(f"generator process failed ({p.returncode})")
        part = json.loads(out.strip().splitlines()[-1])
        for k2 in totals:
            totals[k2] += part[k2]
    for k2, v in totals.items():
        typer.echo(f"{k2}: {v}")


def register(app: typer.Typer) -> None:
    app.command()(simulate)
