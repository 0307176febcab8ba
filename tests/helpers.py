"""Test helpers: free ports, waiting on conditions, MQTT clients with real credentials."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from picofleet.core.credentials import FleetKeys

SECRET = "test-fleet-secret-0123456789abcdef"
CLI = [sys.executable, "-m", "picofleet"]


def run_cli(
    *args: str, data_dir: Path, timeout: float = 120, umask: int = -1, stderr: bool = False
) -> str:
    """``picofleet ARGS --data-dir D`` in a subprocess; its stdout (and stderr), exit 0 asserted."""
    res = subprocess.run(
        [*CLI, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        umask=umask,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout + res.stderr if stderr else res.stdout


def new_hub_dir(data_dir: Path, umask: int = -1) -> None:
    """Create what `picofleet up` creates first, the fleet secret, in a subprocess with
    ``umask``: one-shot commands (creds, db url, ...) never create a hub."""
    code = (
        "import sys; from pathlib import Path; from picofleet.core.settings import Settings; "
        "from picofleet.core.credentials import load_fleet_secret; "
        "load_fleet_secret(Settings(data_dir=Path(sys.argv[1])))"
    )
    subprocess.run([sys.executable, "-c", code, str(data_dir)], check=True, umask=umask)


def check_schema(builtin: str, path: Path) -> None:
    """Validate ``path`` against one of check-jsonschema's bundled (offline) schemas."""
    res = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", builtin, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def startup_body(
    keys: FleetKeys,
    serial: str,
    *,
    ts: float | None = None,
    nonce: str | None = None,
    token_serial: str | None = None,
    **over: Any,
) -> dict[str, Any]:
    """A ``device_startup`` message with a current-form token; ``over`` adds or replaces fields."""
    ts = int(time.time() if ts is None else ts)
    nonce = nonce or uuid.uuid4().hex[:16]
    body: dict[str, Any] = {
        "event_type": "device_startup",
        "serial": serial,
        "firmware": "1.4.0",
        "timestamp": ts,
        "nonce": nonce,
        "provision_token": keys.device_startup_token(token_serial or serial, ts, nonce),
    }
    body.update(over)
    return body


def metric(text: str, sample: str, **labels: str) -> float:
    """The sum of the samples called ``sample`` (e.g. ``x_total``, ``x_bucket``) whose labels
    include ``labels``, in Prometheus text parsed by prometheus_client; fails when none."""
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    ]
    assert found, f"no sample {sample}{labels} in /metrics"
    return float(sum(found))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    check: Callable[[], Awaitable[Any]],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
) -> Any:
    """Poll an async check until it returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


class Client:
    """A blocking paho client for tests: connect, publish (waiting for PUBACK), subscribe."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        client_id: str = "",
        *,
        host: str = "127.0.0.1",
        ca: Path | None = None,
    ) -> None:
        """``ca``: connect over TLS, trusting only this CA certificate."""
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311
        )
        if ca is not None:
            self.c.tls_set_context(ssl.create_default_context(cafile=str(ca)))
        if username is not None:
            self.c.username_pw_set(username, password)
        self.messages: list[tuple[str, bytes]] = []
        self.suback: list[Any] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.rc: Any = None
        self._subacked = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.host, self.port = host, port

    def _on_connect(self, c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        self.rc = rc
        self._connected.set()

    def _on_message(self, c: Any, u: Any, m: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((m.topic, bytes(m.payload)))

    def _on_subscribe(self, c: Any, u: Any, mid: Any, rcs: Any, p: Any) -> None:
        self.suback = list(rcs)
        self._subacked.set()

    def connect(self, timeout: float = 5.0) -> bool:
        """True when the broker accepted the connection."""
        try:
            self.c.connect(self.host, self.port, keepalive=30)
        except OSError:
            return False
        self.c.loop_start()
        if not self._connected.wait(timeout):
            return False
        if self.rc.is_failure:
            self.c.loop_stop()
            return False
        return True

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(10)

    def subscribe(self, topic: str, qos: int = 1) -> list[Any]:
        self._subacked.clear()
        self.c.subscribe(topic, qos)
        assert self._subacked.wait(5), "no SUBACK"
        return self.suback

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


BANNER_END = "device credentials"  # the last line of the banner `picofleet up` prints


def read_banner(proc: subprocess.Popen[str], within: float = 120.0) -> list[str]:
    """The lines `picofleet up` prints (stdout and stderr merged) until its banner ends;
    fails with what it printed if the hub exits first."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, "hub exited early:\n" + "".join(lines)
        lines.append(line)
        if BANNER_END in line:
            return lines
    raise AssertionError("no banner within the time:\n" + "".join(lines))
