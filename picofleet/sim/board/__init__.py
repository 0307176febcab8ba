"""A Pico W in real MicroPython: the firmware's files, unmodified, in the WebAssembly build of
MicroPython 1.27 under Node, with real TCP sockets (rp2 lwIP semantics), a watchdog that
really resets, a flash directory that survives resets and power cuts before any flash write.

``Board`` runs one board as a Node subprocess (``host.mjs``) and follows its events; see
README.md beside this file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picofleet.core.credentials import FleetKeys
from picofleet.core.firmware import firmware_dir as _firmware_dir

HERE = Path(__file__).resolve().parent
HOST = HERE / "host.mjs"
MPY_PKG = Path("node_modules") / "@micropython" / "micropython-webassembly-pyscript"
HEAP_CEILING = 100 * 1024  # live heap budget of the firmware (a Pico W has ~150-170 KB free)

Event = dict[str, Any]


class BoardError(RuntimeError):
    """The board did not do what a test waited for (the message holds its console tail)."""


def firmware_dir() -> Path:
    """The ``pico_w`` sources a board gets: $PICOFLEET_BOARD_FIRMWARE (e.g. an older release,
    to see a test fail on it), else picofleet.core.firmware's."""
    env = os.environ.get("PICOFLEET_BOARD_FIRMWARE")
    return Path(env) if env else _firmware_dir("pico_w")


def micropython_mjs() -> Path | None:
    """micropython.mjs of the npm package, from $PICOFLEET_MPY_DIR, the working directory or
    the source tree (``make node_modules/.installed`` installs it)."""
    env = os.environ.get("PICOFLEET_MPY_DIR")
    roots = [Path(env)] if env else []
    for base in (Path.cwd(), HERE):
        roots += [p / MPY_PKG for p in (base, *base.parents)]
    for root in roots:
        if (root / "micropython.mjs").is_file():
            return root / "micropython.mjs"
    return None


def available() -> bool:
    return shutil.which("node") is not None and micropython_mjs() is not None


def device_config(
    key: str,
    keys: FleetKeys,
    *,
    broker: tuple[str, int],
    hub_http: str | None,
    prefix: str = "picofleet",
    wifi: tuple[str, str] = ("fleet", "fleet-password"),
    telemetry_interval_s: int = 60,
    pump: dict[str, Any] | None = None,
    channel: str = "stable",
    ota_key: tuple[str, str] | None = None,
    ca_pem: str | None = None,
) -> bytes:
    """config.json as ``picofleet usb flash`` writes it (picofleet.usb DeviceConfig);
    ``ca_pem``: the hub's CA, so the board reaches ``broker`` over TLS."""
    from picofleet.core.devconfig import Calibration, DeviceConfig, Pump

    cfg = DeviceConfig(
        device_key=key,
        mqtt_password=keys.device_password(key),
        provision_key=keys.provision_key(key),
        wifi={"ssid": wifi[0], "password": wifi[1]},  # type: ignore[arg-type]
        broker={"host": broker[0], "port": broker[1]},  # type: ignore[arg-type]
        hub_http=hub_http,
        prefix=prefix,
        device_type="pico_w",
        channel=channel,
        ota_pubkey=ota_key[0] if ota_key else None,
        ota_key_id=ota_key[1] if ota_key else None,
        calibration=Calibration(),
        pump=Pump(**(pump or {})),
        telemetry_interval_s=telemetry_interval_s,
        ca_pem=ca_pem,
    )
    return cfg.to_bytes()


