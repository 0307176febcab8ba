"""Runtime helpers every long-running or one-shot command shares."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import asyncpg

from picofleet.core import db, endpoints
from picofleet.core.settings import Settings


def embedded_url(settings: Settings, *, create: bool = False) -> str:
    """URL of the hub's database for one-shot commands (the embedded cluster is started if
    needed, and created only with ``create``: never a second hub by accident)."""
    return endpoints.database_url(settings, create=create)


@contextlib.asynccontextmanager
async def hub_database(settings: Settings) -> AsyncIterator[str]:
    """The database URL for a running hub: the configured server, or the embedded cluster
    for the duration."""
    if settings.database_url:
        yield settings.database_url
        return
    from picofleet.core.pgembed import EmbeddedPostgres

    pg = EmbeddedPostgres(settings.data_path, port=settings.pg_port)
    url = await asyncio.to_thread(pg.start)
    try:
        yield url
    finally:
        await asyncio.to_thread(pg.stop)


@contextlib.asynccontextmanager
async def command_pool(
    settings: Settings, *, max_size: int = 2, migrate: bool = False
) -> AsyncIterator[asyncpg.Pool]:
    """The hub's database for a one-shot command: the configured server or the embedded
    cluster (started if needed, never created), optionally migrated, as a small pool that
    is closed afterwards. Every area CLI opens the database this way."""
    url = await asyncio.to_thread(embedded_url, settings)
    if migrate:
        await db.migrate(url)
    pool = await db.create_pool(url, max_size=max_size)
    try:
        yield pool
    finally:
        await pool.close()


def install_signals(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM set ``stop``: every long-running command drains the same way."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
