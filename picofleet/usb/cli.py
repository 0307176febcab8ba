"""``picofleet usb list | flash | uf2 | gateway``: thin commands over the usb package."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from picofleet.core.command import CommandError, DataDir, settings_for

if TYPE_CHECKING:  # the commands import their parts lazily, keeping `picofleet --help` quick
    from picofleet.core.devconfig import OptionsFile
    from picofleet.core.settings import Settings
    from picofleet.usb._discovery import UsbBoard
    from picofleet.usb._flash import FlashResult
    from picofleet.usb._settings import UsbSettings
    from picofleet.usb._transport import Transport

usb_app = typer.Typer(
    help="USB Picos: list, flash with mpremote, copy UF2 images, relay serial telemetry.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(usb_app, name="usb")


# -- list ----------------------------------------------------------------------------------


async def _probe(
    transport: Transport, board: UsbBoard, hold_dir: Path, wait: float
) -> dict[str, Any]:
    from picofleet.usb._flash import identify
    from picofleet.usb._hold import hold
    from picofleet.usb._transport import TransportError

    out: dict[str, Any] = {"device_key": None, "app": None, "firmware": None, "uid": None}
    assert board.port is not None
    try:
        with hold(hold_dir, board.port):
            info = await identify(transport, board.port, [], wait)
            await transport.start_app(board.port)
    except TransportError as exc:
        out["probe"] = "busy" if exc.busy else f"error: {exc.message}"
        return out
    except ValueError as exc:
        out["probe"] = f"error: {exc}"
        return out
    out.update(
        device_key=info.device_key, app=info.app, firmware=info.firmware, uid=info.uid, probe="ok"
    )
    return out


async def _list(settings: Settings, probe: bool) -> list[dict[str, Any]]:
    from picofleet.usb._discovery import Mode, bootsel_boards, extra_ports
    from picofleet.usb._hold import hold_dir
    from picofleet.usb._settings import UsbSettings
    from picofleet.usb._transport import MpremoteTransport

    usb = UsbSettings()
    transport = MpremoteTransport(timeout=usb.usb_step_timeout_s)
    boards = await transport.list_ports()
    boards += extra_ports(usb.port_keys(), boards)
    boards += await asyncio.to_thread(bootsel_boards, usb.usb_bootsel_dirs)
    wait = 2 * usb.usb_scan_interval_s + 1

    async def row(board: UsbBoard) -> dict[str, Any]:
        r: dict[str, Any] = {
            "port": board.port,
            "serial_number": board.serial_number,
            "usb_id": board.vid_pid,
            "mode": board.mode.value,
            "mount": str(board.mount) if board.mount else None,
            "chip": board.chip,
        }
        if board.mode is Mode.REPL and probe:
            r.update(await _probe(transport, board, hold_dir(settings), wait))
        return r

    return list(await asyncio.gather(*(row(b) for b in boards)))


@usb_app.command("list")
def list_cmd(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    probe: Annotated[
        bool,
        typer.Option(
            "--probe/--no-probe",
            help="Ask each REPL board for its device key and firmware (restarts its app).",
        ),
    ] = True,
) -> None:
    """Every USB Pico (vendor 2E8A): port, USB serial, mode, and what we flashed on it."""
    rows = asyncio.run(_list(settings_for(data_dir), probe))
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no USB Picos found")
        return
    cols = ["port", "serial_number", "mode", "device_key", "app", "firmware"]
    table = [[str(r.get(c) or "-") for c in cols] + [_note(r)] for r in rows]
    head = ["PORT", "USB SERIAL", "MODE", "DEVICE KEY", "APP", "FIRMWARE", "NOTE"]
    widths = [max(len(x) for x in col) for col in zip(head, *table, strict=True)]
    for line in [head, *table]:
        typer.echo("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())


def _note(r: dict[str, Any]) -> str:
    if r["mode"] == "BOOTSEL":
        return f"{r.get('chip') or ''} drive {r['mount']}" if r["mount"] else "drive not mounted"
    probe = r.get("probe")
    return "" if probe in (None, "ok") else str(probe)


# -- flash ---------------------------------------------------------------------------------


async def _boards_for(
    ports: list[str], all_boards: bool, transport: Transport, usb: UsbSettings
) -> list[UsbBoard]:
    from picofleet.usb._discovery import Mode, UsbBoard, extra_ports

    known = await transport.list_ports()
    known += extra_ports(usb.port_keys(), known)
    if all_boards:
        return [b for b in known if b.mode is Mode.REPL]
    picked = []
    for p in ports:
        if p.startswith("id:"):
            match = [b for b in known if b.serial_number == p[3:]]
            if not match:
                raise CommandError(f"no board with USB serial number {p[3:]}")
            picked.append(match[0])
        else:
            match = [b for b in known if b.port == p]
            picked.append(match[0] if match else UsbBoard(Mode.REPL, port=p))
    return picked


def _flags(
    ssid: str | None, password: str | None, host: str | None, port: int | None
) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    wifi = {k: v for k, v in (("ssid", ssid), ("password", password)) if v is not None}
    broker = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if wifi:
        flags["wifi"] = wifi
    if broker:
        flags["broker"] = broker
    return flags


@usb_app.command("flash")
def flash_cmd(
    port: Annotated[
        list[str] | None,
        typer.Option("--port", help="Serial port, or id:USBSERIAL (repeat for several)."),
    ] = None,
    all_boards: Annotated[bool, typer.Option("--all", help="Every Pico in REPL mode.")] = False,
    app_name: Annotated[
        str | None, typer.Option("--app", help="Firmware: pico_w or pico_usb.")
    ] = None,
    release: Annotated[
        str | None,
        typer.Option("--release", help="OTA release of --app (pico_w by default): its main.py."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="JSON board options (see docs/usb.md).")
    ] = None,
    wifi_ssid: Annotated[str | None, typer.Option("--wifi-ssid")] = None,
    wifi_password: Annotated[
        str | None, typer.Option("--wifi-password", envvar="PICOFLEET_USB_WIFI_PASSWORD")
    ] = None,
    broker_host: Annotated[str | None, typer.Option("--broker-host")] = None,
    broker_port: Annotated[int | None, typer.Option("--broker-port")] = None,
    source: Annotated[
        Path | None, typer.Option("--source", help="Firmware folder instead of <repo>/<app>/.")
    ] = None,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON results.")] = False,
) -> None:
    """Copy firmware and a per-device config.json to boards, verify, restart, log it."""
    from picofleet.core.devconfig import APPS, ConfigError, OptionsFile, load_options_file
    from picofleet.usb._bundle import BundleError

    ports = port or []
    if bool(ports) == all_boards:
        raise CommandError("name the boards: --port P (repeatable) or --all")
    if app_name is None and release is None:
        raise CommandError("choose the firmware: --app pico_w|pico_usb or --release VERSION")
    app = app_name or "pico_w"
    if app not in APPS:
        raise CommandError(f"unknown app {app!r}; use {' or '.join(APPS)}")
    settings = settings_for(data_dir)
    try:
        options = load_options_file(config) if config else OptionsFile()
        flags = _flags(wifi_ssid, wifi_password, broker_host, broker_port)
        results = asyncio.run(
            _flash(settings, ports, all_boards, app, release, options, flags, source)
        )
    except (BundleError, ConfigError) as exc:
        raise CommandError(str(exc)) from None
    if as_json:
        typer.echo(json.dumps([_result_json(r) for r in results]))
    if not results:
        raise CommandError("no boards to flash")
    failed = [r for r in results if not r.ok]
    if failed:
        raise CommandError(f"{len(failed)} of {len(results)} board(s) failed; see above")
    if not all(r.recorded for r in results):
        raise CommandError("flashed, but the deploy log could not be written; see above")


def _result_json(r: FlashResult) -> dict[str, Any]:
    return {
        "port": r.board.port,
        "device_key": r.key,
        "ok": r.ok,
        "version": r.version,
        "reason": r.reason,
        "error": r.error,
        "recorded": r.recorded,
        **{k: v for k, v in r.detail().items() if k in ("files", "copied", "step")},
    }


async def _flash(
    settings: Settings,
    ports: list[str],
    all_boards: bool,
    app: str,
    release: str | None,
    options: OptionsFile,
    flags: dict[str, Any],
    source: Path | None,
) -> list[FlashResult]:
    from picofleet.core.credentials import load_fleet_keys
    from picofleet.core.devconfig import ota_public_key
    from picofleet.core.runtime import command_pool
    from picofleet.core.tls import ca_pem
    from picofleet.usb._bundle import load_app, load_release
    from picofleet.usb._flash import FlashPlan, flash_all
    from picofleet.usb._hold import hold_dir
    from picofleet.usb._progress import BarReporter, LineReporter
    from picofleet.usb._settings import UsbSettings
    from picofleet.usb._transport import MpremoteTransport

    usb = UsbSettings()
    transport = MpremoteTransport(timeout=usb.usb_step_timeout_s)
    # The deploy log is part of the job: no database, no flash.
    async with command_pool(settings, max_size=4) as pool:
        bundle = (
            await load_release(pool, settings, app, release, source)
            if release
            else load_app(app, source)
        )
        boards = await _boards_for(ports, all_boards, transport, usb)
        plan = FlashPlan(
            bundle=bundle,
            settings=settings,
            keys=load_fleet_keys(settings),
            options=options,
            flags=flags,
            ota_key=ota_public_key(settings.data_path),
            hold_dir=hold_dir(settings),
            busy_wait_s=2 * usb.usb_scan_interval_s + 1,
            # Pico Ws get the hub's CA and its TLS port when the hub speaks TLS.
            ca_pem=ca_pem(settings) if settings.tls else None,
        )
        if sys.stdout.isatty():
            with BarReporter() as bars:
                return await flash_all(transport, boards, plan, bars, pool)
        lines = LineReporter(lambda text: typer.echo(text, err=True))
        return await flash_all(transport, boards, plan, lines, pool)


# -- uf2 -----------------------------------------------------------------------------------


@usb_app.command("uf2")
def uf2_cmd(
    file: Annotated[Path, typer.Argument(help="A MicroPython .uf2 for the RP2040.")],
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Wait for a BOOTSEL drive if none is there, and for each to reboot."
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits for a drive.")] = 60.0,
    data_dir: DataDir = None,
) -> None:
    """Copy a UF2 image to every Pico held in BOOTSEL mode (its RPI-RP2 drive)."""
    from picofleet.usb._discovery import bootsel_boards
    from picofleet.usb._settings import UsbSettings
    from picofleet.usb._uf2 import Uf2Error, check_uf2, copy_to_drive, wait_gone

    settings_for(data_dir)
    try:
        data = file.read_bytes()
        info = check_uf2(data)
    except Uf2Error as exc:
        raise CommandError(f"{file}: {exc}") from None
    typer.echo(
        f"{file.name}: RP2040 UF2, {info.blocks} blocks, {info.payload_bytes} bytes "
        f"at 0x{info.start:08X}-0x{info.end:08X}"
    )
    usb = UsbSettings()

    def drives() -> list[Path]:
        found = bootsel_boards(usb.usb_bootsel_dirs)
        return [b.mount for b in found if b.mount is not None and b.chip == "RP2040"]

    mounts = drives()
    if not mounts and wait:
        typer.echo(f"waiting up to {timeout:.0f} s for a BOOTSEL drive ...")
        mounts = _poll(drives, timeout)
    if not mounts:
        raise CommandError(
            "no RP2040 BOOTSEL drive mounted: hold BOOTSEL while plugging the Pico in "
            "(and mount its RPI-RP2 drive), or pass --wait"
        )
    failed = 0
    for mount in mounts:
        try:
            copy_to_drive(data, mount, file.name)
        except OSError as exc:
            failed += 1
            typer.echo(f"{mount}: FAILED {exc}", err=True)
            continue
        note = ""
        if wait:
            note = "; rebooted" if wait_gone(mount, 15) else "; drive still there after 15 s"
        typer.echo(f"{mount}: copied {len(data)} bytes{note}")
    if failed:
        raise CommandError(f"{failed} of {len(mounts)} drive(s) failed")


def _poll(find: Callable[[], list[Path]], timeout: float) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return list(found)
        time.sleep(0.5)
    return []


# -- gateway -------------------------------------------------------------------------------


@usb_app.command("gateway")
def gateway_cmd(
    data_dir: DataDir = None,
    port: Annotated[
        list[str] | None,
        typer.Option("--port", help="Extra serial port, PATH or PATH=KEY (repeatable)."),
    ] = None,
) -> None:
    """Relay every USB Pico's serial lines to MQTT as its telemetry (until Ctrl-C)."""
    from picofleet.core.credentials import load_fleet_keys
    from picofleet.core.runtime import install_signals
    from picofleet.core.topics import Topics
    from picofleet.usb._gateway import UsbGateway, broker_endpoint
    from picofleet.usb._hold import hold_dir
    from picofleet.usb._settings import UsbSettings

    settings = settings_for(data_dir)
    usb = UsbSettings()
    if port:
        usb = usb.model_copy(update={"usb_ports": [*usb.usb_ports, *port]})
    target = broker_endpoint(settings)
    gateway = UsbGateway(
        host=target.host,
        port=target.port,
        ca=target.ca,
        keys=load_fleet_keys(settings),
        topics=Topics(settings.topic_prefix),
        usb=usb,
        hold_dir=hold_dir(settings),
    )

    async def run() -> None:
        stop = asyncio.Event()
        install_signals(stop)
        await gateway.run(stop)

    typer.echo(f"usb gateway: publishing to {target}; Ctrl-C stops it", err=True)
    asyncio.run(run())
