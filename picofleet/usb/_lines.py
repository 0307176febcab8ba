"""What the gateway makes of one line from a USB Pico.

    {"id":..,"seq":..,"fw":..,"readings":[..]}   pico_usb firmware   -> telemetry envelope
    22.5,41.0,37.2                               older firmware CSV  -> telemetry envelope
                                                 (temperature_c, humidity_pct,
                                                  soil_moisture_pct; an empty field is
                                                  a sensor that did not answer)
    {"hello":1,"id":..,"fw":..,"sensors":[..]}   reply to `hello`    -> who the board is
    blank                                                            -> skipped
    anything else (REPL noise, a traceback, line noise, bad JSON)    -> published raw, so the
                                                 hub stores it and records why it was refused

Readings are passed on as the board sent them: the hub, not the gateway, decides what is a
valid reading, so a bad value is explained in the error ledger instead of vanishing here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

CSV_TYPES = ("temperature_c", "humidity_pct", "soil_moisture_pct")
MAX_LINE = 4096  # bytes; a longer line is cut there and goes out raw


class LineKind(StrEnum):
    READINGS = "readings"
    HELLO = "hello"
    RAW = "raw"
    SKIP = "skip"


@dataclass(slots=True)
class Line:
    kind: LineKind
    raw: bytes
    readings: list[Any] = field(default_factory=list)
    device_id: str | None = None
    device_seq: int | None = None
    fw: str | None = None

    def envelope(self, *, seq: int, ts: float, key: str) -> bytes:
        """The telemetry envelope of a readings line, published for device ``key``."""
        body: dict[str, Any] = {"v": 1, "seq": seq, "ts": ts, "readings": self.readings}
        if self.device_id is not None and self.device_id != key:
            body["device"] = self.device_id  # the hub refuses it as device_mismatch
        if self.device_seq is not None:
            body["board_seq"] = self.device_seq
        if self.fw is not None:
            body["fw"] = self.fw
        return json.dumps(body, separators=(",", ":")).encode()


def _csv(text: str) -> list[dict[str, Any]] | None:
    parts = text.split(",")
    if len(parts) != len(CSV_TYPES):
        return None
    readings = []
    for name, part in zip(CSV_TYPES, parts, strict=True):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            return None
        if not math.isfinite(value):
            return None
        readings.append({"type": name, "value": value})
    return readings or None


def parse_line(raw: bytes) -> Line:
    text_bytes = raw.strip()
    if not text_bytes:
        return Line(LineKind.SKIP, raw)
    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return Line(LineKind.RAW, raw)
    if text.startswith("{"):
        try:
            body = json.loads(text)
        except ValueError:
            return Line(LineKind.RAW, raw)
        if not isinstance(body, dict):
            return Line(LineKind.RAW, raw)
        dev = body.get("id")
        dev = dev if isinstance(dev, str) else None
        fw = body.get("fw") if isinstance(body.get("fw"), str) else None
        if body.get("hello") and dev is not None:
            return Line(LineKind.HELLO, raw, device_id=dev, fw=fw)
        readings = body.get("readings")
        if isinstance(readings, list) and readings:
            seq = body.get("seq")
            return Line(
                LineKind.READINGS,
                raw,
                readings=readings,
                device_id=dev,
                device_seq=seq if type(seq) is int else None,
                fw=fw,
            )
        return Line(LineKind.RAW, raw)
    readings = _csv(text)
    if readings is not None:
        return Line(LineKind.READINGS, raw, readings=readings)
    return Line(LineKind.RAW, raw)


class LineSplitter:
    """Bytes in, complete lines out; a line past MAX_LINE is cut and the rest dropped."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False
        self.cut = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        for piece in _pieces(data):
            yield from self._one(piece)

    def _one(self, piece: tuple[bytes, bool]) -> Iterator[bytes]:
        part, ends = piece
        if self._skipping:
            if ends:
                self._skipping = False
            return
        room = self.max_line - len(self._buf)
        if len(part) > room:
            self._buf += part[:room]
            self.cut += 1
            yield bytes(self._buf)
            self._buf.clear()
            self._skipping = not ends
            return
        self._buf += part
        if ends:
            yield bytes(self._buf)
            self._buf.clear()


def _pieces(data: bytes) -> list[tuple[bytes, bool]]:
    parts = data.split(b"\n")
    return [(p, True) for p in parts[:-1]] + ([(parts[-1], False)] if parts[-1] else [])
