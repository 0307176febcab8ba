"""A Pico on a pseudo-terminal: MicroPython's REPL protocol over a pty, for the real mpremote.

The board side of a pty speaks what a Pico running MicroPython speaks on its USB serial:

- friendly REPL (``>>>``): Ctrl-A enters the raw REPL, Ctrl-B prints the banner, Ctrl-C
  breaks, Ctrl-D soft-reboots and then runs ``main.py`` (if the board has one);
- raw REPL: ``raw REPL; CTRL-B to exit\\r\\n>``; code up to Ctrl-D is answered with ``OK``,
  its output, ``\\x04``, its error output, ``\\x04``, then the ``>`` prompt; an empty Ctrl-D
  is a soft reset (``OK\\r\\nMPY: soft reboot\\r\\n`` and a fresh raw REPL);
- raw paste (Ctrl-E ``A`` Ctrl-A): ``R\\x01``, a 128-byte window and flow-control bytes, as
  MicroPython's ``pyexec.c`` does (or, with ``raw_paste=False``, a board too old to know it);
- "running main.py": output lines the test emits; Ctrl-C interrupts it with a traceback.

Code is really executed, by CPython, in a namespace whose ``os``, ``open``, ``machine`` and
``print`` are the board's: ``os`` works on a temp dir that is the board's file system (with
``ilistdir``/``statvfs`` as MicroPython has them), ``machine.unique_id()`` gives the board's
id. Errors come back as MicroPython prints them (``OSError: [Errno 2] ENOENT``), which is
what mpremote turns back into OSErrors.

``unplug_after_written=N`` pulls the cable (closes the pty) once N bytes of file data were
written on the board, in the middle of whatever mpremote was doing.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import select
import stat
import struct
import threading
import traceback
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

BANNER = (
    b'MicroPython v1.27.0 on 2025-12-09; Raspberry Pi Pico with RP2040\r\nType "help()" '
    b"for more information.\r\n"
)
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
WINDOW = 128  # raw-paste flow-control window (MICROPY_REPL_STDIN_BUFFER_MAX / 2)
_S_IFDIR, _S_IFREG = 0x4000, 0x8000
_REAL_MODULES = {"hashlib", "binascii", "json", "time", "struct", "sys", "gc", "errno"}


class _Unplugged(Exception):
    pass


class FakePico:
    """A Pico on a pty. Use as a context manager; ``path`` is the port for mpremote.

    Args:
        root: the board's file system (a directory).
        uid: the board's unique id, hex (what machine.unique_id() and the USB serial say).
        raw_paste: answer raw-paste requests (MicroPython >= 1.13) or behave like older boards.
        unplug_after_written: close the pty once this many bytes of file data were written.
        free: bytes free on the board's file system (statvfs).
        on_line: called with each line the host sends while main.py runs; returns a reply.
    """

    def __init__(
        self,
        root: Path,
        *,
        uid: str,
        raw_paste: bool = True,
        unplug_after_written: int | None = None,
        free: int = 1_400_000,
        on_line: Callable[[str], str | None] | None = None,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.uid = uid
        self.raw_paste = raw_paste
        self.unplug_after_written = unplug_after_written
        self.free = free
        self.on_line = on_line
        self.written = 0
        self.soft_resets = 0
        self.app_starts = 0
        self.executed: list[str] = []
        self.unplugged = threading.Event()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo of what the board itself writes
        self.path = os.ttyname(self._slave)
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._mode = "app" if (root / "main.py").exists() else "friendly"
        self._line = bytearray()
        self._app_input = bytearray()
        self._paste_left = 0
        self._ns: dict[str, Any] = {}
        self._cwd = "/"
        self._thread = threading.Thread(target=self._run, name=f"fake-pico-{uid}", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> FakePico:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unplug()
        self._thread.join(5)

    def unplug(self) -> None:
        """Pull the cable: the port goes away and the host sees I/O errors."""
        with self._lock:
            if self.unplugged.is_set():
                return
            self.unplugged.set()
            os.write(self._wake_w, b"x")
            for fd in (self._master, self._slave):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def emit(self, data: bytes | str) -> None:
        """Write to the host as the running app would (a line: end it with \\r\\n)."""
        self._write(data.encode() if isinstance(data, str) else data)

    @property
    def mode(self) -> str:
        return self._mode

    def files(self) -> dict[str, bytes]:
        """Every file on the board (path relative to the root) and its contents."""
        return {
            str(p.relative_to(self.root)): p.read_bytes()
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }

    # -- I/O ------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        with self._lock:
            if self.unplugged.is_set():
                raise _Unplugged
            view = memoryview(data)
            while view:
                n = os.write(self._master, view)
                view = view[n:]

    def _run(self) -> None:
        try:
            while not self.unplugged.is_set():
                ready, _, _ = select.select([self._master, self._wake_r], [], [], 0.5)
                if self._master not in ready or self.unplugged.is_set():
                    continue
                try:
                    data = os.read(self._master, 4096)
                except OSError:
                    continue
                for b in data:
                    self._feed(b)
        except _Unplugged:
            pass
        finally:
            os.close(self._wake_r)
            os.close(self._wake_w)

    # -- the REPL state machine -------------------------------------------------------------
    def _feed(self, b: int) -> None:
        handler = {
            "friendly": self._friendly,
            "raw": self._raw,
            "paste": self._paste,
            "app": self._app,
        }[self._mode]
        handler(b)

    def _enter_raw(self) -> None:
        self._mode = "raw"
        self._line.clear()
        self._write(RAW_BANNER + b">")

    def _friendly(self, b: int) -> None:
        if b == 0x01:
            self._write(b"\r\n")
            self._enter_raw()
        elif b == 0x02:
            self._write(b"\r\n" + BANNER + b">>> ")
        elif b == 0x03:
            self._write(b"\r\n>>> ")
        elif b == 0x04:
            self._write(b"\r\n")
            self._soft_reboot()
            if (self.root / "main.py").exists():
                self.app_starts += 1
                self._mode = "app"
            else:
                self._write(BANNER + b">>> ")
        elif b == 0x0D:
            self._write(b"\r\n>>> ")
        elif 0x20 <= b < 0x7F:
            self._write(bytes([b]))

    def _app(self, b: int) -> None:
        if b == 0x03:
            self._app_input.clear()
            self._mode = "friendly"
            self._write(
                b'Traceback (most recent call last):\r\n  File "main.py", line 1, in <module>\r\n'
                b"KeyboardInterrupt: \r\n" + BANNER + b">>> "
            )
        elif b in (0x0A, 0x0D):
            line = self._app_input.decode(errors="replace").strip()
            self._app_input.clear()
            if line and self.on_line is not None:
                reply = self.on_line(line)
                if reply is not None:
                    self._write(reply.encode() + b"\r\n")
        else:
            self._app_input.append(b)

    def _raw(self, b: int) -> None:
        if b == 0x01:
            if bytes(self._line) == b"\x05A" and self.raw_paste:
                self._line.clear()
                self._mode = "paste"
                self._paste_left = WINDOW
                self._write(b"R\x01" + struct.pack("<H", WINDOW) + b"\x01")
            else:
                self._enter_raw()
        elif b == 0x02:
            self._mode = "friendly"
            self._write(b"\r\n" + BANNER + b">>> ")
        elif b == 0x03:
            self._line.clear()
        elif b == 0x04:
            self._write(b"OK")
            if not self._line:
                self._write(b"\r\n")
                self._soft_reboot()
                self._enter_raw()
                return
            code = bytes(self._line)
            self._line.clear()
            self._run_code(code)
            self._write(b">")
        else:
            self._line.append(b)

    def _paste(self, b: int) -> None:
        if b in (0x03, 0x04):
            self._write(b"\x04")  # end of data acknowledged
            code = bytes(self._line)
            self._line.clear()
            self._mode = "raw"
            if b == 0x04:
                self._run_code(code)
            self._write(b">")
            return
        self._line.append(b)
        self._paste_left -= 1
        if self._paste_left == 0:
            self._paste_left = WINDOW
            self._write(b"\x01")

    def _soft_reboot(self) -> None:
        self.soft_resets += 1
        self._ns = {}
        self._cwd = "/"
        self._write(b"MPY: soft reboot\r\n")

    # -- executing code ---------------------------------------------------------------------
    def _run_code(self, code: bytes) -> None:
        text = code.decode("utf-8", errors="replace")
        self.executed.append(text)
        out: list[str] = []
        err = ""
        if not self._ns:
            self._ns = {"__builtins__": self._builtins(out), "__name__": "__main__"}
        else:
            self._ns["__builtins__"] = self._builtins(out)
        try:
            exec(compile(text, "<stdin>", "exec"), self._ns)
        except _Unplugged:
            raise
        except BaseException as exc:
            err = _micropython_traceback(exc)
        if self._should_unplug():
            self.unplug()
            raise _Unplugged
        stdout = "".join(out).replace("\n", "\r\n").encode()
        self._write(stdout + b"\x04" + err.encode() + b"\x04")

    def _should_unplug(self) -> bool:
        limit = self.unplug_after_written
        return limit is not None and self.written >= limit

    def _builtins(self, out: list[str]) -> dict[str, Any]:
        def board_print(*args: Any, sep: str = " ", end: str = "\n", **_: Any) -> None:
            out.append(sep.join(str(a) for a in args) + end)

        def board_import(
            name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
        ) -> Any:
            if name == "os":
                return self._os()
            if name == "machine":
                return SimpleNamespace(
                    unique_id=lambda: bytes.fromhex(self.uid), freq=lambda: 125_000_000
                )
            if name in _REAL_MODULES:
                return builtins.__import__(name, globals, locals, fromlist, level)
            raise ImportError(f"no module named '{name}'")

        table = dict(vars(builtins))
        table.update(print=board_print, open=self._open, __import__=board_import)
        return table

    # -- the board's file system --------------------------------------------------------------
    def _host(self, path: str) -> Path:
        full = path if path.startswith("/") else self._cwd.rstrip("/") + "/" + path
        parts: list[str] = []
        for part in full.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(part)
        return self.root.joinpath(*parts)

    def _open(self, path: str, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = open(self._host(path), mode, *args, **kwargs)
        if "w" in mode or "a" in mode:
            return _CountingFile(f, self)
        return f

    def _used(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def _os(self) -> SimpleNamespace:
        def stat_(path: str) -> tuple[int, ...]:
            st = self._host(path).stat()
            kind = _S_IFDIR if stat.S_ISDIR(st.st_mode) else _S_IFREG
            t = int(st.st_mtime)
            return (kind, 0, 0, 0, 0, 0, st.st_size if kind == _S_IFREG else 0, t, t, t)

        def ilistdir(path: str = "") -> Iterator[tuple[str, int, int, int]]:
            for p in sorted(self._host(path).iterdir()):
                kind = _S_IFDIR if p.is_dir() else _S_IFREG
                yield (p.name, kind, 0, p.stat().st_size if kind == _S_IFREG else 0)

        def rename(old: str, new: str) -> None:
            self._host(old).replace(self._host(new))  # littlefs replaces the target

        def statvfs(path: str) -> tuple[int, ...]:
            bsize = 4096
            free = max(self.free - self._used(), 0) // bsize
            total = (self.free // bsize) + 1
            return (bsize, bsize, total, free, free, 0, 0, 0, 0, 255)

        def chdir(path: str) -> None:
            target = self._host(path)
            if not target.is_dir():
                raise OSError(errno.ENOENT, "ENOENT")
            self._cwd = "/" + str(target.relative_to(self.root)).strip(".")

        return SimpleNamespace(
            stat=stat_,
            ilistdir=ilistdir,
            listdir=lambda path="": [e[0] for e in ilistdir(path)],
            mkdir=lambda path: self._host(path).mkdir(),
            rmdir=lambda path: self._host(path).rmdir(),
            remove=lambda path: self._host(path).unlink(),
            rename=rename,
            statvfs=statvfs,
            getcwd=lambda: self._cwd,
            chdir=chdir,
            sep="/",
        )


class _CountingFile:
    """A file opened for writing on the board; counts the bytes for unplug_after_written."""

    def __init__(self, f: Any, board: FakePico) -> None:
        self._f, self._board = f, board

    def write(self, data: Any) -> int:
        n = self._f.write(data)
        self._board.written += n
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _micropython_traceback(exc: BaseException) -> str:
    line = 1
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == "<stdin>":
            line = frame.lineno or 1
    if isinstance(exc, OSError) and exc.errno:
        what = f"OSError: [Errno {exc.errno}] {errno.errorcode.get(exc.errno, '')}"
    else:
        what = f"{type(exc).__name__}: {exc}"
    where = f'  File "<stdin>", line {line}, in <module>'
    return f"Traceback (most recent call last):\r\n{where}\r\n{what}\r\n"
