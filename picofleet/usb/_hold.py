"""Port holds: how `usb flash` borrows a port from a running gateway.

The gateway keeps every Pico port open (exclusively, as mpremote does). Before flashing a
board, the flash command drops a hold file naming the port into ``<data_dir>/usb/hold``; the
gateway closes held ports at its next scan and leaves them alone until the hold is gone. A
hold whose process died is ignored, so a crashed flash never silences a board for good.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from picofleet.core.settings import Settings


def hold_dir(settings: Settings) -> Path:
    return settings.data_path / "usb" / "hold"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def held_ports(directory: Path) -> set[str]:
    """Ports that a live process holds."""
    out: set[str] = set()
    if not directory.is_dir():
        return out
    for path in directory.glob("*.hold"):
        try:
            data = json.loads(path.read_text())
            if _alive(int(data["pid"])):
                out.add(str(data["port"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


@contextlib.contextmanager
def hold(directory: Path | None, port: str | None) -> Iterator[None]:
    """Hold ``port`` for the duration (a no-op without a directory or a port)."""
    if directory is None or port is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{hashlib.sha256(port.encode()).hexdigest()[:16]}.hold"
    path.write_text(json.dumps({"port": port, "pid": os.getpid()}))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
