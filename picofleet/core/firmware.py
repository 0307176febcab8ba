"""The MicroPython firmware as the hub sees it: where its sources are (the repository's
``pico_w/`` and ``pico_usb/``, or the wheel's package data) and which version it carries.

A firmware's version is the ``VERSION = "X.Y.Z"`` (or ``FW_VERSION``) literal it carries,
read without importing it (it is MicroPython): in ``version.py``, then ``main.py``, then the
other modules."""

from __future__ import annotations

import ast
from pathlib import Path

from picofleet.core.assets import asset_dir

APPS = ("pico_w", "pico_usb")
# device_type -> mpy-cross -march of its core (`mpy-cross --help` lists them): the Pico W's
# RP2040 is a Cortex-M0+, the Pico 2 W's RP2350 a Cortex-M33 with single floats.
MARCH = {"pico_w": "armv6m", "pico2_w": "armv7emsp"}


def firmware_dir(app: str = "pico_w") -> Path:
    if app not in APPS:
        raise ValueError(f"unknown firmware {app!r}; one of {', '.join(APPS)}")
    return asset_dir(app)


_VERSION_FILES = ("version.py", "main.py")
_VERSION_NAMES = frozenset({"VERSION", "FW_VERSION", "FIRMWARE_VERSION", "__version__"})


def version_literal(source: str) -> str | None:
    """The first top-level ``VERSION = "..."`` (or another version name) in ``source``."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            targets = {t.id for t in node.targets if isinstance(t, ast.Name)}
            if targets & _VERSION_NAMES and isinstance(node.value.value, str):
                return node.value.value
    return None


def firmware_version(directory: Path) -> str | None:
    """The version of the firmware in ``directory``, if it carries one."""
    candidates = [directory / n for n in _VERSION_FILES] + sorted(directory.glob("*.py"))
    for path in dict.fromkeys(candidates):
        try:
            found = version_literal(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
        if found:
            return found
    return None
