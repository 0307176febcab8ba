"""The USB gateway: pty Picos' serial lines end up as rows in PostgreSQL through the hub.

The boards' lines are made by the real firmware modules (pico_usb/app.py, proto.py imported
into CPython) and written to pseudo-terminals; a symlink plays the stable /dev/serial/by-id
name, so unplug and replug give the board a new pty behind the same name.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from picofleet.usb._settings import UsbSettings
from tests.conftest import RunningHub
from tests.helpers import SECRET, wait_for
from tests.usb.conftest import PICOFLEET, StubSensors, load_firmware
from tests.usb.fake_pico import FakePico

KEY_A = "E6614103E7452D2F"  # pico_usb firmware: says who it is
KEY_B = "LEGACY-CSV-1"  # older firmware, CSV only: its key is configured for its port
KEY_C = "E6614103E7452D40"


class Board:
    """A FakePico running the pico_usb app, behind a stable symlink."""

    def __init__(self, root: Path, link: Path, uid: str, sensors: StubSensors) -> None:
        fw = load_firmware()
        self.root, self.link, self.uid = root, link, uid
        root.mkdir(parents=True, exist_ok=True)
        (root / "main.py").write_text("# the pico_usb app\n")
        self.app = fw.app.App(sensors, uid, fw.proto.settings({}), self._write)
        self.hellos = threading.Event()
        self.pico: FakePico | None = None

    def _write(self, line: str) -> None:
        assert self.pico is not None
        self.pico.emit(line + "\r\n")

    def _on_line(self, line: str) -> str | None:
        if line == "hello":
            self.hellos.set()
        return self.app.command(line)

    def plug(self) -> None:
        self.pico = FakePico(self.root, uid=self.uid, on_line=self._on_line).__enter__()
        self.link.unlink(missing_ok=True)
        self.link.symlink_to(self.pico.path)

    def unplug(self) -> None:
        assert self.pico is not None
        self.link.unlink()
        self.pico.__exit__(None, None, None)

    def send(self) -> None:
        line = self.app.sample()
        assert line is not None
        self._write(line)


def opened_elsewhere(path: str, pid: int | str = "self") -> bool:
    """True when process ``pid`` has ``path`` open besides the fake's own end."""
    fd_dir = Path(f"/proc/{pid}/fd")
    n = 0
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) == path:
                n += 1
        except OSError:
            continue
    return n >= (2 if pid == "self" else 1)


