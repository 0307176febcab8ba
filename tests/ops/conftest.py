"""Fixtures of the operator tests: the hub's HTTP app in-process, on the test's database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from bridge.service import Ingest
from pi_server.app import HubContext, create_app
from picofleet.credentials import FleetKeys
from picofleet.settings import Settings
from tests.conftest import RunningHub
from tests.helpers import free_port


@pytest.fixture
async def hub_ctx(settings: Settings, pool: asyncpg.Pool, keys: FleetKeys) -> HubContext:
    """An HTTP-only hub (no bridge) on the test's database."""
    ingest = Ingest(settings=settings, pool=pool, keys=keys)
    await ingest.refresh_record_types(force=True)
    ingest.db_ok = True
    return HubContext(settings=settings, pool=pool, ingest=ingest, keys=keys)


@pytest.fixture
async def api(hub_ctx: HubContext) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(hub_ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield client


class TcpProxy:
    """A loopback TCP forwarder whose outage is a real one: ``down()`` closes the listener
    and cuts every open connection (peers see resets and refusals), ``up()`` listens again
    on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


@pytest.fixture
async def db_proxy(db_url: str) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(db_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.up()
    yield proxy
    await proxy.down()


def via(url: str, port: int) -> str:
    """``url`` with its port replaced (to go through a proxy)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.asynccontextmanager
async def running_hub(settings: Settings, keys: FleetKeys) -> AsyncIterator[RunningHub]:
    """A whole hub like the ``hub`` fixture, with settings of the test's choosing."""
    from picofleet.hub import run_hub

    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_hub(
            settings,
            roles={"bridge", "http"},
            stop=stop,
            embedded_broker=True,
            ready=ready,
            handle_signals=False,
        )
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert ready.is_set(), "hub did not become ready"
    running = RunningHub(settings, task, stop, keys)
    try:
        yield running
    finally:
        if not task.done():
            await running.stop()
