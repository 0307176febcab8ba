"""The hub is found from its data dir: `picofleet up` on non-default ports records its
endpoints there, and every other command (tail, smoke, doctor, simulate, db url, ota release)
reaches it with nothing but the data dir; the embedded PostgreSQL keeps its port across
restarts; a command pointed at no hub fails naming --data-dir and creates nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from picofleet.core.endpoints import HUB_FILE, lan_address
from tests.helpers import CLI, free_port, read_banner


def operator_env(data_dir: Path | None = None) -> dict[str, str]:
    """An operator's shell: no PICOFLEET_* but (maybe) the data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICOFLEET_")}
    env.update(PICOFLEET_LOG_LEVEL="WARNING", PICOFLEET_LOG_FORMAT="json")
    if data_dir is not None:
        env["PICOFLEET_DATA_DIR"] = str(data_dir)
    return env


def cli(
    *args: str, cwd: Path, data_dir: Path | None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=operator_env(data_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def hub_up(data_dir: Path, cwd: Path, *args: str) -> Iterator[str]:
    """`picofleet up --data-dir D ARGS` until its banner; SIGTERM (clean stop) on exit."""
    proc = subprocess.Popen(
        [*CLI, "up", "--data-dir", str(data_dir), *args],
        cwd=cwd,
        env=operator_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = read_banner(proc, 90)
        yield "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, "".join(lines) + rest


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


async def count(url: str, sql: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def test_commands_find_the_hub_from_its_data_dir(hub_data: Path, tmp_path: Path) -> None:
    mqtt_port, mqtts_port, http_port = free_port(), free_port(), free_port()
    ports = ("--mqtt-port", str(mqtt_port), "--http-port", str(http_port))
    https_port = free_port()
    ports += ("--mqtts-port", str(mqtts_port), "--https-port", str(https_port))
    try:
        with hub_up(hub_data, tmp_path, *ports):
            record = json.loads((hub_data / HUB_FILE).read_text())
            assert (record["mqtt_port"], record["http_port"]) == (mqtt_port, http_port)

            # The retained hub status on the hub's MQTT port, found from the data dir alone.
            out = ok(
                cli("tail", "--count", "1", "--duration", "20", cwd=tmp_path, data_dir=hub_data)
            )
            assert "hub" in out and "online" in out

            smoke = json.loads(ok(cli("smoke", "--json", cwd=tmp_path, data_dir=hub_data)))
            assert smoke["ok"] is True, smoke

            ok(cli("keys", "init", cwd=tmp_path, data_dir=hub_data))
            doctor = json.loads(ok(cli("doctor", "--json", cwd=tmp_path, data_dir=hub_data)))
            checks = {c["name"]: c["detail"] for c in doctor["checks"]}
            assert f"127.0.0.1:{http_port} is up" in checks["http"]
            # Over TLS, trusting the hub's CA (the hub speaks TLS by default).
            assert f"127.0.0.1:{mqtts_port} accepts" in checks["mqtt"]

            url = ok(cli("db", "url", cwd=tmp_path, data_dir=hub_data)).strip()
            assert urlsplit(url).port == record["pg_port"]
            before = asyncio.run(count(url, "SELECT count(*) FROM raw_record"))
            sim = ok(
                cli(
                    *("simulate", "--devices", "2", "--rate", "20", "--duration", "1"),
                    *("--format", "v1", "--json"),
                    cwd=tmp_path,
                    data_dir=hub_data,
                )
            )
            sent = json.loads(sim.strip().splitlines()[-1])
            assert sent["sent"] > 0 and sent["acked"] == sent["sent"], sent
            # Acked after commit: every simulated message is a row already.
            after = asyncio.run(count(url, "SELECT count(*) FROM raw_record"))
            assert after - before == sent["sent"]

            app = tmp_path / "main.py"
            app.write_text("VERSION = '1.0.1'\nprint(VERSION)\n")
            rel = json.loads(
                ok(
                    cli(
                        *("ota", "release", str(app), "--version", "1.0.1", "--json"),
                        cwd=tmp_path,
                        data_dir=hub_data,
                    )
                )
            )
            public = f"http://{lan_address()}:{http_port}"  # artifacts: plain, signed
            assert record["public_url"] == public
            assert rel["artifact_url"] == f"{public}/ota/artifacts/{rel['sha256']}"

        # Restarted with no flags: the same MQTT, HTTP and PostgreSQL ports.
        with hub_up(hub_data, tmp_path) as banner:
            assert f"127.0.0.1:{mqtt_port}" in banner and f":{http_port}/" in banner
            again = ok(cli("db", "url", cwd=tmp_path, data_dir=hub_data)).strip()
            assert urlsplit(again).port == urlsplit(url).port
            assert asyncio.run(count(again, "SELECT count(*) FROM raw_record")) == after
    finally:
        cli("db", "stop", cwd=tmp_path, data_dir=hub_data)


def test_public_url_setting_names_artifacts(hub_data: Path, tmp_path: Path) -> None:
    http_port = free_port()
    public = "http://pi.example:8080"
    try:
        with hub_up(
            hub_data,
            tmp_path,
            *("--mqtt-port", str(free_port()), "--http-port", str(http_port)),
            *("--mqtts-port", str(free_port()), "--https-port", str(free_port())),
            *("--public-url", public),
        ) as banner:
            assert public in banner
            ok(cli("keys", "init", cwd=tmp_path, data_dir=hub_data))
            app = tmp_path / "main.py"
            app.write_text("print('x')\n")
            rel = json.loads(
                ok(
                    cli(
                        *("ota", "release", str(app), "--version", "1.0.0", "--json"),
                        cwd=tmp_path,
                        data_dir=hub_data,
                    )
                )
            )
            assert rel["artifact_url"] == f"{public}/ota/artifacts/{rel['sha256']}"
    finally:
        cli("db", "stop", cwd=tmp_path, data_dir=hub_data)


@pytest.mark.parametrize(
    "args",
    [
        ("creds", "device", "AI-NOHUB1"),
        ("creds", "operator"),
        ("db", "url"),
        ("tail", "--count", "1", "--duration", "1"),
        ("simulate", "--devices", "1", "--duration", "1"),
        ("ota", "releases"),
    ],
    ids=lambda a: "-".join(a[:2]),
)
def test_no_hub_fails_and_creates_nothing(args: tuple[str, ...], tmp_path: Path) -> None:
    # Without a data dir (the default ./picofleet-data does not exist) and with an empty one.
    empty = tmp_path / "empty"
    empty.mkdir()
    for data_dir in (None, empty):
        res = cli(*args, cwd=tmp_path, data_dir=data_dir, timeout=60)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "--data-dir" in res.stderr and "PICOFLEET_DATA_DIR" in res.stderr, res.stderr
        assert "password" not in res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    assert list(empty.iterdir()) == []


def test_flags_and_environment_override_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from picofleet.core.endpoints import apply
    from picofleet.core.settings import Settings

    recorded = {"mqtt_port": 18830, "http_port": 18080, "public_url": "http://pi:18080"}
    (tmp_path / HUB_FILE).write_text(json.dumps(recorded))
    for key in [k for k in os.environ if k.startswith("PICOFLEET_")]:
        monkeypatch.delenv(key)
    found = apply(Settings(data_dir=tmp_path))
    assert (found.mqtt_port, found.http_port, found.public_url) == (18830, 18080, "http://pi:18080")
    monkeypatch.setenv("PICOFLEET_HTTP_PORT", "18081")
    found = apply(Settings(data_dir=tmp_path, mqtt_port=18831))  # a flag, then the environment
    assert (found.mqtt_port, found.http_port) == (18831, 18081)
    # `up` works its public URL out afresh; the ports it keeps.
    starting = apply(Settings(data_dir=tmp_path), starting=True)
    assert (starting.mqtt_port, starting.public_url) == (18830, None)
