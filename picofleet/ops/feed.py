"""Live updates for the dashboard: one database poller per process, fanned out over SSE.

The poller runs only while at least one client listens. It reads what changed since its
last look (new ingest errors and deploy events by id, devices and counters by comparing
snapshots) and puts events on each client's bounded queue; a slow client loses its oldest
events (counted in ``dropped``), never the hub's memory. Polling the database, not the
bridge, means an HTTP-only process (``picofleet serve http``) shows the same live view.

Event names: ``ingest_error`` (id = error id, so ``Last-Event-ID`` resumes), ``deploy``,
``device``, ``counters``. ``error`` is avoided: EventSource uses it for connection errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from fastapi.encoders import jsonable_encoder

from picofleet.core import logs
from picofleet.ops import queries

FEED_KEY = "ops.feed"  # the process's feed in HubContext.extra

_DEVICE_FIELDS = (
    "state",
    "online",
    "last_seen",
    "firmware",
    "channel",
    "battery_pct",
    "moisture_pct",
    "blocked",
)


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    data: dict[str, Any]
    id: int | None = None

    def encode(self) -> str:
        """The event in text/event-stream framing."""
        head = f"id: {self.id}\n" if self.id is not None else ""
        body = json.dumps(jsonable_encoder(self.data), separators=(",", ":"))
        return f"{head}event: {self.name}\ndata: {body}\n\n"


class EventFeed:
    """Fan-out of database changes to SSE clients.

    Args:
        pool: the hub's pool.
        interval: seconds between polls while someone listens.
        queue_max: events held per client before its oldest are dropped.
        local_counters: in-process counters to add to each ``counters`` event.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        interval: float = 1.0,
        queue_max: int = 256,
        local_counters: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.pool = pool
        self.interval = interval
        self.queue_max = queue_max
        self.local_counters = local_counters
        self.dropped = 0
        self.polls = 0
        self._subs: set[asyncio.Queue[Event | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._devices: dict[str, dict[str, Any]] = {}
        self._counters: dict[str, int] | None = None
        self._closed = False
        self._log = logs.get("picofleet.ops.feed")

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """End every stream (hub shutdown); clients reconnect to whoever serves next."""
        self._closed = True
        for q in self._subs:
            self._put(q, None)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[Event | None]]:
        """A queue of events for one client; ``None`` on it means the stream must end."""
        q: asyncio.Queue[Event | None] = asyncio.Queue(self.queue_max)
        if self._closed:
            q.put_nowait(None)
        self._subs.add(q)
        for dev in self._devices.values():  # what changed between page load and now
            self._put(q, Event("device", dev))
        if self._counters is not None:
            self._put(q, Event("counters", self._counters))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ops[feed].poll")
        try:
            yield q
        finally:
            self._subs.discard(q)
            if not self._subs and self._task is not None:
                task, self._task = self._task, None
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _put(self, q: asyncio.Queue[Event | None], ev: Event | None) -> None:
        while True:
            try:
                q.put_nowait(ev)
                return
            except asyncio.QueueFull:
                q.get_nowait()
                self.dropped += 1

    def _publish(self, ev: Event) -> None:
        for q in self._subs:
            self._put(q, ev)

    async def _run(self) -> None:
        attempt = 0
        err_id = dep_id = None
        while True:
            try:
                async with self.pool.acquire() as conn:
                    if err_id is None or dep_id is None:
                        err_id, dep_id = await queries.last_ids(conn)
                    errs = await queries.errors(conn, after_id=err_id, limit=100)
                    deps = await queries.deploy_log(conn, after_id=dep_id, limit=100)
                    devs = await queries.devices(conn)
                    ctr = await queries.counters(conn)
                attempt = 0
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                delay = random.uniform(0, min(10.0, self.interval * 2**attempt))
                attempt += 1
                self._log.warning("feed.poll_failed", error=str(exc)[:200], retry_in=delay)
                await asyncio.sleep(delay)
                continue
            self.polls += 1
            for e in errs:
                err_id = max(err_id, e["id"])
                self._publish(Event("ingest_error", e, id=e["id"]))
            for d in deps:
                dep_id = max(dep_id, d["id"])
                self._publish(Event("deploy", d))
            self._diff_devices(devs)
            if self.local_counters is not None:
                ctr.update(self.local_counters())
            if ctr != self._counters:
                self._counters = ctr
                self._publish(Event("counters", ctr))
            await asyncio.sleep(self.interval)

    def _diff_devices(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            row.pop("status", None)
            key = row["device_key"]
            old = self._devices.get(key)
            if old is None or any(old.get(f) != row.get(f) for f in _DEVICE_FIELDS):
                self._devices[key] = row
                self._publish(Event("device", row))


async def catch_up(pool: asyncpg.Pool, after_id: int, limit: int = 100) -> list[Event]:
    """Errors a reconnecting client missed (ids above its ``Last-Event-ID``)."""
    rows = await queries.errors(pool, after_id=after_id, limit=limit)
    return [Event("ingest_error", r, id=r["id"]) for r in rows]
