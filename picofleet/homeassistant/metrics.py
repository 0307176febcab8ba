"""What the Home Assistant area adds to /metrics (the ``metrics`` hook of picofleet/areas.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from prometheus_client.core import GaugeMetricFamily, Metric

from picofleet.homeassistant import queries

if TYPE_CHECKING:
    from picofleet.web.app import HubContext


async def collect(hub: HubContext) -> list[Metric]:
    if not hub.settings.ha_discovery:
        return []
    try:
        async with hub.pool.acquire(timeout=2) as conn:
            n = await queries.announced(conn)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return []  # the operator gauges say the database is unreachable
    return [
        GaugeMetricFamily(
            "picofleet_ha_entities",
            "Sensors announced to Home Assistant (table ha_entity), buttons not counted.",
            value=n,
        )
    ]
