"""``picofleet doctor``, ``smoke`` and ``tail`` as an operator runs them: the installed CLI in
a subprocess, against a running hub, and against broken ones (database down, another fleet
secret, missing migrations or keys), each failure named in the output."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from picofleet.core.credentials import FleetKeys
from picofleet.core.pgembed import EmbeddedPostgres
from picofleet.core.settings import Settings
from picofleet.core.topics import Kind
from tests.conftest import RunningHub, running_hub
from tests.faults import TcpProxy
from tests.helpers import SECRET, Client, free_port
from tests.ops.conftest import via

PICOFLEET = str(Path(sys.executable).with_name("picofleet"))
OTHER_SECRET = "another-fleet-secret-0123456789abcdef"


@dataclass
class Run:
    code: int
    out: str
    err: str

    def line(self, name: str) -> str:
        """The output line of check / step ``name``."""
        for line in self.out.splitlines():
            parts = line.split()
            if len(parts) > 1 and parts[1] == name:
                return line
        raise AssertionError(f"no line for {name!r} in:\n{self.out}\n{self.err}")


def cli_env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICOFLEET_")}
    env.update(
        PICOFLEET_DATA_DIR=str(settings.data_dir),
        PICOFLEET_PROVISION_SECRET=SECRET,
        PICOFLEET_DATABASE_URL=str(settings.database_url),
        PICOFLEET_MQTT_PORT=str(settings.mqtt_port),
        PICOFLEET_HTTP_PORT=str(settings.http_port),
        PICOFLEET_LOG_LEVEL="WARNING",
        PICOFLEET_LOG_FORMAT="json",
    )
    env.update(overrides)
    return env


async def picofleet(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> Run:
    proc = await asyncio.create_subprocess_exec(
        PICOFLEET,
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def signing_key(settings: Settings) -> None:
    from picofleet.core import signing as ota_keys

    ota_keys.init_keys(settings.data_path)


# -- doctor ------------------------------------------------------------------------------------
async def test_doctor_passes_against_a_running_hub(hub: RunningHub, tmp_path: Path) -> None:
    signing_key(hub.settings)
    env = cli_env(hub.settings)
    args = ("doctor", "--mqtt", f"127.0.0.1:{hub.mqtt_port}", "--http", hub.http)
    run = await picofleet(*args, env=env, cwd=tmp_path)
    assert run.code == 0, run.out + run.err
    for name in ("fleet-secret", "database", "migrations", "signing-key", "clock", "disk"):
        assert run.line(name).split()[0] in ("ok", "warn"), run.out
    assert run.line("mqtt").startswith("ok") and "accepts the hub and operator" in run.out
    assert run.line("http").startswith("ok") and "up and ready" in run.line("http")
    assert "\x1b[" not in run.out  # no colour codes into a pipe

    as_json = await picofleet(*args, "--json", env=env, cwd=tmp_path)
    report = json.loads(as_json.out)
    assert report["ok"] is True
    assert {c["name"] for c in report["checks"]} >= {"database", "mqtt", "http", "signing-key"}


async def test_doctor_names_a_stopped_database_and_a_wrong_secret(
    hub: RunningHub, tmp_path: Path
) -> None:
    signing_key(hub.settings)
    closed = f"postgresql://picofleet:x@127.0.0.1:{free_port()}/picofleet"
    args = ("doctor", "--mqtt", f"127.0.0.1:{hub.mqtt_port}", "--http", hub.http)
    env = cli_env(hub.settings, PICOFLEET_DATABASE_URL=closed)
    run = await picofleet(*args, env=env, cwd=tmp_path)
    assert run.code == 1
    assert run.line("database").startswith("FAIL") and "cannot connect" in run.line("database")
    assert "fix: start PostgreSQL or correct PICOFLEET_DATABASE_URL" in run.out
    assert "x@" not in run.out  # the password stays out of the report
    assert run.line("migrations").startswith("skip")
    assert "check(s) failed: database" in run.err

    env = cli_env(hub.settings, PICOFLEET_PROVISION_SECRET=OTHER_SECRET)
    run = await picofleet(*args, env=env, cwd=tmp_path)
    assert run.code == 1
    assert run.line("mqtt").startswith("FAIL")
    assert "refused the hub credentials" in run.line("mqtt")
    assert run.line("database").startswith("ok")
    assert "check(s) failed: mqtt" in run.err


async def test_doctor_names_missing_migrations_keys_and_busy_ports(
    settings: Settings, pg_cluster: EmbeddedPostgres, tmp_path: Path
) -> None:
    empty = f"doctor_{os.getpid()}_{free_port()}"
    pg_cluster.ensure_database(empty)
    squatter = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    busy = squatter.sockets[0].getsockname()[1]
    try:
        env = cli_env(
            settings,
            PICOFLEET_DATABASE_URL=pg_cluster.url(empty),
            PICOFLEET_HTTP_PORT=str(busy),
        )
        run = await picofleet("doctor", "--json", env=env, cwd=tmp_path)
    finally:
        squatter.close()
        await squatter.wait_closed()
    assert run.code == 1
    checks = {c["name"]: c for c in json.loads(run.out)["checks"]}
    assert checks["migrations"]["status"] == "fail"
    assert "0001_core" in checks["migrations"]["detail"]
    assert checks["migrations"]["fix"] == "picofleet db migrate"
    assert checks["signing-key"]["status"] == "fail"
    assert checks["signing-key"]["fix"] == "run `picofleet keys init`"
    assert checks["mqtt"]["status"] == "ok"  # free: `up` will take it
    assert checks["http"]["status"] == "fail" and str(busy) in checks["http"]["detail"]


# -- smoke -------------------------------------------------------------------------------------
async def test_smoke_passes_and_leaves_nothing_behind(
    hub: RunningHub, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    env = cli_env(hub.settings)
    args = ("smoke", "--http", hub.http, "--mqtt", f"127.0.0.1:{hub.mqtt_port}")
    run = await picofleet(*args, env=env, cwd=tmp_path)
    assert run.code == 0, run.out + run.err
    for step in ("health", "ready", "mqtt", "telemetry", "error", "cleanup"):
        assert run.line(step).startswith("ok"), run.out
    key = run.line("mqtt").split()[2]
    assert key.startswith("smoke-")
    left = await pool.fetchval(
        "SELECT (SELECT count(*) FROM raw_record WHERE device_key = $1)"
        " + (SELECT count(*) FROM device WHERE device_key = $1)",
        key,
    )
    assert left == 0


async def test_smoke_names_an_unreachable_hub_and_a_wrong_secret(
    hub: RunningHub, tmp_path: Path
) -> None:
    mqtt = f"127.0.0.1:{hub.mqtt_port}"
    closed = f"http://127.0.0.1:{free_port()}"
    run = await picofleet(
        "smoke", "--http", closed, "--mqtt", mqtt, env=cli_env(hub.settings), cwd=tmp_path
    )
    assert run.code == 1
    assert run.line("health").startswith("FAIL") and "refused" in run.line("health").lower()
    assert "smoke: failed: health" in run.err

    env = cli_env(hub.settings, PICOFLEET_PROVISION_SECRET=OTHER_SECRET)
    run = await picofleet("smoke", "--http", hub.http, "--mqtt", mqtt, env=env, cwd=tmp_path)
    assert run.code == 1
    assert run.line("health").startswith("ok") and run.line("ready").startswith("ok")
    assert run.line("mqtt").startswith("FAIL") and "refused the device credentials" in run.out
    assert run.line("telemetry").startswith("skip")
    assert "cleanup" not in run.out  # nothing was published, so nothing to remove


async def test_smoke_names_a_stopped_database(
    settings: Settings, keys: FleetKeys, db_proxy: TcpProxy, tmp_path: Path
) -> None:
    """The hub's database goes away (its connections cut, its port closed) while it runs."""
    assert settings.database_url is not None
    proxied = settings.model_copy(
        update={"database_url": via(settings.database_url, db_proxy.port)}
    )
    async with running_hub(proxied, keys) as hub:
        await db_proxy.cut()
        try:
            args = ("smoke", "--http", hub.http, "--mqtt", f"127.0.0.1:{hub.mqtt_port}")
            run = await picofleet(*args, "--timeout", "2", env=cli_env(proxied), cwd=tmp_path)
        finally:
            await db_proxy.start()  # lets the bridge commit what it holds, then stop
    assert run.code == 1, run.out
    assert run.line("health").startswith("ok"), run.out
    assert run.line("ready").startswith("FAIL") and "'database': False" in run.line("ready")
    assert run.line("mqtt").startswith("ok")
    # Depending on the broker, the publish is refused an ack, or the API cannot read it back.
    assert run.line("telemetry").startswith("FAIL"), run.out
    assert "database" in run.line("telemetry") or "503" in run.line("telemetry")
    assert run.line("cleanup").startswith("FAIL") and "503" in run.line("cleanup")
    assert "smoke: failed: ready, telemetry, error, cleanup" in run.err


