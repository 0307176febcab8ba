"""The real ``pico_w`` firmware on CPython: N virtual Pico Ws against a real hub.

Each device is a thread running the firmware exactly as a board does: ``boot.py`` then
``main.py``, read from its own flash directory, in an interpreter of its own (fresh module
table at every reset). What a board provides in C is provided here by thin fakes, the only
seams the firmware has:

    machine     Pin, ADC (a soil model that the pump wets), WDT, Timer, RTC, reset
    network     WLAN station whose access point can drop out (``set_wifi``)
    rp2, ntptime, gc, micropython, sys   what the firmware touches of them
    time        ticks_ms with MicroPython's 2**30 wrap (starting just before it), the RTC
    os, open    the flash: a directory, with littlefs's rule that a written file counts
                only once flushed or closed, a capacity, and power cuts at any operation
    socket      MicroPython's socket API over real sockets, that stall when Wi-Fi drops
    umqtt.simple  a client with the API of micropython-lib's (on a board: ``mip`` installs it)

Everything else (json, struct, hashlib with sha256 only, asyncio, ...) is CPython's own.
A reset (``machine.reset()``, the watchdog, a power cut) unwinds the firmware with a
``SystemExit`` subclass the firmware cannot catch, and the board boots again.

Public surface: ``FirmwareDevice``, ``FirmwareFleet``, ``run_firmware_fleet``,
``device_config``, ``flash``, ``release_main``, ``Interpreter``, ``VirtualBoard``,
``FlashFS``, ``PowerLoss``, ``DeviceReset``.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import calendar
import contextlib
import errno
import hashlib
import io
import json
import random
import re
import select
import shutil
import socket as _socket
import struct
import tempfile
import threading
import time
import traceback
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picofleet import logs
from picofleet.credentials import FleetKeys

__all__ = [
    "DeviceReset",
    "FirmwareDevice",
    "FirmwareFleet",
    "FlashFS",
    "FleetResult",
    "Interpreter",
    "PowerLoss",
    "VirtualBoard",
    "device_config",
    "firmware_dir",
    "flash",
    "release_main",
    "run_firmware_fleet",
]

TICKS_PERIOD = 1 << 30  # MicroPython's ticks_ms wraps here
RTC_AT_RESET = 1_609_459_200  # the rp2 port starts its RTC at 2021-01-01 00:00:00
FLASH_BYTES = 848 * 1024  # the Pico W's littlefs partition
BLOCK = 4096
_SLICE = 0.05  # how often blocking fakes look for a reset
_STAT_IDLE, _STAT_CONNECTING, _STAT_NO_AP, _STAT_GOT_IP = 0, 1, -2, 3
_NATIVE_STDLIB = (
    "json",
    "struct",
    "binascii",
    "errno",
    "io",
    "random",
    "math",
    "array",
    "collections",
    "re",
    "heapq",
)
_ALIASES = {
    "ujson": "json",
    "ustruct": "struct",
    "ubinascii": "binascii",
    "uerrno": "errno",
    "uio": "io",
    "urandom": "random",
    "ure": "re",
    "ucollections": "collections",
    "uarray": "array",
    "uhashlib": "hashlib",
    "uasyncio": "asyncio",
    "utime": "time",
    "uos": "os",
    "usocket": "socket",
    "usys": "sys",
    "umachine": "machine",
}


class DeviceReset(SystemExit):
    """The board resets (machine.reset, watchdog); the firmware cannot catch it."""


class PowerLoss(SystemExit):
    """Power is gone: nothing after this point happens, uncommitted writes are lost."""


def firmware_dir() -> Path:
    """The repository's ``pico_w`` directory (the firmware this module runs)."""
    return Path(__file__).resolve().parents[2] / "pico_w"


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


