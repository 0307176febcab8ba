"""Where the MicroPython firmware sources are: the repository's ``pico_w/`` (``pico_usb/``)
in a source tree, else the copy the wheel ships as package data (``picofleet.pico_w``)."""

from __future__ import annotations

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
