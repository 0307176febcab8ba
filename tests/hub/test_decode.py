"""Decoder rules, pure: every malformed shape gets its code, valid shapes give facts."""

from __future__ import annotations

import json
import time

import pytest

from picofleet.bridge.decode import Decoder, Limits, RecordType, legacy_id
from picofleet.core.codes import Code
from picofleet.core.credentials import FleetKeys
from picofleet.core.topics import Kind, Topics
from tests.helpers import SECRET, startup_body

TYPES = {
    "platform_extension_ticks": RecordType(1, "platform_extension_ticks", 0, 3000),
    "platform_extension_mm": RecordType(2, "platform_extension_mm", -150, 150),
    "battery_charge": RecordType(3, "battery_charge", 0, 100),
    "platform_height_mm": RecordType(4, "platform_height_mm", 0, 200),
    "soil_moisture_pct": RecordType(5, "soil_moisture_pct", 0, 100),
}
T = Topics("picofleet")
KEYS = FleetKeys(SECRET.encode())
NOW = 1_763_900_000.0


def dec(**limits: object) -> Decoder:
    return Decoder(topics=T, keys=KEYS, record_types=TYPES, limits=Limits(**limits))  # type: ignore[arg-type]


def codes(topic: str, payload: bytes | str, **limits: object) -> list[str]:
    raw = payload.encode() if isinstance(payload, str) else payload
    return [e.code.value for e in dec(**limits).decode(topic, raw, received_at=NOW).errors]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("{}", Code.VALIDATION_ERROR),
        ('{"device_id": 3}', Code.VALIDATION_ERROR),
        (
            '{"device_id": 3, "event_type": "battery_charge", "value": "high"}',
            Code.VALIDATION_ERROR,
        ),
        ('{"device_id": 3, "event_type": "battery_charge", "value": true}', Code.VALIDATION_ERROR),
        ('{"device_id": 3, "event_type": "battery_charge", "value": 101}', Code.OUT_OF_RANGE),
        (
            '{"device_id": 3, "event_type": "platform_extension_mm", "value": -151}',
            Code.OUT_OF_RANGE,
        ),
        ('{"device_id": 3, "event_type": "warp_drive", "value": 1}', Code.UNKNOWN_EVENT_TYPE),
        ('{"device_id": 3.5, "event_type": "battery_charge", "value": 1}', Code.VALIDATION_ERROR),
        (
            '{"device_id": "a/b", "event_type": "battery_charge", "value": 1}',
            Code.INVALID_DEVICE_KEY,
        ),
        (
            '{"device_id": 3, "event_type": "battery_charge", "value": 1, "timestamp": 5}',
            Code.INVALID_TIMESTAMP,
        ),
        (
            '{"device_id": 3, "event_type": "battery_charge", "value": 1, "timestamp": 9e12}',
            Code.INVALID_TIMESTAMP,
        ),
        ('{"device_id": 3, "event_type": "battery_charge", "value": NaN}', Code.INVALID_JSON),
        ('{"device_id": 3, "event_type": "battery_charge", "value": Infinity}', Code.INVALID_JSON),
        ("not json", Code.INVALID_JSON),
        (b"\xff\xfe", Code.INVALID_JSON),
        ('{"a": "\\u0000"}', Code.INVALID_JSON),
        ('{"a": "\\ud800"}', Code.INVALID_JSON),
        ("[" * 100_000 + "]" * 100_000, Code.INVALID_JSON),
        ("[]", Code.VALIDATION_ERROR),
        ("42", Code.VALIDATION_ERROR),
    ],
)
def test_flat_event_rejections(payload: str | bytes, code: Code) -> None:
    assert codes(T.ingest, payload) == [code.value]


def test_valid_flat_events_and_array_with_bad_item() -> None:
    body = [
        {
            "device_id": 3,
            "event_type": "platform_extension_ticks",
            "value": 400,
            "timestamp": NOW - 10,
        },
        {"device_id": 3, "event_type": "battery_charge", "value": "high"},
        {"device_id": 3, "event_type": "platform_extension_mm", "value": -20.5},
    ]
    msg = dec().decode(T.ingest, json.dumps(body).encode(), received_at=NOW)
    assert [(f.idx, f.type_id, f.value, f.time) for f in msg.facts] == [
        (0, 1, 400.0, NOW - 10),
        (2, 2, -20.5, NOW),
    ]
    assert [(e.idx, e.code) for e in msg.errors] == [(1, Code.VALIDATION_ERROR)]
    assert msg.device_key == "3"


def test_payload_too_large_and_truncated_storage() -> None:
    payload = b'{"x":"' + b"a" * 5000 + b'"}'
    msg = dec(max_payload_bytes=1000, stored_payload_bytes=100).decode(
        T.ingest, payload, received_at=NOW
    )
    assert [e.code for e in msg.errors] == [Code.PAYLOAD_TOO_LARGE]
    assert msg.payload_size == len(payload) and len(msg.payload) == 100


def test_too_many_items() -> None:
    body = [{"device_id": 1, "event_type": "battery_charge", "value": 1}] * 11
    assert codes(T.ingest, json.dumps(body), max_items=10) == [Code.TOO_MANY_ITEMS.value]


def test_device_mismatch_on_device_topic() -> None:
    topic = T.device("AI-1", Kind.TELEMETRY)
    body = {"device_id": "AI-2", "event_type": "battery_charge", "value": 5}
    assert codes(topic, json.dumps(body)) == [Code.DEVICE_MISMATCH.value]
    env = {"v": 1, "device": "AI-2", "seq": 1, "readings": [{"type": "battery_charge", "value": 1}]}
    assert codes(topic, json.dumps(env)) == [Code.DEVICE_MISMATCH.value]