# -- the flash -----------------------------------------------------------------------------
class FlashFS:
    """A board's flash as a host directory with littlefs semantics.

    A file opened for writing changes on flash only at ``flush()``/``close()`` (a commit);
    creating a file, a commit, ``rename`` and ``remove`` are each one operation. With
    ``cut_at = k`` the k-th operation does not happen: power is lost instead
    (``PowerLoss``), and from then on nothing touches the directory.
    """

    def __init__(self, root: Path, *, capacity: int = FLASH_BYTES) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.ops = 0
        self.trace: list[str] = []
        self.cut_at: int | None = None
        self.dead: type[BaseException] | None = None

    # paths
    def path(self, name: str) -> Path:
        rel = str(name).lstrip("/")
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise OSError(errno.EINVAL, "path escapes the flash")
        return self.root.joinpath(*parts) if parts else self.root

    def check(self) -> None:
        if self.dead is not None:
            raise self.dead()

    def _op(self, what: str) -> None:
        self.check()
        self.ops += 1
        self.trace.append(what)
        if self.cut_at is not None and self.ops == self.cut_at:
            self.dead = PowerLoss
            raise PowerLoss()

    def used(self) -> int:
        total = 0
        for p in self.root.rglob("*"):
            if p.is_file():
                total += BLOCK * (1 + -(-p.stat().st_size // BLOCK))
        return total

    def free(self) -> int:
        return max(0, self.capacity - self.used())

    # operations
    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def read_bytes(self, name: str) -> bytes | None:
        p = self.path(name)
        return p.read_bytes() if p.is_file() else None

    def commit(self, name: str, data: bytes) -> None:
        p = self.path(name)
        old = p.stat().st_size if p.exists() else 0
        grow = -(-len(data) // BLOCK) - -(-old // BLOCK)
        if grow > 0 and grow * BLOCK > self.free():
            raise OSError(errno.ENOSPC, "flash full")
        self._op(f"commit {name} ({len(data)} bytes)")
        tmp = p.with_name(f".{p.name}.commit")
        tmp.write_bytes(data)
        tmp.replace(p)

    def create(self, name: str) -> None:
        p = self.path(name)
        if not p.parent.is_dir():
            raise OSError(errno.ENOENT, name)
        self._op(f"create {name}")
        p.touch()

    def rename(self, old: str, new: str) -> None:
        a, b = self.path(old), self.path(new)
        if not a.exists():
            raise OSError(errno.ENOENT, old)
        self._op(f"rename {old} -> {new}")
        a.replace(b)

    def remove(self, name: str) -> None:
        p = self.path(name)
        if not p.is_file():
            raise OSError(errno.ENOENT, name)
        self._op(f"remove {name}")
        p.unlink()

    def mkdir(self, name: str) -> None:
        p = self.path(name)
        if p.exists():
            raise OSError(errno.EEXIST, name)
        self._op(f"mkdir {name}")
        p.mkdir()

    def rmdir(self, name: str) -> None:
        p = self.path(name)
        if not p.is_dir():
            raise OSError(errno.ENOENT, name)
        self._op(f"rmdir {name}")
        p.rmdir()

    def open(self, name: str, mode: str = "r", *_a: Any, **_k: Any) -> _FlashFile:
        self.check()
        binary = "b" in mode
        kind = mode.replace("b", "").replace("t", "")
        if kind not in ("r", "w", "a"):
            raise ValueError(f"unsupported mode {mode!r}")
        p = self.path(name)
        if kind == "r":
            if not p.is_file():
                raise OSError(errno.ENOENT, name)
            return _FlashFile(self, name, p.read_bytes(), binary, writable=False)
        if p.is_dir():
            raise OSError(errno.EISDIR, name)
        existing = p.read_bytes() if p.is_file() else None
        if existing is None:
            self.create(name)
        start = (existing or b"") if kind == "a" else b""
        return _FlashFile(self, name, start, binary, writable=True)


class _FlashFile:
    def __init__(self, fs: FlashFS, name: str, data: bytes, binary: bool, *, writable: bool):
        self._fs, self._name, self._binary, self._writable = fs, name, binary, writable
        self._buf = io.BytesIO(data)
        if writable:
            self._buf.seek(0, io.SEEK_END)
        self._dirty = False
        self.closed = False

    def _out(self, b: bytes) -> Any:
        return b if self._binary else b.decode()

    def read(self, n: int = -1) -> Any:
        self._fs.check()
        return self._out(self._buf.read(None if n is None or n < 0 else n))

    def readinto(self, buf: Any, n: int | None = None) -> int:
        self._fs.check()
        mv = memoryview(buf).cast("B")
        want = len(mv) if n is None else min(n, len(mv))
        data = self._buf.read(want)
        mv[: len(data)] = data
        return len(data)

    def readline(self) -> Any:
        self._fs.check()
        return self._out(self._buf.readline())

    def __iter__(self) -> Iterator[Any]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def write(self, data: Any) -> int:
        self._fs.check()
        if not self._writable:
            raise OSError(errno.EBADF, "not open for writing")
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if self._buf.tell() + len(raw) > self._fs.capacity:
            raise OSError(errno.ENOSPC, "flash full")
        self._buf.write(raw)
        self._dirty = True
        return len(raw)

    def flush(self) -> None:
        if self._writable and self._dirty:
            self._fs.commit(self._name, self._buf.getvalue())
            self._dirty = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._fs.dead is None:
            self.flush()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._buf.seek(pos, whence)

    def tell(self) -> int:
        return self._buf.tell()

    def __enter__(self) -> _FlashFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the board -----------------------------------------------------------------------------
@dataclass
class SoilModel:
    """Moisture falls slowly, rises while the pump runs; read through the calibration."""

    pct: float = 45.0
    dry_per_s: float = 0.02
    wet_per_s: float = 1.0
    dry_raw: int = 52000
    wet_raw: int = 21000
    _at: float = field(default_factory=time.monotonic)

    def read(self, pump_on: bool) -> int:
        now = time.monotonic()
        dt, self._at = now - self._at, now
        self.pct += (self.wet_per_s if pump_on else 0.0) * dt - self.dry_per_s * dt
        self.pct = min(100.0, max(0.0, self.pct))
        raw = self.dry_raw - self.pct / 100.0 * (self.dry_raw - self.wet_raw)
        return int(min(65535, max(1, raw + random.uniform(-40, 40))))


class VirtualBoard:
    """What one Pico W is, apart from the firmware: pins, sensors, clock, radio, flash.

    Args:
        key: the device key (also its MQTT client id).
        root: the board's flash directory.
        relay_pin, relay_active_high: where the pump relay hangs (from its config.json).
        ntp: whether an NTP server answers.
        wdt_scale: factor on watchdog timeouts (tests shorten the 8 s).
    """

    def __init__(
        self,
        key: str,
        root: Path,
        *,
        relay_pin: int = 15,
        relay_active_high: bool = True,
        ntp: bool = True,
        wdt_scale: float = 1.0,
        soil: SoilModel | None = None,
        capacity: int = FLASH_BYTES,
    ) -> None:
        self.key = key
        self.fs = FlashFS(root, capacity=capacity)
        self.uid = hashlib.sha256(key.encode()).digest()[:8]
        self.relay_pin, self.relay_high = relay_pin, relay_active_high
        self.ntp_available = ntp
        self.wdt_scale = wdt_scale
        self.soil = soil or SoilModel()
        self.in_range = True  # the access point is reachable
        self.console: deque[str] = deque(maxlen=2000)
        self.relay_log: list[tuple[float, bool]] = []
        self.boots = 0
        self.resets: list[str] = []
        self.reset_cause = 1  # PWRON_RESET
        self.loop: asyncio.AbstractEventLoop | None = None
        self.generation = 0
        self._lock = threading.Lock()
        self.power_on()

    # power
    def power_on(self) -> None:
        """Everything volatile back to its reset state; the flash stays."""
        with self._lock:
            self.generation += 1
            self.fs.dead = None
            self.fs.cut_at = None
            self.dead: type[BaseException] | None = None
            self.pins: dict[Any, int] = {}
            self.wdt_ms: float | None = None
            self.wdt_fed = time.monotonic()
            self.timers: list[threading.Timer] = []
            self.link_epoch = 0
            self.sockets: weakref.WeakSet[_MPSocket] = weakref.WeakSet()
            self.wlan_active = False
            self.join_at: float | None = None
            self.loop = None
            self.boots += 1
            self._t0 = time.monotonic()
            self._tick0 = TICKS_PERIOD - 3000  # wraps 3 s after boot: wrap bugs show up
            self._rtc_offset = RTC_AT_RESET - self._t0

    def kill(self, exc: type[BaseException], why: str) -> None:
        """Stop the running firmware now (reset or power loss) from any thread."""
        with self._lock:
            if self.dead is not None:
                return
            self.dead = exc
            self.fs.dead = exc
            self.resets.append(why)
            for t in self.timers:
                t.cancel()
            self._drop_links()
            loop = self.loop
        if loop is not None and not loop.is_closed():

            def _raise() -> None:
                raise exc()

            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_raise)

    def check(self) -> None:
        if self.dead is not None:
            raise self.dead()

    def sleep(self, seconds: float) -> None:
        """A blocking wait the board's death interrupts."""
        end = time.monotonic() + max(0.0, seconds)
        while True:
            self.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(_SLICE, left))

    # clock
    def ticks_ms(self) -> int:
        return (self._tick0 + int((time.monotonic() - self._t0) * 1000)) % TICKS_PERIOD

    def rtc(self) -> float:
        return time.monotonic() + self._rtc_offset

    def set_rtc(self, epoch: float) -> None:
        self._rtc_offset = epoch - time.monotonic()

    # pins
    def pin_write(self, pin: Any, value: int) -> None:
        before = self.relay_on
        self.pins[pin] = 1 if value else 0
        after = self.relay_on
        if after != before:
            self.relay_log.append((time.monotonic(), after))

    @property
    def relay_on(self) -> bool:
        level = self.pins.get(self.relay_pin)
        return level is not None and level == (1 if self.relay_high else 0)

    def adc(self, channel: int) -> int:
        if channel == 0:
            return self.soil.read(self.relay_on)
        if channel == 3:
            return int(5.02 / 3 / 3.3 * 65535)
        if channel == 4:
            volts = 0.706 - (24.0 + random.uniform(-0.5, 0.5) - 27) * 0.001721
            return int(volts / 3.3 * 65535)
        return random.randint(0, 400)

    # watchdog
    def wdt_arm(self, timeout_ms: int) -> None:
        self.wdt_ms = float(timeout_ms)
        self.wdt_fed = time.monotonic()

    def wdt_feed(self) -> None:
        self.check()
        self.wdt_fed = time.monotonic()

    def wdt_expired(self) -> bool:
        if self.wdt_ms is None or self.dead is not None:
            return False
        return time.monotonic() - self.wdt_fed > self.wdt_ms / 1000 * self.wdt_scale

    # radio
    def set_in_range(self, up: bool) -> None:
        with self._lock:
            if self.in_range and not up:
                self._drop_links()
            self.in_range = up

    def _drop_links(self) -> None:
        # The radio is gone: the peers of open connections see them end (as after their
        # keepalive); on this side they just stall.
        self.link_epoch += 1
        self.join_at = None
        for s in list(self.sockets):
            s.sever()

    def associate(self) -> None:
        """Join the access point now (for tests that run firmware parts without app.py)."""
        self.wlan_active = True
        self.join_at = time.monotonic()

    def link_up(self) -> bool:
        return (
            self.wlan_active
            and self.in_range
            and self.join_at is not None
            and time.monotonic() >= self.join_at
        )

    def say(self, line: str) -> None:
        self.console.append(line)


# -- fakes of the board's built-in modules ---------------------------------------------------
def _fake_time(board: VirtualBoard) -> types.ModuleType:
    def ticks_diff(a: int, b: int) -> int:
        half = TICKS_PERIOD // 2
        return ((a - b + half) % TICKS_PERIOD) - half

    def gmtime(secs: float | None = None) -> tuple[int, ...]:
        t = time.gmtime(int(board.rtc() if secs is None else secs))
        return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, t.tm_wday, t.tm_yday)

    def mktime(t: tuple[int, ...]) -> int:
        return calendar.timegm((t[0], t[1], t[2], t[3], t[4], t[5], 0, 0, 0))

    return _module(
        "time",
        ticks_ms=board.ticks_ms,
        ticks_us=lambda: board.ticks_ms() * 1000 % TICKS_PERIOD,
        ticks_cpu=lambda: board.ticks_ms(),
        ticks_diff=ticks_diff,
        ticks_add=lambda t, d: (t + d) % TICKS_PERIOD,
        time=lambda: int(board.rtc()),
        time_ns=lambda: int(board.rtc() * 1e9),
        sleep=board.sleep,
        sleep_ms=lambda ms: board.sleep(ms / 1000),
        sleep_us=lambda us: board.sleep(us / 1e6),
        gmtime=gmtime,
        localtime=gmtime,
        mktime=mktime,
    )


