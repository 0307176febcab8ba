"""The partitioned ledger (sql/0080): a database at the schema before it, and a feed of real
messages through the decoder and the write path."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from picofleet.bridge.decode import Decoder, Limits
from picofleet.bridge.ledger import load_record_types
from picofleet.core import db
from picofleet.core.credentials import FleetKeys
from picofleet.core.pgembed import EmbeddedPostgres
from picofleet.core.topics import Topics
from tests.analytics.conftest import Feed

PARTITIONED = "0080_ledger_partitions"


def sql_before(tmp: Path, version: str = PARTITIONED) -> Path:
    """A migrations directory holding only the files before ``version``."""
    out = tmp / "sql-before"
    out.mkdir()
    for m in db.migrations():
        if m.version < version:
            shutil.copy(m.path, out / m.path.name)
    return out


@pytest.fixture
async def old_url(pg_cluster: EmbeddedPostgres, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database migrated up to the migration before the partitioned ledger."""
    name = f"t_old_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_cluster.url("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = pg_cluster.url(name)
    await db.migrate(url, sql_before(tmp_path))
    yield url
    admin = await asyncpg.connect(pg_cluster.url("postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def make_feed(pool: asyncpg.Pool, keys: FleetKeys) -> Feed:
    decoder = Decoder(
        topics=Topics("picofleet"),
        keys=keys,
        record_types=await load_record_types(pool),
        limits=Limits(max_clock_drift_s=10**9),
    )
    return Feed(pool, decoder)
