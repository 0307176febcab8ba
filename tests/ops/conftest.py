"""Fixtures of the operator tests: the hub's HTTP app in-process, on the test's database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from picofleet.bridge.service import Ingest
from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.hub import build_app
from picofleet.web.app import HubContext
from tests.faults import TcpProxy


@pytest.fixture
async def hub_ctx(settings: Settings, pool: asyncpg.Pool, keys: FleetKeys) -> HubContext:
    """An HTTP-only hub (no bridge) on the test's database."""
    ingest = Ingest(settings=settings, pool=pool, keys=keys)
    await ingest.refresh_record_types(force=True)
    ingest.db_ok = True
    return HubContext(settings=settings, pool=pool, ingest=ingest, keys=keys)


@pytest.fixture
async def api(hub_ctx: HubContext) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(hub_ctx))
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        yield client


@pytest.fixture
async def db_proxy(db_url: str) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(db_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    async with proxy:
        yield proxy


def via(url: str, port: int) -> str:
    """``url`` with its port replaced (to go through a proxy)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))