def flash(
    root: Path,
    config: bytes | None,
    *,
    source: Path | None = None,
    extra: dict[str, bytes] | None = None,
) -> None:
    """Write the firmware (every ``*.py`` of ``source``, default ``firmware_dir()``) and
    ``config.json`` into a flash directory, as USB flashing does; device state already there
    (seq.dat, OTA state) stays. ``extra``: more files (name -> bytes, e.g. ``lib/x.py``)."""
    root.mkdir(parents=True, exist_ok=True)
    for f in sorted((source or firmware_dir()).glob("*.py")):
        shutil.copyfile(f, root / f.name)
    if config is not None:
        (root / "config.json").write_bytes(config)
    for name, data in (extra or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


@dataclass(frozen=True)
class Heap:
    label: str
    alloc: int  # gc.mem_alloc() right after gc.collect(): live bytes, harness modules included
    free: int
    baseline: int  # the same at boot, before boot.py (interpreter + harness stand-ins)
    peak: int  # highest gc.mem_alloc() since boot, sampled at every call into the host

    @property
    def firmware(self) -> int:
        """Live bytes the firmware holds (alloc less what the harness's modules hold; on rp2
        machine, socket, asyncio... are C or frozen and take next to no heap)."""
        return self.alloc - self.baseline


class Board:
    """One board. ``flash_dir`` is its flash (``flash()`` it first); the board's access point
    takes ``ap`` = (ssid, password), by default whatever config.json asks for. ``heapsize``:
    the GC heap modelled for ``gc.mem_free()`` (a Pico W has ~170 KB free after boot); the
    wasm heap itself grows on demand, so nothing raises MemoryError."""

    def __init__(
        self,
        flash_dir: Path,
        *,
        uid: str = "e661a4d41723262a",
        ap: tuple[str, str] | None = None,
        heapsize: int = 176 * 1024,
        name: str = "board",
    ) -> None:
        self.flash_dir = Path(flash_dir)
        self.uid, self.ap, self.heapsize, self.name = uid, ap, heapsize, name
        self.events: list[Event] = []
        self._cv = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._stderr: list[str] = []
        self._execs = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Board:
        """Power the board on (starting its host process if needed)."""
        if self._proc is None or self._proc.poll() is not None:
            self._spawn(off=True)
        self._send(cmd="power", on=True)
        return self

    def _spawn(self, *, off: bool) -> None:
        mjs = micropython_mjs()
        if mjs is None or shutil.which("node") is None:
            raise BoardError("node and npm @micropython/micropython-webassembly-pyscript needed")
        args = ["node", str(HOST), "--flash", str(self.flash_dir), "--mpy", str(mjs)]
        args += ["--uid", self.uid, "--heapsize", str(self.heapsize)]
        if self.ap is not None:
            args += ["--ap-ssid", self.ap[0], "--ap-password", self.ap[1]]
        if off:
            args.append("--off")
        n = self.mark()  # before the process exists: its first event may come at once
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-events", daemon=True)
        self._reader.start()
        threading.Thread(target=self._read_err, daemon=True).start()
        self.wait(lambda e: e["ev"] == "ready", timeout=30, since=n)

    def stop(self) -> None:
        """Power off and end the host process (its abandoned sockets close with it)."""
        p = self._proc
        if p is None:
            return
        self._proc = None
        try:
            if p.stdin:
                p.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                p.stdin.flush()
                p.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if self._reader:
            self._reader.join(5)

    def __enter__(self) -> Board:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def power_off(self) -> None:
        self._send(cmd="power", on=False)

    def reset_button(self) -> None:
        self._send(cmd="reset")

    # -- the world around the board -----------------------------------------------------
    def wifi_down(self) -> None:
        """The access point goes away: the link drops, TCP stalls (nothing is lost in flight
        unless the board gives up on its sockets), joins fail."""
        self._send(cmd="ap", up=False)

    def wifi_up(self) -> None:
        self._send(cmd="ap", up=True)

    def power_cut_at(self, n: int) -> None:
        """Cut the power right before the n-th flash operation from now (create, write,
        rename, remove, mkdir, rmdir; see flash_ops()); the board stays off until start()."""
        self._send(cmd="cut", n=n)

    def set_adc(self, channel: int, value: int) -> None:
        """ADC channel (0-2: GPIO26-28, 3: VSYS/3, 4: temperature sensor) reads value."""
        self._send(cmd="adc", ch=channel, v=value)

    def dns(
        self, host: str, ip: str | None = None, *, delay_s: float = 0, real: bool = False
    ) -> None:
        """Answer DNS for host with ip (None: no such name) after delay_s; real: the host's
        resolver after delay_s."""
        msg: dict[str, Any] = {"cmd": "dns", "host": host, "delay_ms": int(delay_s * 1000)}
        if not real:
            msg["ip"] = ip
        self._send(**msg)

    def ntp(self, ok: bool) -> None:
        self._send(cmd="ntp", ok=ok)

    # -- what happened ---------------------------------------------------------------------
    def lines(self) -> list[str]:
        """Console output (stdout and stderr of the interpreter), all boots."""
        with self._cv:
            return [e["line"] for e in self.events if e["ev"] == "out"]

    def console(self, last: int = 40) -> str:
        """The last lines of output, plus harness failures (crash events, Node's stderr)."""
        crashes = [f"[harness crash] {e['error']}" for e in self.of("crash")]
        return "\n".join(self.lines()[-last:] + crashes + self._stderr[-10:])

    def of(self, kind: str) -> list[Event]:
        with self._cv:
            return [e for e in self.events if e["ev"] == kind]

    def boots(self) -> int:
        return len(self.of("boot"))

    def resets(self) -> list[str]:
        """Why the board reset, in order ("watchdog", "machine.reset", ...)."""
        return [e["why"] for e in self.of("reset")]

    def flash_ops(self) -> list[Event]:
        return self.of("flash")

    def pin(self, pin: int) -> list[tuple[int, int]]:
        """(ms since the host started, level) for every change of a GPIO."""
        return [(e["t"], e["v"]) for e in self.of("pin") if e["pin"] == pin]

    def heaps(self) -> list[Heap]:
        out: list[Heap] = []
        base = 0
        for e in self.of("heap"):
            if e["label"] == "boot":
                base = e["alloc"]
            out.append(Heap(e["label"], e["alloc"], e["free"], base, e.get("peak") or 0))
        return out

    def heap(self, label: str = "now", timeout: float = 20) -> Heap:
        """Live heap now: gc.collect() + gc.mem_alloc() when the firmware next waits."""
        n = len(self.events)
        self._send(cmd="heap", label=label)
        self.wait(lambda e: e["ev"] == "heap" and e["label"] == label, timeout=timeout, since=n)
        return [h for h in self.heaps() if h.label == label][-1]

    def exec(self, code: str, timeout: float = 60) -> list[str]:
        """Run Python in the board's interpreter (in ``__main__``, between two asyncio
        iterations of the firmware; the watchdog keeps counting) and return what it printed.
        Raises BoardError with the traceback if it raised."""
        self._execs += 1
        ident = str(self._execs)
        n = self.mark()
        self._send(cmd="exec", id=ident, code=code)
        done = self.wait(lambda e: e["ev"] == "exec" and e["id"] == ident, timeout=timeout, since=n)
        with self._cv:
            out = [e["line"] for e in self.events[n:] if e["ev"] == "out"]
        if done["error"]:
            raise BoardError(done["error"])
        return out

    def wait(self, pred: Callable[[Event], bool], *, timeout: float = 30, since: int = 0) -> Event:
        """The first event from index ``since`` on that matches pred (blocking)."""
        end = time.monotonic() + timeout
        with self._cv:
            i = since
            while True:
                while i < len(self.events):
                    if pred(self.events[i]):
                        return self.events[i]
                    i += 1
                left = end - time.monotonic()
                if left <= 0 or not self._reading():
                    raise BoardError(f"{self.name}: waited {timeout} s in vain\n{self.console()}")
                self._cv.wait(min(left, 0.5))

    def wait_line(self, text: str, *, timeout: float = 30, since: int = 0) -> Event:
        return self.wait(
            lambda e: e["ev"] == "out" and text in e["line"], timeout=timeout, since=since
        )

    def mark(self) -> int:
        """An index for wait(since=...): only what happens from now on."""
        with self._cv:
            return len(self.events)

    # -- plumbing --------------------------------------------------------------------------
    def _reading(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def _send(self, **msg: Any) -> None:
        if self._proc is None or self._proc.poll() is not None:
            self._spawn(off=True)  # settings for the world around an unpowered board
        p = self._proc
        assert p is not None and p.stdin is not None
        p.stdin.write(json.dumps(msg) + "\n")
        p.stdin.flush()

    def _read(self) -> None:
        p = self._proc
        assert p is not None and p.stdout is not None
        for line in _lines(p.stdout):
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"ev": "out", "line": line, "host": True}
            with self._cv:
                self.events.append(ev)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def _read_err(self) -> None:
        p = self._proc
        if p is None or p.stderr is None:
            return
        for line in _lines(p.stderr):
            self._stderr.append(line)


def _lines(stream: Any) -> Iterator[str]:
    for line in stream:
        yield line.rstrip("\n")
