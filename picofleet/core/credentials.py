"""Fleet secret, derived MQTT credentials, the operator token and provisioning tokens.

Every credential is an HMAC of the one fleet secret, so the broker can check any device's
password without storing one per device, and rotating the secret rotates them all. After a
rotation (``picofleet creds rotate``) the previous secret stays valid for checks until its
grace period ends (``fleet.secret.previous``), so devices not yet re-provisioned keep working.
The grace covers device credentials only: the hub's and operators' own credentials, and the
HTTP operator token, change at once. A managed Mosquitto holds one password per user, so it
lists a device with the new password only once the device is renewed (``fleet.secret.renewed``
or first seen after the rotation); see ``picofleet/broker/mosquitto.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from picofleet.core.settings import Settings

SECRET_FILE = "fleet.secret"
PREVIOUS_SECRET_FILE = "fleet.secret.previous"  # {"secret", "expires_at", "rotated_at"}
RENEWED_FILE = "fleet.secret.renewed"  # device keys holding the current secret's credentials
HUB_USER = "hub"
OPERATOR_USER = "operator"


def _write_private(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)


def load_fleet_secret(settings: Settings, *, create: bool = True) -> bytes:
    """The fleet secret: from settings, else the data dir file (created 0600 on first use)."""
    if settings.provision_secret is not None:
        return settings.provision_secret.get_secret_value().encode()
    path = settings.data_path / SECRET_FILE
    if not path.exists():
        if not create:
            raise FileNotFoundError(
                f"no fleet secret at {path}; run `picofleet up` once or set "
                "PICOFLEET_PROVISION_SECRET"
            )
        try:
            _write_private(path, secrets.token_hex(32))
        except FileExistsError:
            pass  # another process created it first; use theirs
    return path.read_text().strip().encode()


@dataclass(frozen=True, slots=True)
class Rotation:
    """What ``picofleet creds rotate`` left: the old secret and its grace period (epochs)."""

    previous: bytes = field(repr=False)
    expires_at: float
    rotated_at: float

    def in_grace(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.expires_at


def read_rotation(settings: Settings) -> Rotation | None:
    """The last rotation's record, if there is one (expired or not)."""
    if settings.provision_secret is not None:
        return None  # the secret comes from the environment: rotation is done there
    path = settings.data_path / PREVIOUS_SECRET_FILE
    try:
        data = json.loads(path.read_text())
        expires_at = float(data["expires_at"])
        return Rotation(
            str(data["secret"]).encode(),
            expires_at,
            float(data.get("rotated_at", expires_at)),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a valid previous-secret file") from exc


def read_renewed(settings: Settings) -> frozenset[str]:
    """Devices marked as holding credentials of the current secret since the last rotation."""
    try:
        text = (settings.data_path / RENEWED_FILE).read_text()
    except FileNotFoundError:
        return frozenset()
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def load_fleet_keys(settings: Settings, *, create: bool = True) -> FleetKeys:
    """FleetKeys of the current secret, plus the previous one while its grace period runs."""
    secret = load_fleet_secret(settings, create=create)
    rotation = read_rotation(settings)
    if rotation is not None and rotation.in_grace():
        return FleetKeys(secret, previous=rotation.previous, previous_until=rotation.expires_at)
    return FleetKeys(secret)


def _mac(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class FleetKeys:
    """Everything derived from one fleet secret.

    Credentials are always issued from ``secret``; the ``check_*`` methods also accept those
    of ``previous`` until ``previous_until`` (epoch seconds), the grace period of a rotation.
    """

    secret: bytes = field(repr=False)
    previous: bytes | None = field(default=None, repr=False)
    previous_until: float = 0.0

    def accepted(self) -> tuple[FleetKeys, ...]:
        """The key sets whose device credentials pass a check now: current first."""
        grace = self.grace_keys()
        return (self,) if grace is None else (self, grace)

    def grace_keys(self) -> FleetKeys | None:
        """The previous secret's keys while its grace period runs, else None."""
        if self.previous is not None and time.time() < self.previous_until:
            return FleetKeys(self.previous)
        return None

    def device_password(self, key: str) -> str:
        return _mac(self.secret, f"mqtt:{key}")[:40]

    def role_password(self, role: str) -> str:
        return _mac(self.secret, f"role:{role}")[:40]

    @property
    def operator_token(self) -> str:
        return _mac(self.secret, "http:operator")

    def legacy_token(self, serial: str) -> str:
        return _mac(self.secret, serial)

    def startup_token(self, serial: str, timestamp: int, nonce: str) -> str:
        """Current token form signed with the fleet secret (hub-side senders, tools)."""
        return _mac(self.secret, f"{serial}|{timestamp}|{nonce}")

    def provision_key(self, serial: str) -> str:
        """Per-device key written into a device's config.json: a stolen device reveals only
        its own key, never the fleet secret."""
        return _mac(self.secret, f"provision:{serial}")

    def device_startup_token(self, serial: str, timestamp: int, nonce: str) -> str:
        """Current token form as a device computes it, with its own provisioning key."""
        key = bytes.fromhex(self.provision_key(serial))
        return hmac.new(key, f"{serial}|{timestamp}|{nonce}".encode(), hashlib.sha256).hexdigest()

    def runtime_db_password(self, role: str) -> str:
        """Password of the hub's least-privilege database role: every hub process of one
        fleet derives the same one, so none locks another out (picofleet/security/roles.py)."""
        return _mac(self.secret, f"postgres:{role}")

    def check_password(self, username: str, password: str) -> bool:
        if username in (HUB_USER, OPERATOR_USER):
            # No grace for the hub's and operators' own credentials: they move at once.
            return equal(self.role_password(username), password)
        return any(equal(k.device_password(username), password) for k in self.accepted())

    def check_legacy_token(self, serial: str, token: str) -> bool:
        return any(equal(k.legacy_token(serial), token) for k in self.accepted())

    def check_startup_token(self, serial: str, timestamp: int, nonce: str, token: str) -> bool:
        """A current-form token made with the device's provisioning key or the fleet secret."""
        return any(
            equal(k.device_startup_token(serial, timestamp, nonce), token)
            or equal(k.startup_token(serial, timestamp, nonce), token)
            for k in self.accepted()
        )


def equal(a: str, b: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(a.encode(), b.encode())
