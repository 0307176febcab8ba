"""Each board's ``config.json``: the wire contract the firmware reads, built per device.

Where the values come from, later ones winning:

1. defaults (the hub's own broker and HTTP port, stable channel, default calibration);
2. the operator-set part of the config already on the board (Wi-Fi, broker, calibration, ...),
   so re-flashing firmware never forgets a board's Wi-Fi or its calibration;
3. ``--config FILE``: the same operator fields, plus ``devices: {KEY: {...}}`` per board;
4. command-line flags (``--wifi-ssid``, ``--wifi-password``, ``--broker-host``), each one
   replacing only the field it names.

Credentials are never taken from anywhere but the fleet secret: the MQTT password and the
provisioning key are derived for the device key every time. A Pico on USB (pico_usb) gets no
credentials at all: the gateway publishes for it.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings

APPS = ("pico_w", "pico_usb")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Wifi(_Strict):
    ssid: str = Field(min_length=1, max_length=32)
    password: str = Field(default="", max_length=64)


class Broker(_Strict):
    host: str = Field(min_length=1)
    port: int = Field(default=1883, gt=0, lt=65536)


class Calibration(_Strict):
    moisture_dry: int = Field(default=52000, ge=0, le=65535)
    moisture_wet: int = Field(default=21000, ge=0, le=65535)


class Pump(_Strict):
    max_run_s: int = Field(default=30, gt=0)
    cooldown_s: int = Field(default=300, ge=0)
    auto_below_pct: float | None = 25
    auto_run_s: int = Field(default=10, gt=0)


class Sensors(_Strict):
    """Wiring of a USB Pico (pico_usb); not part of a Pico-W's config."""

    dht: Literal["dht11", "dht22"] = "dht22"
    dht_pin: int = Field(default=15, ge=0, le=29)
    moisture_adc_pin: int = Field(default=26, ge=26, le=29)


class BoardOptions(_Strict):
    """What an operator may set for a board (``--config`` file, flags, the board's own)."""

    wifi: Wifi | None = None
    broker: Broker | None = None
    hub_http: str | None = None
    channel: str | None = Field(default=None, pattern=r"^[a-z0-9_-]{1,32}$")
    calibration: Calibration | None = None
    pump: Pump | None = None
    telemetry_interval_s: int | None = Field(default=None, ge=2, le=86400)
    sensors: Sensors | None = None


class OptionsFile(BoardOptions):
    """The ``--config FILE`` format: board options, optionally per device key."""

    devices: dict[str, BoardOptions] = Field(default_factory=dict)


class DeviceConfig(_Strict):
    """config.json, exactly the fields pico_w/config.py reads (its module docstring),
    plus ``sensors``."""

    device_key: str
    mqtt_password: str | None
    provision_secret: None = None
    provision_key: str | None
    wifi: Wifi | None
    broker: Broker | None
    hub_http: str | None
    prefix: str
    device_type: str
    channel: str
    ota_pubkey: str | None
    ota_key_id: str | None
    calibration: Calibration
    pump: Pump | None
    telemetry_interval_s: int
    sensors: Sensors | None = None
    # The hub's CA certificate (PEM, from picofleet.core.tls): with it the board speaks TLS to
    # the broker and refuses a hub whose certificate does not chain to it. Pico W only.
    ca_pem: str | None = Field(default=None, pattern=r"-----BEGIN CERTIFICATE-----")

    def to_bytes(self) -> bytes:
        data = self.model_dump(mode="json")
        for optional in ("sensors", "ca_pem"):
            if data.get(optional) is None:
                data.pop(optional, None)
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


class ConfigError(ValueError):
    """The options do not add up to a usable config for this board."""


def load_options_file(path: Path) -> OptionsFile:
    try:
        return OptionsFile.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def ota_public_key(data_path: Path) -> tuple[str, str] | None:
    """(base64 raw Ed25519 public key, key id) of the fleet's OTA key, if one was made."""
    from picofleet.core.signing import key_id, key_paths

    _, public = key_paths(data_path)
    try:
        text = public.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ConfigError(f"{public} is not a base64 Ed25519 public key") from None
    if len(raw) != 32:
        raise ConfigError(f"{public} holds {len(raw)} bytes, not a 32-byte Ed25519 key")
    return base64.b64encode(raw).decode(), key_id(raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _from_board(existing: dict[str, Any] | None) -> dict[str, Any]:
    """The operator-set fields of a board's current config.json that still validate."""
    out: dict[str, Any] = {}
    for name in BoardOptions.model_fields:
        if existing and name in existing and existing[name] is not None:
            try:
                BoardOptions.model_validate({name: existing[name]})
            except ValidationError:
                continue  # an old or hand-edited value we cannot vouch for: use the default
            out[name] = existing[name]
    return out


def build_config(
    *,
    key: str,
    app: str,
    settings: Settings,
    keys: FleetKeys,
    existing: dict[str, Any] | None,
    options: OptionsFile,
    flags: dict[str, Any],
    ota_key: tuple[str, str] | None,
    ca_pem: str | None = None,
) -> DeviceConfig:
    """``ca_pem``: the hub's CA certificate; a Pico W then gets it and reaches the broker over
    TLS, on ``mqtts_port`` by default. A broker the board already has (or the operator names)
    is kept as it is: a board flashed before TLS keeps its port until given ``--broker-port``
    (CHANGELOG, upgrading)."""
    host = settings.public_host
    defaults: dict[str, Any] = {
        "channel": "stable",
        "calibration": Calibration().model_dump(),
        "telemetry_interval_s": 60,
    }
    if app == "pico_w":
        defaults["pump"] = Pump().model_dump()
        if host:
            port = settings.mqtts_port if ca_pem else settings.mqtt_port
            defaults["broker"] = {"host": host, "port": port}
            defaults["hub_http"] = f"http://{host}:{settings.http_port}"
    else:
        defaults["sensors"] = Sensors().model_dump()
    layers = [
        _from_board(existing),
        options.model_dump(exclude_unset=True, exclude={"devices"}),
        options.devices[key].model_dump(exclude_unset=True) if key in options.devices else {},
        flags,
    ]
    merged = defaults
    for layer in layers:
        merged = _merge(merged, layer)
    wired = app == "pico_w"
    if wired:
        missing = [what for what in ("wifi", "broker") if what not in merged]
        if missing:
            raise ConfigError(
                f"a pico_w needs {' and '.join(missing)} settings: pass --wifi-ssid/"
                "--wifi-password and --broker-host (or PICOFLEET_PUBLIC_HOST), or --config"
            )
        if "hub_http" not in merged:
            merged["hub_http"] = f"http://{merged['broker']['host']}:{settings.http_port}"
    try:
        return DeviceConfig(
            device_key=key,
            mqtt_password=keys.device_password(key) if wired else None,
            provision_key=keys.provision_key(key) if wired else None,
            wifi=merged.get("wifi") if wired else None,
            broker=merged.get("broker") if wired else None,
            hub_http=merged.get("hub_http") if wired else None,
            prefix=settings.topic_prefix,
            device_type=app,
            channel=merged["channel"],
            ota_pubkey=ota_key[0] if (ota_key and wired) else None,
            ota_key_id=ota_key[1] if (ota_key and wired) else None,
            calibration=merged["calibration"],
            pump=merged.get("pump") if wired else None,
            telemetry_interval_s=merged["telemetry_interval_s"],
            sensors=merged.get("sensors") if not wired else None,
            ca_pem=ca_pem if wired else None,
        )
    except ValidationError as exc:
        raise ConfigError(str(exc)) from None
