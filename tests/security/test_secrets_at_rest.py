"""Secrets stay secret: never in the logs of a full run, private files from their first byte.

A real ``picofleet up`` (embedded PostgreSQL and amqtt, JSON logs at DEBUG) sees a device
deliver, a wrong password, refused startups carrying real (stale) tokens, and operator calls
with right and wrong tokens; then its whole stdout and stderr, and the embedded PostgreSQL's
log, are searched for every secret the hub knows. The one credential ``up`` prints on purpose
is the operator's MQTT password, in its ready-to-paste ``mosquitto_sub`` line; it must appear
nowhere else.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from picofleet.core.credentials import HUB_USER, OPERATOR_USER, SECRET_FILE, FleetKeys
from picofleet.core.pgembed import PASSWORD_FILE
from picofleet.core.topics import Kind, Topics
from picofleet.security.roles import RUNTIME_ROLE
from tests.helpers import CLI, Client, free_port, new_hub_dir, run_cli, startup_body

DEV, INTRUDER = "AI-LOGS001", "AI-LOGS002"
T = Topics("picofleet")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def data_dir(hub_data: Path) -> Path:
    return hub_data


def startup(keys: FleetKeys, serial: str, ts: int) -> dict[str, Any]:
    return startup_body(keys, serial, ts=ts)


def secrets_of(keys: FleetKeys, data_dir: Path, tokens: list[str]) -> dict[str, bytes]:
    hexed = keys.secret.decode()
    raw = bytes.fromhex(hexed)
    out: dict[str, bytes] = {
        "fleet secret (hex)": hexed.encode(),
        "fleet secret (HEX)": hexed.upper().encode(),
        "fleet secret (raw)": raw,
        "fleet secret (base64 raw)": base64.b64encode(raw),
        "fleet secret (base64 text)": base64.b64encode(keys.secret),
        "operator token": keys.operator_token.encode(),
        "hub password": keys.role_password(HUB_USER).encode(),
        "database owner password": (data_dir / PASSWORD_FILE).read_text().strip().encode(),
        "database runtime password": keys.runtime_db_password(RUNTIME_ROLE).encode(),
    }
    for key in (DEV, INTRUDER):
        out[f"{key} password"] = keys.device_password(key).encode()
        out[f"{key} provision key"] = keys.provision_key(key).encode()
        out[f"{key} legacy token"] = keys.legacy_token(key).encode()
    for i, tok in enumerate(tokens):
        out[f"stale startup token {i}"] = tok.encode()
    return out


def test_a_full_run_logs_no_secret(data_dir: Path, tmp_path: Path) -> None:
    mqtt_port, http_port = free_port(), free_port()
    env = dict(os.environ, PICOFLEET_LOG_FORMAT="json", PICOFLEET_LOG_LEVEL="DEBUG")
    env.pop("PICOFLEET_PROVISION_SECRET", None)
    log_path = tmp_path / "up.log"
    ports = ["--mqtt-port", str(mqtt_port), "--http-port", str(http_port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*CLI, "up", "--data-dir", str(data_dir), *ports],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            umask=0,  # files must be private whatever umask the operator runs with
        )
    base = f"http://127.0.0.1:{http_port}"
    tokens: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, "hub exited early:\n" + log_path.read_text()
            assert time.monotonic() < deadline, "hub not up:\n" + log_path.read_text()
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        keys = FleetKeys((data_dir / SECRET_FILE).read_text().strip().encode())

        dev = Client(mqtt_port, DEV, keys.device_password(DEV))
        assert dev.connect()
        body = {"v": 1, "seq": 1, "readings": [{"type": "soil_moisture_pct", "value": 21.0}]}
        dev.publish(T.device(DEV, Kind.TELEMETRY), json.dumps(body))
        # Real tokens, refused for their age: they must not be echoed into a log line.
        stale = startup(keys, DEV, int(time.time()) - 7200)
        tokens.append(stale["provision_token"])
        dev.publish(T.device(DEV, Kind.STARTUP), json.dumps(stale))
        dev.close()
        assert not Client(mqtt_port, INTRUDER, keys.device_password(DEV)).connect()
        assert not Client(mqtt_port, HUB_USER, keys.operator_token).connect()

        other = startup(keys, INTRUDER, int(time.time()) + 7200)
        tokens.append(other["provision_token"])
        r = httpx.post(f"{base}/ingest", json=other, timeout=10)
        assert r.json()[0]["status"] == "unauthorized"
        for token in ("wrong", keys.operator_token):
            r = httpx.delete(
                f"{base}/api/devices/AI-NOBODY1",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert r.status_code == (403 if token == "wrong" else 404)
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 200

        deadline = time.monotonic() + 20
        while True:  # both refusals and the reading are stored, so they went past the logs
            page = httpx.get(f"{base}/api/errors", timeout=10).json()["items"]
            seen = httpx.get(f"{base}/api/telemetry", params={"device": DEV}, timeout=10)
            if len(page) >= 2 and seen.status_code == 200 and seen.json()["items"]:
                break
            assert time.monotonic() < deadline, (page, seen.text)
            time.sleep(0.1)
        assert {e["code"] for e in page} == {"startup_auth_error"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    output = log_path.read_bytes()
    lines = output.decode(errors="replace").splitlines()
    assert any('"hub.ready"' in ln for ln in lines), "no JSON log lines captured"

    secrets = secrets_of(keys, data_dir, tokens)
    leaked = [name for name, value in secrets.items() if value in output]
    assert leaked == []
    # The database's own log: the runtime role's password is set as a SCRAM verifier, so not
    # even a statement log would show it.
    server_log = (data_dir / "postgres" / "server.log").read_bytes()
    assert [name for name, value in secrets.items() if value in server_log] == []
    op = keys.role_password(OPERATOR_USER)
    printed = [ln.strip() for ln in lines if op in ln]
    assert printed and all(ln.startswith("mosquitto_sub ") for ln in printed), printed
    # What the run created on disk is private too.
    assert mode(data_dir / SECRET_FILE) == 0o600
    assert mode(data_dir / PASSWORD_FILE) == 0o600


def test_key_files_are_private_whatever_the_umask(data_dir: Path) -> None:
    def cli(*args: str) -> str:
        return run_cli(*args, data_dir=data_dir, timeout=60, umask=0)

    new_hub_dir(data_dir, umask=0)
    op = json.loads(cli("creds", "operator", "--json"))
    secret_file = data_dir / SECRET_FILE
    assert mode(secret_file) == 0o600
    secret = secret_file.read_text().strip()
    assert secret not in json.dumps(op)

    shown = cli("keys", "init")
    private, public = data_dir / "ota" / "signing.key", data_dir / "ota" / "signing.pub"
    assert mode(private) == 0o600 and mode(private.parent) == 0o700
    assert mode(public) == 0o644
    pem = private.read_text()
    assert "PRIVATE KEY" in pem
    body = "".join(pem.strip().splitlines()[1:-1])
    assert body not in shown and body[:20] not in shown  # only the public half is printed
    assert public.read_text().strip() in shown
