"""OTA on MicroPython boards against a running hub: boards flashed with the fleet's OTA key,
the hub's view of them in PostgreSQL (deploy log, device rows, rollouts) and their flash.

A board here is ``picofleet.sim.board.Board``: the unmodified ``pico_w`` files in real
MicroPython with real sockets; its flash is a directory these helpers read directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from picofleet.core.signing import Signer
from picofleet.core.topics import Kind, Topics
from picofleet.sim.board import Board, device_config, firmware_dir, flash
from tests.conftest import RunningHub
from tests.firmware.artifacts import version_of
from tests.firmware.board.kit import WIFI, until
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]


def provision(
    root: Path,
    hub: RunningHub,
    signer: Signer,
    key: str,
    *,
    telemetry_interval_s: int = 2,
    source: Path | None = None,
    broker_port: int | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """A flash directory as ``picofleet usb flash`` leaves it, trusting the hub's OTA key;
    ``config``: more config.json keys (e.g. ``ota_trial_s``)."""
    cfg = device_config(
        key,
        hub.keys,
        broker=("127.0.0.1", broker_port or hub.mqtt_port),
        hub_http=hub.http,
        prefix=hub.settings.topic_prefix,
        wifi=WIFI,
        telemetry_interval_s=telemetry_interval_s,
        ota_key=(signer.public_b64, signer.key_id),
    )
    if config:
        cfg = json.dumps({**json.loads(cfg), **config}).encode()
    flash(root, cfg, source=source)
    return root


def firmware_at(commit: str, into: Path) -> Path:
    """The ``pico_w`` sources of another commit (to watch a test fail on older firmware)."""
    into.mkdir(parents=True, exist_ok=True)
    names = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", commit, "pico_w/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in names:
        data = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{commit}:{name}"], capture_output=True, check=True
        ).stdout
        (into / Path(name).name).write_bytes(data)
    return into


def firmware_with(into: Path, **constants: int) -> Path:
    """The firmware with module constants changed (``hw__TRIAL_MS=5000``: hw.TRIAL_MS), for
    the timings a test cannot wait out; a constant the firmware does not have is skipped,
    so older firmware runs as it is."""
    into.mkdir(parents=True, exist_ok=True)
    src = firmware_dir()
    for f in src.glob("*.py"):
        shutil.copyfile(f, into / f.name)
    for spec, value in constants.items():
        module, name = spec.split("__", 1)
        path = into / f"{module}.py"
        lines = path.read_text().splitlines(keepends=True)
        for i, line in enumerate(lines):
            if line.startswith(f"{name} = "):
                lines[i] = f"{name} = {value}  # test timing\n"
        path.write_text("".join(lines))
    return into


class Pico:
    """One board of a test fleet: its key, flash directory and running Board."""

    def __init__(self, key: str, root: Path, board: Board) -> None:
        self.key, self.root, self.board = key, root, board

    def read(self, name: str) -> bytes | None:
        p = self.root / name
        return p.read_bytes() if p.is_file() else None

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    @property
    def version(self) -> str | None:
        """VERSION of the main.py in flash (what the next boot runs)."""
        return version_of(self.read("main.py"))

    def ota_state(self) -> dict[str, Any]:
        """ota.json as the device reads it (a complete temp file left by a cut wins)."""
        for name in ("ota.json.tmp", "ota.json"):
            data = self.read(name)
            if data:
                with contextlib.suppress(ValueError):
                    return dict(json.loads(data))
        return {}

    def console(self, last: int = 60) -> str:
        return f"--- {self.key} ---\n{self.board.console(last)}"


@contextlib.contextmanager
def fleet(
    root: Path,
    hub: RunningHub,
    signer: Signer,
    keys: Sequence[str],
    *,
    start: bool = True,
    **provision_kw: Any,
) -> Iterator[list[Pico]]:
    """Boards for ``keys``, powered on (unless ``start`` is False), stopped at the end."""
    picos = []
    for i, key in enumerate(keys):
        flash_dir = provision(root / key, hub, signer, key, **provision_kw)
        board = Board(flash_dir, uid=f"e661a4d4172326{i:02x}", name=key)
        picos.append(Pico(key, flash_dir, board))
    try:
        if start:
            for p in picos:
                p.board.start()
        yield picos
    finally:
        for p in picos:
            p.board.stop()


# -- the hub's view ---------------------------------------------------------------------------
Q_REPORTS = """
SELECT version, state, reason, seq, detail FROM deploy_event
WHERE device_key = $1 AND source = 'ota' AND NOT coalesce((detail->>'stale')::bool, false)
ORDER BY seq
"""
Q_FIRMWARE = "SELECT firmware FROM device WHERE device_key = $1 AND provisioned_at IS NOT NULL"
Q_STATUS_FW = """
SELECT body->>'fw' FROM raw_record WHERE device_key = $1 AND topic = $2 ORDER BY id DESC LIMIT 1
"""
Q_ROLLOUT = "SELECT state, reason FROM ota_rollout WHERE id = $1"
_FINAL = ("completed", "halted", "aborted", "rolled_back")
Q_MEMBERS = "SELECT device_key, state, reason FROM ota_rollout_device WHERE rollout_id = $1"


async def reports(pool: asyncpg.Pool, key: str) -> list[asyncpg.Record]:
    """The device's own OTA reports in the deploy log, in the device's order."""
    return list(await pool.fetch(Q_REPORTS, key))


async def states(pool: asyncpg.Pool, key: str) -> list[tuple[str | None, str, str | None]]:
    return [(r["version"], r["state"], r["reason"]) for r in await reports(pool, key)]


async def firmware(pool: asyncpg.Pool, key: str) -> str | None:
    v = await pool.fetchval(Q_FIRMWARE, key)
    return None if v is None else str(v)


async def status_fw(pool: asyncpg.Pool, topics: Topics, key: str) -> str | None:
    """``fw`` of the device's last status message (what the running main.py says it is)."""
    v = await pool.fetchval(Q_STATUS_FW, key, topics.device(key, Kind.STATUS))
    return None if v is None else str(v)


