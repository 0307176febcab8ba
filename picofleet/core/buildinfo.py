"""What this installation is: package version, source commit, firmware versions.

The commit comes from, first found wins:
    PICOFLEET_COMMIT        set by the container image (build arg) or the operator
    build_info.json         written next to this module by a release build (inside the wheel)
    git rev-parse HEAD      when running from a checkout (``-dirty`` if the tree has changes)
    "unknown"
Firmware versions are read by picofleet/core/firmware.py; a firmware without one is left out.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import picofleet
from picofleet.core.firmware import APPS, firmware_dir, firmware_version

BUILD_INFO_FILE = "build_info.json"
# Where a release build writes it in the source tree it builds the wheel from: beside this module.
BUILD_INFO_PATH = f"picofleet/core/{BUILD_INFO_FILE}"
COMMIT_ENV = "PICOFLEET_COMMIT"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    commit: str
    commit_source: str  # env | build | git | unknown
    firmware: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "commit": self.commit,
            "commit_source": self.commit_source,
            "firmware": dict(self.firmware),
        }


def firmware_versions(root: Path | None = None) -> dict[str, str]:
    """Versions of the firmware under ``root`` (a source tree) or shipped with this install."""
    found: dict[str, str] = {}
    for name in APPS:
        directory = (root / name) if root is not None else firmware_dir(name)
        version = firmware_version(directory) if directory.is_dir() else None
        if version:
            found[name] = version
    return found


def _git(root: Path, *args: str) -> str | None:
    try:
        res = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_commit(root: Path) -> str | None:
    """HEAD of the checkout at ``root``, with ``-dirty`` when tracked or new files differ."""
    head = _git(root, "rev-parse", "HEAD")
    if not head:
        return None
    status = _git(root, "status", "--porcelain")
    return f"{head}-dirty" if status else head


def git_commit_time(root: Path) -> int | None:
    stamp = _git(root, "log", "-1", "--format=%ct")
    return int(stamp) if stamp and stamp.isdigit() else None


def _packaged_build_info() -> dict[str, Any]:
    try:
        data = json.loads((Path(__file__).with_name(BUILD_INFO_FILE)).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _commit() -> tuple[str, str]:
    env = os.environ.get(COMMIT_ENV, "").strip()
    if env:
        return env, "env"
    built = _packaged_build_info().get("commit")
    if isinstance(built, str) and built:
        return built, "build"
    checkout = Path(picofleet.__file__).resolve().parent.parent
    if (checkout / ".git").exists():
        head = git_commit(checkout)
        if head:
            return head, "git"
    return UNKNOWN, "unknown"


@functools.cache
def build_info() -> BuildInfo:
    """This process's build info; computed once (it may run git)."""
    commit, source = _commit()
    return BuildInfo(
        version=picofleet.__version__,
        commit=commit,
        commit_source=source,
        firmware=firmware_versions(),
    )