async def until(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    async def probe() -> Any:
        return check()

    return await wait_for(probe, timeout=timeout)


async def facts(pool: asyncpg.Pool, key: str) -> list[tuple[str, float]]:
    rows = await pool.fetch(
        "SELECT t.name, p.value FROM processed_record p JOIN device d ON d.id = p.device_id"
        " JOIN record_type t ON t.id = p.record_type_id WHERE d.device_key = $1 ORDER BY p.id",
        key,
    )
    return [(r["name"], r["value"]) for r in rows]


@pytest.fixture
def links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Ports for the hub's gateway; set before the hub starts (request this first)."""
    a, b = tmp_path / "ttyPICO-A", tmp_path / "ttyPICO-B"
    monkeypatch.setenv("PICOFLEET_USB_GATEWAY", "1")
    monkeypatch.setenv("PICOFLEET_USB_PORTS", f"{a},{b}={KEY_B}")
    monkeypatch.setenv("PICOFLEET_USB_SCAN_INTERVAL_S", "0.2")
    return a, b


@pytest.fixture
async def gateway_hub(links: tuple[Path, Path], hub: RunningHub) -> AsyncIterator[RunningHub]:
    assert UsbSettings().usb_gateway
    yield hub


async def test_gateway_in_the_hub_records_lines_garbage_and_replug(
    links: tuple[Path, Path], gateway_hub: RunningHub, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    link_a, link_b = links
    a = Board(tmp_path / "a", link_a, KEY_A, StubSensors(22.5, 41.0, 36500))
    a.plug()
    legacy = FakePico(tmp_path / "b", uid="00", on_line=lambda line: None)
    (tmp_path / "b" / "main.py").write_text("# old CSV firmware\n")
    b = legacy.__enter__()
    link_b.symlink_to(b.path)
    try:
        # The gateway opens both; A is asked who it is, B's key is configured.
        await until(lambda: a.hellos.is_set(), 10)
        await until(lambda: opened_elsewhere(b.path), 10)
        assert a.pico is not None
        a.pico.emit(b"\xff\xfe noise {\r\n")
        a.send()
        a.pico.emit(b"Traceback (most recent call last):\r\n")
        a.send()
        b.emit(b"22.5,41.0,37.2\r\n21.0,,36.0\r\nbad,csv,line\r\n\r\n")

        row_a = [("temperature_c", 22.5), ("humidity_pct", 41.0), ("soil_moisture_pct", 50.0)]

        async def both() -> bool:
            return len(await facts(pool, KEY_A)) == 6 and len(await facts(pool, KEY_B)) == 5

        await wait_for(both, timeout=15)
        assert await facts(pool, KEY_A) == row_a * 2
        assert await facts(pool, KEY_B) == [
            ("temperature_c", 22.5),
            ("humidity_pct", 41.0),
            ("soil_moisture_pct", 37.2),
            ("temperature_c", 21.0),
            ("soil_moisture_pct", 36.0),
        ]

        # Unplugged: the gateway lets go of the port ...
        old_path = a.pico.path
        a.unplug()
        await until(lambda: not opened_elsewhere(old_path), 10)
        # ... and after the replug (a new pty behind the same name) the board, rebooted,
        # counts its lines from 0 again: nothing it sends is mistaken for a duplicate.
        a.hellos.clear()
        a.app.seq = 0
        a.app.sensors.temp = 23.5
        a.plug()
        await until(lambda: a.hellos.is_set(), 10)
        a.send()

        async def replugged() -> bool:
            return len(await facts(pool, KEY_A)) == 9

        await wait_for(replugged, timeout=15)
        assert (await facts(pool, KEY_A))[6] == ("temperature_c", 23.5)
    finally:
        legacy.__exit__(None, None, None)
        if a.pico is not None and not a.pico.unplugged.is_set():
            a.unplug()

    # Lines that are not telemetry were stored as sent, with the reason they were refused.
    errors = await pool.fetch(
        "SELECT r.device_key, r.payload, r.source, e.code FROM raw_record r"
        " JOIN ingest_error e ON e.raw_id = r.id ORDER BY r.id"
    )
    assert sorted((r["device_key"], bytes(r["payload"]), r["code"]) for r in errors) == sorted(
        [
            (KEY_A, b"\xff\xfe noise {", "invalid_json"),
            (KEY_A, b"Traceback (most recent call last):", "invalid_json"),
            (KEY_B, b"bad,csv,line", "invalid_json"),
        ]
    )
    kinds = await pool.fetch("SELECT DISTINCT device_type FROM device")
    # Never flashed by us and never provisioned: no declared type, so no OTA offers.
    assert [r["device_type"] for r in kinds] == [None]


async def test_gateway_command_lends_its_port_to_a_flash(
    hub: RunningHub, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """`picofleet usb gateway` runs; `usb flash` borrows the board's port and gives it back."""
    link = tmp_path / "ttyPICO-C"
    c = Board(tmp_path / "c", link, KEY_C, StubSensors(20.0, 50.0, 52000))
    c.plug()
    settings = hub.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICOFLEET_")} | {
        "PICOFLEET_PROVISION_SECRET": SECRET,
        "PICOFLEET_DATA_DIR": str(settings.data_path),
        "PICOFLEET_DATABASE_URL": str(settings.database_url),
        "PICOFLEET_MQTT_PORT": str(hub.mqtt_port),
        "PICOFLEET_USB_SCAN_INTERVAL_S": "0.2",
        "PICOFLEET_LOG_FORMAT": "json",
    }
    gateway = await asyncio.create_subprocess_exec(
        str(PICOFLEET),
        *("usb", "gateway", "--port", str(link)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        await until(lambda: c.hellos.is_set(), 20)
        c.send()

        async def rows(n: int) -> bool:
            return len(await facts(pool, KEY_C)) == n

        await wait_for(lambda: rows(3), timeout=15)

        c.hellos.clear()
        flash = await asyncio.to_thread(
            subprocess.run,
            [str(PICOFLEET), "usb", "flash", "--port", str(link), "--app", "pico_usb"],
            env=env,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert flash.returncode == 0, flash.stderr
        assert c.pico is not None and "config.json" in c.pico.files()
        # The gateway took the port back (and asked the restarted board who it is).
        await until(lambda: c.hellos.is_set(), 20)
        c.send()
        await wait_for(lambda: rows(6), timeout=15)
        assert await pool.fetchval("SELECT device_type FROM device") == "pico_usb"
    finally:
        gateway.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(gateway.communicate(), 20)
        c.unplug()
    assert gateway.returncode == 0, err