async def members(pool: asyncpg.Pool, rollout_id: int) -> dict[str, tuple[str, str | None]]:
    rows = await pool.fetch(Q_MEMBERS, rollout_id)
    return {r["device_key"]: (r["state"], r["reason"]) for r in rows}


async def online(pool: asyncpg.Pool, picos: Sequence[Pico], version: str = "1.0.0") -> None:
    """Every board provisioned itself on the hub and runs ``version``."""
    for p in picos:
        await until(p.board, functools.partial(_runs, pool, p.key, version), timeout=90)


async def _runs(pool: asyncpg.Pool, key: str, version: str) -> bool:
    return await firmware(pool, key) == version


async def wait_report(
    pool: asyncpg.Pool, pico: Pico, state: str, version: str | None, timeout: float = 90
) -> asyncpg.Record:
    """The first report of ``state`` for ``version`` in the deploy log."""

    async def check() -> asyncpg.Record | None:
        for r in await reports(pool, pico.key):
            if r["state"] == state and r["version"] == version:
                return r
        return None

    row: asyncpg.Record = await until(pico.board, check, timeout=timeout)
    return row


async def wait_rollout(
    pool: asyncpg.Pool, rollout_id: int, state: str, picos: Sequence[Pico], timeout: float = 120
) -> asyncpg.Record:
    """Wait until the rollout is finished; fail unless it finished in ``state``."""

    async def check() -> asyncpg.Record | None:
        row = await pool.fetchrow(Q_ROLLOUT, rollout_id)
        return row if row is not None and row["state"] in (state, *_FINAL) else None

    try:
        row: asyncpg.Record = await wait_for(check, timeout=timeout, interval=0.2)
    except AssertionError:
        row = await pool.fetchrow(Q_ROLLOUT, rollout_id)
    if row is None or row["state"] != state:
        story = await _story(pool, picos)
        raise AssertionError(f"rollout {rollout_id}: {dict(row or {})}, not {state}\n{story}")
    return row


async def _story(pool: asyncpg.Pool, picos: Sequence[Pico]) -> str:
    """What each board did, for a failure message: its reports, resets, crashes, console."""
    out = []
    for p in picos:
        crashes = [e["error"][:300] for e in p.board.of("crash")]
        out.append(f"{p.console(30)}\nreports: {await states(pool, p.key)}")
        out.append(f"resets: {p.board.resets()} crashes: {crashes} main.py: {p.version}")
    return "\n".join(out)


async def settle(seconds: float) -> None:
    """Let boards run for a while (a window in which something must NOT happen)."""
    await asyncio.sleep(seconds)
