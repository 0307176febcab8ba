"""What Home Assistant is told about one device: discovery configs and state payloads.

Pure functions of the device's row and its record types; the loop (service.py) publishes them.

State: every entity reads its own retained topic ``{prefix}/state/{dev}/{type}`` that the hub
republishes with the latest committed value as plain text. Not the device's telemetry topic
with a value_template, because (1) only validated facts reach Home Assistant (out-of-range,
unknown or spoofed readings are rejected before), (2) one shape covers every source (firmware
envelopes, legacy flat events on ``{prefix}/ingest`` and POST /ingest, USB lines), which a
template could not, (3) the value is retained, so a restarted Home Assistant has it at once,
and (4) the topic is outside ``devices/{key}/``, so no device can write it.

Availability: the device's own retained status topic, whose last will says offline.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import picofleet
from picofleet.core.topics import Kind, Topics, ha_discovery

# Record types whose meaning Home Assistant has a device class for (its sensor and
# binary_sensor classes); others are plain sensors with the record type's unit.
SENSOR_CLASSES = {
    "battery_charge": "battery",
    "soil_moisture_pct": "moisture",
    "humidity_pct": "humidity",
    "temperature_c": "temperature",
    "supply_v": "voltage",
    "rssi_dbm": "signal_strength",
    "free_mem_bytes": "data_size",
    "uptime_s": "duration",
    "pump_runtime_s": "duration",
    "platform_extension_mm": "distance",
    "platform_height_mm": "distance",
}
# On/off record types: a binary_sensor with state ON/OFF.
BINARY_CLASSES = {"pump_on": "running"}
# Device health rather than what the device measures: shown apart in Home Assistant.
DIAGNOSTIC = frozenset({"rssi_dbm", "free_mem_bytes", "uptime_s", "supply_v"})
# record_type.unit as Home Assistant spells it; units without a meaning there are dropped.
HA_UNITS = {"degC": "°C", "bytes": "B", "bool": None, "count": None}
_NAME_SUFFIXES = ("_pct", "_c", "_v", "_dbm", "_bytes", "_s", "_mm", "_ticks")

PUMP_TYPE = "pump_on"
PUMP_BUTTON_SECONDS = 10


@dataclass(frozen=True, slots=True)
class Button:
    object_id: str
    name: str
    command: dict[str, Any]
    device_class: str | None = None


# Commands as the firmware takes them on devices/{key}/cmd (picofleet/ops/commands.py).
REBOOT = Button("reboot", "Reboot", {"cmd": "reboot"}, "restart")
PUMP_BUTTONS = (
    Button(
        "pump_run",
        f"Run pump {PUMP_BUTTON_SECONDS} s",
        {"cmd": "pump", "seconds": PUMP_BUTTON_SECONDS},
    ),
    Button("pump_stop", "Stop pump", {"cmd": "stop"}),
)
ALL_BUTTONS = (REBOOT, *PUMP_BUTTONS)


@dataclass(frozen=True, slots=True)
class Device:
    key: str
    device_type: str | None  # None: not declared yet (a legacy sender)
    firmware: str | None
    serial: str | None
    # It has spoken on its status topic, so it has a last will there; legacy HTTP senders
    # have none and would show as unavailable forever with an availability topic.
    has_status: bool
    types: tuple[tuple[str, str], ...]  # (record type, unit), sorted


def node_id(key: str) -> str:
    return f"picofleet_{key}"


def unique_id(key: str, object_id: str) -> str:
    return f"picofleet_{key}_{object_id}"


def component(record_type: str) -> str:
    return "binary_sensor" if record_type in BINARY_CLASSES else "sensor"


def state_payload(record_type: str, value: float) -> bytes:
    if record_type in BINARY_CLASSES:
        return b"ON" if value else b"OFF"
    text = str(int(value)) if value.is_integer() else repr(value)
    return text.encode()


def pretty(record_type: str) -> str:
    name = record_type
    for suffix in _NAME_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("_", " ").capitalize()


def _device_block(dev: Device, hub_url: str | None) -> dict[str, Any]:
    block: dict[str, Any] = {
        "identifiers": [node_id(dev.key)],
        "name": f"picofleet {dev.key}",
        "manufacturer": "picofleet",
    }
    if dev.device_type:
        block["model"] = dev.device_type
    if dev.firmware:
        block["sw_version"] = dev.firmware
    if dev.serial:
        block["serial_number"] = dev.serial
    if hub_url:  # Home Assistant's "visit device" link: the hub's page of the device
        block["configuration_url"] = f"{hub_url}/devices/{dev.key}"
    return block


def _common(
    dev: Device, topics: Topics, object_id: str, name: str, hub_url: str | None
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "unique_id": unique_id(dev.key, object_id),
        "device": _device_block(dev, hub_url),
        "origin": {"name": "picofleet", "sw_version": picofleet.__version__},
        "qos": 1,
    }
    if dev.has_status:
        cfg["availability"] = [
            {
                "topic": topics.device(dev.key, Kind.STATUS),
                # A status without "state" (a command's ack) leaves availability as it was.
                "value_template": "{{ value_json.get('state', '') }}",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ]
    return cfg


def entity_config(
    dev: Device, topics: Topics, record_type: str, unit: str, hub_url: str | None = None
) -> dict[str, Any]:
    cfg = _common(dev, topics, record_type, pretty(record_type), hub_url)
    cfg["state_topic"] = topics.sensor_state(dev.key, record_type)
    if record_type in BINARY_CLASSES:
        cfg["device_class"] = BINARY_CLASSES[record_type]
        return cfg
    ha_unit = HA_UNITS.get(unit, unit)
    if ha_unit:
        cfg["unit_of_measurement"] = ha_unit
    if record_type in SENSOR_CLASSES:
        cfg["device_class"] = SENSOR_CLASSES[record_type]
    cfg["state_class"] = "measurement"
    if record_type in DIAGNOSTIC:
        cfg["entity_category"] = "diagnostic"
    return cfg


def button_config(
    dev: Device, topics: Topics, button: Button, hub_url: str | None = None
) -> dict[str, Any]:
    cfg = _common(dev, topics, button.object_id, button.name, hub_url)
    cfg["command_topic"] = topics.device(dev.key, Kind.CMD)
    cfg["payload_press"] = json.dumps(button.command, separators=(",", ":"))
    if button.device_class:
        cfg["device_class"] = button.device_class
    return cfg


def buttons(dev: Device) -> tuple[Button, ...]:
    """Commands only a connected firmware takes: none for legacy senders without status."""
    if not dev.has_status:
        return ()
    if any(t == PUMP_TYPE for t, _ in dev.types):
        return ALL_BUTTONS
    return (REBOOT,)


def configs(
    dev: Device, topics: Topics, ha_prefix: str, hub_url: str | None = None
) -> dict[str, bytes]:
    """Every discovery topic of the device and its retained config payload."""
    node = node_id(dev.key)
    out: dict[str, bytes] = {}
    for record_type, unit in dev.types:
        topic = ha_discovery(ha_prefix, component(record_type), node, record_type)
        out[topic] = _encode(entity_config(dev, topics, record_type, unit, hub_url))
    for b in buttons(dev):
        out[ha_discovery(ha_prefix, "button", node, b.object_id)] = _encode(
            button_config(dev, topics, b, hub_url)
        )
    return out


def removal_topics(key: str, types: Iterable[str], topics: Topics, ha_prefix: str) -> list[str]:
    """Every retained topic an entity of the device may hold: configs (all buttons, whether
    announced or not) and state. An empty retained payload on each removes them."""
    node = node_id(key)
    out = []
    for t in types:
        out.append(ha_discovery(ha_prefix, component(t), node, t))
        out.append(topics.sensor_state(key, t))
    out += [ha_discovery(ha_prefix, "button", node, b.object_id) for b in ALL_BUTTONS]
    return out


def _encode(cfg: dict[str, Any]) -> bytes:
    return json.dumps(cfg, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
