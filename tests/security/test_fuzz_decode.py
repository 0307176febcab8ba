"""Property-based fuzzing of the decoder, the validators and the ledger behind them.

Whatever arrives (arbitrary bytes, hostile JSON, huge numbers, far timestamps, deep nesting,
100,000-item arrays), the decoder returns a Message with facts or coded errors, within a time
budget (hypothesis ``deadline``) and bounded memory, and the real Ledger on PostgreSQL stores
it: one raw record plus processed rows or ingest_error rows; the batch never fails.
"""

from __future__ import annotations

import time
import tracemalloc
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from picofleet.bridge.decode import Limits, Message, RecordType, parse_json
from picofleet.bridge.ledger import Ledger, Stored, load_record_types
from picofleet.bridge.service import limits_from
from picofleet.broker.policy import Policy
from picofleet.core.codes import Code
from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.topics import INBOUND_KINDS, Kind, Topics, valid_device_key
from tests.helpers import SECRET
from tests.security import hostile
from tests.security.hostile import DEV, NOW, TOPICS, T, check_invariants, decoder, payloads

# Limits exactly as the hub derives them from its settings defaults.
LIMITS = limits_from(Settings(_env_file=None, provision_secret=SecretStr(SECRET)))  # type: ignore[call-arg]
TYPES = {
    "battery_charge": RecordType(3, "battery_charge", 0, 100),
    "soil_moisture_pct": RecordType(5, "soil_moisture_pct", 0, 100),
    "uptime_s": RecordType(14, "uptime_s", 0, 1e10),
    "fuzz_unbounded": RecordType(99, "fuzz_unbounded", None, None),  # no range: huge values
}
DEC = decoder(TYPES, LIMITS)
# The budget of one decode of a small input. Generous: it catches a hang or a quadratic
# path, not a slow machine.
FAST = settings(
    max_examples=300,
    deadline=timedelta(milliseconds=500),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def decode(topic: str, raw: bytes) -> Message:
    msg = DEC.decode(topic, raw, received_at=NOW)
    check_invariants(msg, raw=raw, limits=LIMITS, types=TYPES)
    return msg


def test_size_limits_are_settings_with_sane_defaults() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert 1024 <= s.max_payload_bytes <= 1024 * 1024
    assert 1 <= s.stored_payload_bytes <= s.max_payload_bytes
    assert 1 <= s.max_items_per_message <= 10_000
    assert 1 <= s.batch_max_messages <= 10_000
    assert (LIMITS.max_payload_bytes, LIMITS.max_items) == (
        s.max_payload_bytes,
        s.max_items_per_message,
    )


# -- pure decoding ---------------------------------------------------------------------------
@FAST
@given(topic=st.sampled_from(TOPICS), raw=st.binary(max_size=2048))
def test_arbitrary_bytes(topic: str, raw: bytes) -> None:
    decode(topic, raw)


@FAST
@given(topic=st.one_of(st.sampled_from(TOPICS), st.text(max_size=80)), raw=payloads)
def test_hostile_json_on_any_topic(topic: str, raw: bytes) -> None:
    msg = decode(topic, raw)
    if T.parse(topic) is None:
        assert [e.code for e in msg.errors] == [Code.UNKNOWN_TOPIC]


@FAST
@given(raw=hostile.structured, source=st.sampled_from(["mqtt", "http", "usb"]))
def test_flat_ingest_and_device_topics(raw: bytes, source: str) -> None:
    for topic in (T.ingest, T.device(DEV, Kind.TELEMETRY), T.device(DEV, Kind.STARTUP)):
        msg = DEC.decode(topic, raw, received_at=NOW, source=source)
        check_invariants(msg, raw=raw, limits=LIMITS, types=TYPES)
        # A device topic speaks for that device only.
        if topic != T.ingest:
            assert all(f.device_key == DEV for f in msg.facts)
            assert msg.startup is None or msg.startup.serial == DEV


@FAST
@given(value=hostile.json_values)
def test_decode_value_of_http_array_items(value: Any) -> None:
    """POST /ingest re-encodes each array item; items that cannot be JSON are coded too."""
    try:
        msg = DEC.decode_value(T.ingest, value, received_at=NOW, source="http")
    except (ValueError, UnicodeEncodeError) as exc:  # pragma: no cover - the bug this guards
        raise AssertionError(f"decode_value raised {exc!r}") from exc
    assert msg.errors or msg.facts or msg.startup is not None


@pytest.mark.parametrize("token", hostile.RAW_NUMBER_TOKENS)
@pytest.mark.parametrize("field", ["value", "timestamp", "device_id"])
def test_raw_number_tokens(token: str, field: str) -> None:
    fields = {
        "device_id": '"3"',
        "event_type": '"fuzz_unbounded"',
        "value": "1",
        "timestamp": "null",
    }
    fields[field] = token
    raw = ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()
    msg = decode(T.ingest, raw)
    if msg.facts:  # accepted only as a finite float that fits a float8 column
        assert field == "value" or token.startswith("0.")


@pytest.mark.parametrize("depth", [10, 900, 1_000, 5_000, 100_000])
@pytest.mark.parametrize("shape", ["[{}]", '{"a":{}}', '[{"readings":{}}]'])
def test_deep_nesting(depth: int, shape: str) -> None:
    open_, close = shape.split("{}")
    raw = (open_ * depth + "1" + close * depth).encode()
    msg = decode(T.ingest, raw)
    assert msg.errors


@pytest.mark.parametrize("n", [LIMITS.max_items, LIMITS.max_items + 1, 100_000])
def test_huge_arrays_are_refused_by_count_or_size(n: int) -> None:
    item = b'{"device_id":3,"event_type":"battery_charge","value":5}'
    for raw in (b"[" + b",".join([item] * n) + b"]", b"[" + b",".join([b"1"] * n) + b"]"):
        msg = decode(T.ingest, raw)
        if n > LIMITS.max_items:
            assert [e.code for e in msg.errors] in (
                [Code.TOO_MANY_ITEMS],
                [Code.PAYLOAD_TOO_LARGE],
            )


# Peak traced memory of decoding one message stays within this multiple of the payload limit
# (measured worst case: ~32x for an object of 25,000 tiny keys; Python objects are ~20x the
# size of their JSON text). With the default 256 KiB limit that is 10 MiB per message.
MEMORY_FACTOR = 40


@pytest.mark.parametrize(
    "shape",
    [
        b"1",
        b"{}",
        b"[]",
        b'{"device_id":3,"event_type":"battery_charge","value":5}',
        b'{"type":"battery_charge","value":5}',
    ],
)
def test_memory_of_a_100k_item_array_is_bounded(shape: str) -> None:
    raw = b"[" + b",".join([shape] * 100_000) + b"]"
    body = b'{"v":1,"readings":' + raw + b"}" if b"type" in shape else raw
    topic = T.device(DEV, Kind.TELEMETRY)
    tracemalloc.start()
    try:
        msg = DEC.decode(topic, body, received_at=NOW)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert msg.errors and not msg.facts
    assert peak <= MEMORY_FACTOR * LIMITS.max_payload_bytes, f"{peak} bytes"


def test_memory_of_an_object_with_many_keys_is_bounded() -> None:
    keys = LIMITS.max_payload_bytes // 10
    raw = ("{" + ",".join(f'"{i}":0' for i in range(keys)) + "}").encode()
    tracemalloc.start()
    try:
        DEC.decode(T.ingest, raw, received_at=NOW)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= MEMORY_FACTOR * LIMITS.max_payload_bytes


@FAST
@given(raw=st.binary(max_size=4096))
def test_parse_json_raises_only_value_error(raw: bytes) -> None:
    try:
        _, canonical = parse_json(raw)
    except ValueError:
        return
    assert "\x00" not in canonical


# -- validators ------------------------------------------------------------------------------
@FAST
@given(topic=st.text(max_size=120))
def test_topic_parser(topic: str) -> None:
    parsed = T.parse(topic)
    if parsed is not None and parsed.device_key is not None:
        assert topic == T.device(parsed.device_key, parsed.kind) or parsed.kind is Kind.INGEST


@FAST
@given(key=st.text(max_size=80))
def test_device_key_validator(key: str) -> None:
    if valid_device_key(key):
        assert all(c not in key for c in "/+#$\x00 ") and 1 <= len(key) <= 64
        assert T.parse(T.device(key, Kind.TELEMETRY)) is not None


POLICY = Policy(Topics("picofleet"), FleetKeys(SECRET.encode()))


@FAST
@given(
    user=st.one_of(st.sampled_from([DEV, "42", "hub", "operator"]), st.text(max_size=30)),
    topic=st.one_of(st.sampled_from(TOPICS), st.text(max_size=80)),
)
def test_policy_confines_devices(user: str, topic: str) -> None:
    pub, sub = POLICY.may_publish(user, topic), POLICY.may_subscribe(user, topic)
    role = POLICY.role(user)
    if role.value != "device":
        return
    if pub:
        assert topic in {T.device(user, k) for k in INBOUND_KINDS} or (
            topic == T.ingest and user.isdigit()
        )
    if sub:
        assert topic in (T.device(user, Kind.CMD), T.device(user, Kind.OTA)) or topic.startswith(
            T.ota_root
        )


@FAST
@given(user=st.text(max_size=70), password=st.one_of(st.none(), st.text(max_size=50)))
def test_policy_authenticate_never_raises(user: str, password: str | None) -> None:
    ok = POLICY.authenticate(user, password)
    assert not ok or password == POLICY.keys.device_password(user)


# -- through the real ledger -----------------------------------------------------------------
DB = settings(
    max_examples=60,
    deadline=None,  # the database round trip is not the decoder's budget
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def _types(pool: asyncpg.Pool) -> dict[str, RecordType]:
    await pool.execute(
        "INSERT INTO record_type (name, unit) VALUES ('fuzz_unbounded', 'x') ON CONFLICT DO NOTHING"
    )
    return await load_record_types(pool)


async def write_and_check(pool: asyncpg.Pool, msgs: list[Message]) -> list[Stored]:
    batch = await Ledger(pool).write(msgs)  # must not raise, whatever the batch holds
    assert [w.msg for w in batch] == msgs  # one result per message, in order, as decoded
    ids = [m.raw_id for m in batch]
    assert len(set(ids)) == len(batch) and all(ids)
    raw = await pool.fetch(
        "SELECT id, payload, payload_size FROM raw_record WHERE id = ANY($1)", ids
    )
    assert len(raw) == len(batch)
    errs = {
        r["raw_id"]
        for r in await pool.fetch("SELECT raw_id FROM ingest_error WHERE raw_id = ANY($1)", ids)
    }
    facts = {
        r["raw_id"]
        for r in await pool.fetch("SELECT raw_id FROM processed_record WHERE raw_id = ANY($1)", ids)
    }
    for m in batch:
        if m.errors:
            assert m.raw_id in errs
        elif m.facts and m.processed_ids:
            assert m.raw_id in facts
    return batch


@DB
@given(
    raws=st.lists(st.tuples(st.sampled_from(TOPICS), payloads), min_size=1, max_size=8),
    source=st.sampled_from(["mqtt", "http", "usb"]),
)
async def test_every_batch_commits(
    pool: asyncpg.Pool, raws: list[tuple[str, bytes]], source: str
) -> None:
    types = await _types(pool)
    dec = decoder(types, LIMITS)
    now = time.time()
    batch = [dec.decode(t, r, received_at=now, source=source) for t, r in raws]
    await write_and_check(pool, batch)


@DB
@given(
    values=st.lists(
        st.sampled_from(hostile.HUGE_NUMBERS) | st.floats(allow_nan=False), min_size=1, max_size=8
    ),
    seq=st.sampled_from([None, 0, 2**62 - 1]),
)
async def test_extreme_values_fit_their_columns(
    pool: asyncpg.Pool, values: list[Any], seq: int | None
) -> None:
    """Unbounded types take any finite value; float8 and bigint columns never overflow."""
    import json

    types = await _types(pool)
    dec = decoder(types, LIMITS)
    now = time.time()
    body: dict[str, Any] = {
        "v": 1,
        "readings": [{"type": "fuzz_unbounded", "value": v} for v in values],
    }
    if seq is not None:
        body["seq"] = seq
    dev = f"AI-X{uuid.uuid4().hex[:12]}"  # examples share the database: a fresh device each
    msg = dec.decode(T.device(dev, Kind.TELEMETRY), json.dumps(body).encode(), received_at=now)
    (w,) = await write_and_check(pool, [msg])
    stored = await pool.fetch("SELECT value FROM processed_record WHERE raw_id = $1", w.raw_id)
    # Every fact the decoder kept is stored: with a seq each reading has its own place
    # (device, seq, index); without one, equal readings at one time are one fact and the
    # repeats are coded duplicate_item (issue 19, finding 8).
    assert len(stored) == len(msg.facts)
    if seq is None:
        assert len(msg.facts) == len({f.value for f in msg.facts})


@pytest.mark.parametrize("limits", [Limits(), Limits(max_items=100_000, max_payload_bytes=8 << 20)])
async def test_100k_items_through_the_ledger(pool: asyncpg.Pool, limits: Limits) -> None:
    types = await _types(pool)
    dec = decoder(types, limits)
    item = '{"device_id":3,"event_type":"battery_charge","value":%d,"timestamp":%d}'
    now = time.time()
    raw = ("[" + ",".join(item % (i % 100, int(now) - i) for i in range(100_000)) + "]").encode()
    msg = dec.decode(T.ingest, raw, received_at=now)
    (w,) = await write_and_check(pool, [msg])
    n = await pool.fetchval("SELECT count(*) FROM processed_record WHERE raw_id = $1", w.raw_id)
    stored = await pool.fetchval("SELECT length(payload) FROM raw_record WHERE id = $1", w.raw_id)
    assert stored == min(len(raw), limits.stored_payload_bytes)
    if limits.max_items >= 100_000:
        assert n == 100_000
    else:
        assert n == 0 and msg.errors[0].code in (Code.TOO_MANY_ITEMS, Code.PAYLOAD_TOO_LARGE)


@DB
@given(body=hostile.statuses.map(hostile.encode))
async def test_device_status_messages_commit(pool: asyncpg.Pool, body: bytes) -> None:
    types = await _types(pool)
    dec = decoder(types, LIMITS)
    online = dec.decode(
        T.device(DEV, Kind.STATUS), b'{"state":"online","fw":"1.4.0"}', received_at=time.time()
    )
    await write_and_check(pool, [online])
    msg = dec.decode(T.device(DEV, Kind.STATUS), body, received_at=time.time())
    await write_and_check(pool, [msg])
    state = await pool.fetchval("SELECT state FROM device WHERE device_key = $1", DEV)
    assert state is not None
