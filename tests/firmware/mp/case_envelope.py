# envelope + ring: the telemetry a sample becomes, and the bounded buffer it waits in.
import json

import envelope
import ring

NAN = float("nan")
VALUES = (41.25, 1, 2.5, 1, 23.46, 5.02, -61, 151234, 3600)


def test_build_envelope_shape():
    doc = json.loads(envelope.build(812, 1732345678, VALUES))
    assert doc["v"] == 1 and doc["seq"] == 812 and doc["ts"] == 1732345678
    types = [r["type"] for r in doc["readings"]]
    assert types == list(envelope.TYPES), types
    byname = {r["type"]: r["value"] for r in doc["readings"]}
    assert byname["pump_on"] == 1 and isinstance(byname["pump_on"], int)
    assert byname["free_mem_bytes"] == 151234
    assert abs(byname["soil_moisture_pct"] - 41.2) < 0.11
    assert abs(byname["supply_v"] - 5.02) < 0.001


def test_missing_values_are_left_out_and_ts_optional():
    values = (NAN, 0, 0.0, 0, 22.0, 5.0, NAN, 1000, 5)
    doc = json.loads(envelope.build(3, None, values))
    assert "ts" not in doc
    types = [r["type"] for r in doc["readings"]]
    assert "soil_moisture_pct" not in types and "rssi_dbm" not in types
    assert len(types) == 7


def test_slot_roundtrip_through_ring_buffer():
    r = ring.Ring(4, envelope.SIZE)
    envelope.pack_into(r.buf, r.push(), 7, 120, VALUES)
    seq, up, values = envelope.unpack_from(r.buf, r.peek())
    assert seq == 7 and up == 120
    assert len(values) == len(envelope.TYPES)
    assert abs(values[0] - 41.25) < 1e-4 and values[6] == -61


def test_ring_is_bounded_fifo_and_counts_drops():
    r = ring.Ring(3, envelope.SIZE)
    for seq in range(5):
        envelope.pack_into(r.buf, r.push(), seq, seq, VALUES)
    assert len(r) == 3 and r.dropped == 2
    got = []
    while len(r):
        got.append(envelope.unpack_from(r.buf, r.peek())[0])
        r.pop()
    assert got == [2, 3, 4], got
    assert r.peek() == -1
    r.pop()  # popping an empty ring is harmless
    assert len(r) == 0