def _fake_machine(board: VirtualBoard) -> types.ModuleType:
    adc_pins = {26: 0, 27: 1, 28: 2, 29: 3}

    class Pin:
        IN, OUT, OPEN_DRAIN, ALT = 0, 1, 2, 3
        PULL_UP, PULL_DOWN = 1, 2
        IRQ_FALLING, IRQ_RISING = 4, 8

        def __init__(self, pin_id: Any, mode: int = -1, pull: Any = -1, **kw: Any) -> None:
            self.id = pin_id
            self.init(mode, pull, **kw)

        def init(self, mode: int = -1, pull: Any = -1, **kw: Any) -> None:
            value = kw.get("value")
            if value is not None:
                board.pin_write(self.id, int(bool(value)))
            elif mode in (self.IN, self.ALT):
                board.pins.pop(self.id, None)

        def value(self, v: Any = None) -> int | None:
            if v is None:
                return board.pins.get(self.id, 0)
            board.pin_write(self.id, int(bool(v)))
            return None

        def on(self) -> None:
            self.value(1)

        def off(self) -> None:
            self.value(0)

        high, low = on, off

        def toggle(self) -> None:
            self.value(0 if self.value() else 1)

    class ADC:
        CORE_TEMP = 4

        def __init__(self, src: Any) -> None:
            if isinstance(src, Pin):
                src = src.id
            self.channel = adc_pins.get(src, src)

        def read_u16(self) -> int:
            board.check()
            return board.adc(self.channel)

    class WDT:
        def __init__(self, id: int = 0, timeout: int = 5000) -> None:
            board.wdt_arm(min(timeout, 8388))

        def feed(self) -> None:
            board.wdt_feed()

    class Timer:
        ONE_SHOT, PERIODIC = 0, 1

        def __init__(self, id: int = -1, **kw: Any) -> None:
            self._t: threading.Timer | None = None
            if kw:
                self.init(**kw)

        def init(
            self, *, mode: int = 1, period: int = -1, freq: float = -1, callback: Any = None
        ) -> None:
            self.deinit()
            if callback is None:
                return
            secs = period / 1000 if period >= 0 else 1 / freq
            gen = board.generation

            def fire() -> None:
                if board.generation != gen or board.dead is not None:
                    return
                callback(self)
                if mode == self.PERIODIC:
                    self.init(mode=mode, period=period, freq=freq, callback=callback)

            self._t = threading.Timer(secs, fire)
            self._t.daemon = True
            board.timers.append(self._t)
            self._t.start()

        def deinit(self) -> None:
            if self._t is not None:
                self._t.cancel()
                with contextlib.suppress(ValueError):
                    board.timers.remove(self._t)
                self._t = None

    class RTC:
        def datetime(self, dt: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
            if dt is None:
                t = time.gmtime(int(board.rtc()))
                return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_wday, t.tm_hour, t.tm_min, t.tm_sec, 0)
            board.set_rtc(calendar.timegm((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0, 0)))
            return None

    def reset() -> None:
        board.kill(DeviceReset, "machine.reset")
        raise DeviceReset()

    return _module(
        "machine",
        Pin=Pin,
        ADC=ADC,
        WDT=WDT,
        Timer=Timer,
        RTC=RTC,
        unique_id=lambda: board.uid,
        reset=reset,
        soft_reset=reset,
        reset_cause=lambda: board.reset_cause,
        PWRON_RESET=1,
        WDT_RESET=3,
        freq=lambda *a: 125_000_000,
        idle=lambda: board.sleep(0.001),
        lightsleep=lambda ms=0: board.sleep(ms / 1000),
        deepsleep=lambda ms=0: reset(),
        disable_irq=lambda: 0,
        enable_irq=lambda state=0: None,
    )


