"""Decode one inbound message into facts, a startup claim, a status, or coded rejections.

Pure and synchronous: no I/O, no clock reads beyond the ``now`` it is given, so every rule
here is testable without a database. The writer turns a list of ``Message`` into one
transaction. Nothing raised here escapes: any input gives a ``Message``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from picofleet.core.codes import Code
from picofleet.core.credentials import FleetKeys
from picofleet.core.topics import Kind, Parsed, Topics, valid_device_key

MIN_EPOCH = 946_684_800.0  # 2000-01-01: anything earlier is an unset device clock
LEGACY_ID_LIMIT = 1_000_000
STARTUP_EVENT = "device_startup"  # numeric keys below this keep their number as device.id
# Topics whose parse is remembered: a fleet has a handful per device, so this holds the
# topics of some 10,000 boards; past it the memory starts afresh (bounded, never stale:
# a topic's parse never changes).
TOPIC_CACHE_MAX = 65536


@dataclass(frozen=True, slots=True)
class RecordType:
    id: int
    name: str
    min_value: float | None
    max_value: float | None


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int = 256 * 1024
    stored_payload_bytes: int = 64 * 1024
    max_items: int = 1000
    token_window_s: int = 300
    max_clock_drift_s: int = 3600
    legacy_token_enabled: bool = True


@dataclass(frozen=True, slots=True)
class Fact:
    idx: int
    device_key: str
    type_id: int
    time: float
    value: float
    seq: int | None
    # No device time: ``time`` is the receive time; the ledger stores the time of the first
    # copy of the same bytes instead (see ``Message.digest``, ``Stored.times``).
    untimed: bool = False


@dataclass(frozen=True, slots=True)
class Rejection:
    idx: int
    code: Code
    detail: str


@dataclass(frozen=True, slots=True)
class Startup:
    serial: str
    firmware: str | None
    device_type: str | None
    issued_at: float
    nonce: str | None


@dataclass(frozen=True, slots=True)
class Message:
    """One inbound message as decoded: what it says and what is wrong with it. Immutable:
    what the ledger learns while storing it (ids, its own refusals) is a ``Stored`` beside
    it (picofleet/bridge/ledger.py), so the same message can be written again after an
    outage."""

    topic: str
    source: str
    received_at: float
    payload: bytes
    payload_size: int
    kind: Kind | None = None
    device_key: str | None = None
    body: str | None = None  # canonical JSON text for the jsonb column
    facts: tuple[Fact, ...] = ()
    errors: tuple[Rejection, ...] = ()
    startup: Startup | None = None
    status: dict[str, Any] | None = None
    # Who sent it, when the transport says so (the MQTT login on the embedded broker, HTTP
    # credentials on /ingest); None when anonymous or not known (Mosquitto's subscribers).
    sender: str | None = None
    # sha256 of topic and exact payload, set when a fact has no device time: the identity of
    # a message that carries neither time nor seq.
    digest: bytes | None = None

    def refused(self, code: Code, detail: str) -> Message:
        """The same raw record with nothing else kept: no body, facts, startup or status;
        one coded error."""
        return replace(
            self,
            body=None,
            facts=(),
            errors=(Rejection(0, code, detail),),
            startup=None,
            status=None,
        )


@dataclass(slots=True)
class _Draft:
    """The decoder's working copy of a Message: the same fields, lists where it has tuples."""

    topic: str
    source: str
    received_at: float
    payload: bytes
    payload_size: int
    sender: str | None
    kind: Kind | None = None
    device_key: str | None = None
    body: str | None = None
    facts: list[Fact] = field(default_factory=list)
    errors: list[Rejection] = field(default_factory=list)
    startup: Startup | None = None
    status: dict[str, Any] | None = None
    digest: bytes | None = None

    def reject(self, code: Code, detail: str, idx: int = 0) -> None:
        self.errors.append(Rejection(idx, code, detail))

    def done(self) -> Message:
        values = {f.name: getattr(self, f.name) for f in fields(Message)}
        values["facts"], values["errors"] = tuple(self.facts), tuple(self.errors)
        return Message(**values)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):  # 1e400: jsonb would refuse the text, so refuse it here
        raise ValueError(f"number {literal[:20]} is out of range")
    return value


_JSON = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def parse_json(raw: bytes) -> tuple[Any, str]:
    """Parsed value and canonical text that PostgreSQL's jsonb accepts, or ValueError."""
    try:
        text = raw.decode("utf-8")
        value = _JSON.decode(text)
        if "\\u" not in text:
            # No escapes: the text is valid UTF-8 JSON without NUL or lone surrogates, which
            # is exactly what jsonb accepts, so it is stored as sent (the hot path).
            return value, text
        canonical = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        canonical.encode("utf-8")  # lone surrogates from \ud800 escapes fail here
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except (UnicodeError, ValueError) as exc:
        raise ValueError(str(exc)[:200]) from None
    if "\\u0000" in canonical or "\x00" in canonical:
        raise ValueError("NUL characters are not allowed in JSON text")
    return value, canonical


