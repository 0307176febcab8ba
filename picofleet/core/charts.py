"""How series are shown, everywhere (dashboard, chart API): in what order (what an operator
looks at first comes first, diagnostics such as radio, heap, uptime last, anything else in
between), which ones add up over a time bucket, and what counts as a gap."""

from __future__ import annotations

SERIES_FIRST = (
    "soil_moisture_pct",
    "pump_on",
    "pump_runtime_s",
    "pump_starts",
    "battery_charge",
    "supply_v",
    "temperature_c",
    "humidity_pct",
    "platform_extension_mm",
    "platform_extension_ticks",
    "platform_height_mm",
)
SERIES_LAST = ("rssi_dbm", "uptime_s", "free_mem_bytes")
# A silence longer than this many times a series' usual spacing is drawn as a gap.
GAP_FACTOR = 3.0
# Amounts since the previous reading: a time bucket shows their sum, not their mean.
SUMMED = ("pump_runtime_s", "pump_starts")


def order_key(name: str) -> tuple[int, int, str]:
    """Sort key of a record type name."""
    if name in SERIES_FIRST:
        return (0, SERIES_FIRST.index(name), name)
    if name in SERIES_LAST:
        return (2, SERIES_LAST.index(name), name)
    return (1, 0, name)
