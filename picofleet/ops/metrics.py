"""Prometheus lines the operator surface adds to the hub's ``/metrics``.

``extra_metrics_lines`` reads process state only (pool, bridge session, live feed);
``db_metrics_lines`` asks the database (devices online, rollouts by state) and degrades to
``picofleet_ops_db_scrape_ok 0`` when it cannot. ``metrics_lines`` is both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg

from picofleet.ops import queries
from picofleet.ops.feed import FEED_KEY

if TYPE_CHECKING:
    from picofleet.web.app import HubContext


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _gauge(name: str, value: float, help_text: str, kind: str = "gauge") -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]


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


def extra_metrics_lines(hub: HubContext) -> list[str]:
    """Gauges from process state: DB pool, bridge session, duplicates, live feed."""
    pool = hub.pool
    m = hub.ingest.metrics
    lines = [
        "# HELP picofleet_db_pool_connections Connections in the hub's pool by state.",
        "# TYPE picofleet_db_pool_connections gauge",
        f'picofleet_db_pool_connections{{state="open"}} {pool.get_size()}',
        f'picofleet_db_pool_connections{{state="idle"}} {pool.get_idle_size()}',
        f'picofleet_db_pool_connections{{state="max"}} {pool.get_max_size()}',
    ]
    lines += _gauge(
        "picofleet_duplicates_total",
        m.duplicates,
        "Redelivered messages whose facts were already stored.",
        "counter",
    )
    lines += _gauge("picofleet_batches_total", m.batches, "Committed batches.", "counter")
    session = hub.bridge.session if hub.bridge is not None else None
    if session is not None and hasattr(session, "reconnects"):  # an MQTT session, not a tap
        s: Any = session
        lines += _gauge(
            "picofleet_broker_reconnects_total",
            s.reconnects,
            "Times the bridge lost its broker connection.",
            "counter",
        )
        lines += _gauge(
            "picofleet_bridge_redelivery_drops_total",
            s.dropped_old_epoch,
            "Buffered messages of a lost connection left for the broker to redeliver.",
            "counter",
        )
    feed = hub.extra.get(FEED_KEY)
    if feed is not None:
        lines += _gauge("picofleet_sse_clients", feed.subscribers, "Open dashboard event streams.")
        lines += _gauge(
            "picofleet_sse_dropped_total",
            feed.dropped,
            "Live events dropped for slow dashboard clients.",
            "counter",
        )
    return lines


async def db_metrics_lines(hub: HubContext) -> list[str]:
    """Gauges the database answers: devices by state, rollouts by state."""
    try:
        async with hub.pool.acquire(timeout=2) as conn:
            ctr = await queries.counters(conn)
            blocked = await conn.fetchval("SELECT count(*) FROM device WHERE blocked")
            rollouts = await queries.rollout_states(conn)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return _gauge("picofleet_ops_db_scrape_ok", 0, "The operator gauges' queries succeeded.")
    lines = _gauge("picofleet_ops_db_scrape_ok", 1, "The operator gauges' queries succeeded.")
    lines += [
        "# HELP picofleet_devices Known devices by state.",
        "# TYPE picofleet_devices gauge",
        f'picofleet_devices{{state="online"}} {ctr["online"]}',
        f'picofleet_devices{{state="offline"}} {ctr["devices"] - ctr["online"]}',
        f'picofleet_devices{{state="blocked"}} {blocked}',
    ]
    lines += _gauge(
        "picofleet_ingest_errors_24h", ctr["errors_24h"], "Ingest errors in the last 24 hours."
    )
    if rollouts:
        lines += [
            "# HELP picofleet_rollouts OTA rollouts by state.",
            "# TYPE picofleet_rollouts gauge",
        ]
        lines += [
            f'picofleet_rollouts{{state="{_label(s)}"}} {n}' for s, n in sorted(rollouts.items())
        ]
    return lines


async def metrics_lines(hub: HubContext) -> list[str]:
    return extra_metrics_lines(hub) + await db_metrics_lines(hub)
