"""Fixtures of the firmware tests: the MicroPython runner, firmware sources, hub workarounds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from picofleet.core.firmware import firmware_dir
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = firmware_dir("pico_w")
RUNNER = Path(__file__).with_name("run_mpy.mjs")
MPY_PKG = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"


def mpy_available() -> bool:
    return shutil.which("node") is not None and MPY_PKG.exists()


def run_mpy(script: str, files: dict[str, Path], *, timeout: float = 120) -> str:
    """Run ``script`` in real MicroPython (WebAssembly, under Node) with ``files`` in its
    file system; return its stdout, fail the test with its traceback."""
    need(mpy_available(), "node + @micropython/micropython-webassembly-pyscript (npm install)")
    args = ["node", str(RUNNER)]
    for name, path in files.items():
        args += ["--file", f"{name}={path}"]
    script_path = Path(script)
    proc = subprocess.run(
        [*args, str(script_path)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"MicroPython failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout
