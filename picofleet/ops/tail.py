"""``picofleet tail``: the fleet's topics as one decoded line per message.

    14:02:07 AI-ABCDE1 telemetry  soil_moisture_pct=41.2 pump_on=0  seq=812
    14:02:09 3         ingest     battery_charge=55.2
    14:02:09 7         error      invalid_json: Expecting value (raw 1042)

PATTERN is an MQTT filter (anything with ``/``, ``+`` or ``#``) or a device key (its whole
subtree). ``--errors`` follows ``{prefix}/ingest/errors`` only, optionally for one device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from picofleet.core.topics import Kind, Topics, valid_device_key

STYLES = {
    "telemetry": "green",
    "ingest": "green",
    "status": "cyan",
    "startup": "magenta",
    "ota/status": "yellow",
    "ota": "yellow",
    "cmd": "blue",
    "error": "bold red",
    "hub": "cyan",
}


class PatternError(ValueError):
    """PATTERN is neither a topic filter nor a device key."""


@dataclass(frozen=True, slots=True)
class Selection:
    filters: list[str]
    device: str | None = None  # with --errors: only this device's rejections


def select(topics: Topics, pattern: str | None, *, errors: bool) -> Selection:
    """The subscriptions for PATTERN (and --errors)."""
    is_filter = pattern is not None and any(c in pattern for c in "/+#")
    if pattern is not None and not is_filter and not valid_device_key(pattern):
        raise PatternError(f"{pattern!r} is neither an MQTT topic filter nor a device key")
    if errors:
        if is_filter:
            raise PatternError("with --errors, PATTERN must be a device key")
        return Selection([topics.ingest_errors], device=pattern)
    if pattern is None:
        return Selection([f"{topics.prefix}/#"])
    if is_filter:
        return Selection([pattern])
    return Selection([topics.device_root(pattern) + "#"])


@dataclass(frozen=True, slots=True)
class Line:
    time: str
    device: str
    kind: str
    text: str
    retained: bool = False

    @property
    def style(self) -> str:
        return STYLES.get(self.kind, "white")

    def plain(self, device_width: int = 16) -> str:
        flag = " (retained)" if self.retained else ""
        return f"{self.time} {self.device:<{device_width}} {self.kind:<10} {self.text}{flag}"


def _compact(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def _readings(body: dict[str, Any]) -> str:
    parts = []
    for r in body.get("readings") or []:
        if isinstance(r, dict):
            parts.append(f"{r.get('type')}={r.get('value')}")
    extra = f"  seq={body['seq']}" if "seq" in body else ""
    return " ".join(parts) + extra if parts else _compact(body)


def _summary(kind: str, body: Any) -> str:
    if not isinstance(body, dict):
        return _compact(body)
    if kind == "error":
        where = f"raw {body.get('raw_id')} on {body.get('topic', '?')}"
        return f"{body.get('code')}: {body.get('detail')} ({where})"
    if kind in ("telemetry", "ingest") and "readings" in body:
        return _readings(body)
    if "event_type" in body and "value" in body:
        return f"{body['event_type']}={body['value']}"
    if kind == "ota/status":
        reason = f" {body['reason']}" if body.get("reason") else ""
        return f"{body.get('version')} {body.get('state')}{reason} seq={body.get('seq')}"
    return _compact(body)


def describe(topics: Topics, topic: str, payload: bytes, *, retained: bool = False) -> Line:
    """Decode one message into a line: device, kind, readable payload."""
    now = datetime.now().strftime("%H:%M:%S")
    try:
        text = payload.decode("utf-8")
        body: Any = json.loads(text) if text else None
    except UnicodeDecodeError:
        body, text = None, f"<{len(payload)} bytes: {payload[:24].hex()}...>"
    except ValueError:
        body = None
    device, kind = "-", topic
    if topic == topics.ingest_errors:
        kind = "error"
        if isinstance(body, dict) and body.get("device"):
            device = str(body["device"])
    elif topic == topics.hub_status:
        kind, device = "hub", "hub"
    else:
        parsed = topics.parse(topic)
        if parsed is not None:
            kind = parsed.kind.value
            device = parsed.device_key or "-"
            if parsed.kind is Kind.INGEST and isinstance(body, dict) and "device_id" in body:
                device = str(body["device_id"])
        elif topic.startswith(topics.prefix + "/devices/"):
            rest = topic[len(topics.prefix) + len("/devices/") :]
            device, _, kind = rest.partition("/")
        elif topic.startswith(topics.ota_root):
            kind, device = "ota", topic[len(topics.ota_root) :]
    if body is None:
        summary = text if text else "(empty)"
    else:
        summary = _summary(kind, body)
    return Line(now, device, kind, summary, retained)
