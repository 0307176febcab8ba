"""Hypothesis strategies for hostile input, and the invariants every decoded message keeps."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import strategies as st

from picofleet.bridge.decode import MIN_EPOCH, Decoder, Limits, Message, RecordType
from picofleet.core.codes import Code
from picofleet.core.topics import Kind, Topics, valid_device_key

T = Topics("picofleet")
DEV = "AI-FUZZ01"
NOW = 1_763_900_000.0

# Topics a message can arrive on: every inbound kind, the flat ingest, and some that are not
# part of the contract at all (a bridge subscribed with a wider filter must cope).
TOPICS = [T.device(DEV, k) for k in Kind] + [
    T.ingest,
    T.device("42", Kind.TELEMETRY),
    T.ingest_errors,
    T.hub_status,
    "picofleet/devices//telemetry",
    "picofleet/devices/a b/telemetry",
    "picofleet/devices/" + "K" * 65 + "/telemetry",
    "other/topic",
]

# Numbers that break naive code: overflow to inf, beyond float, beyond bigint, subnormal,
# negative zero, and integers past every column type.
HUGE_NUMBERS: list[Any] = [
    2**63,
    2**70,
    -(2**70),
    10**300,
    1e308,
    -1e308,
    5e-324,
    -0.0,
    2**62,
    2**62 - 1,
    2**31,
    float(2**53 + 1),
]
# Raw number tokens whose text itself is the attack (Python reads 1e400 as inf).
RAW_NUMBER_TOKENS = [
    "1e400",
    "-1e400",
    "1e-400",
    "NaN",
    "-Infinity",
    "Infinity",
    "1" + "0" * 4400,  # past Python's int-string conversion limit
    "1" + "0" * 400,
    "123456789012345678901234567890.5e10",
    "1E+308",
    "0.0000000000000000000000000000001",
]
TIMESTAMPS: list[Any] = [
    0,
    -1,
    1,
    MIN_EPOCH - 1,
    MIN_EPOCH,
    NOW,
    NOW + 3600,
    NOW + 3601,
    NOW + 10**9,
    2**70,
    -(2**70),
    1e300,
    -1e300,
    253402300800,  # year 10000: past datetime's range
    -62135596801,  # before year 1
    "2025-01-01T00:00:00Z",
    None,
    True,
    [],
]

unicode_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40
)
any_text = st.text(max_size=40)  # includes lone surrogates: must be refused, never stored


def numbers() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(HUGE_NUMBERS),
    )


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), numbers(), any_text, unicode_text)


json_values = st.recursive(
    scalars(),
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.one_of(any_text, unicode_text), children, max_size=6),
    ),
    max_leaves=40,
)


def field_values(known: list[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(known), scalars(), json_values)


def type_names() -> st.SearchStrategy[Any]:
    return field_values(["battery_charge", "soil_moisture_pct", "uptime_s", "fuzz_unbounded"])


flat_events = st.fixed_dictionaries(
    {},
    optional={
        "device_id": field_values([3, 42, DEV, "AI-OTHER", 0, -1, 2**70, "a/b", "", "é"]),
        "event_type": type_names(),
        "value": field_values([0, 55.2, 100, 101, -1, *HUGE_NUMBERS]),
        "timestamp": st.sampled_from(TIMESTAMPS) | numbers(),
        "extra": json_values,
    },
)
readings = st.fixed_dictionaries(
    {},
    optional={
        "type": type_names(),
        "value": field_values([0, 41.2, *HUGE_NUMBERS]),
        "ts": st.sampled_from(TIMESTAMPS),
    },
)
envelopes = st.fixed_dictionaries(
    {"readings": st.one_of(st.lists(readings, max_size=8), json_values)},
    optional={
        "v": st.sampled_from([1, 2, "1", None, 1.0]),
        "seq": field_values([0, 1, 2**62 - 1, 2**62, 2**63, -1, 1.5, "7"]),
        "ts": st.sampled_from(TIMESTAMPS),
        "device": field_values([DEV, "AI-OTHER", "a/b"]),
    },
)
startups = st.fixed_dictionaries(
    {"event_type": st.just("device_startup")},
    optional={
        "serial": field_values([DEV, "AI-OTHER", "", "a/b", 3]),
        "provision_token": field_values(["", "00" * 32, "zz", "a" * 10_000]),
        "timestamp": st.sampled_from(TIMESTAMPS),
        "nonce": field_values(["0123456789abcdef", "", "x" * 65, "n" * 8]),
        "firmware": field_values(["1.4.0", "x" * 1000]),
        "device_type": field_values(["pico_w", "a/#", "+"]),
        "clock_drift_s": st.sampled_from(TIMESTAMPS),
    },
)
statuses = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"state": field_values(["online", "offline"]), "fw": any_text}
    ),
    json_values,
)


def encode(value: Any) -> bytes:
    """JSON text as a hostile sender writes it: NaN/Infinity tokens and lone surrogates kept."""
    return json.dumps(value, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


structured = st.one_of(
    flat_events, st.lists(flat_events, max_size=5), envelopes, startups, statuses, json_values
).map(encode)
payloads = st.one_of(structured, st.binary(max_size=512))


def decoder(types: dict[str, RecordType], limits: Limits | None = None) -> Decoder:
    from picofleet.core.credentials import FleetKeys
    from tests.helpers import SECRET

    return Decoder(
        topics=T, keys=FleetKeys(SECRET.encode()), record_types=types, limits=limits or Limits()
    )


def check_invariants(
    msg: Message, *, raw: bytes, limits: Limits, types: dict[str, RecordType]
) -> None:
    """What the ledger relies on, whatever the input was."""
    assert msg.payload_size == len(raw)
    assert msg.payload == raw[: limits.stored_payload_bytes]
    # Every message has an outcome: facts, a startup, a status, or coded errors.
    assert msg.errors or msg.facts or msg.startup is not None or msg.status is not None
    for e in msg.errors:
        assert isinstance(e.code, Code)
        assert isinstance(e.detail, str) and 0 < len(e.detail) <= 1000
        assert "\x00" not in e.detail
        e.detail.encode("utf-8")  # PostgreSQL text: no lone surrogates
        assert 0 <= e.idx < 2**31
    if msg.errors and msg.startup is not None:
        raise AssertionError("a refused startup must not provision")
    if msg.body is not None:
        assert "\x00" not in msg.body and "\\u0000" not in msg.body
        msg.body.encode("utf-8")
        json.loads(msg.body)  # the canonical text parses back
    if msg.device_key is not None:
        assert valid_device_key(msg.device_key)
    ids = {rt.id for rt in types.values()}
    for f in msg.facts:
        assert valid_device_key(f.device_key)
        assert f.type_id in ids
        assert type(f.value) is float and math.isfinite(f.value)
        assert MIN_EPOCH <= f.time <= msg.received_at + limits.max_clock_drift_s
        assert f.seq is None or 0 <= f.seq < 2**62
        assert 0 <= f.idx < limits.max_items
