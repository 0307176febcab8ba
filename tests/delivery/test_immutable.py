"""Decoded messages stay as decoded: what the ledger learns goes in a ``Stored`` beside each.

The batch mixes the ledger's own refusals (a blocked device, a replayed startup nonce, a seq
conflict) with plain facts; written twice, every message compares equal to what the decoder
gave, and the second write reports each one as a copy, never as the first write's outcome."""

from __future__ import annotations

import copy
import dataclasses
import json
import time

import asyncpg
import pytest

from picofleet.bridge.decode import Message
from picofleet.bridge.service import Ingest
from picofleet.core.codes import Code
from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.topics import Kind, Topics
from tests.helpers import startup_body


def _telemetry(seq: int, value: float, ts: float) -> bytes:
    body = {
        "v": 1,
        "seq": seq,
        "ts": ts,
        "readings": [{"type": "soil_moisture_pct", "value": value}],
    }
    return json.dumps(body).encode()


async def test_the_ledger_leaves_messages_as_decoded(
    settings: Settings, pool: asyncpg.Pool, keys: FleetKeys
) -> None:
    await pool.execute("INSERT INTO device (device_key, blocked) VALUES ('AI-BLOCKED1', true)")
    ingest = Ingest(settings=settings, pool=pool, keys=keys)
    await ingest.refresh_record_types(force=True)
    t, now = Topics(settings.topic_prefix), time.time()
    dec = ingest.decoder
    hello = json.dumps(startup_body(keys, "AI-IMMUT01", ts=now, nonce="0123456789abcdef")).encode()
    msgs = [
        dec.decode(
            t.device("AI-IMMUT01", Kind.TELEMETRY), _telemetry(1, 40.0, now), received_at=now
        ),
        dec.decode(
            t.device("AI-IMMUT01", Kind.TELEMETRY), _telemetry(1, 41.0, now), received_at=now
        ),
        dec.decode(
            t.device("AI-BLOCKED1", Kind.TELEMETRY), _telemetry(1, 9.0, now), received_at=now
        ),
        dec.decode(t.device("AI-IMMUT01", Kind.STARTUP), hello, received_at=now),
        dec.decode(t.device("AI-IMMUT01", Kind.STARTUP), hello, received_at=now),
    ]
    before = copy.deepcopy(msgs)

    first = await ingest.store(msgs)
    assert msgs == before
    assert [w.msg for w in first] == msgs
    assert [[e.code for e in w.errors] for w in first] == [
        [],
        [Code.SEQ_CONFLICT],
        [Code.BLOCKED_DEVICE],
        [],
        [Code.STARTUP_AUTH_ERROR],  # the same nonce twice: the second is a replay
    ]
    assert [len(w.processed_ids) for w in first] == [1, 0, 0, 0, 0]

    again = await ingest.store(msgs)  # a redelivery of the very same objects
    assert msgs == before
    assert [w.raw_id for w in again] != [w.raw_id for w in first]
    assert [len(w.processed_ids) for w in again] == [0, 0, 0, 0, 0]
    # The copy of a stored reading is a silent duplicate; a startup's nonce is used up.
    assert [[e.code for e in w.errors] for w in again][3:] == [[Code.STARTUP_AUTH_ERROR]] * 2
    assert await pool.fetchval("SELECT count(*) FROM processed_record") == 1
    assert await pool.fetchval("SELECT count(*) FROM raw_record") == 10

    with pytest.raises(dataclasses.FrozenInstanceError):
        msgs[0].device_key = "AI-OTHER"  # type: ignore[misc]
    assert isinstance(msgs[0], Message) and isinstance(msgs[0].facts, tuple)
