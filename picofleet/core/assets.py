"""Where the files the hub ships beside its code are: the migrations (``sql/``) and the
MicroPython firmware (``pico_w/``, ``pico_usb/``).

In a source checkout they are the repository's top-level folders; in an installed wheel they
are package data under ``picofleet.<name>`` (pyproject.toml's ``package-dir``). Every caller
asks here, so both layouts work everywhere (tests/release/test_packaging.py checks the wheel).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import picofleet

ASSETS = ("sql", "pico_w", "pico_usb")


class AssetMissing(RuntimeError):
    """Neither the checkout nor the installed package has the folder."""


def asset_dir(name: str) -> Path:
    if name not in ASSETS:
        raise ValueError(f"unknown asset folder {name!r}; one of {', '.join(ASSETS)}")
    root = Path(picofleet.__file__).resolve().parent.parent
    # A source checkout (its pyproject.toml beside the package), not site-packages, where
    # another project may have a folder of the same name.
    if (root / "pyproject.toml").is_file() and (root / name).is_dir():
        return root / name
    try:
        package = importlib.import_module(f"picofleet.{name}")
    except ModuleNotFoundError as exc:
        raise AssetMissing(f"{name}/ is neither in the checkout nor installed") from exc
    return Path(next(iter(package.__path__)))
