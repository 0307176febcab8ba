"""The operator area's part in the hub's lifetime: end live streams when the hub stops."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from picofleet.ops.feed import FEED_KEY, EventFeed
from picofleet.web.app import HubContext


async def attach(hub: HubContext, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
    async def close_feed_on_stop() -> None:
        # Open event streams would otherwise hold the HTTP server's shutdown.
        await stop.wait()
        feed = hub.extra.get(FEED_KEY)
        if isinstance(feed, EventFeed):
            feed.close()

    return [close_feed_on_stop()]
