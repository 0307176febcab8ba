"""OTA in the hub's bridge role: the status-report writer and the announcer loop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from picofleet.ota.announcer import Announcer
from picofleet.ota.config import OtaSettings
from picofleet.ota.reports import write_reports
from picofleet.web.app import HubContext


async def attach(hub: HubContext, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
    if hub.bridge is None:
        return []
    writers = hub.ingest.ledger.extra_writers
    if write_reports not in writers:
        writers.append(write_reports)
    announcer = Announcer(
        pool=hub.pool,
        session=hub.bridge.session,
        topics=hub.ingest.topics,
        tick_s=hub.area(OtaSettings).tick_s,
    )
    hub.extra["ota.announcer"] = announcer
    return [announcer.run(stop)]
