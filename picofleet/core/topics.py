"""The MQTT contract: every topic the fleet uses is built and parsed here, nowhere else.

{prefix}/devices/{dev}/telemetry      device -> hub   QoS 1
{prefix}/devices/{dev}/startup        device -> hub   QoS 1
{prefix}/devices/{dev}/status         device -> hub   QoS 1 retained (last will)
{prefix}/devices/{dev}/ota/status     device -> hub   QoS 1
{prefix}/devices/{dev}/cmd            hub -> device   QoS 1
{prefix}/devices/{dev}/ota            hub -> device   QoS 1 retained
{prefix}/ota/{device_type}/{channel}  hub -> devices  QoS 1 retained
{prefix}/ingest                       legacy flat events carrying device_id
{prefix}/ingest/errors                hub -> engineers QoS 0
{prefix}/hub/status                   hub, retained (last will)
{prefix}/alerts/{kind}                hub -> operators
{prefix}/state/{dev}/{type}           hub -> Home Assistant, retained: a sensor's latest value
{ha_prefix}/{component}/{node}/{object}/config   hub -> Home Assistant, retained discovery
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

DEVICE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Usernames the broker gives to non-device roles; no device may take them as its key.
RESERVED_KEYS = frozenset({"hub", "operator"})


class Kind(StrEnum):
    TELEMETRY = "telemetry"
    STARTUP = "startup"
    STATUS = "status"
    OTA_STATUS = "ota/status"
    CMD = "cmd"
    OTA = "ota"
    INGEST = "ingest"


# Topics the bridge consumes (device -> hub), in subscription order.
INBOUND_KINDS = (Kind.TELEMETRY, Kind.STARTUP, Kind.STATUS, Kind.OTA_STATUS)


def valid_device_key(key: str) -> bool:
    return bool(DEVICE_KEY_RE.match(key)) and key not in RESERVED_KEYS


@dataclass(frozen=True, slots=True)
class Parsed:
    kind: Kind
    device_key: str | None


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic builder and parser for one prefix."""

    prefix: str = "picofleet"

    def device(self, key: str, kind: Kind) -> str:
        return f"{self.prefix}/devices/{key}/{kind.value}"

    def device_root(self, key: str) -> str:
        return f"{self.prefix}/devices/{key}/"

    def ota_channel(self, device_type: str, channel: str) -> str:
        return f"{self.prefix}/ota/{device_type}/{channel}"

    @property
    def ota_root(self) -> str:
        return f"{self.prefix}/ota/"

    @property
    def ingest(self) -> str:
        return f"{self.prefix}/ingest"

    @property
    def ingest_errors(self) -> str:
        return f"{self.prefix}/ingest/errors"

    @property
    def hub_status(self) -> str:
        return f"{self.prefix}/hub/status"

    def alert(self, kind: str) -> str:
        return f"{self.prefix}/alerts/{kind}"

    def sensor_state(self, key: str, record_type: str) -> str:
        """The latest committed value of one device's record type, republished by the hub
        (outside the device's own namespace, so no device can write it)."""
        return f"{self.prefix}/state/{key}/{record_type}"

    def inbound_filters(self) -> list[str]:
        """Subscription filters of the bridge: every device->hub topic plus legacy ingest."""
        filters = [f"{self.prefix}/devices/+/{k.value}" for k in INBOUND_KINDS]
        filters.append(self.ingest)
        return filters

    def parse(self, topic: str) -> Parsed | None:
        """Kind and device key of an inbound topic; None for topics outside the contract."""
        if topic == self.ingest:
            return Parsed(Kind.INGEST, None)
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            return None
        key, _, rest = topic[len(head) :].partition("/")
        if not key or not rest:
            return None
        try:
            kind = Kind(rest)
        except ValueError:
            return None
        return Parsed(kind, key)


def ha_discovery(ha_prefix: str, component: str, node_id: str, object_id: str) -> str:
    """Home Assistant's discovery topic: <prefix>/<component>/<node_id>/<object_id>/config."""
    return f"{ha_prefix}/{component}/{node_id}/{object_id}/config"
