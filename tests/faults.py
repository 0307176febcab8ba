"""Fault injection for real servers: a TCP proxy that can cut and refuse connections.

Mocks nothing: the bridge talks to the real PostgreSQL through it, and an outage is a real
network outage as the bridge sees it (connections reset, new ones refused).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

from tests.helpers import free_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    def _forward(self, upstream: bool) -> bool:
        """Whether bytes going this way pass; a subclass drops them to fake a lossy link."""
        return True

    async def _pipe(
        self, r: asyncio.StreamReader, w: asyncio.StreamWriter, *, upstream: bool = False
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await r.read(65536):
                if self._forward(upstream):
                    w.write(data)
                    await w.drain()
        w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            w.close()
            return
        self._conns.update((w, uw))
        await asyncio.gather(self._pipe(r, uw, upstream=True), self._pipe(ur, w))
        self._conns.difference_update((w, uw))

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._conns):
            transport = w.transport
            if transport is not None:
                transport.abort()
        self._conns.clear()

    async def outage(self, seconds: float) -> None:
        await self.cut()
        await asyncio.sleep(seconds)
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.cut()
