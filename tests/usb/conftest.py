"""Shared parts of the USB tests: real MicroPython, the firmware imported into CPython, CLI."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "pico_usb"
RUNNER = Path(__file__).with_name("micropython_run.mjs")
MP_PACKAGE = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
PICOFLEET = Path(sys.executable).with_name("picofleet")


def micropython(code: str, files: dict[str, str] | None = None, **cwd_files: str) -> str:
    """Run ``code`` in real MicroPython (WebAssembly port under Node); returns its output."""
    need(shutil.which("node") is not None, "node")
    need(MP_PACKAGE.is_dir(), "npm package @micropython/micropython-webassembly-pyscript")
    job = {"files": files or {}, "code": code, "cwd_files": cwd_files}
    proc = subprocess.run(
        ["node", str(RUNNER)], input=json.dumps(job), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"MicroPython failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def firmware_sources(*names: str) -> dict[str, str]:
    return {n: (FIRMWARE / n).read_text() for n in names}


def load_firmware() -> SimpleNamespace:
    """pico_usb's pure modules imported into CPython (``micropython.const`` stubbed)."""
    saved = {n: sys.modules.get(n) for n in ("micropython", "proto", "app")}
    sys.modules["micropython"] = SimpleNamespace(const=lambda v: v)  # type: ignore[assignment]
    sys.path.insert(0, str(FIRMWARE))
    try:
        sys.modules.pop("proto", None)
        sys.modules.pop("app", None)
        proto: ModuleType = importlib.import_module("proto")
        app: ModuleType = importlib.import_module("app")
    finally:
        sys.path.remove(str(FIRMWARE))
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return SimpleNamespace(proto=proto, app=app)


class StubSensors:
    """A DHT and a moisture probe that read what the test says."""

    def __init__(self, temp: float | None, humi: float | None, raw: int | None) -> None:
        self.temp, self.humi, self.raw = temp, humi, raw

    def climate(self) -> tuple[float | None, float | None]:
        return self.temp, self.humi

    def moisture_raw(self) -> int | None:
        return self.raw


def picofleet(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """The real `picofleet` command, as an operator runs it."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PICOFLEET_")}
    full_env.update(env)
    # Run where no developer's .env can leak in: the data dir.
    cwd = Path(env.get("PICOFLEET_DATA_DIR", "/tmp"))
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(PICOFLEET), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )


@pytest.fixture
def fw() -> Any:
    return load_firmware()