def _fake_network(board: VirtualBoard) -> types.ModuleType:
    class WLAN:
        PM_NONE, PM_PERFORMANCE, PM_POWERSAVE = 0x10, 0xA11142, 0xA11C82
        _sta: WLAN | None = None

        def __new__(cls, interface: int = 0) -> WLAN:
            # one station interface per board, whoever asks for it
            if cls._sta is None:
                sta = super().__new__(cls)
                sta._since = 0.0
                cls._sta = sta
            return cls._sta

        _since: float

        def active(self, v: Any = None) -> bool | None:
            if v is None:
                return board.wlan_active
            board.wlan_active = bool(v)
            if not v:
                board.join_at = None
            return None

        def connect(self, ssid: str | None = None, key: str | None = None, **kw: Any) -> None:
            board.check()
            if not board.wlan_active:
                raise OSError(errno.EPERM, "WLAN not active")
            self._since = time.monotonic()
            board.join_at = time.monotonic() + random.uniform(0.02, 0.2)

        def disconnect(self) -> None:
            board.join_at = None

        def isconnected(self) -> bool:
            return board.link_up()

        def status(self, param: str | None = None) -> Any:
            if param == "rssi":
                return -50 - random.randint(0, 15)
            if param is not None:
                raise ValueError(f"unknown status parameter {param!r}")
            if not board.wlan_active or board.join_at is None:
                return _STAT_IDLE
            if board.link_up():
                return _STAT_GOT_IP
            if not board.in_range and time.monotonic() - self._since > 3:
                return _STAT_NO_AP
            return _STAT_CONNECTING

        def config(self, *args: Any, **kw: Any) -> Any:
            if args == ("mac",):
                return b"\x28\xcd\xc1" + board.uid[:3]
            return None

        def ifconfig(self, *args: Any) -> tuple[str, str, str, str]:
            return ("127.0.0.1", "255.255.255.0", "127.0.0.1", "127.0.0.1")

        def scan(self) -> list[Any]:
            return []

    return _module(
        "network",
        WLAN=WLAN,
        STA_IF=0,
        AP_IF=1,
        STAT_IDLE=_STAT_IDLE,
        STAT_CONNECTING=_STAT_CONNECTING,
        STAT_WRONG_PASSWORD=-3,
        STAT_NO_AP_FOUND=_STAT_NO_AP,
        STAT_CONNECT_FAIL=-1,
        STAT_GOT_IP=_STAT_GOT_IP,
        hostname=lambda *a: board.key,
        country=lambda *a: "XX",
    )


class _MPSocket:
    """MicroPython's socket API (read/write/readinto/readline, timeouts as OSError 110)
    over a real socket. After the board's Wi-Fi link drops, reads find nothing and writes
    go nowhere, as on a board whose radio lost the access point."""

    def __init__(self, board: VirtualBoard) -> None:
        board.check()
        self._board = board
        self._epoch = board.link_epoch
        self._s: _socket.socket | None = None
        self._timeout: float | None = None
        self._rbuf = bytearray()
        self._eof = False

    def _alive(self) -> bool:
        return self._board.link_epoch == self._epoch and self._board.link_up()

    def _sock(self) -> _socket.socket:
        if self._s is None:
            raise OSError(errno.ENOTCONN, "not connected")
        return self._s

    def settimeout(self, t: float | None) -> None:
        self._timeout = t

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0

    def setsockopt(self, *a: Any) -> None:
        pass

    def connect(self, addr: tuple[str, int]) -> None:
        self._board.check()
        if not self._alive():
            raise OSError(errno.EHOSTUNREACH, "no route (Wi-Fi down)")
        s = _socket.create_connection(addr, timeout=self._timeout or 10)
        s.setblocking(False)
        self._s = s
        self._board.sockets.add(self)

    def sever(self) -> None:
        if self._s is not None:
            with contextlib.suppress(OSError):
                self._s.shutdown(_socket.SHUT_RDWR)

    def _fill(self, block: bool) -> bool:
        """Get more bytes into the buffer; False on timeout (or nothing, non-blocking)."""
        if self._eof:
            return True
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            self._board.check()
            if self._alive():
                r, _, _ = select.select([self._sock()], [], [], 0 if not block else _SLICE)
                if r:
                    try:
                        data = self._sock().recv(4096)
                    except BlockingIOError:
                        data = None
                    except OSError:
                        data = b""
                    if data is not None:
                        if data:
                            self._rbuf += data
                        else:
                            self._eof = True
                        return True
            elif block:
                time.sleep(_SLICE)
            if not block:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _nonblocking(self) -> bool:
        return self._timeout == 0

    def read(self, n: int = -1) -> bytes | None:
        if self._nonblocking():
            if not self._rbuf and not self._fill(False):
                return None
            k = len(self._rbuf) if n < 0 else min(n, len(self._rbuf))
            out = bytes(self._rbuf[:k])
            del self._rbuf[:k]
            return out
        while (n < 0 or len(self._rbuf) < n) and not self._eof:
            if not self._fill(True):
                raise OSError(errno.ETIMEDOUT, "timed out")
        k = len(self._rbuf) if n < 0 else min(n, len(self._rbuf))
        out = bytes(self._rbuf[:k])
        del self._rbuf[:k]
        return out

    recv = read

    def readinto(self, buf: Any, nbytes: int | None = None) -> int | None:
        mv = memoryview(buf).cast("B")
        want = len(mv) if nbytes is None else min(nbytes, len(mv))
        if self._nonblocking():
            data = self.read(want)
            if data is None:
                return None
        else:
            while len(self._rbuf) < want and not self._eof:
                if not self._fill(True):
                    if self._rbuf:
                        break
                    raise OSError(errno.ETIMEDOUT, "timed out")
            data = bytes(self._rbuf[:want])
            del self._rbuf[:want]
        mv[: len(data)] = data
        return len(data)

    def readline(self) -> bytes:
        while b"\n" not in self._rbuf and not self._eof:
            if not self._fill(True):
                raise OSError(errno.ETIMEDOUT, "timed out")
        i = self._rbuf.find(b"\n")
        k = len(self._rbuf) if i < 0 else i + 1
        out = bytes(self._rbuf[:k])
        del self._rbuf[:k]
        return out

    def write(self, buf: Any, n: int | None = None) -> int:
        self._board.check()
        raw = buf.encode() if isinstance(buf, str) else bytes(buf)
        if n is not None:
            raw = raw[:n]
        if not self._alive():
            return len(raw)  # into the void: the radio is gone
        s = self._sock()
        view = memoryview(raw)
        deadline = None if not self._timeout else time.monotonic() + self._timeout
        while view:
            self._board.check()
            _, w, _ = select.select([], [s], [], _SLICE)
            if w:
                try:
                    sent = s.send(view)
                except BlockingIOError:
                    continue
                view = view[sent:]
            elif deadline is not None and time.monotonic() >= deadline:
                raise OSError(errno.ETIMEDOUT, "timed out")
        return len(raw)

    send = sendall = write

    def close(self) -> None:
        if self._s is not None:
            with contextlib.suppress(OSError):
                self._s.close()
            self._s = None


