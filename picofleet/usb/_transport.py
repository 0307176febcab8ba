"""The seam under everything that talks to a board: ``Transport``.

``MpremoteTransport`` runs mpremote's command line (``python -m mpremote connect PORT ...``)
as a subprocess per step, so the device protocol (raw REPL, raw paste, file transfer) stays
mpremote's business and its library API, which its authors say will change, is never
imported. The tests drive the same class against pseudo-terminals that speak MicroPython's
raw REPL (tests/usb/fake_pico.py).

Every failure on a board is a ``TransportError`` carrying the port, the step and the last
words of mpremote (or of the serial port) that explain it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

from picofleet.usb._discovery import UsbBoard, parse_connect_list

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Sent to a board at the friendly REPL: interrupt whatever runs, leave raw REPL if mpremote
# left it there, then Ctrl-D: a soft reboot, which at the friendly REPL runs main.py.
_START_APP = b"\r\x03\x03\x02\x04"


class TransportError(Exception):
    """A step on one board failed.

    Attributes:
        port: the board's serial port.
        step: what we were doing (identify, copy, verify, commit, reset, start, list).
        message: why, in the words of mpremote or the serial port.
    """

    def __init__(self, port: str, step: str, message: str) -> None:
        super().__init__(f"{port}: {step}: {message}")
        self.port, self.step, self.message = port, step, message

    @property
    def busy(self) -> bool:
        """The port is held by another program (the gateway, a terminal)."""
        return "failed to access" in self.message or "in use" in self.message


class Transport(ABC):
    """What flashing and listing need from a board, one call per step."""

    @abstractmethod
    async def list_ports(self) -> list[UsbBoard]:
        """Pico serial ports the host sees (vendor 2E8A), with USB serial numbers."""

    @abstractmethod
    async def exec(self, port: str, code: str, *, soft_reset: bool = False) -> str:
        """Run ``code`` on the board and return what it printed; ``soft_reset`` first
        stops the running app and clears the interpreter."""

    @abstractmethod
    async def copy(
        self,
        port: str,
        files: Sequence[Path],
        remote_dir: str,
        *,
        on_file: Callable[[str], None] | None = None,
    ) -> None:
        """Copy local ``files`` into ``remote_dir`` (which exists) under their own names;
        ``on_file(name)`` is called as each one starts."""

    @abstractmethod
    async def sha256(self, port: str, paths: Sequence[str]) -> dict[str, str]:
        """Hex sha256 of each board path, computed on the board."""

    @abstractmethod
    async def soft_reset(self, port: str) -> None:
        """Soft-reset the board (a clean interpreter; boot.py runs)."""

    @abstractmethod
    async def start_app(self, port: str) -> bool:
        """Start main.py as a power-up would; True when the board confirmed the reboot."""


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    for line in reversed(lines):
        if line.startswith("mpremote: "):
            return line.removeprefix("mpremote: ")
    return lines[-1]


class MpremoteTransport(Transport):
    """mpremote's CLI, one subprocess per step.

    Args:
        command: how to start mpremote; the venv's interpreter by default.
        timeout: seconds a step may take before its process is killed (a copy gets more,
            in proportion to its size).
    """

    def __init__(self, *, command: Sequence[str] | None = None, timeout: float = 60.0) -> None:
        self.command = list(command or [sys.executable, "-m", "mpremote"])
        self.timeout = timeout

    async def _run(
        self,
        args: Sequence[str],
        *,
        port: str,
        step: str,
        timeout: float | None = None,  # noqa: ASYNC109 - the subprocess is killed, not us
        on_line: Callable[[str], None] | None = None,
    ) -> str:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None and proc.stderr is not None
        out: list[str] = []

        async def pump_stdout() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                out.append(line)
                if on_line is not None:
                    on_line(line.rstrip("\r\n"))

        limit = timeout or self.timeout
        try:
            async with asyncio.timeout(limit):
                _, err_bytes, _ = await asyncio.gather(
                    pump_stdout(), proc.stderr.read(), proc.wait()
                )
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise TransportError(port, step, f"no answer within {limit:.0f} s") from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        text = "".join(out)
        if proc.returncode != 0:
            why = _tail(err_bytes.decode("utf-8", "replace")) or _tail(text)
            raise TransportError(port, step, why or f"mpremote exited with {proc.returncode}")
        return text

    async def list_ports(self) -> list[UsbBoard]:
        text = await self._run(["connect", "list"], port="-", step="list")
        return parse_connect_list(text)

    async def exec(self, port: str, code: str, *, soft_reset: bool = False) -> str:
        args = ["connect", port] + ([] if soft_reset else ["resume"]) + ["exec", code]
        return await self._run(args, port=port, step="exec")

    async def copy(
        self,
        port: str,
        files: Sequence[Path],
        remote_dir: str,
        *,
        on_file: Callable[[str], None] | None = None,
    ) -> None:
        if not files:
            return
        size = sum(f.stat().st_size for f in files)

        def seen(line: str) -> None:
            # mpremote announces each file as "cp LOCAL :REMOTE" before sending it.
            if on_file is not None and line.startswith("cp "):
                on_file(Path(line.split()[1]).name)

        args = ["connect", port, "resume", "fs", "cp", "-f", *map(str, files), f":{remote_dir}/"]
        # A real Pico takes about 40 ms per 256-byte chunk over the raw REPL.
        await self._run(
            args, port=port, step="copy", timeout=self.timeout + size / 2000, on_line=seen
        )

    async def sha256(self, port: str, paths: Sequence[str]) -> dict[str, str]:
        if not paths:
            return {}
        args = ["connect", port, "resume", "fs", "sha256sum", *(f":{p}" for p in paths)]
        text = await self._run(args, port=port, step="verify")
        # Output: "sha256sum :PATH" then the hex digest, per path.
        found: dict[str, str] = {}
        current: str | None = None
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("sha256sum :"):
                current = line.removeprefix("sha256sum :")
            elif current is not None and _HEX64.match(line):
                found[current] = line
                current = None
        return found

    async def soft_reset(self, port: str) -> None:
        await self._run(["connect", port, "soft-reset"], port=port, step="reset")

    async def start_app(self, port: str) -> bool:
        return await asyncio.to_thread(_start_app, port, 3.0)


def _start_app(port: str, wait: float) -> bool:
    import serial

    try:
        with serial.Serial(port, 115200, timeout=0.1, exclusive=True) as ser:
            ser.write(_START_APP)
            ser.flush()
            seen = b""
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and b"soft reboot" not in seen:
                seen = (seen + ser.read(256))[-512:]
            return b"soft reboot" in seen
    except (OSError, serial.SerialException) as exc:
        raise TransportError(port, "start", str(exc)) from None
