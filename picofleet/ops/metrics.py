"""What the operator surface adds to the hub's ``/metrics`` (the ``metrics`` hook of
picofleet/areas.py), and the in-process counters of the dashboard's live header.

``collect`` asks the database (devices by state, rollouts by state) and degrades to
``picofleet_ops_db_scrape_ok 0`` when it cannot; the live feed's gauges need no database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import asyncpg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from picofleet.ops import queries
from picofleet.ops.feed import FEED_KEY

if TYPE_CHECKING:
    from picofleet.web.app import HubContext


def local_counters(hub: HubContext) -> Callable[[], dict[str, int]]:
    """In-process ingest counters for the dashboard's live header."""
    m = hub.ingest.metrics

    def read() -> dict[str, int]:
        return {
            "received": m.received,
            "committed": m.committed,
            "rejected": sum(m.rejected.values()),
        }

    return read


async def collect(hub: HubContext) -> list[Metric]:
    out: list[Metric] = []
    feed = hub.extra.get(FEED_KEY)
    if feed is not None:
        out.append(
            GaugeMetricFamily(
                "picofleet_sse_clients", "Open dashboard event streams.", value=feed.subscribers
            )
        )
        out.append(
            CounterMetricFamily(
                "picofleet_sse_dropped",
                "Live events dropped for slow dashboard clients.",
                value=feed.dropped,
            )
        )
    ok = "The operator gauges' database queries succeeded."
    try:
        async with hub.pool.acquire(timeout=2) as conn:
            ctr = await queries.counters(conn)
            blocked = await conn.fetchval("SELECT count(*) FROM device WHERE blocked")
            rollouts = await queries.rollout_states(conn)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return [*out, GaugeMetricFamily("picofleet_ops_db_scrape_ok", ok, value=0)]
    out.append(GaugeMetricFamily("picofleet_ops_db_scrape_ok", ok, value=1))
    devices = GaugeMetricFamily(
        "picofleet_devices",
        "Known devices by state (online: not offline and heard from recently).",
        labels=["state"],
    )
    devices.add_metric(["online"], ctr["online"])
    devices.add_metric(["offline"], ctr["devices"] - ctr["online"])
    devices.add_metric(["blocked"], blocked)
    out.append(devices)
    by_state = GaugeMetricFamily("picofleet_rollouts", "OTA rollouts by state.", labels=["state"])
    for state, n in sorted(rollouts.items()):
        by_state.add_metric([state], n)
    out.append(by_state)
    return out
