"""A hub started the README's way: ``picofleet up`` from the venv, in a subprocess, on free
(non-default) ports and its own data dir, configured only through PICOFLEET_* variables."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from picofleet.core.pgembed import EmbeddedPostgres
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"


@dataclass
class Hub:
    data: Path
    env: dict[str, str]
    http: str
    proc: subprocess.Popen[bytes]


@pytest.fixture
def readme_hub() -> Iterator[Hub]:
    """``picofleet up`` from the venv on free (non-default) ports and its own data dir,
    configured only through PICOFLEET_* variables, as the README says."""
    assert (VENV_BIN / "picofleet").exists(), "run `make install` first"
    # Outside pytest's temp base: the embedded PostgreSQL may run as another user (root).
    data = Path(tempfile.mkdtemp(prefix="picofleet-readme-"))
    os.chmod(data, 0o755)
    mqtt_port, http_port = free_port(), free_port()
    assert 1883 not in (mqtt_port, http_port) and 8000 not in (mqtt_port, http_port)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PICOFLEET_", "VIRTUAL_ENV")) and k != "DATABASE_URL"
    }
    env |= {
        "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        "PICOFLEET_DATA_DIR": str(data),
        "PICOFLEET_MQTT_PORT": str(mqtt_port),
        "PICOFLEET_HTTP_PORT": str(http_port),
        # Never the shared defaults (8883, 8443) another hub on this machine may hold.
        "PICOFLEET_MQTTS_PORT": str(free_port()),
        "PICOFLEET_HTTPS_PORT": str(free_port()),
    }
    log = open(data.with_suffix(".up.log"), "wb")  # closed in the finally below
    proc = subprocess.Popen(["picofleet", "up"], cwd=ROOT, env=env, stdout=log, stderr=log)
    http = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, data.with_suffix(".up.log").read_text()[-3000:]
            try:
                if httpx.get(f"{http}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "hub not ready"
            time.sleep(0.5)
        yield Hub(data, env, http, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        EmbeddedPostgres(data).stop()
        shutil.rmtree(data, ignore_errors=True)
        data.with_suffix(".up.log").unlink(missing_ok=True)
