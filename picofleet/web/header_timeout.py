"""A deadline for each request's head: uvicorn has none (slowloris).

uvicorn's ``timeout_keep_alive`` only runs while a connection is idle between requests; a
client that sends a header byte now and then resets nothing and holds its connection (and a
file descriptor) for as long as it likes. This protocol arms a timer when the connection opens
and after every response, and closes the connection if the next request's headers are not
complete when it fires. A request whose head has arrived (its ASGI cycle runs) is left alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from picofleet.core import logs

_log = logs.get("picofleet.web.http")


class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        loop = asyncio.get_running_loop()
        self._header_deadline = loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _header_timed_out(self) -> None:
        self._header_deadline = None
        cycle: Any = self.cycle
        if cycle is not None and not cycle.response_complete:
            return  # the head arrived: this request is being served
        if not self.transport.is_closing():
            _log.info("http.header_timeout", client=self.client, limit_s=self.header_timeout_s)
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with a ``seconds`` deadline for each request's head."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": seconds})
