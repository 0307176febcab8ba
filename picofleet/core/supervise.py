"""Supervision of the hub's long-running tasks (bridge, HTTP, policy sync, extensions).

A task that raises, or returns before the hub stops, is logged and run again after a capped
exponential backoff. One that fails more than ``max_failures`` times within ``window_s`` is
given up: the hub stops and ``run_hub`` raises ``HubFailed``, so the process exits non-zero
and systemd (``Restart=on-failure``) starts a fresh one. While a task is down ``/ready``
answers 503 and ``/metrics`` shows ``picofleet_task_up{task=...} 0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from picofleet.core import logs

Factory = Callable[[], Awaitable[None]]


class HubFailed(RuntimeError):
    """A supervised task kept failing; the hub stopped so that its service manager restarts
    it."""


@dataclass
class TaskState:
    name: str
    up: bool = False
    restarts: int = 0
    last_error: str | None = None
    failures: deque[float] = field(default_factory=deque)  # monotonic times, in the window


class Supervisor:
    def __init__(
        self,
        stop: asyncio.Event,
        *,
        max_failures: int = 5,
        window_s: float = 300.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
    ) -> None:
        self.stop = stop
        self.max_failures = max_failures
        self.window_s = window_s
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self.states: dict[str, TaskState] = {}
        self.gave_up: TaskState | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._log = logs.get("picofleet.core.supervise")

    def start(self, name: str, factory: Factory) -> None:
        """Run ``factory()`` as task ``name`` until the hub stops, restarting it on failure."""
        if name in self.states:
            raise ValueError(f"task {name!r} is already supervised")
        state = self.states[name] = TaskState(name)
        self._tasks.append(asyncio.create_task(self._watch(state, factory), name=f"hub[{name}]"))

    @property
    def all_up(self) -> bool:
        return all(s.up for s in self.states.values())

    def down(self) -> list[str]:
        return sorted(n for n, s in self.states.items() if not s.up)

    async def _watch(self, st: TaskState, factory: Factory) -> None:
        while True:
            st.up = True
            try:
                await factory()
                if self.stop.is_set():
                    return
                error, exc = "returned before the hub stopped", None
            except Exception as e:
                error, exc = f"{type(e).__name__}: {str(e)[:300]}", e
                if self.stop.is_set():
                    st.up = False
                    self._log.error("hub.task_failed", task=st.name, error=error, exc_info=exc)
                    return
            st.up, st.last_error = False, error
            now = time.monotonic()
            st.failures.append(now)
            while st.failures and st.failures[0] < now - self.window_s:
                st.failures.popleft()
            if len(st.failures) > self.max_failures:
                self._log.error(
                    "hub.task_gave_up",
                    task=st.name,
                    error=error,
                    failures=len(st.failures),
                    window_s=self.window_s,
                    exc_info=exc,
                )
                self.gave_up = self.gave_up or st
                self.stop.set()
                return
            delay = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (len(st.failures) - 1))
            self._log.error(
                "hub.task_failed", task=st.name, error=error, restart_in=delay, exc_info=exc
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
            if self.stop.is_set():
                return
            st.restarts += 1
            self._log.warning("hub.task_restarted", task=st.name, restarts=st.restarts)

    async def join(self, within_s: float) -> None:
        """After stop: wait for the tasks to finish, cancel those that do not in time."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=within_s)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1)

    def raise_if_failed(self) -> None:
        if self.gave_up is not None:
            st = self.gave_up
            raise HubFailed(
                f"task {st.name} failed {len(st.failures)} times within {self.window_s:.0f} s"
                f" (last: {st.last_error})"
            )

    def metric_families(self) -> list[Metric]:
        up = GaugeMetricFamily(
            "picofleet_task_up",
            "Whether the hub's task is running (1) or down (0).",
            labels=["task"],
        )
        restarts = CounterMetricFamily(
            "picofleet_task_restarts",
            "Times the hub restarted a failed task.",
            labels=["task"],
        )
        for n, st in self.states.items():
            up.add_metric([n], int(st.up))
            restarts.add_metric([n], st.restarts)
        return [up, restarts]