def _is_number(v: Any) -> bool:
    if type(v) is int:
        return -(2**53) <= v <= 2**53  # exactly representable as a float8 fact
    return type(v) is float and math.isfinite(v)


def legacy_id(key: str) -> int | None:
    """device.id for a numeric legacy key, else None (the id comes from the sequence)."""
    if key.isdigit() and len(key) <= 7:
        n = int(key)
        if 0 < n < LEGACY_ID_LIMIT:
            return n
    return None


class Decoder:
    """Stateless apart from its configuration and the record-type table it validates against."""

    def __init__(
        self,
        *,
        topics: Topics,
        keys: FleetKeys,
        record_types: dict[str, RecordType],
        limits: Limits,
    ) -> None:
        self.topics = topics
        self.keys = keys
        self.record_types = record_types
        self.limits = limits
        self._routes: dict[str, tuple[Parsed | None, bool]] = {}

    def _route(self, topic: str) -> tuple[Parsed | None, bool]:
        """A topic's kind and device key, and whether that key is valid; remembered, since
        parsing every message's topic afresh was a tenth of the bridge's decode time."""
        hit = self._routes.get(topic)
        if hit is None:
            parsed = self.topics.parse(topic)
            key = parsed.device_key if parsed is not None else None
            hit = (parsed, key is None or valid_device_key(key))
            if len(self._routes) >= TOPIC_CACHE_MAX:
                self._routes.clear()
            self._routes[topic] = hit
        return hit

    # -- entry points ----------------------------------------------------------------------
    def decode(
        self,
        topic: str,
        payload: bytes,
        *,
        received_at: float,
        source: str = "mqtt",
        sender: str | None = None,
    ) -> Message:
        size = len(payload)
        msg = _Draft(
            topic=topic,
            source=source,
            received_at=received_at,
            payload=payload[: self.limits.stored_payload_bytes],
            payload_size=size,
            sender=sender,
        )
        try:
            self._decode(msg, payload)
        except Exception as exc:
            msg.facts.clear()
            msg.reject(Code.VALIDATION_ERROR, f"internal decoder error: {type(exc).__name__}")
        return msg.done()

    def decode_value(
        self,
        topic: str,
        value: Any,
        *,
        received_at: float,
        source: str,
        sender: str | None = None,
    ) -> Message:
        """Decode an already-parsed JSON value (one item of an HTTP array)."""
        try:
            raw = json.dumps(
                value, ensure_ascii=False, allow_nan=False, separators=(",", ":")
            ).encode()
        except (TypeError, ValueError, RecursionError):  # NaN, lone surrogates: not JSON
            raw = repr(value)[:1024].encode("utf-8", "backslashreplace")  # -> invalid_json
        return self.decode(topic, raw, received_at=received_at, source=source, sender=sender)

    # -- internals ---------------------------------------------------------------------------
    def _decode(self, msg: _Draft, payload: bytes) -> None:
        parsed, key_ok = self._route(msg.topic)
        if parsed is None:
            msg.reject(Code.UNKNOWN_TOPIC, f"topic {msg.topic!r} is not part of the contract")
            return
        msg.kind = parsed.kind
        if parsed.device_key is not None:
            if not key_ok:
                msg.reject(Code.INVALID_DEVICE_KEY, "device key in topic is not a valid key")
                return
            msg.device_key = parsed.device_key
        if msg.payload_size > self.limits.max_payload_bytes:
            msg.reject(
                Code.PAYLOAD_TOO_LARGE,
                f"{msg.payload_size} bytes exceeds the limit of {self.limits.max_payload_bytes}",
            )
            return
        try:
            body, msg.body = parse_json(payload)
        except ValueError as exc:
            msg.reject(Code.INVALID_JSON, str(exc))
            return
        if parsed.kind in (Kind.TELEMETRY, Kind.INGEST):
            self._telemetry(msg, body)
            self._drop_repeats(msg)
            if any(f.untimed for f in msg.facts):
                msg.digest = hashlib.sha256(msg.topic.encode() + b"\0" + payload).digest()
        elif parsed.kind is Kind.STARTUP:
            self._startup(msg, body)
        elif parsed.kind in (Kind.STATUS, Kind.OTA_STATUS):
            if not isinstance(body, dict):
                msg.reject(Code.VALIDATION_ERROR, "status must be a JSON object")
            else:
                msg.status = body
        else:
            msg.reject(Code.UNKNOWN_TOPIC, f"{parsed.kind.value} is not an inbound topic")

    def _telemetry(self, msg: _Draft, body: Any) -> None:
        if (
            msg.kind is Kind.INGEST
            and isinstance(body, dict)
            and (body.get("event_type") == STARTUP_EVENT)
        ):
            self._startup(msg, body)  # the older HTTP senders post startups to /ingest
            return
        if isinstance(body, dict) and "readings" in body:
            self._envelope(msg, body)
            return
        items = body if isinstance(body, list) else [body]
        if len(items) > self.limits.max_items:
            msg.reject(Code.TOO_MANY_ITEMS, f"{len(items)} items exceeds {self.limits.max_items}")
            return
        if not items:
            msg.reject(Code.VALIDATION_ERROR, "empty array")
            return
        for idx, item in enumerate(items):
            self._flat_event(msg, item, idx)
        # A message on a device's topic carries one device; remember it for the raw ledger.
        if msg.device_key is None and msg.facts:
            msg.device_key = msg.facts[0].device_key

    @staticmethod
    def _drop_repeats(msg: _Draft) -> None:
        """Equal items (device, type, time, value) in one message without a seq are one fact:
        the later ones are coded, not silently lost to the event key."""
        first: dict[tuple[str, int, float, float], int] = {}
        kept = []
        for f in msg.facts:
            if f.seq is not None:  # a seq and index identify each reading on their own
                kept.append(f)
                continue
            at = first.setdefault((f.device_key, f.type_id, f.time, f.value), f.idx)
            if at == f.idx:
                kept.append(f)
            else:
                msg.reject(Code.DUPLICATE_ITEM, f"same reading as item {at}", f.idx)
        msg.facts = kept

    def _legacy_only(self, msg: _Draft, key: str, idx: int) -> bool:
        """The shared ingest topic and POST /ingest carry legacy numeric devices only: a
        firmware (serial) device is written only on its own topic."""
        if msg.kind is not Kind.INGEST or key.isdigit():
            return True
        msg.reject(
            Code.SENDER_NOT_AUTHORIZED,
            f"device {key!r} is written only on its own topic, not on the shared ingest",
            idx,
        )
        return False

    def _timestamp(self, value: Any, msg: _Draft, idx: int) -> float | None:
        if value is None:
            return msg.received_at
        if not _is_number(value):
            msg.reject(Code.INVALID_TIMESTAMP, "timestamp must be a number of epoch seconds", idx)
            return None
        if value < MIN_EPOCH or value > msg.received_at + self.limits.max_clock_drift_s:
            msg.reject(
                Code.INVALID_TIMESTAMP, f"timestamp {value} is out of the accepted window", idx
            )
            return None
        return float(value)

    def _check_value(self, msg: _Draft, name: Any, value: Any, idx: int) -> RecordType | None:
        if not isinstance(name, str) or not name:
            msg.reject(Code.VALIDATION_ERROR, "event_type must be a non-empty string", idx)
            return None
        rt = self.record_types.get(name)
        if rt is None:
            msg.reject(Code.UNKNOWN_EVENT_TYPE, f"unknown event type {name[:64]!r}", idx)
            return None
        if not _is_number(value):
            msg.reject(
                Code.VALIDATION_ERROR,
                f"value must be a finite number, got {type(value).__name__}",
                idx,
            )
            return None
        if (rt.min_value is not None and value < rt.min_value) or (
            rt.max_value is not None and value > rt.max_value
        ):
            msg.reject(
                Code.OUT_OF_RANGE,
                f"{name} value {value} outside {rt.min_value}..{rt.max_value}",
                idx,
            )
            return None
        return rt

    def _flat_event(self, msg: _Draft, item: Any, idx: int) -> None:
        if not isinstance(item, dict):
            msg.reject(Code.VALIDATION_ERROR, "event must be a JSON object", idx)
            return
        missing = [k for k in ("device_id", "event_type", "value") if k not in item]
        if missing and not (msg.device_key and missing == ["device_id"]):
            msg.reject(Code.VALIDATION_ERROR, f"missing field(s): {', '.join(missing)}", idx)
            return
        raw_id = item.get("device_id")
        if raw_id is None:
            key = msg.device_key
        elif type(raw_id) is int or type(raw_id) is str:
            key = str(raw_id)
        else:
            msg.reject(Code.VALIDATION_ERROR, "device_id must be an integer or a string", idx)
            return
        if key is None or not valid_device_key(key):
            msg.reject(Code.INVALID_DEVICE_KEY, "device_id is not a valid device key", idx)
            return
        if msg.device_key is not None and key != msg.device_key:
            msg.reject(
                Code.DEVICE_MISMATCH,
                f"payload device {key!r} published on topic of {msg.device_key!r}",
                idx,
            )
            return
        if not self._legacy_only(msg, key, idx):
            return
        rt = self._check_value(msg, item.get("event_type"), item.get("value"), idx)
        if rt is None:
            return
        ts = self._timestamp(item.get("timestamp"), msg, idx)
        if ts is None:
            return
        untimed = item.get("timestamp") is None
        msg.facts.append(Fact(idx, key, rt.id, ts, float(item["value"]), None, untimed))

    def _envelope(self, msg: _Draft, body: dict[str, Any]) -> None:
        if msg.device_key is None:
            dev = body.get("device")
            if not isinstance(dev, str) or not valid_device_key(dev):
                msg.reject(Code.VALIDATION_ERROR, "an envelope on ingest needs a device key")
                return
            msg.device_key = dev
            if not self._legacy_only(msg, dev, 0):
                return
        elif "device" in body and body["device"] != msg.device_key:
            msg.reject(Code.DEVICE_MISMATCH, "envelope device differs from the topic's device")
            return
        if body.get("v") != 1:
            msg.reject(Code.VALIDATION_ERROR, "unsupported envelope version (expected v=1)")
            return
        seq = body.get("seq")
        if seq is not None and (type(seq) is not int or not 0 <= seq < 2**62):
            msg.reject(Code.VALIDATION_ERROR, "seq must be a non-negative integer")
            return
        readings = body["readings"]
        if not isinstance(readings, list) or not readings:
            msg.reject(Code.VALIDATION_ERROR, "readings must be a non-empty array")
            return
        if len(readings) > self.limits.max_items:
            msg.reject(
                Code.TOO_MANY_ITEMS, f"{len(readings)} readings exceeds {self.limits.max_items}"
            )
            return
        ts = self._timestamp(body.get("ts"), msg, 0)
        if ts is None:
            return
        for idx, r in enumerate(readings):
            if not isinstance(r, dict):
                msg.reject(Code.VALIDATION_ERROR, "reading must be a JSON object", idx)
                continue
            rt = self._check_value(msg, r.get("type"), r.get("value"), idx)
            if rt is None:
                continue
            rts, untimed = ts, body.get("ts") is None
            if "ts" in r:
                got = self._timestamp(r["ts"], msg, idx)
                if got is None:
                    continue
                rts, untimed = got, r["ts"] is None
            value = float(r["value"])
            msg.facts.append(Fact(idx, msg.device_key, rt.id, rts, value, seq, untimed))

    def _startup(self, msg: _Draft, body: Any) -> None:
        if not isinstance(body, dict):
            msg.reject(Code.VALIDATION_ERROR, "startup must be a JSON object")
            return
        serial, token = body.get("serial"), body.get("provision_token")
        if not isinstance(serial, str) or not valid_device_key(serial):
            msg.reject(Code.VALIDATION_ERROR, "serial must be a valid device key")
            return
        if msg.device_key is not None and serial != msg.device_key:
            msg.reject(Code.DEVICE_MISMATCH, f"startup serial {serial!r} on another's topic")
            return
        msg.device_key = serial
        if not isinstance(token, str) or not token:
            msg.reject(Code.STARTUP_AUTH_ERROR, "provision_token missing")
            return
        ts, nonce = body.get("timestamp"), body.get("nonce")
        firmware = body.get("firmware") if isinstance(body.get("firmware"), str) else None
        dtype = body.get("device_type") if isinstance(body.get("device_type"), str) else None
        if nonce is None:
            if not self.limits.legacy_token_enabled:
                msg.reject(Code.STARTUP_AUTH_ERROR, "legacy serial-only token is switched off")
                return
            if not self.keys.check_legacy_token(serial, token):
                msg.reject(Code.STARTUP_AUTH_ERROR, "provision_token does not match")
                return
            msg.startup = Startup(serial, firmware, dtype, msg.received_at, None)
            return
        if type(ts) is not int or not isinstance(nonce, str) or not 8 <= len(nonce) <= 64:
            msg.reject(
                Code.STARTUP_AUTH_ERROR,
                "current token needs an integer timestamp and a nonce of 8..64 characters",
            )
            return
        if not self.keys.check_startup_token(serial, ts, nonce, token):
            msg.reject(Code.STARTUP_AUTH_ERROR, "provision_token does not match")
            return
        # The device may declare how far it knows its clock to be off (no NTP yet).
        drift = body.get("clock_drift_s", 0)
        drift = min(abs(drift), self.limits.max_clock_drift_s) if _is_number(drift) else 0
        if abs(ts - msg.received_at) > self.limits.token_window_s + drift:
            msg.reject(Code.STARTUP_AUTH_ERROR, "token timestamp outside the accepted window")
            return
        msg.startup = Startup(serial, firmware, dtype, float(ts), nonce)
