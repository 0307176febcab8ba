"""The partitioned ledger (sql/0080): a database at the schema before it, and a feed of real
messages through the decoder and the write path."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from picofleet.core import db
from picofleet.core.pgembed import EmbeddedPostgres

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
