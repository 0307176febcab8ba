"""Fleet secret, derived MQTT credentials, the operator token and provisioning tokens.

Every credential is an HMAC of the one fleet secret, so the broker can check any device's
password without storing one per device, and rotating the secret rotates them all. After a
rotation (``picofleet creds rotate``) the previous secret stays valid for checks until its
grace period ends (``fleet.secret.previous``), so devices not yet re-provisioned keep working.
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

from picofleet.settings import Settings

SECRET_FILE = "fleet.secret"
PREVIOUS_SECRET_FILE = "fleet.secret.previous"  # {"secret": ..., "expires_at": epoch}
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


def read_previous_secret(settings: Settings) -> tuple[bytes, float] | None:
    """The rotated-out secret and the epoch its grace period ends, if a rotation left one."""
    if settings.provision_secret is not None:
        return None
    path = settings.data_path / PREVIOUS_SECRET_FILE
    try:
        data = json.loads(path.read_text())
        return str(data["secret"]).encode(), float(data["expires_at"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a valid previous-secret file") from exc


def load_fleet_keys(settings: Settings, *, create: bool = True) -> FleetKeys:
    """FleetKeys of the current secret, plus the previous one while its grace period runs."""
    secret = load_fleet_secret(settings, create=create)
    prev = read_previous_secret(settings)
    if prev is not None and prev[1] > time.time():
        return FleetKeys(secret, previous=prev[0], previous_until=prev[1])
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
        """The key sets whose credentials pass a check now: current first."""
        if self.previous is not None and time.time() < self.previous_until:
            return (self, FleetKeys(self.previous))
        return (self,)

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

    def _password_for(self, username: str) -> str:
        if username in (HUB_USER, OPERATOR_USER):
            return self.role_password(username)
        return self.device_password(username)

    def check_password(self, username: str, password: str) -> bool:
        return any(equal(k._password_for(username), password) for k in self.accepted())

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
