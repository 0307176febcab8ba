"""A mixed stream of legacy, new-firmware and malformed messages, with its expected outcome
computed independently of the hub (plain Python over the generated events)."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from picofleet.core.credentials import FleetKeys
from picofleet.core.topics import Kind, Topics

LEGACY = ["3", "4", "5"]
NEW = ["AI-00001", "AI-00002"]
BASE_TS = 1_763_000_000.0


@dataclass
class Expected:
    raw: int = 0
    facts: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    extension: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    battery: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    height: dict[str, list[float]] = field(default_factory=dict)

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def avg_extension(self) -> dict[str, float]:
        return {d: round(mean(v for _, v in vals), 3) for d, vals in self.extension.items()}

    def ext_vs_ret(self) -> dict[str, tuple[int, int]]:
        out = {}
        for d, vals in self.extension.items():
            seq = [v for _, v in sorted(vals)]
            ups = sum(1 for a, b in itertools.pairwise(seq) if b > a)
            downs = sum(1 for a, b in itertools.pairwise(seq) if b < a)
            out[d] = (ups, downs)
        return out


def build(
    keys: FleetKeys, topics: Topics, seed: int = 7
) -> tuple[list[tuple[str, str, bytes]], Expected]:
    """Messages as (publisher key, topic, payload) and what must come of them."""
    rng = random.Random(seed)
    exp = Expected()
    out: list[tuple[str, str, bytes]] = []
    ts = BASE_TS

    def send(pub: str, topic: str, body: Any, raw: bytes | None = None) -> None:
        out.append((pub, topic, raw if raw is not None else json.dumps(body).encode()))
        exp.raw += 1

    valid: list[tuple[str, str, bytes]] = []
    for i in range(60):
        ts += 1
        dev = LEGACY[i % 3]
        kind = i % 3
        if kind == 0:
            ticks = rng.randrange(0, 3001)
            body = {
                "device_id": int(dev),
                "event_type": "platform_extension_ticks",
                "value": ticks,
                "timestamp": ts,
            }
            exp.extension.setdefault(dev, []).append((ts, round(ticks / 20.0, 3)))
        elif kind == 1:
            pct = round(rng.uniform(0, 100), 1)
            body = {
                "device_id": int(dev),
                "event_type": "battery_charge",
                "value": pct,
                "timestamp": ts,
            }
            exp.battery.setdefault(dev, []).append((ts, pct))
        else:
            h = round(rng.uniform(0, 200), 2)
            body = {
                "device_id": int(dev),
                "event_type": "platform_height_mm",
                "value": h,
                "timestamp": ts,
            }
            exp.height.setdefault(dev, []).append(h)
        send(dev, topics.ingest, body)
        valid.append(out[-1])
        exp.facts += 1
    for i in range(40):
        ts += 1
        dev = NEW[i % 2]
        mm = round(rng.uniform(-150, 150), 2)
        body = {
            "device_id": dev,
            "event_type": "platform_extension_mm",
            "value": mm,
            "timestamp": ts,
        }
        exp.extension.setdefault(dev, []).append((ts, mm))
        send(dev, topics.device(dev, Kind.TELEMETRY), body)
        valid.append(out[-1])
        exp.facts += 1
    for n, dev in enumerate(NEW):
        env = {
            "v": 1,
            "seq": 100 + n,
            "ts": ts,
            "readings": [
                {"type": "battery_charge", "value": 50 + n},
                {"type": "platform_height_mm", "value": 10 + n},
            ],
        }
        exp.battery.setdefault(dev, []).append((ts, 50 + n))
        exp.height.setdefault(dev, []).append(10 + n)
        send(dev, topics.device(dev, Kind.TELEMETRY), env)
        valid.append(out[-1])
        exp.facts += 2
    # Malformed shapes the legacy generator emits, and worse.
    bad: list[tuple[str, str, Any, bytes | None, str]] = [
        ("3", topics.ingest, {}, None, "validation_error"),
        ("3", topics.ingest, {"device_id": 3}, None, "validation_error"),
        (
            "4",
            topics.ingest,
            {"device_id": 4, "event_type": "battery_charge", "value": "high"},
            None,
            "validation_error",
        ),
        (
            "4",
            topics.ingest,
            {"device_id": 4, "event_type": "battery_charge", "value": 140},
            None,
            "out_of_range",
        ),
        (
            "5",
            topics.ingest,
            {"device_id": 5, "event_type": "warp", "value": 1},
            None,
            "unknown_event_type",
        ),
        ("5", topics.ingest, None, b"{not json", "invalid_json"),
        (
            "AI-00001",
            topics.device("AI-00001", Kind.TELEMETRY),
            {"device_id": "AI-00002", "event_type": "battery_charge", "value": 5},
            None,
            "device_mismatch",
        ),
        (
            "AI-00002",
            topics.device("AI-00002", Kind.TELEMETRY),
            None,
            b"\xff\xfe\x00",
            "invalid_json",
        ),
    ]
    for pub, topic, body, raw, code in bad:
        send(pub, topic, body, raw)
        exp.error(code)
    # Redelivered / replayed valid messages: new raw rows, no new facts.
    for m in valid[:10]:
        out.append(m)
        exp.raw += 1
    return out, exp


def publishers(msgs: list[tuple[str, str, bytes]]) -> list[str]:
    return sorted({p for p, _, _ in msgs})
