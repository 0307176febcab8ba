"""The files a flash puts on a board: an app's firmware, or an OTA release's main.py.

An app is a flat folder of ``*.py`` files (``pico_w/``, ``pico_usb/`` at the top of the
repository). A release (``--release V``) is the app with its ``main.py`` replaced by the
release's artifact from the OTA store, checked against the sha256 the release recorded;
the updater's own files (boot.py, the OTA modules) always come from the app folder, as OTA
never replaces them either.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from picofleet.core.firmware import firmware_dir, version_literal
from picofleet.core.settings import Settings
from picofleet.usb._board import CONFIG_FILE, VERSION_FILE

MAIN = "main.py"
Q_RELEASE = "SELECT sha256, size FROM ota_release WHERE device_type = $1 AND version = $2"


class BundleError(ValueError):
    """The firmware to flash cannot be assembled."""


@dataclass(frozen=True, slots=True)
class BoardFile:
    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, slots=True)
class AppBundle:
    app: str
    version: str | None
    files: tuple[BoardFile, ...]
    release: str | None = None

    def version_file(self) -> BoardFile:
        """version.json: what was flashed, so `usb list` can tell without the database."""
        body = {
            "app": self.app,
            "version": self.version,
            "release": self.release,
            "files": {f.name: f.sha256 for f in self.files},
        }
        data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        return BoardFile(VERSION_FILE, data)


def app_dir(app: str, source: Path | None = None) -> Path:
    return source if source is not None else firmware_dir(app)


def _version_of(files: list[BoardFile]) -> str | None:
    for f in sorted(files, key=lambda f: f.name != MAIN):
        found = version_literal(f.data.decode("utf-8", "replace"))
        if found:
            return found
    return None


def load_app(app: str, source: Path | None = None) -> AppBundle:
    folder = app_dir(app, source)
    paths = sorted(folder.glob("*.py")) if folder.is_dir() else []
    if not any(p.name == MAIN for p in paths):
        raise BundleError(f"{folder} holds no {MAIN}: nothing to flash for {app}")
    files = [BoardFile(p.name, p.read_bytes()) for p in paths]
    for reserved in (CONFIG_FILE, VERSION_FILE):
        if any(f.name == reserved for f in files):
            raise BundleError(f"{folder} must not ship {reserved}: flashing writes it")
    # main.py last: the app starts only once everything it imports is in place.
    files.sort(key=lambda f: f.name == MAIN)
    return AppBundle(app=app, version=_version_of(files), files=tuple(files))


async def load_release(
    pool: asyncpg.Pool, settings: Settings, app: str, version: str, source: Path | None = None
) -> AppBundle:
    from picofleet.core.artifacts import ArtifactStore

    base = load_app(app, source)
    try:
        row = await pool.fetchrow(Q_RELEASE, app, version)
    except asyncpg.UndefinedTableError:
        raise BundleError("this database has no OTA release store (ota_release)") from None
    if row is None:
        raise BundleError(f"no OTA release {version} for {app} (picofleet ota release ...)")
    path = ArtifactStore.for_settings(settings).path(row["sha256"])
    if path is None or not path.is_file():
        raise BundleError(f"release {version}: artifact {row['sha256']} is missing from the store")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != row["sha256"] or len(data) != row["size"]:
        raise BundleError(f"release {version}: the stored artifact does not match its sha256")
    files = tuple(f if f.name != MAIN else BoardFile(MAIN, data) for f in base.files)
    return AppBundle(app=app, version=version, files=files, release=version)
