"""Finding USB Picos: serial ports in MicroPython's REPL mode and BOOTSEL drives.

A Pico shows up as USB vendor 2E8A. Running MicroPython it is a CDC serial port
(2E8A:0005) whose USB serial number is the flash's unique id in hex, the same string the
board's ``machine.unique_id()`` gives, so host and board agree on the device key. Held in
BOOTSEL it is a mass-storage drive (2E8A:0003 on an RP2040, 2E8A:000F on an RP2350) with an
``INFO_UF2.TXT`` that names the chip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

PICO_VID = 0x2E8A
PID_MICROPYTHON = 0x0005
BOOTSEL_PIDS = {0x0003: "RP2040", 0x000F: "RP2350"}
RP2040_BOARD_ID = "RPI-RP2"
UF2_INFO_FILE = "INFO_UF2.TXT"

_SYSFS_USB = Path("/sys/bus/usb/devices")
_MOUNTS = Path("/proc/self/mounts")
_DISK_BY_ID = Path("/dev/disk/by-id")
# /dev/disk/by-id/usb-RPI_RP2_E0C9125B0D9B-0:0-part1 -> the drive of BOOTSEL board E0C9...
_BY_ID_RE = re.compile(r"^usb-(?:RPI_RP2|RP2350)_([0-9A-Za-z]+)-\d+:\d+")


class Mode(StrEnum):
    REPL = "REPL"  # MicroPython's USB serial: mpremote can talk to it
    BOOTSEL = "BOOTSEL"  # the ROM bootloader's drive: takes a UF2
    OTHER = "OTHER"  # vendor 2E8A but neither (a C SDK app, CircuitPython, ...)


@dataclass(frozen=True, slots=True)
class UsbBoard:
    """One Pico on the bus, as far as the host can tell without talking to it."""

    mode: Mode
    port: str | None = None
    serial_number: str | None = None
    vid: int | None = None
    pid: int | None = None
    mount: Path | None = None
    chip: str | None = None
    key: str | None = None  # device key configured for this port (PICOFLEET_USB_PORTS)

    @property
    def name(self) -> str:
        """How the operator calls this board in output: port, else drive, else serial."""
        return self.port or (str(self.mount) if self.mount else None) or self.serial_number or "?"

    @property
    def vid_pid(self) -> str | None:
        if self.vid is None or self.pid is None:
            return None
        return f"{self.vid:04X}:{self.pid:04X}"


def mode_of(vid: int | None, pid: int | None) -> Mode | None:
    """The mode of a USB id pair, or None when it is not a Pico."""
    if vid != PICO_VID:
        return None
    if pid == PID_MICROPYTHON:
        return Mode.REPL
    if pid in BOOTSEL_PIDS:
        return Mode.BOOTSEL
    return Mode.OTHER


def board_for_port(
    device: str, serial_number: str | None, vid: int | None, pid: int | None
) -> UsbBoard | None:
    mode = mode_of(vid, pid)
    if mode is None:
        return None
    return UsbBoard(mode=mode, port=device, serial_number=serial_number or None, vid=vid, pid=pid)


def serial_boards() -> list[UsbBoard]:
    """Every Pico serial port, from pyserial's port enumeration (in process, cheap)."""
    from serial.tools import list_ports

    found = []
    for p in sorted(list_ports.comports(), key=lambda p: p.device):
        board = board_for_port(p.device, p.serial_number, p.vid, p.pid)
        if board is not None:
            found.append(board)
    return found


def parse_connect_list(text: str) -> list[UsbBoard]:
    """Pico ports from ``mpremote connect list`` (``port serial vid:pid maker product``)."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or ":" not in parts[2]:
            continue
        vid_s, _, pid_s = parts[2].partition(":")
        try:
            vid, pid = int(vid_s, 16), int(pid_s, 16)
        except ValueError:
            continue
        serial = None if parts[1] == "None" else parts[1]
        board = board_for_port(parts[0], serial, vid, pid)
        if board is not None:
            found.append(board)
    return found


def extra_ports(port_keys: dict[str, str | None], known: list[UsbBoard]) -> list[UsbBoard]:
    """The configured extra ports that exist and are not already among ``known``."""
    seen = {b.port for b in known}
    out = []
    for path, key in port_keys.items():
        if path in seen or not Path(path).exists():
            continue
        out.append(UsbBoard(mode=Mode.REPL, port=path, key=key))
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _unescape_mount(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts(mounts_file: Path) -> list[tuple[str, Path]]:
    text = _read(mounts_file) or ""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out.append((_unescape_mount(parts[0]), Path(_unescape_mount(parts[1]))))
    return out


def drive_chip(mount: Path) -> str | None:
    """'RP2040' or 'RP2350' when ``mount`` is a Pico's BOOTSEL drive, else None."""
    info = _read(mount / UF2_INFO_FILE)
    if info is None:
        return None
    if f"Board-ID: {RP2040_BOARD_ID}" in info:
        return "RP2040"
    if "RP2350" in info:
        return "RP2350"
    return None


def bootsel_boards(
    extra_dirs: list[Path],
    *,
    sysfs: Path = _SYSFS_USB,
    mounts_file: Path = _MOUNTS,
    by_id: Path = _DISK_BY_ID,
) -> list[UsbBoard]:
    """Boards in BOOTSEL mode: from sysfs (even when not mounted) and from mounted drives."""
    serial_of_dev: dict[str, str] = {}
    if by_id.is_dir():
        for link in by_id.iterdir():
            m = _BY_ID_RE.match(link.name)
            if m:
                serial_of_dev[str(link.resolve())] = m.group(1)
    drives: dict[Path, str | None] = {}
    for dev, mountpoint in _mounts(mounts_file):
        if drive_chip(mountpoint):
            drives[mountpoint] = serial_of_dev.get(dev)
    for d in extra_dirs:
        if d not in drives and drive_chip(d):
            drives[d] = None

    boards: list[UsbBoard] = []
    if sysfs.is_dir():
        for entry in sorted(sysfs.iterdir()):
            try:
                vid = int(_read(entry / "idVendor") or "", 16)
                pid = int(_read(entry / "idProduct") or "", 16)
            except ValueError:
                continue
            if mode_of(vid, pid) is not Mode.BOOTSEL:
                continue
            serial = _read(entry / "serial")
            mount = next((p for p, s in drives.items() if s and s == serial), None)
            boards.append(
                UsbBoard(
                    mode=Mode.BOOTSEL,
                    serial_number=serial,
                    vid=vid,
                    pid=pid,
                    mount=mount,
                    chip=BOOTSEL_PIDS[pid],
                )
            )
    attached = {b.mount for b in boards}
    for mount, serial in sorted(drives.items()):
        if mount in attached:
            continue
        boards.append(
            UsbBoard(mode=Mode.BOOTSEL, serial_number=serial, mount=mount, chip=drive_chip(mount))
        )
    return boards
