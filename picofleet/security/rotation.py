"""Rotating the fleet secret: a new one at once, the old one accepted for a grace period.

    fleet.secret           the current secret (0600), issues every credential
    fleet.secret.previous  {"secret", "rotated_at", "expires_at"} (0600): device passwords and
                           startup tokens made with it pass checks until ``expires_at``
    fleet.secret.renewed   device keys re-provisioned since the rotation (one a line): only a
                           managed Mosquitto needs it, since it holds one password per user

The files are replaced atomically, each created 0600 before a byte is written, in an order
that a crash cannot turn into a lost secret: the previous-secret record is written first, so a
crash before the new secret lands leaves the old secret current and also "previous".
Running hub processes pick the new secret up when they restart.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from picofleet.core.credentials import (
    PREVIOUS_SECRET_FILE,
    RENEWED_FILE,
    SECRET_FILE,
    read_renewed,
    read_rotation,
)
from picofleet.core.files import replace_file
from picofleet.core.settings import Settings

DEFAULT_GRACE_HOURS = 72.0


class RotationError(RuntimeError):
    """The fleet secret cannot be rotated here (it comes from the environment, or none yet)."""


@dataclass(frozen=True, slots=True)
class Rotated:
    rotated_at: float
    expires_at: float
    replaced_grace: bool  # an earlier rotation's grace was still running and ends now


def rotate_fleet_secret(
    settings: Settings, *, grace_hours: float = DEFAULT_GRACE_HOURS, now: float | None = None
) -> Rotated:
    """Make a new fleet secret; the current one stays valid for devices for ``grace_hours``."""
    if grace_hours < 0:
        raise RotationError("the grace period cannot be negative")
    if settings.provision_secret is not None:
        raise RotationError(
            "the fleet secret comes from PICOFLEET_PROVISION_SECRET: change it there and "
            "restart the hub (no grace period for a secret set in the environment)"
        )
    path = settings.data_path / SECRET_FILE
    try:
        old = path.read_text().strip()
    except FileNotFoundError:
        raise RotationError(f"no fleet secret at {path} yet: nothing to rotate") from None
    now = time.time() if now is None else now
    earlier = read_rotation(settings)
    expires_at = now + grace_hours * 3600
    record = {"secret": old, "rotated_at": now, "expires_at": expires_at}
    replace_file(settings.data_path / PREVIOUS_SECRET_FILE, json.dumps(record))
    replace_file(settings.data_path / RENEWED_FILE, "")
    replace_file(path, secrets.token_hex(32))
    return Rotated(
        rotated_at=now,
        expires_at=expires_at,
        replaced_grace=earlier is not None and earlier.in_grace(now),
    )


def end_grace(settings: Settings, *, now: float | None = None) -> bool:
    """End a running grace period now; False when there was none."""
    rotation = read_rotation(settings)
    now = time.time() if now is None else now
    if rotation is None or not rotation.in_grace(now):
        return False
    record = {
        "secret": rotation.previous.decode(),
        "rotated_at": rotation.rotated_at,
        "expires_at": now,
    }
    replace_file(settings.data_path / PREVIOUS_SECRET_FILE, json.dumps(record))
    return True


def mark_renewed(settings: Settings, device_keys: Iterable[str]) -> frozenset[str]:
    """Record devices that now hold the current secret's credentials; returns all of them."""
    marked = read_renewed(settings) | frozenset(device_keys)
    replace_file(settings.data_path / RENEWED_FILE, "".join(f"{k}\n" for k in sorted(marked)))
    return marked
