"""Hub plug-in: the analytics job runs in the bridge role (see picofleet/areas.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from picofleet.core.topics import Topics

from ._job import Job
from ._settings import AnalyticsSettings

if TYPE_CHECKING:
    from picofleet.web.app import HubContext


async def attach(hub: HubContext, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
    settings = hub.area(AnalyticsSettings)
    if not settings.enabled:
        return []
    job = Job(
        pool=hub.pool,
        settings=settings,
        topics=Topics(hub.settings.topic_prefix),
        session=hub.bridge.session if hub.bridge is not None else None,
    )
    hub.extra["analytics"] = job
    return [job.run(stop)]