# -- tail --------------------------------------------------------------------------------------
async def _until_exit(proc: asyncio.subprocess.Process, publish: Any) -> tuple[str, str]:
    """Keep publishing until the tail process has seen enough and exits."""
    for _ in range(100):
        await asyncio.to_thread(publish)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), 0.3)
            break
        except TimeoutError:
            continue
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    return out.decode(), err.decode()


async def _tail(hub: RunningHub, tmp_path: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        PICOFLEET,
        "tail",
        *args,
        "--mqtt",
        f"127.0.0.1:{hub.mqtt_port}",
        "--duration",
        "30",
        env=cli_env(hub.settings),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.fixture
async def device(hub: RunningHub) -> AsyncIterator[tuple[str, Client]]:
    key = "AI-TAIL01"
    c = Client(hub.mqtt_port, key, hub.keys.device_password(key))
    assert await asyncio.to_thread(c.connect)  # the hub answers from this loop
    yield key, c
    await asyncio.to_thread(c.close)


async def test_tail_follows_one_device_decoded(
    hub: RunningHub, device: Any, tmp_path: Path
) -> None:
    key, c = device
    status = json.dumps({"state": "online", "fw": "1.4.0"})
    await asyncio.to_thread(c.publish, hub.topics.device(key, Kind.STATUS), status, 1, True)
    proc = await _tail(hub, tmp_path, key, "--count", "3")
    body = {"v": 1, "seq": 5, "ts": 1_763_000_000, "readings": [{"type": "pump_on", "value": 1}]}
    out, err = await _until_exit(
        proc, lambda: c.publish(hub.topics.device(key, Kind.TELEMETRY), json.dumps(body))
    )
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 3 and all(line.split()[1] == key for line in lines)
    assert any(
        "status" in line and '"fw":"1.4.0"' in line and "(retained)" in line for line in lines
    )
    assert any("telemetry" in line and "pump_on=1  seq=5" in line for line in lines)
    assert "\x1b[" not in out


async def test_tail_errors_shows_rejections_with_their_code(
    hub: RunningHub, device: Any, tmp_path: Path
) -> None:
    key, c = device
    proc = await _tail(hub, tmp_path, "--errors", "--count", "1")
    out, err = await _until_exit(
        proc, lambda: c.publish(hub.topics.device(key, Kind.TELEMETRY), b"{broken")
    )
    assert proc.returncode == 0, err
    (line,) = out.splitlines()
    assert line.split()[1:3] == [key, "error"] and "invalid_json:" in line


async def test_tail_rejects_a_pattern_that_is_neither_filter_nor_key(
    hub: RunningHub, tmp_path: Path
) -> None:
    run = await picofleet("tail", "bad key!", env=cli_env(hub.settings), cwd=tmp_path)
    assert run.code == 1 and "neither an MQTT topic filter nor a device key" in run.err
