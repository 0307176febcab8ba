"""Finding 11b (issue 19): a client that sends its request headers byte by byte (slowloris)
is dropped once ``http_header_timeout_s`` passes without a complete request head; the hub
keeps answering everyone else meanwhile."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from tests.conftest import running_hub
from tests.helpers import wait_for

SLOW = 5


async def drip(port: int, closed: asyncio.Event, second_request: bool) -> None:
    """Headers one byte at a time, never finished, until the server closes the socket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if second_request:  # a first request answered, then the slow one on the same socket
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(n)
        eof = asyncio.create_task(reader.read())
        line = b"GET /health HTTP/1.1\r\n" + b"X-Slow: 1\r\n" * 1000
        for b in line:
            if eof.done():
                break
            writer.write(bytes([b]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0.1)
        assert await eof == b"", "the server answered a request it never got whole"
        closed.set()
    finally:
        writer.close()


async def test_slow_headers_are_cut_while_health_answers(
    settings: Settings, keys: FleetKeys
) -> None:
    s = settings.model_copy(update={"http_header_timeout_s": 1.0})
    async with running_hub(s, keys):
        async with httpx.AsyncClient() as http:

            async def up() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get(f"http://127.0.0.1:{s.http_port}/health")).is_success
                return False

            await wait_for(up, timeout=30)
        closed = [asyncio.Event() for _ in range(SLOW)]
        tasks = [
            asyncio.create_task(drip(s.http_port, ev, second_request=i % 2 == 1))
            for i, ev in enumerate(closed)
        ]
        try:
            async with httpx.AsyncClient() as http:
                answered = 0

                async def all_closed() -> bool:
                    nonlocal answered
                    r = await http.get(f"http://127.0.0.1:{s.http_port}/health")
                    answered += r.status_code == 200
                    for t in tasks:
                        if t.done():
                            t.result()  # a slow client's failed assertion, at once
                    return all(ev.is_set() for ev in closed)

                await wait_for(all_closed, timeout=60, interval=0.2)
            assert answered >= 1
            for t in tasks:
                await t  # re-raises a slow client's failed assertion
        finally:
            for t in tasks:
                t.cancel()
