"""The hub's HTTP server: uvicorn inside the hub's loop, stopped by the hub's stop event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn

from picofleet.core.settings import Settings
from picofleet.core.tls import ensure_tls
from picofleet.web.header_timeout import header_timeout_protocol


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the hub's stop event owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_http(app: Any, settings: Settings, port: int, stop: asyncio.Event) -> None:
    tls: dict[str, Any] = {}
    if settings.https_enabled:
        # The operator token and the dashboard's actions never cross the network in clear.
        files = ensure_tls(settings)
        tls = {"ssl_certfile": str(files.cert), "ssl_keyfile": str(files.key)}
    config = uvicorn.Config(
        app,
        host=settings.http_bind,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        http=header_timeout_protocol(settings.http_header_timeout_s),
        **tls,
    )
    server = _HttpServer(config)
    task = asyncio.create_task(server.serve(), name="hub[http].serve")
    await stop.wait()
    server.should_exit = True
    await task
