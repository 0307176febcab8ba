"""The hub's HTTP server: uvicorn inside the hub's loop, stopped by the hub's stop event.

With HTTPS on (``https_enabled``: by default when ``http_bind`` is not loopback) the network
gets the API and dashboard over TLS on ``https_port`` with the hub's certificate, so the
operator token and the dashboard's actions never cross it in clear, and plain HTTP on
``http_port`` listens on loopback only (``http_plain_bind``), for the Pi itself.
"""

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


def _server(app: Any, settings: Settings, host: str, port: int, **tls: Any) -> _HttpServer:
    return _HttpServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            http=header_timeout_protocol(settings.http_header_timeout_s),
            **tls,
        )
    )


async def serve_http(app: Any, settings: Settings, port: int, stop: asyncio.Event) -> None:
    servers = [_server(app, settings, settings.http_plain_bind, port)]
    if settings.https_enabled:
        files = ensure_tls(settings)
        servers.append(
            _server(
                app,
                settings,
                settings.http_bind,
                settings.https_port,
                ssl_certfile=str(files.cert),
                ssl_keyfile=str(files.key),
            )
        )
    tasks = [
        asyncio.create_task(s.serve(), name=f"hub[http].serve[{i}]") for i, s in enumerate(servers)
    ]
    await stop.wait()
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*tasks)