def test_envelope() -> None:
    topic = T.device("AI-1", Kind.TELEMETRY)
    env = {
        "v": 1,
        "seq": 812,
        "ts": NOW - 5,
        "readings": [{"type": "soil_moisture_pct", "value": 41.2}, {"type": "nope", "value": 0}],
    }
    msg = dec().decode(topic, json.dumps(env).encode(), received_at=NOW)
    assert [(f.device_key, f.value, f.seq, f.time) for f in msg.facts] == [
        ("AI-1", 41.2, 812, NOW - 5)
    ]
    assert [(e.idx, e.code) for e in msg.errors] == [(1, Code.UNKNOWN_EVENT_TYPE)]
    for bad in (
        {"v": 2, "readings": [{}]},
        {"v": 1, "seq": -1, "readings": [{}]},
        {"v": 1, "readings": []},
        {"v": 1, "seq": "x", "readings": [{}]},
    ):
        assert codes(topic, json.dumps(bad)) == [Code.VALIDATION_ERROR.value]


def test_unknown_topic_and_bad_key() -> None:
    assert codes("picofleet/devices/AI-1/whatever", "{}") == [Code.UNKNOWN_TOPIC.value]
    assert codes("elsewhere/x", "{}") == [Code.UNKNOWN_TOPIC.value]
    assert codes("picofleet/devices/hub/telemetry", "{}") == [Code.INVALID_DEVICE_KEY.value]


def startup(serial: str, **over: object) -> bytes:
    body = startup_body(KEYS, serial, ts=NOW, nonce="0123456789abcdef", **over)
    return json.dumps(body).encode()


def test_startup_tokens() -> None:
    topic = T.device("AI-ABCDE1", Kind.STARTUP)
    ok = dec().decode(topic, startup("AI-ABCDE1"), received_at=NOW)
    assert ok.errors == () and ok.startup is not None and ok.startup.nonce
    # forged token, wrong serial's token, truncated token, skewed clock
    bad = [
        startup("AI-ABCDE1", provision_token="00" * 32),
        startup(
            "AI-ABCDE1",
            provision_token=KEYS.device_startup_token("AI-OTHER", int(NOW), "0123456789abcdef"),
        ),
        startup(
            "AI-ABCDE1",
            provision_token=KEYS.device_startup_token("AI-ABCDE1", int(NOW), "0123456789abcdef")[
                :20
            ],
        ),
        startup(
            "AI-ABCDE1",
            timestamp=int(NOW) - 4000,
            provision_token=KEYS.device_startup_token(
                "AI-ABCDE1", int(NOW) - 4000, "0123456789abcdef"
            ),
        ),
    ]
    for payload in bad:
        assert codes(topic, payload) == [Code.STARTUP_AUTH_ERROR.value]
    # legacy form: accepted unless switched off
    legacy = json.dumps(
        {
            "event_type": "device_startup",
            "serial": "AI-ABCDE1",
            "provision_token": KEYS.legacy_token("AI-ABCDE1"),
        }
    )
    assert codes(topic, legacy) == []
    assert codes(topic, legacy, legacy_token_enabled=False) == [Code.STARTUP_AUTH_ERROR.value]
    # a startup for another serial on this device's topic
    assert codes(topic, startup("AI-OTHER")) == [Code.DEVICE_MISMATCH.value]


def test_startup_declared_drift_widens_window() -> None:
    topic = T.device("AI-1", Kind.STARTUP)
    ts, nonce = int(NOW) - 1000, "abcdef0123456789"
    body = {
        "serial": "AI-1",
        "timestamp": ts,
        "nonce": nonce,
        "clock_drift_s": 900,
        "provision_token": KEYS.device_startup_token("AI-1", ts, nonce),
    }
    assert codes(topic, json.dumps(body)) == []


def test_legacy_ids() -> None:
    assert legacy_id("3") == 3
    assert legacy_id("AI-1") is None
    assert legacy_id("1000000") is None
    assert legacy_id("0") is None


def test_never_raises_on_garbage() -> None:
    d = dec()
    for payload in (b"", b"\x00", b"{" * 10, b'{"readings": 5}', b'{"v":1,"readings":[1,2]}'):
        for topic in (
            T.ingest,
            T.device("k", Kind.TELEMETRY),
            T.device("k", Kind.STARTUP),
            T.device("k", Kind.STATUS),
        ):
            m = d.decode(topic, payload, received_at=time.time())
            assert m.errors or m.facts or m.status is not None


def test_a_remembered_topic_gets_the_same_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoder remembers each topic's parse (issue 18): every message on a topic, first
    or later, valid or not, gets the same verdict; the memory stays bounded."""
    import picofleet.bridge.decode as decode

    monkeypatch.setattr(decode, "TOPIC_CACHE_MAX", 3)
    d = dec()
    reading = {"type": "battery_charge", "value": 50}
    body = json.dumps({"v": 1, "seq": 1, "ts": NOW, "readings": [reading]}).encode()
    expect = [
        (T.device("AI-1", Kind.TELEMETRY), [], "AI-1", 1),
        ("picofleet/devices/bad key!/telemetry", [Code.INVALID_DEVICE_KEY], None, 0),
        ("picofleet/elsewhere", [Code.UNKNOWN_TOPIC], None, 0),
        (T.ingest, [Code.VALIDATION_ERROR], None, 0),  # an envelope carries no device_id
        (T.device("AI-2", Kind.TELEMETRY), [], "AI-2", 1),
    ]
    for _ in range(3):
        for topic, errors, key, facts in expect:
            got = d.decode(topic, body, received_at=NOW)
            assert ([e.code for e in got.errors], got.device_key, len(got.facts)) == (
                errors,
                key,
                facts,
            ), topic
            assert len(d._routes) <= 3