def _fake_socket(board: VirtualBoard) -> types.ModuleType:
    def getaddrinfo(host: str, port: int, *a: Any) -> list[tuple[Any, ...]]:
        board.check()
        if not board.link_up():
            raise OSError(-2, "DNS: Wi-Fi down")
        infos = _socket.getaddrinfo(host, port, _socket.AF_INET, _socket.SOCK_STREAM)
        return [(2, 1, 6, "", infos[0][4])]

    return _module(
        "socket",
        socket=lambda *a: _MPSocket(board),
        getaddrinfo=getaddrinfo,
        AF_INET=2,
        SOCK_STREAM=1,
        SOCK_DGRAM=2,
        IPPROTO_TCP=6,
        SOL_SOCKET=1,
        SO_REUSEADDR=4,
    )


def _fake_os(board: VirtualBoard) -> types.ModuleType:
    fs = board.fs

    def stat(name: str) -> tuple[int, ...]:
        fs.check()
        p = fs.path(name)
        if not p.exists():
            raise OSError(errno.ENOENT, name)
        size = p.stat().st_size if p.is_file() else 0
        return (0x4000 if p.is_dir() else 0x8000, 0, 0, 0, 0, 0, size, 0, 0, 0)

    def listdir(name: str = "") -> list[str]:
        fs.check()
        return sorted(p.name for p in fs.path(name).iterdir() if not p.name.startswith("."))

    def ilistdir(name: str = "") -> Iterator[tuple[str, int, int, int]]:
        for n in listdir(name):
            st = stat(f"{name}/{n}")
            yield (n, st[0], 0, st[6])

    def statvfs(name: str = "/") -> tuple[int, ...]:
        fs.check()
        free = fs.free() // BLOCK
        return (BLOCK, BLOCK, fs.capacity // BLOCK, free, free, 0, 0, 0, 0, 255)

    return _module(
        "os",
        stat=stat,
        listdir=listdir,
        ilistdir=ilistdir,
        statvfs=statvfs,
        remove=fs.remove,
        unlink=fs.remove,
        rename=fs.rename,
        mkdir=fs.mkdir,
        rmdir=fs.rmdir,
        getcwd=lambda: "/",
        chdir=lambda p: None,
        sync=lambda: None,
        urandom=lambda n: random.randbytes(n),
        uname=lambda: ("rp2", board.key, "1.27.0", "v1.27.0", "Raspberry Pi Pico W"),
        sep="/",
    )


def _fake_ntptime(board: VirtualBoard) -> types.ModuleType:
    mod = _module("ntptime", host="pool.ntp.org", timeout=1)

    def settime() -> None:
        board.check()
        if not (board.ntp_available and board.link_up()):
            board.sleep(min(float(mod.timeout), 0.2))
            raise OSError(errno.ETIMEDOUT, "NTP timed out")
        board.set_rtc(time.time())

    mod.__dict__.update(settime=settime, time=lambda: int(time.time()))
    return mod


def _fake_sys(board: VirtualBoard, modules: dict[str, types.ModuleType]) -> types.ModuleType:
    def print_exception(exc: BaseException, file: Any = None) -> None:
        for chunk in traceback.format_exception(exc):
            for line in chunk.rstrip("\n").splitlines():
                board.say(line)

    def exit_(code: int = 0) -> None:
        raise SystemExit(code)

    return _module(
        "sys",
        print_exception=print_exception,
        exit=exit_,
        implementation=types.SimpleNamespace(
            name="micropython", version=(1, 27, 0, ""), _machine="Raspberry Pi Pico W (sim)"
        ),
        platform="rp2",
        version="3.4.0; MicroPython v1.27.0 (picofleet sim)",
        byteorder="little",
        maxsize=2**31 - 1,
        modules=modules,
        path=["", ".frozen", "/lib"],
        argv=[],
    )


def _fake_gc() -> types.ModuleType:
    return _module(
        "gc",
        collect=lambda: None,
        mem_free=lambda: 148_000 + random.randint(-3000, 3000),
        mem_alloc=lambda: 42_000 + random.randint(-3000, 3000),
        enable=lambda: None,
        disable=lambda: None,
        threshold=lambda *a: -1,
    )


def _fake_micropython() -> types.ModuleType:
    return _module(
        "micropython",
        const=lambda v: v,
        opt_level=lambda *a: 0,
        mem_info=lambda *a: None,
        alloc_emergency_exception_buf=lambda n: None,
        schedule=lambda f, arg: f(arg),
        heap_lock=lambda: 0,
        heap_unlock=lambda: 0,
        kbd_intr=lambda c: None,
    )


def _fake_hashlib() -> types.ModuleType:
    # The rp2 port's hashlib: sha256 and sha1, nothing else (no sha512: see pico_w/sha512.py).
    return _module("hashlib", sha256=hashlib.sha256, sha1=hashlib.sha1)


def _fake_asyncio(board: VirtualBoard) -> types.ModuleType:
    mod = _module("asyncio", **{k: getattr(asyncio, k) for k in asyncio.__all__})

    def run(main: Any) -> Any:
        loop = asyncio.new_event_loop()
        board.loop = loop
        try:
            board.check()
            return loop.run_until_complete(main)
        finally:
            # A reset unwinds the firmware: cancel what is left; the dead board makes any
            # firmware code that still runs fail at its first touch of the hardware.
            while tasks := [t for t in asyncio.all_tasks(loop) if not t.done()]:
                for t in tasks:
                    t.cancel()
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    mod.__dict__["run"] = run
    return mod


# -- umqtt.simple for the host ---------------------------------------------------------------
class MQTTException(Exception):
    pass


class _HostMQTTClient:
    """The API of micropython-lib's umqtt.simple 1.4 (MQTT 3.1.1, QoS 0/1), written for the
    simulator. Like the original it finds sockets through its module's ``socket`` global,
    which the firmware replaces (pico_w/mqtt.py)."""

    _module: types.ModuleType

    def __init__(
        self,
        client_id: Any,
        server: str,
        port: int = 0,
        user: Any = None,
        password: Any = None,
        keepalive: int = 0,
        ssl: Any = None,
    ) -> None:
        self.client_id = client_id
        self.server, self.port = server, port or (8883 if ssl else 1883)
        self.user, self.pswd = user, password
        self.keepalive = keepalive
        self.sock: Any = None
        self.pid = 0
        self.cb: Callable[[bytes, bytes], None] | None = None
        self.lw_topic: Any = None
        self.lw_msg: Any = None
        self.lw_qos = 0
        self.lw_retain = False

    @staticmethod
    def _b(s: Any) -> bytes:
        return s.encode() if isinstance(s, str) else bytes(s)

    def _str(self, s: Any) -> bytes:
        b = self._b(s)
        return struct.pack("!H", len(b)) + b

    @staticmethod
    def _length(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def _read(self, n: int) -> bytes:
        data = self.sock.read(n)
        if data is None or len(data) < n:
            raise OSError(-1, "short read")
        return bytes(data)

    def _recv_len(self) -> int:
        n = sh = 0
        while True:
            b = self._read(1)[0]
            n |= (b & 0x7F) << sh
            if not b & 0x80:
                return n
            sh += 7

    def set_callback(self, f: Callable[[bytes, bytes], None]) -> None:
        self.cb = f

    def set_last_will(self, topic: Any, msg: Any, retain: bool = False, qos: int = 0) -> None:
        assert 0 <= qos <= 2 and topic
        self.lw_topic, self.lw_msg, self.lw_qos, self.lw_retain = topic, msg, qos, retain

    def connect(self, clean_session: bool = True) -> int:
        net = self._module.socket
        self.sock = net.socket()
        self.sock.connect(net.getaddrinfo(self.server, self.port)[0][-1])
        flags = int(clean_session) << 1
        payload = self._str(self.client_id)
        if self.lw_topic:
            flags |= 0x4 | (self.lw_qos << 3) | (int(self.lw_retain) << 5)
            payload += self._str(self.lw_topic) + self._str(self.lw_msg)
        if self.user:
            flags |= 0xC0
            payload += self._str(self.user) + self._str(self.pswd)
        var = self._str("MQTT") + bytes([4, flags]) + struct.pack("!H", self.keepalive)
        body = var + payload
        self.sock.write(b"\x10" + self._length(len(body)) + body)
        resp = self._read(4)
        assert resp[0] == 0x20 and resp[1] == 0x02
        if resp[3] != 0:
            raise MQTTException(resp[3])
        return resp[2] & 1

    def disconnect(self) -> None:
        self.sock.write(b"\xe0\0")
        self.sock.close()

    def ping(self) -> None:
        self.sock.write(b"\xc0\0")

    def publish(self, topic: Any, msg: Any, retain: bool = False, qos: int = 0) -> None:
        body = self._str(topic)
        pid = 0
        if qos > 0:
            self.pid = self.pid % 65535 + 1
            pid = self.pid
            body += struct.pack("!H", pid)
        body += self._b(msg)
        head = 0x30 | qos << 1 | int(retain)
        self.sock.write(bytes([head]) + self._length(len(body)) + body)
        if qos == 1:
            while True:
                op = self.wait_msg()
                if op == 0x40:
                    assert self._read(1) == b"\x02"
                    if struct.unpack("!H", self._read(2))[0] == pid:
                        return
        elif qos == 2:
            raise AssertionError("QoS 2 is not supported")

    def subscribe(self, topic: Any, qos: int = 0) -> None:
        assert self.cb is not None, "Subscribe callback is not set"
        self.pid = self.pid % 65535 + 1
        body = struct.pack("!H", self.pid) + self._str(topic) + bytes([qos])
        self.sock.write(b"\x82" + self._length(len(body)) + body)
        while True:
            op = self.wait_msg()
            if op == 0x90:
                resp = self._read(4)
                assert struct.unpack("!H", resp[1:3])[0] == self.pid
                if resp[3] == 0x80:
                    raise MQTTException(resp[3])
                return

    def wait_msg(self) -> int | None:
        res = self.sock.read(1)
        self.sock.setblocking(True)
        if res is None:
            return None
        if res == b"":
            raise OSError(-1, "connection closed")
        if res == b"\xd0":  # PINGRESP
            assert self._read(1)[0] == 0
            return None
        op = res[0]
        if op & 0xF0 != 0x30:
            return op
        sz = self._recv_len()
        tlen = struct.unpack("!H", self._read(2))[0]
        topic = self._read(tlen)
        sz -= tlen + 2
        pid = 0
        if op & 6:
            pid = struct.unpack("!H", self._read(2))[0]
            sz -= 2
        msg = self._read(sz) if sz else b""
        assert self.cb is not None
        self.cb(topic, msg)
        if op & 6 == 2:
            self.sock.write(b"\x40\x02" + struct.pack("!H", pid))
        elif op & 6 == 4:
            raise AssertionError("QoS 2 is not supported")
        return op

    def check_msg(self) -> int | None:
        self.sock.setblocking(False)
        return self.wait_msg()


def _fake_umqtt(board: VirtualBoard) -> tuple[types.ModuleType, types.ModuleType]:
    simple = _module("umqtt.simple", MQTTException=MQTTException, socket=_fake_socket(board))
    simple.__dict__["MQTTClient"] = type("MQTTClient", (_HostMQTTClient,), {"_module": simple})
    return _module("umqtt", simple=simple, __path__=[]), simple


# -- one interpreter per boot ------------------------------------------------------------------
class Interpreter:
    """A fresh MicroPython-like module table for one boot of one board.

    Firmware modules come from the board's flash (``/`` then ``/lib``), built-in modules are
    the fakes above, and a short list of CPython modules stand in for MicroPython's own.
    """

    def __init__(self, board: VirtualBoard) -> None:
        self.board = board
        self.modules: dict[str, types.ModuleType] = {}
        umqtt, simple = _fake_umqtt(board)
        self.native: dict[str, types.ModuleType] = {
            "machine": _fake_machine(board),
            "network": _fake_network(board),
            "rp2": _module("rp2", country=lambda *a: None, bootsel_button=lambda: 0),
            "ntptime": _fake_ntptime(board),
            "time": _fake_time(board),
            "os": _fake_os(board),
            "socket": _fake_socket(board),
            "gc": _fake_gc(),
            "micropython": _fake_micropython(),
            "hashlib": _fake_hashlib(),
            "asyncio": _fake_asyncio(board),
            "umqtt": umqtt,
            "umqtt.simple": simple,
        }
        self.native["sys"] = _fake_sys(board, self.modules)
        self.builtins = dict(vars(builtins))
        self.builtins.update(__import__=self._import, open=board.fs.open, print=self._print)

    def _print(self, *args: Any, sep: str = " ", end: str = "\n", **_kw: Any) -> None:
        self.board.say(sep.join(str(a) for a in args))

    def _import(
        self,
        name: str,
        globals: Any = None,
        locals: Any = None,
        fromlist: Any = (),
        level: int = 0,
    ) -> types.ModuleType:
        if level:
            raise ImportError("relative imports are not supported")
        mod = self.load(name)
        if fromlist:
            return mod
        return self.load(name.partition(".")[0])

    def load(self, name: str) -> types.ModuleType:
        name = _ALIASES.get(name, name)
        if name in self.modules:
            return self.modules[name]
        if name in self.native:
            mod = self.native[name]
        else:
            src = self._find(name)
            if src is not None:
                return self.exec_module(name, src)
            if name not in _NATIVE_STDLIB:
                raise ImportError(f"no module named '{name}'")
            mod = __import__(name)
        self.modules[name] = mod
        return mod

    def _find(self, name: str) -> str | None:
        rel = name.replace(".", "/")
        for base in ("", "lib/"):
            for cand in (f"{base}{rel}.py", f"{base}{rel}/__init__.py"):
                data = self.board.fs.read_bytes(cand)
                if data is not None:
                    return cand
        return None

    def exec_module(self, name: str, filename: str) -> types.ModuleType:
        data = self.board.fs.read_bytes(filename)
        if data is None:
            raise ImportError(f"no module named '{name}'")
        mod = types.ModuleType(name)
        mod.__dict__.update(__builtins__=self.builtins, __file__=filename)
        self.modules[name] = mod
        try:
            code = compile(data, str(self.board.fs.path(filename)), "exec")
            exec(code, mod.__dict__)
        except BaseException:
            self.modules.pop(name, None)
            raise
        return mod

    def run_main(self, filename: str) -> None:
        """Run a file as the board runs boot.py and main.py: in the shared __main__."""
        main = self.modules.get("__main__")
        if main is None:
            main = types.ModuleType("__main__")
            main.__dict__.update(__builtins__=self.builtins)
            self.modules["__main__"] = main
        data = self.board.fs.read_bytes(filename)
        if data is None:
            return
        main.__dict__["__file__"] = filename
        exec(compile(data, str(self.board.fs.path(filename)), "exec"), main.__dict__)


# -- provisioning ------------------------------------------------------------------------------
def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def device_config(
    key: str,
    *,
    keys: FleetKeys,
    mqtt_host: str,
    mqtt_port: int,
    http_base: str | None,
    prefix: str = "picofleet",
    ota_pubkey: bytes | None = None,
    channel: str = "stable",
    device_type: str = "pico_w",
    telemetry_interval_s: float = 60,
    pump: dict[str, Any] | None = None,
    ntp_host: str | None = None,
) -> dict[str, Any]:
    """A ``config.json`` of the wire contract for one device (what USB flashing writes)."""
    return {
        "device_key": key,
        "mqtt_password": keys.device_password(key),
        "provision_secret": None,
        "provision_key": keys.provision_key(key),
        "wifi": {"ssid": "fleet", "password": "sim-password"},
        "broker": {"host": mqtt_host, "port": mqtt_port},
        "hub_http": http_base,
        "prefix": prefix,
        "device_type": device_type,
        "channel": channel,
        "ota_pubkey": base64.b64encode(ota_pubkey).decode() if ota_pubkey else None,
        "ota_key_id": key_id(ota_pubkey) if ota_pubkey else None,
        "calibration": {"moisture_dry": 52000, "moisture_wet": 21000},
        "pump": pump
        or {"max_run_s": 30, "cooldown_s": 300, "auto_below_pct": 25, "auto_run_s": 10},
        "telemetry_interval_s": telemetry_interval_s,
        "ntp_host": ntp_host,
    }


def flash(root: Path, config: dict[str, Any] | None, *, source: Path | None = None) -> None:
    """Copy the firmware (every ``*.py`` of ``source``) and ``config.json`` into a flash dir;
    device state (seq.dat, ota.json) already there is kept, as ``picofleet usb flash`` does."""
    root.mkdir(parents=True, exist_ok=True)
    for f in sorted((source or firmware_dir()).glob("*.py")):
        shutil.copyfile(f, root / f.name)
    if config is not None:
        (root / "config.json").write_text(json.dumps(config))


def release_main(version: str, *, crash: bool = False, source: Path | None = None) -> bytes:
    """A ``main.py`` artifact for an OTA release: the firmware's own with VERSION set; with
    ``crash`` one that fails at boot (for rollback tests)."""
    text = ((source or firmware_dir()) / "main.py").read_text()
    text, n = re.subn(r'^VERSION = "[^"]*"', f'VERSION = "{version}"', text, flags=re.M)
    if n != 1:
        raise ValueError("main.py has no VERSION line")
    if crash:
        text = text.replace("def _run():", 'def _run():\n    raise RuntimeError("bad release")', 1)
    return text.encode()


# -- a running device ---------------------------------------------------------------------------
class FirmwareDevice:
    """One virtual Pico W running the firmware in its flash directory, in its own thread.

    Args:
        key: device key.
        root: its flash directory (``flash()`` it first).
        ntp: whether NTP answers (else the firmware falls back to the hub's Date header).
        wdt_scale: factor on watchdog timeouts, including the reset that follows a crash to
            the REPL while the watchdog is armed.
    """

    def __init__(self, key: str, root: Path, *, ntp: bool = True, wdt_scale: float = 1.0) -> None:
        cfg = (
            json.loads((root / "config.json").read_text())
            if (root / "config.json").exists()
            else {}
        )
        pins = cfg.get("pins") or {}
        cal = cfg.get("calibration") or {}
        soil = SoilModel(
            pct=random.uniform(35, 55),
            dry_raw=int(cal.get("moisture_dry", 52000)),
            wet_raw=int(cal.get("moisture_wet", 21000)),
        )
        self.key = key
        self.board = VirtualBoard(
            key,
            root,
            relay_pin=int(pins.get("relay", 15)),
            relay_active_high=bool(pins.get("relay_active_high", True)),
            ntp=ntp,
            wdt_scale=wdt_scale,
            soil=soil,
        )
        self.repl: str | None = None  # why the firmware sits in the REPL, if it does
        self._stop = threading.Event()
        self._cycle = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: threading.Thread | None = None
        self._log = logs.get("picofleet.sim.firmware").bind(device=key)

    # controls
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.key} is already running")
        self._thread = threading.Thread(target=self._run, name=f"pico[{self.key}]", daemon=True)
        self._watch = threading.Thread(target=self._watchdog, name=f"wdt[{self.key}]", daemon=True)
        self._thread.start()
        self._watch.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Power off for good (uncommitted writes are lost, like unplugging the board)."""
        self._stop.set()
        self.board.kill(PowerLoss, "power off")
        for t in (self._thread, self._watch):
            if t is not None:
                t.join(timeout)

    def power_cycle(self) -> None:
        """Cut power now; the board boots again at once."""
        self._cycle.set()
        self.board.kill(PowerLoss, "power cycle")

    def set_wifi(self, up: bool) -> None:
        """Take the access point out of (or back into) the board's reach."""
        self.board.set_in_range(up)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def version(self) -> str | None:
        data = self.board.fs.read_bytes("main.py")
        if data is None:
            return None
        m = re.search(rb'^VERSION = "([^"]*)"', data, re.M)
        return m.group(1).decode() if m else None

    @property
    def console(self) -> list[str]:
        return list(self.board.console)

    def read_json(self, name: str) -> Any:
        data = self.board.fs.read_bytes(name)
        return None if data is None else json.loads(data)

    # threads
    def _watchdog(self) -> None:
        while not self._stop.wait(0.05):
            if self.board.wdt_expired():
                self.board.reset_cause = 3
                self.board.kill(DeviceReset, "watchdog")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._boot_once()
            if self._stop.is_set():
                return
            self._cycle.clear()
            self.board.power_on()

    def _boot_once(self) -> None:
        board = self.board
        self.repl = None
        interp = Interpreter(board)
        for name in ("boot.py", "main.py"):
            try:
                interp.run_main(name)
            except (DeviceReset, PowerLoss) as e:
                why = board.resets[-1] if board.resets else type(e).__name__
                self._log.debug("sim.reset", why=why)
                return
            except BaseException as e:  # printed, as a board prints it on its REPL
                if board.dead is not None:
                    return
                for chunk in traceback.format_exception(e):
                    for line in chunk.rstrip("\n").splitlines():
                        board.say(line)
                if name == "main.py":
                    self.repl = f"{type(e).__name__}: {e}"
                    self._log.info("sim.repl", error=self.repl)
        if self.repl is None:
            self.repl = "main.py returned"
        # In the REPL: only the watchdog (if armed), a power cycle or power off end this.
        while board.dead is None and not self._stop.is_set():
            time.sleep(_SLICE)


# -- fleets ---------------------------------------------------------------------------------
@dataclass
class FleetResult:
    """What a fleet run did: per device its boots, resets and firmware version."""

    devices: list[FirmwareDevice]
    root: Path

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "device": d.key,
                "version": d.version,
                "boots": d.board.boots,
                "resets": list(d.board.resets),
                "repl": d.repl,
            }
            for d in self.devices
        ]


