"""Flashing boards: identify, copy to a temporary folder, verify, rename, verify, restart.

One board's steps run in order; boards run side by side. A failure ends that board's flash
with a reason and leaves its previous files in place (nothing is renamed before every copy
verified), and never touches the other boards. Each result becomes one ``deploy_event`` row
(source 'usb', state 'flashed' or 'failed').
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from picofleet.bridge.decode import legacy_id
from picofleet.core import logs
from picofleet.core.credentials import FleetKeys
from picofleet.core.devconfig import ConfigError, OptionsFile, build_config
from picofleet.core.settings import Settings
from picofleet.core.topics import valid_device_key
from picofleet.usb._board import (
    CONFIG_FILE,
    TMP_DIR,
    VERSION_FILE,
    BoardInfo,
    commit_code,
    identify_code,
    parse_identify,
    prepare_code,
)
from picofleet.usb._bundle import AppBundle, BoardFile
from picofleet.usb._discovery import UsbBoard
from picofleet.usb._hold import hold
from picofleet.usb._transport import Transport, TransportError

STEP_UNITS = 1024  # progress weight of a step that is not a copy (about 1 KB of copying)
STATE_FLASHED, STATE_FAILED = "flashed", "failed"

Q_DEPLOY_EVENT = """
INSERT INTO deploy_event (device_key, version, state, reason, source, detail)
VALUES ($1, $2, $3, $4, 'usb', $5::jsonb)
"""
Q_UPSERT_DEVICE = """
INSERT INTO device (id, device_key, serial, device_type, firmware, provisioned_at)
VALUES (coalesce($1, nextval('device_id_seq')), $2, $2, $3, $4, now())
ON CONFLICT (device_key) DO UPDATE SET device_type = EXCLUDED.device_type,
    firmware = coalesce(EXCLUDED.firmware, device.firmware),
    provisioned_at = EXCLUDED.provisioned_at
"""


class Reporter(Protocol):
    """Progress of each board's flash (a rich bar per board on a TTY, lines otherwise)."""

    def begin(self, board: str) -> None: ...
    def total(self, board: str, total: int) -> None: ...
    def advance(self, board: str, step: str, amount: int = 0) -> None: ...
    def end(self, board: str, ok: bool, summary: str) -> None: ...


@dataclass
class FlashPlan:
    """What every board of one `usb flash` gets."""

    bundle: AppBundle
    settings: Settings
    keys: FleetKeys
    options: OptionsFile = field(default_factory=OptionsFile)
    flags: dict[str, Any] = field(default_factory=dict)
    ota_key: tuple[str, str] | None = None
    ca_pem: str | None = None  # the hub's CA (picofleet.core.tls.ca_pem): Pico Ws get TLS
    hold_dir: Path | None = None
    busy_wait_s: float = 0.0  # how long a busy port may take to be released by a gateway


@dataclass
class FlashResult:
    board: UsbBoard
    app: str
    version: str | None
    release: str | None
    key: str | None = None
    ok: bool = False
    step: str = "identify"
    reason: str | None = None
    error: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    copied: list[str] = field(default_factory=list)
    previous: dict[str, Any] = field(default_factory=dict)
    app_started: bool | None = None
    duration_s: float = 0.0
    recorded: bool = True  # False: the deploy-log row could not be written

    @property
    def device_key(self) -> str:
        """Key for the deploy log: the board's, else its USB serial, else its port."""
        return self.key or self.board.serial_number or self.board.name

    def detail(self) -> dict[str, Any]:
        return {
            "port": self.board.port,
            "usb_serial": self.board.serial_number,
            "app": self.app,
            "release": self.release,
            "files": self.files,
            "copied": self.copied,
            "step": self.step,
            "error": self.error,
            "previous": self.previous,
            "app_started": self.app_started,
            "duration_s": round(self.duration_s, 3),
        }


class _Failed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def _reason(exc: TransportError) -> str:
    return "port_busy" if exc.busy else "transport_error"


async def identify(transport: Transport, port: str, names: list[str], wait: float) -> BoardInfo:
    """Interrupt the board's app and ask who it is; a port busy for up to ``wait`` s (a
    gateway letting go of it) is retried. No soft reset: boot.py (the Pico-W's updater counts
    boots there) runs only once, when the flashed board restarts.

    Raises TransportError, or ValueError when the board's answer makes no sense."""
    deadline = time.monotonic() + wait
    while True:
        try:
            out = await transport.exec(port, identify_code(names))
            break
        except TransportError as exc:
            if not exc.busy or time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.5)
    return parse_identify(out)


def _mismatches(files: Sequence[BoardFile], got: dict[str, str], prefix: str) -> list[str]:
    return [f.name for f in files if got.get(prefix + f.name) != f.sha256]


