"""The hub's HTTP server: uvicorn inside the hub's loop, stopped by the hub's stop event.

With HTTPS on (``https_enabled``: by default when ``http_bind`` is not loopback) the network
gets the API and dashboard over TLS on ``https_port`` with the hub's certificate, so the
operator token and the dashboard's actions never cross it in clear. Plain HTTP on
``http_port`` stays whole for loopback (the Pi itself); to other addresses it serves only
what devices fetch without TLS, OTA artifacts (public, Ed25519-signed) and ``/health``,
unless ``http_plain_open`` (legacy HTTP senders).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import uvicorn

from picofleet.core.settings import Settings
from picofleet.core.tls import ensure_tls
from picofleet.web.header_timeout import header_timeout_protocol

# What plain HTTP serves to the network once HTTPS is on: what a device fetches.
PLAIN_PATHS = ("/ota/artifacts/", "/health")


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the hub's stop event owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _loopback(client: Any) -> bool:
    try:
        return bool(client) and ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


class PlainGuard:
    """ASGI: plain HTTP from the network gets devices' paths only; the rest is 403."""

    def __init__(self, app: Any, https_port: int) -> None:
        self.app, self.https_port = app, https_port

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or _loopback(scope.get("client"))
            or (scope["method"] in ("GET", "HEAD") and scope["path"].startswith(PLAIN_PATHS))
        ):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {"detail": f"plain HTTP serves OTA artifacts only; use HTTPS on {self.https_port}"}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _server(app: Any, settings: Settings, port: int, **tls: Any) -> _HttpServer:
    return _HttpServer(
        uvicorn.Config(
            app,
            host=settings.http_bind,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            http=header_timeout_protocol(settings.http_header_timeout_s),
            **tls,
        )
    )


async def serve_http(app: Any, settings: Settings, port: int, stop: asyncio.Event) -> None:
    if not settings.https_enabled:
        servers = [_server(app, settings, port)]
    else:
        files = ensure_tls(settings)
        plain = app if settings.http_plain_open else PlainGuard(app, settings.https_port)
        servers = [
            _server(plain, settings, port),
            _server(
                app,
                settings,
                settings.https_port,
                ssl_certfile=str(files.cert),
                ssl_keyfile=str(files.key),
            ),
        ]
    tasks = [
        asyncio.create_task(s.serve(), name=f"hub[http].serve[{i}]") for i, s in enumerate(servers)
    ]
    await stop.wait()
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*tasks)