class FirmwareFleet:
    """Async context manager: N flashed virtual Pico Ws, started on entry, powered off on exit.

    Args:
        n: number of devices; keys are ``{key_prefix}-{i:03d}``.
        mqtt_host, mqtt_port, http_base, keys, prefix: the hub they talk to.
        root: where their flash directories live (a temp dir, removed on exit, when None).
        ota_pubkey: raw 32-byte OTA public key written into each config (None: OTA off).
        config: extra config.json fields (e.g. ``{"pump": {...}}``), applied to every device.
        ntp, wdt_scale: see ``FirmwareDevice``.
    """

    def __init__(
        self,
        *,
        n: int,
        mqtt_host: str,
        mqtt_port: int,
        http_base: str | None,
        keys: FleetKeys,
        prefix: str = "picofleet",
        root: Path | None = None,
        key_prefix: str = "SIMW",
        ota_pubkey: bytes | None = None,
        telemetry_interval_s: float = 5,
        channel: str = "stable",
        config: dict[str, Any] | None = None,
        ntp: bool = True,
        wdt_scale: float = 1.0,
        stagger_s: float = 0.02,
    ) -> None:
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="picofleet-sim-"))
        self.devices: list[FirmwareDevice] = []
        self._stagger = stagger_s
        for i in range(n):
            key = f"{key_prefix}-{i:03d}"
            cfg = device_config(
                key,
                keys=keys,
                mqtt_host=mqtt_host,
                mqtt_port=mqtt_port,
                http_base=http_base,
                prefix=prefix,
                ota_pubkey=ota_pubkey,
                channel=channel,
                telemetry_interval_s=telemetry_interval_s,
            )
            cfg.update(config or {})
            d = self.root / key
            if not (d / "main.py").exists():
                flash(d, cfg)
            else:
                (d / "config.json").write_text(json.dumps(cfg))
            self.devices.append(FirmwareDevice(key, d, ntp=ntp, wdt_scale=wdt_scale))

    def __getitem__(self, i: int) -> FirmwareDevice:
        return self.devices[i]

    async def __aenter__(self) -> FirmwareFleet:
        for d in self.devices:
            d.start()
            await asyncio.sleep(self._stagger)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(asyncio.to_thread(d.stop) for d in self.devices))
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


