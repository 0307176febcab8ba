"""Hub plug-in: the discovery loop runs in the bridge role (see picofleet/areas.py).

Every ``ha_poll_s`` it reads the facts committed since the last look, remembers the newest per
device and record type (table ha_entity), (re)publishes a device's retained discovery configs
when what Home Assistant should know of it changed (new record type, firmware, first status),
republishes changed values on the per-sensor state topics, and removes (empty retained
payloads) every entity of a device that was deleted or blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import asyncpg

from picofleet.core import endpoints, logs
from picofleet.core.source import Source
from picofleet.core.topics import Topics
from picofleet.homeassistant import entities, queries
from picofleet.homeassistant.entities import Device

if TYPE_CHECKING:
    from picofleet.web.app import HubContext


DISCOVERY_KEY = "homeassistant"  # hub.extra: this process's Discovery, for /metrics


class Discovery:
    def __init__(
        self,
        pool: asyncpg.Pool,
        session: Source,
        topics: Topics,
        ha_prefix: str,
        poll_s: float,
        hub_url: str | None = None,
    ) -> None:
        self.pool, self.session, self.topics = pool, session, topics
        self.ha_prefix, self.poll_s, self.hub_url = ha_prefix, poll_s, hub_url
        self.announced: dict[str, Device] = {}  # as last announced by this process
        self.after: int | None = None  # facts up to this id are published
        self.failures = 0  # ticks the database failed
        self._log = logs.get("homeassistant")

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every poll_s until ``stop``; a tick the database fails is retried next time
        (a database outage must not use up the supervisor's restarts and stop the hub)."""
        while not stop.is_set():
            try:
                await self.tick()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                self.failures += 1
                self._log.warning("ha.tick_failed", error=f"{type(exc).__name__}: {exc}"[:200])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_s)

    def _publish(self, topic: str, payload: bytes) -> None:
        self.session.publish(topic, payload, qos=1, retain=True)

    async def tick(self) -> None:
        async with self.pool.acquire() as conn:
            if self.after is None:
                self.after = await queries.watermark(conn)
            facts = await queries.new_facts(conn, self.after)
            latest = {(r["device_key"], r["record_type"]): r for r in facts}
            changed = await queries.remember(conn, list(latest.values())) if latest else []
            rows = await queries.entities(conn)
        by_device: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_device.setdefault(r["device_key"], []).append(r)
        fresh: set[str] = set()
        gone = [key for key, rs in by_device.items() if rs[0]["gone"]]
        for key, rs in by_device.items():
            if key in gone:
                continue
            dev = Device(
                key=key,
                device_type=rs[0]["device_type"],
                firmware=rs[0]["firmware"],
                serial=rs[0]["serial"],
                has_status=rs[0]["has_status"],
                types=tuple((r["record_type"], r["unit"]) for r in rs),
            )
            if self.announced.get(key) != dev:
                for topic, payload in entities.configs(
                    dev, self.topics, self.ha_prefix, self.hub_url
                ).items():
                    self._publish(topic, payload)
                for r in rs:  # the retained values may be gone (a new broker, a wiped store)
                    self._state(key, r["record_type"], r["value"])
                self.announced[key] = dev
                fresh.add(key)
                self._log.info("ha.announced", device=key, entities=len(rs))
        for r in changed:
            key = r["device_key"]
            if key in self.announced and key not in fresh:
                self._state(key, r["record_type"], r["value"])
        if gone:
            for key in gone:
                types = [r["record_type"] for r in by_device[key]]
                for topic in entities.removal_topics(key, types, self.topics, self.ha_prefix):
                    self._publish(topic, b"")
                self.announced.pop(key, None)
                self._log.info("ha.removed", device=key, entities=len(types))
            async with self.pool.acquire() as conn:
                await queries.forget(conn, gone)
        if facts:
            self.after = max(self.after, facts[-1]["id"])

    def _state(self, key: str, record_type: str, value: float) -> None:
        self._publish(
            self.topics.sensor_state(key, record_type), entities.state_payload(record_type, value)
        )


async def attach(hub: HubContext, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
    s = hub.settings
    if not s.ha_discovery or hub.bridge is None:
        return []
    discovery = Discovery(
        hub.pool,
        hub.bridge.session,
        Topics(s.topic_prefix),
        s.ha_discovery_prefix,
        s.ha_poll_s,
        hub_url=endpoints.public_url(s),
    )
    hub.extra[DISCOVERY_KEY] = discovery
    return [discovery.run(stop)]
