"""Least privilege in PostgreSQL: the hub's pool runs as ``picofleet_runtime``.

The role may read and write the rows of every table the hub uses and owns nothing: it cannot
drop, alter, truncate or create a table, nor write the migration ledger. Migrations run as
the owner. Every table and sequence in the schema is checked, so a table a later migration
adds without the runtime's rights fails here.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from picofleet.core.credentials import FleetKeys
from picofleet.core.topics import Kind
from picofleet.security.roles import RUNTIME_ROLE, ensure_runtime_login, url_for_role
from tests.conftest import RunningHub
from tests.helpers import Client, wait_for

ROW_RIGHTS = ("SELECT", "INSERT", "UPDATE", "DELETE")
NO_RIGHTS = ("TRUNCATE", "REFERENCES", "TRIGGER")
LEDGER = "schema_migration"


@pytest.fixture
async def runtime(db_url: str, keys: FleetKeys) -> AsyncIterator[asyncpg.Connection]:
    url = await ensure_runtime_login(db_url, keys)
    assert url is not None, "the runtime role should be usable on the test cluster"
    conn = await asyncpg.connect(url)
    yield conn
    await conn.close()


async def test_runtime_role_writes_rows_but_cannot_change_the_schema(
    runtime: asyncpg.Connection,
) -> None:
    assert await runtime.fetchval("SELECT current_user") == RUNTIME_ROLE
    raw_id = await runtime.fetchval(
        "INSERT INTO raw_record (received_at, source, topic, payload, payload_size)"
        " VALUES (now(), 'mqtt', 'picofleet/ingest', '\\x7b7d', 2) RETURNING id"
    )
    assert await runtime.fetchval("SELECT count(*) FROM raw_record WHERE id = $1", raw_id) == 1
    await runtime.execute("DELETE FROM raw_record WHERE id = $1", raw_id)
    assert await runtime.fetchval("SELECT count(*) FROM schema_migration") > 0

    refused = [
        "DROP TABLE raw_record",
        "ALTER TABLE raw_record ADD COLUMN sneaky text",
        "ALTER TABLE device DISABLE TRIGGER ALL",
        "TRUNCATE raw_record",
        "CREATE TABLE stash (x int)",
        "CREATE INDEX ON raw_record (topic)",
        "DROP VIEW ingest_parse",
        "CREATE OR REPLACE VIEW ingest_parse AS SELECT 1",
        "INSERT INTO schema_migration (version, checksum) VALUES ('9999_x', 'x')",
        "DELETE FROM schema_migration",
        "UPDATE schema_migration SET checksum = 'x'",
        "SELECT picofleet_grant_runtime()",
        f"ALTER ROLE {RUNTIME_ROLE} SUPERUSER",
        f"GRANT {RUNTIME_ROLE} TO CURRENT_USER",
        "CREATE ROLE intruder LOGIN",
    ]
    for sql in refused:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await runtime.execute(sql)
    # The scratch table of the bridge's COPY path is a temporary one: allowed.
    await runtime.execute("CREATE TEMP TABLE scratch (x int)")


async def test_every_table_and_sequence_has_exactly_the_runtime_rights(
    runtime: asyncpg.Connection, db_url: str
) -> None:
    owner = await asyncpg.connect(db_url)
    try:
        rels = await owner.fetch(
            "SELECT c.oid, c.relname, c.relkind::text AS relkind,"
            " pg_get_userbyid(c.relowner) AS owner"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')"
        )
        role = await owner.fetchrow("SELECT * FROM pg_roles WHERE rolname = $1", RUNTIME_ROLE)
        member_of = await owner.fetchval(
            "SELECT count(*) FROM pg_auth_members WHERE member = $1", role["oid"]
        )

        async def has(oid: int, kind: str, right: str) -> bool:
            fn = "has_sequence_privilege" if kind == "S" else "has_table_privilege"
            return bool(
                await owner.fetchval(f"SELECT {fn}($1, $2::oid, $3)", RUNTIME_ROLE, oid, right)
            )

        wrong: list[str] = []
        tables = [r["relname"] for r in rels if r["relkind"] in "rp"]
        for r in rels:
            name, kind = r["relname"], r["relkind"]
            if r["owner"] == RUNTIME_ROLE:
                wrong.append(f"{name}: owned by the runtime")
            if kind == "S":
                want = {"USAGE": True, "SELECT": True, "UPDATE": False}
            elif kind in "vm":
                want = {"SELECT": True, "INSERT": False, "UPDATE": False, "DELETE": False}
            elif name == LEDGER:
                want = {"SELECT": True, "INSERT": False, "UPDATE": False, "DELETE": False}
            else:
                want = {right: True for right in ROW_RIGHTS}
            if kind != "S":
                want |= {right: False for right in NO_RIGHTS}
            for right, expected in want.items():
                if await has(r["oid"], kind, right) is not expected:
                    wrong.append(
                        f"{name}: {right} should be {'granted' if expected else 'refused'}"
                    )
    finally:
        await owner.close()
    assert {"raw_record", "processed_record", "ingest_error", "device", "provision_nonce"} <= set(
        tables
    )
    assert {"ota_release", "ota_rollout", "deploy_event", "rollup_hourly", "alert"} <= set(tables)
    assert wrong == []
    assert not role["rolsuper"] and not role["rolcreaterole"] and not role["rolcreatedb"]
    assert not role["rolbypassrls"] and not role["rolreplication"]
    assert member_of == 0, "the runtime role inherits no other role's rights"


async def test_tables_of_later_migrations_are_granted(
    runtime: asyncpg.Connection, db_url: str
) -> None:
    """ALTER DEFAULT PRIVILEGES: a table the owner adds later needs no grant of its own."""
    owner = await asyncpg.connect(db_url)
    try:
        await owner.execute("CREATE TABLE later_feature (id bigserial PRIMARY KEY, note text)")
    finally:
        await owner.close()
    await runtime.execute("INSERT INTO later_feature (note) VALUES ('ok')")
    assert await runtime.fetchval("SELECT note FROM later_feature") == "ok"
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await runtime.execute("DROP TABLE later_feature")


async def test_falls_back_to_the_owner_where_roles_cannot_be_managed(
    db_url: str, keys: FleetKeys
) -> None:
    """A migrating user without CREATEROLE (a managed server) keeps working as itself."""
    name, password = f"limited_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    owner = await asyncpg.connect(db_url)
    try:
        await owner.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        try:
            assert await ensure_runtime_login(url_for_role(db_url, name, password), keys) is None
        finally:
            await owner.execute(f"DROP ROLE {name}")
    finally:
        await owner.close()


async def test_the_running_hub_uses_the_runtime_role_and_still_ingests(
    hub: RunningHub, pool: asyncpg.Pool, keys: FleetKeys
) -> None:
    """Ingest (COPY, upserts, nonces, errors) and the HTTP API work under row rights only."""
    users = await pool.fetch(
        "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()"
    )
    assert {r["usename"] for r in users} == {RUNTIME_ROLE}

    key = "AI-ROLE001"
    dev = Client(hub.mqtt_port, key, keys.device_password(key))
    assert await asyncio.to_thread(dev.connect)
    try:
        body = {"v": 1, "seq": 1, "readings": [{"type": "soil_moisture_pct", "value": 12.5}]}
        await asyncio.to_thread(
            dev.publish, hub.topics.device(key, Kind.TELEMETRY), json.dumps(body).encode()
        )
        await asyncio.to_thread(dev.publish, hub.topics.device(key, Kind.TELEMETRY), b"{broken")
    finally:
        await asyncio.to_thread(dev.close)

    async def stored() -> bool:
        facts = await pool.fetchval("SELECT count(*) FROM processed_record")
        errors = await pool.fetchval("SELECT count(*) FROM ingest_error")
        return bool(facts == 1 and errors == 1)

    await wait_for(stored)


async def test_hub_processes_starting_together_all_get_the_role(
    db_url: str, keys: FleetKeys
) -> None:
    """compose starts the bridge and the HTTP role at once: neither may fail the other."""
    urls = await asyncio.gather(*(ensure_runtime_login(db_url, keys) for _ in range(4)))
    assert len(set(urls)) == 1 and urls[0] is not None
    conns = [await asyncpg.connect(u) for u in urls if u]
    try:
        for c in conns:
            assert await c.fetchval("SELECT current_user") == RUNTIME_ROLE
    finally:
        for c in conns:
            await c.close()
