"""The analytics cycle the hub runs every ``interval_s``: rollups, alerts, outbox, retention."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from picofleet.core import logs
from picofleet.core.source import Source
from picofleet.core.topics import Topics

from ._alerts import AlertChanges, evaluate, publish_pending
from ._retention import PruneResult, prune
from ._rollup import RefreshResult, refresh
from ._settings import AnalyticsSettings


@dataclass(slots=True)
class CycleResult:
    rollup: RefreshResult
    alerts: AlertChanges
    published: int
    pruned: PruneResult | None


class Job:
    """One owner for the analytics work of a hub.

    Args:
        pool: the hub's database pool.
        settings: thresholds and schedule.
        topics: where alerts are announced.
        session: the bridge's MQTT session; None leaves announcements in the outbox.
    """

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        settings: AnalyticsSettings,
        topics: Topics,
        session: Source | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.topics = topics
        self.session = session
        self._last_prune: float | None = None
        self._log = logs.get("analytics.job")

    def _publish(self, topic: str, payload: bytes) -> None:
        assert self.session is not None
        self.session.publish(topic, payload, qos=1)

    async def cycle(self, *, now: datetime | None = None) -> CycleResult:
        rolled = await refresh(self.pool, self.settings)
        changes = await evaluate(self.pool, self.settings, now=now)
        published = 0
        if self.session is not None and self.session.connected:
            published = await publish_pending(self.pool, self._publish, self.topics)
        pruned = None
        due = self._last_prune is None or (
            time.monotonic() - self._last_prune >= self.settings.prune_interval_s
        )
        if self.settings.retention_days is not None and due:
            pruned = await prune(self.pool, self.settings, now=now)
            self._last_prune = time.monotonic()
        return CycleResult(rolled, changes, published, pruned)

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle every interval until ``stop``; a failed cycle is logged and retried next time."""
        while True:
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.settings.interval_s)
                return
            except TimeoutError:
                pass
            try:
                await self.cycle()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                self._log.warning("analytics.cycle_failed", error=str(exc)[:200])
