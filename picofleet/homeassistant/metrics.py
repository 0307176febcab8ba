"""What the Home Assistant area adds to /metrics (the ``metrics`` hook of picofleet/areas.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from picofleet.homeassistant import queries
from picofleet.homeassistant.service import DISCOVERY_KEY, Discovery

if TYPE_CHECKING:
    from picofleet.web.app import HubContext


async def collect(hub: HubContext) -> list[Metric]:
    if not hub.settings.ha_discovery:
        return []
    out: list[Metric] = []
    discovery = hub.extra.get(DISCOVERY_KEY)
    if isinstance(discovery, Discovery):  # the bridge role runs it
        out.append(
            CounterMetricFamily(
                "picofleet_ha_tick_failures",
                "Discovery rounds the database failed (retried at the next round).",
                value=discovery.failures,
            )
        )
    try:
        async with hub.pool.acquire(timeout=2) as conn:
            n = await queries.announced(conn)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return out  # the operator gauges say the database is unreachable
    out.append(
        GaugeMetricFamily(
            "picofleet_ha_entities",
            "Sensors announced to Home Assistant (table ha_entity), buttons not counted.",
            value=n,
        )
    )
    return out
