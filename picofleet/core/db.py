"""Database access shared by every role: the connection URL, the pool, and migrations.

Migrations are the numbered ``sql/*.sql`` files, each applied once in its own transaction and
recorded with a checksum; an applied file that later changes is refused, not re-run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import asyncpg

from picofleet.core import logs
from picofleet.core.assets import asset_dir


class Lock(IntEnum):
    """Keys of the transaction-scoped advisory locks that make a job run once fleet-wide
    (whatever the number of hub processes); all here, so that no two jobs share one."""

    MIGRATE = 7_423_001
    OTA_ANNOUNCER = 7_423_010
    ETL = 7_423_030  # rollups and retention
    ALERTS = 7_423_031
    RUNTIME_ROLE = 7_423_040
    PARTITIONS = 7_423_050  # the ledger's partitions (created, split, dropped)


async def xact_lock(conn: asyncpg.Connection, lock: Lock, *, wait: bool = True) -> bool:
    """Take ``lock`` until the transaction ends; without ``wait``, False when it is held."""
    if wait:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", int(lock))
        return True
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", int(lock)))


class MigrationError(RuntimeError):
    """An applied migration's file changed, or a migration failed."""


def sql_dir() -> Path:
    return asset_dir("sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def migrations(directory: Path | None = None) -> list[Migration]:
    files = sorted((directory or sql_dir()).glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return [Migration(f.stem, f) for f in files]


async def migrate(url: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations; returns the versions applied now."""
    log = logs.get("picofleet.core.db")
    conn = await asyncpg.connect(url)
    applied_now: list[str] = []
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migration ("
            " version text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in migrations(directory):
            async with conn.transaction():
                await xact_lock(conn, Lock.MIGRATE)
                done = await conn.fetchval(
                    "SELECT checksum FROM schema_migration WHERE version = $1", m.version
                )
                if done is not None:
                    if done != m.checksum:
                        raise MigrationError(
                            f"migration {m.version} changed after it was applied; "
                            "add a new migration instead of editing a shipped one"
                        )
                    continue
                try:
                    await conn.execute(m.sql)
                except asyncpg.PostgresError as exc:
                    raise MigrationError(f"migration {m.version} failed: {exc}") from exc
                await conn.execute(
                    "INSERT INTO schema_migration (version, checksum) VALUES ($1, $2)",
                    m.version,
                    m.checksum,
                )
                applied_now.append(m.version)
                log.info("db.migrated", version=m.version)
    finally:
        await conn.close()
    return applied_now


async def pending(url: str) -> list[str]:
    """Versions not yet applied (for /ready and doctor)."""
    conn = await asyncpg.connect(url)
    try:
        have = await conn.fetchval("SELECT to_regclass('schema_migration') IS NOT NULL")
        done: set[str] = set()
        if have:
            done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migration")}
    finally:
        await conn.close()
    return [m.version for m in migrations() if m.version not in done]


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, command_timeout=30)
    assert pool is not None
    return pool


async def device_access(pool: asyncpg.Pool) -> tuple[set[str], set[str]]:
    """Device keys allowed on the broker, and those blocked."""
    rows = await pool.fetch("SELECT device_key, blocked FROM device")
    return (
        {r["device_key"] for r in rows if not r["blocked"]},
        {r["device_key"] for r in rows if r["blocked"]},
    )


async def devices_first_seen_since(pool: asyncpg.Pool, epoch: float) -> frozenset[str]:
    """Device keys first seen at or after ``epoch`` (they never held an older secret)."""
    rows = await pool.fetch(
        "SELECT device_key FROM device WHERE first_seen >= to_timestamp($1)", epoch
    )
    return frozenset(r["device_key"] for r in rows)


async def register_device(url: str, key: str) -> None:
    """Make a device known (so a generated Mosquitto password file lists it)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO device (device_key) VALUES ($1) ON CONFLICT (device_key) DO NOTHING", key
        )
    finally:
        await conn.close()