async def run_firmware_fleet(
    *,
    n: int,
    mqtt_host: str,
    mqtt_port: int,
    http_base: str | None,
    keys: FleetKeys,
    prefix: str = "picofleet",
    duration: float | None = None,
    root: Path | None = None,
    key_prefix: str = "SIMW",
    ota_pubkey: bytes | None = None,
    telemetry_interval_s: float = 5,
    channel: str = "stable",
    stop: asyncio.Event | None = None,
) -> FleetResult:
    """Run N copies of the real firmware main loop against a hub until ``duration`` seconds
    pass or ``stop`` is set (forever when both are None); returns what each device did.
    With ``root`` the devices' flash survives between runs (seq numbers, OTA state)."""
    log = logs.get("picofleet.sim.firmware")
    fleet = FirmwareFleet(
        n=n,
        mqtt_host=mqtt_host,
        mqtt_port=mqtt_port,
        http_base=http_base,
        keys=keys,
        prefix=prefix,
        root=root,
        key_prefix=key_prefix,
        ota_pubkey=ota_pubkey,
        telemetry_interval_s=telemetry_interval_s,
        channel=channel,
    )
    stop = stop or asyncio.Event()
    async with fleet:
        log.info("sim.fleet_started", devices=n, root=str(fleet.root))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
        result = FleetResult(list(fleet.devices), fleet.root)
    log.info("sim.fleet_stopped", devices=n)
    return result
