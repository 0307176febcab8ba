# Telemetry: the readings this firmware sends, how one sample sits in the ring (a fixed
# struct, so the ring is one preallocated bytearray), and the envelope
#   {"v": 1, "seq": N, "ts": T, "readings": [{"type": ..., "value": ...}, ...]}
# built as one dict for json.dumps: no string is ever assembled piece by piece.
import json
import struct

TYPES = (
    "soil_moisture_pct",
    "pump_on",
    "pump_runtime_s",
    "pump_starts",
    "temperature_c",
    "supply_v",
    "rssi_dbm",
    "free_mem_bytes",
    "uptime_s",
)
# Decimals sent per type; 0 sends an integer.
_DIGITS = (1, 0, 1, 0, 1, 2, 0, 0, 0)

# seq, seconds since boot at sampling time, then one float per type (NaN = not available).
FMT = "<II9f"
SIZE = struct.calcsize(FMT)
MISSING = float("nan")


def pack_into(buf, offset, seq, uptime_s, values):
    struct.pack_into(FMT, buf, offset, seq, uptime_s, *values)


def unpack_from(buf, offset):
    # (seq, uptime_s, values)
    row = struct.unpack_from(FMT, buf, offset)
    return row[0], row[1], row[2:]


def readings(values):
    out = []
    for i in range(len(TYPES)):
        v = values[i]
        if v != v:  # NaN: nothing to say about this one
            continue
        d = _DIGITS[i]
        out.append({"type": TYPES[i], "value": int(round(v)) if d == 0 else round(v, d)})
    return out


def build(seq, ts, values):
    # JSON text of one envelope; ts None (clock never set) lets the hub use receive time.
    doc = {"v": 1, "seq": seq, "readings": readings(values)}
    if ts is not None:
        doc["ts"] = ts
    return json.dumps(doc)