async def flash_board(
    transport: Transport, board: UsbBoard, plan: FlashPlan, reporter: Reporter
) -> FlashResult:
    if board.port is None:
        raise ValueError("only boards with a serial port can be flashed")
    port, name, bundle = board.port, board.name, plan.bundle
    result = FlashResult(board, bundle.app, bundle.version, bundle.release)
    log = logs.get("picofleet.usb.flash").bind(port=port)
    started = time.monotonic()
    reporter.begin(name)
    try:
        with hold(plan.hold_dir, port):
            names = [f.name for f in bundle.files] + [VERSION_FILE, CONFIG_FILE]
            try:
                info = await identify(transport, port, names, plan.busy_wait_s)
            except ValueError as exc:
                raise _Failed("no_answer", str(exc)) from None
            result.previous = {"version": info.firmware, "app": info.app, "files": info.files}
            key = info.uid or board.serial_number or board.key
            if not key or not valid_device_key(key):
                raise _Failed("no_device_key", f"the board gave no usable unique id ({key!r})")
            result.key = key
            log = log.bind(device_key=key)
            result.step = "config"
            cfg = build_config(
                key=key,
                app=bundle.app,
                settings=plan.settings,
                keys=plan.keys,
                existing=info.config,
                options=plan.options,
                flags=plan.flags,
                ota_key=plan.ota_key,
                ca_pem=plan.ca_pem,
            )
            files = [*bundle.files, bundle.version_file(), BoardFile(CONFIG_FILE, cfg.to_bytes())]
            changed = [f for f in files if info.files.get(f.name) != f.sha256]
            need = sum(len(f.data) for f in changed)
            if info.free is not None and need > info.free:
                raise _Failed("no_space", f"{need} bytes to copy, {info.free} free on the board")
            reporter.total(name, need + 5 * STEP_UNITS)
            reporter.advance(name, "identified", STEP_UNITS)
            if changed:
                await _upload(transport, port, changed, result, reporter, name)
            else:
                reporter.advance(name, "unchanged", 2 * STEP_UNITS)
            result.step = "verify"
            got = await transport.sha256(port, [f.name for f in files])
            bad = _mismatches(files, got, "")
            result.files = {f.name: got.get(f.name, "") for f in files}
            if bad:
                raise _Failed("hash_mismatch", f"after renaming, {', '.join(bad)} differ")
            reporter.advance(name, "verified", STEP_UNITS)
            result.step = "reset"
            await transport.soft_reset(port)
            result.step = "start"
            result.app_started = await transport.start_app(port)
            reporter.advance(name, "started", STEP_UNITS)
        result.ok = True
    except _Failed as exc:
        result.reason, result.error = exc.reason, exc.message
    except TransportError as exc:
        result.reason, result.error = _reason(exc), exc.message
    except ConfigError as exc:
        result.reason, result.error = "config_error", str(exc)
    result.duration_s = time.monotonic() - started
    if result.ok:
        log.info("usb.flashed", copied=result.copied, version=result.version)
        reporter.end(
            name, True, f"{result.key} {result.version or ''} ({len(result.copied)} copied)"
        )
    else:
        log.warning("usb.flash_failed", step=result.step, reason=result.reason, error=result.error)
        reporter.end(name, False, f"{result.step}: {result.reason}: {result.error}")
    return result


async def _upload(
    transport: Transport,
    port: str,
    changed: list[BoardFile],
    result: FlashResult,
    reporter: Reporter,
    name: str,
) -> None:
    sizes = {f.name: len(f.data) for f in changed}
    result.step = "prepare"
    await transport.exec(port, prepare_code())
    result.step = "copy"
    # The local copies hold the device's credentials (config.json): a private temp dir.
    with tempfile.TemporaryDirectory(prefix="picofleet-usb-") as tmp:
        paths = []
        for f in changed:
            p = Path(tmp) / f.name
            p.write_bytes(f.data)
            paths.append(p)
        await transport.copy(
            port, paths, TMP_DIR, on_file=lambda n: reporter.advance(name, f"copy {n}", sizes[n])
        )
    result.step = "verify"
    got = await transport.sha256(port, [f"{TMP_DIR}/{f.name}" for f in changed])
    bad = _mismatches(changed, got, f"{TMP_DIR}/")
    if bad:
        raise _Failed("hash_mismatch", f"copies of {', '.join(bad)} differ; nothing renamed")
    reporter.advance(name, "verified copies", STEP_UNITS)
    result.step = "commit"
    await transport.exec(port, commit_code([f.name for f in changed]))
    result.copied = [f.name for f in changed]
    reporter.advance(name, "renamed", STEP_UNITS)


async def record(pool: asyncpg.Pool, result: FlashResult) -> None:
    """The deploy-log row of one flash; a flashed board's device row learns its type."""
    state = STATE_FLASHED if result.ok else STATE_FAILED
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            Q_DEPLOY_EVENT,
            result.device_key,
            result.version,
            state,
            result.reason,
            json.dumps(result.detail()),
        )
        if result.ok and result.key:
            await conn.execute(
                Q_UPSERT_DEVICE, legacy_id(result.key), result.key, result.app, result.version
            )


async def flash_all(
    transport: Transport,
    boards: Sequence[UsbBoard],
    plan: FlashPlan,
    reporter: Reporter,
    pool: asyncpg.Pool | None,
) -> list[FlashResult]:
    """Flash every board side by side; each result is recorded as soon as it is known."""

    async def one(board: UsbBoard) -> FlashResult:
        result = await flash_board(transport, board, plan, reporter)
        if pool is not None:
            try:
                await record(pool, result)
            except (asyncpg.PostgresError, OSError) as exc:
                # The board is done either way; say loudly that its log entry is missing.
                result.recorded = False
                logs.get("picofleet.usb.flash").error(
                    "usb.deploy_log_failed", port=board.port, error=str(exc)
                )
        return result

    return list(await asyncio.gather(*(one(b) for b in boards)))
