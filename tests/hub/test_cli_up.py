"""`picofleet up` as a user runs it: a subprocess with embedded PostgreSQL and amqtt.

Checks the printed mosquitto_sub line works, a mosquitto_pub with device credentials lands
in PostgreSQL, `db url` works with psql, and SIGTERM leaves no postgres behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from picofleet.core.pgembed import EmbeddedPostgres
from tests.conftest import need
from tests.helpers import CLI, free_port, new_hub_dir, read_banner, run_cli


def postgres_pids(data_dir: Path) -> list[int]:
    pids = []
    for p in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.info["cmdline"] or ())
            if p.info["name"] == "postgres" and str(data_dir) in cmd:
                pids.append(p.pid)
    return pids


@pytest.fixture
def data_dir(hub_data: Path) -> Iterator[Path]:
    yield hub_data
    run_cli("db", "stop", data_dir=hub_data)  # one-shot commands leave the cluster up on purpose


def test_up_end_to_end(data_dir: Path) -> None:
    need(bool(shutil.which("mosquitto_sub")), "mosquitto-clients")
    mqtt_port, mqtts_port, http_port = free_port(), free_port(), free_port()
    https_port = free_port()
    env = dict(os.environ, PICOFLEET_LOG_FORMAT="json")
    proc = subprocess.Popen(
        [
            *CLI,
            "up",
            "--data-dir",
            str(data_dir),
            "--mqtt-port",
            str(mqtt_port),
            "--http-port",
            str(http_port),
            "--mqtts-port",
            str(mqtts_port),
            "--https-port",
            str(https_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines = read_banner(proc, 90)
        banner = "".join(lines)
        sub_line = next(ln.strip() for ln in lines if ln.strip().startswith("mosquitto_sub"))
        # Over TLS with the hub's CA; HTTPS, the hub being bound beyond loopback (issue 17).
        assert f"-p {mqtts_port} --cafile {data_dir}/tls/ca.pem" in sub_line
        assert f"http://127.0.0.1:{http_port}/" in banner  # plain HTTP stays on loopback
        assert f"https://127.0.0.1:{https_port}/" in banner

        # The printed line works as printed (plus -C 2: the retained hub status, then ours).
        sub = subprocess.Popen(
            [*shlex.split(sub_line), "-C", "2", "-W", "20"], stdout=subprocess.PIPE, text=True
        )
        time.sleep(0.5)
        creds = json.loads(run_cli("creds", "device", "AI-CLI001", "--json", data_dir=data_dir))
        assert creds["username"] == "AI-CLI001"
        body = json.dumps(
            {"v": 1, "seq": 1, "readings": [{"type": "soil_moisture_pct", "value": 33.3}]}
        )
        t0 = time.monotonic()
        subprocess.run(
            [
                "mosquitto_pub",
                "-p",
                str(mqtt_port),
                "-u",
                creds["username"],
                "-P",
                creds["password"],
                "-q",
                "1",
                "-t",
                "picofleet/devices/AI-CLI001/telemetry",
                "-m",
                body,
            ],
            check=True,
        )
        out, _ = sub.communicate(timeout=25)
        assert "AI-CLI001/telemetry" in out

        url = run_cli("db", "url", data_dir=data_dir).strip()
        assert url.startswith("postgresql://")
        psql = shutil.which("psql") or next(iter(Path("/usr/lib/postgresql").glob("*/bin/psql")))
        value = ""
        while time.monotonic() - t0 < 60:  # a bound on waiting, not a speed requirement
            value = subprocess.run(
                [str(psql), url, "-Atc", "SELECT value FROM processed_record"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            if value:
                break
            time.sleep(0.05)
        assert value == "33.3"
        assert postgres_pids(data_dir), "embedded postgres should be running"
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, rest
    assert re.search(r"hub\.stopped", rest)
    deadline = time.monotonic() + 10
    while postgres_pids(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert postgres_pids(data_dir) == []
    secret = data_dir / "fleet.secret"
    assert secret.stat().st_mode & 0o777 == 0o600


def test_creds_and_migrate(data_dir: Path) -> None:
    new_hub_dir(data_dir)
    op = json.loads(run_cli("creds", "operator", "--json", data_dir=data_dir))
    assert op["username"] == "operator" and len(op["password"]) == 40
    bad = subprocess.run(
        [*CLI, "creds", "device", "a/b", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("picofleet: ")
    out = run_cli("db", "migrate", data_dir=data_dir)
    assert "applied 3 migration" in out or "applied" in out
    again = run_cli("db", "migrate", data_dir=data_dir)
    assert again.startswith("applied 0 migration")
    assert run_cli("db", "stop", data_dir=data_dir).strip() == "stopped"
    assert not EmbeddedPostgres(data_dir).running()
    assert run_cli("db", "stop", data_dir=data_dir).strip() == "not running"
