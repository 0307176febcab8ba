"""The write path: a batch of decoded messages becomes one transaction.

Round trips per batch are fixed whatever its size (ids, devices, raw, facts, errors, plus
startups/status when present), all with ``unnest`` arrays; ``ON CONFLICT DO NOTHING``
turns a redelivered fact into a no-op inside the same statement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import asyncpg
from asyncpg.transaction import Transaction

from bridge.codes import UNAUTHORIZED_CODES, Code
from bridge.decode import Message, RecordType, legacy_id
from picofleet.topics import Kind

ExtraWriter = Callable[[asyncpg.Connection, Sequence[Message]], Awaitable[None]]

Q_RAW_IDS = "SELECT array_agg(nextval('raw_record_id_seq')) FROM generate_series(1, $1)"
Q_RECORD_TYPES = "SELECT id, name, min_value, max_value FROM record_type"
Q_UPSERT_DEVICES = """
INSERT INTO device (id, device_key, last_seen)
SELECT coalesce(u.legacy_id, nextval('device_id_seq')), u.key, u.seen
FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS u(key, legacy_id, seen)
ON CONFLICT (device_key) DO UPDATE SET last_seen = greatest(device.last_seen, EXCLUDED.last_seen)
RETURNING id, device_key, blocked
"""
RAW_COLUMNS = (
    "id",
    "received_at",
    "source",
    "topic",
    "device_key",
    "payload",
    "payload_size",
    "body",
)
# Facts arrive through COPY into a per-connection scratch table, then one INSERT ... SELECT
# applies the dedupe constraints (COPY cannot say ON CONFLICT).
Q_FACTS_SCRATCH = """
CREATE TEMP TABLE IF NOT EXISTS facts_in (
    raw_id bigint, item_idx int, device_id bigint, record_type_id smallint, t float8,
    value float8, seq bigint
) ON COMMIT DELETE ROWS
"""
FACT_COLUMNS = ("raw_id", "item_idx", "device_id", "record_type_id", "t", "value", "seq")
Q_INSERT_FACTS = """
INSERT INTO processed_record (raw_id, item_idx, device_id, record_type_id, record_time, value, seq)
SELECT raw_id, item_idx, device_id, record_type_id, to_timestamp(t), value, seq FROM facts_in
ON CONFLICT DO NOTHING
RETURNING id, raw_id
"""
Q_INSERT_ERRORS = """
INSERT INTO ingest_error (raw_id, item_idx, code, detail)
SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[])
ON CONFLICT DO NOTHING
"""
Q_USE_NONCES = """
INSERT INTO provision_nonce (serial, nonce, issued_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
ON CONFLICT DO NOTHING
RETURNING serial, nonce
"""
Q_PROVISION = """
UPDATE device d SET serial = u.serial, firmware = coalesce(u.firmware, d.firmware),
       device_type = coalesce(u.device_type, d.device_type), provisioned_at = u.at
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
     AS u(serial, firmware, device_type, at)
WHERE d.device_key = u.serial
"""
Q_STATUS = """
UPDATE device d SET state = coalesce(s.status->>'state', d.state),
       firmware = coalesce(s.status->>'fw', d.firmware), status = s.status
FROM unnest($1::text[], $2::text[]) AS u(key, body), LATERAL (SELECT u.body::jsonb) AS s(status)
WHERE d.device_key = u.key
"""


async def _abandon(conn: asyncpg.Connection, tx: Transaction, exc: BaseException) -> None:
    """End a failed transaction without masking ``exc``: roll back only when the server
    refused a statement (the protocol is in step); otherwise, or if the rollback fails,
    terminate the connection (the server rolls back when the session ends)."""
    if isinstance(exc, asyncpg.PostgresError) and not isinstance(
        exc, asyncpg.PostgresConnectionError
    ):
        try:
            await tx.rollback()
            return
        except Exception:
            pass
    with contextlib.suppress(asyncpg.InterfaceError):  # already detached: already gone
        conn.terminate()


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def outcome(msg: Message) -> str:
    """The status POST /ingest reports for one message."""
    if msg.errors:
        return "unauthorized" if msg.errors[0].code in UNAUTHORIZED_CODES else "invalid"
    if msg.startup is not None:
        return "provisioned"
    if msg.facts and not msg.processed_ids:
        return "duplicate"
    return "ok"


async def load_record_types(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, RecordType]:
    rows = await conn.fetch(Q_RECORD_TYPES)
    return {r["name"]: RecordType(r["id"], r["name"], r["min_value"], r["max_value"]) for r in rows}


class Ledger:
    """Writes batches; extra writers (OTA status, ...) run inside the same transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.extra_writers: list[ExtraWriter] = []
        self._scratch_ready: set[int] = set()  # server pids whose session has facts_in

    async def write(self, batch: Sequence[Message]) -> None:
        """One transaction for the batch. On failure the first error propagates unmasked,
        and a connection that may be in any state but a clean rollback is terminated, never
        handed back to the pool."""
        if not batch:
            return
        async with self.pool.acquire() as conn:
            pid = conn.get_server_pid()  # before anything can detach the proxy
            tx = conn.transaction()
            try:
                await tx.start()
                await self.write_in(conn, batch)
                await tx.commit()
            except BaseException as exc:
                # A rollback also undoes a scratch table created in this transaction.
                self._scratch_ready.discard(pid)
                await _abandon(conn, tx, exc)
                raise

    async def write_in(self, conn: asyncpg.Connection, batch: Sequence[Message]) -> None:
        ids = await conn.fetchval(Q_RAW_IDS, len(batch))
        for msg, rid in zip(batch, ids, strict=True):
            msg.raw_id = rid
        await self._use_nonces(conn, batch)
        device_ids = await self._upsert_devices(conn, batch)
        await conn.copy_records_to_table(
            "raw_record",
            columns=RAW_COLUMNS,
            records=[
                (
                    m.raw_id,
                    _ts(m.received_at),
                    m.source,
                    m.topic,
                    m.device_key,
                    m.payload,
                    m.payload_size,
                    m.body,
                )
                for m in batch
            ],
        )
        await self._insert_facts(conn, batch, device_ids)
        await self._provision(conn, batch)
        await self._status(conn, batch)
        for extra in self.extra_writers:
            await extra(conn, batch)
        errs = [(m.raw_id, e) for m in batch for e in m.errors]
        if errs:
            await conn.execute(
                Q_INSERT_ERRORS,
                [r for r, _ in errs],
                [e.idx for _, e in errs],
                [e.code.value for _, e in errs],
                [e.detail for _, e in errs],
            )

    async def _use_nonces(self, conn: asyncpg.Connection, batch: Sequence[Message]) -> None:
        claims = [m for m in batch if m.startup is not None and m.startup.nonce is not None]
        if not claims:
            return
        rows = await conn.fetch(
            Q_USE_NONCES,
            [m.startup.serial for m in claims if m.startup],
            [m.startup.nonce for m in claims if m.startup],
            [_ts(m.startup.issued_at) for m in claims if m.startup],
        )
        fresh = {(r["serial"], r["nonce"]) for r in rows}
        for m in claims:
            assert m.startup is not None
            key = (m.startup.serial, m.startup.nonce)
            if key in fresh:
                fresh.discard(key)  # the same nonce twice in one batch: the second is a replay
            else:
                m.startup = None
                m.reject(Code.STARTUP_AUTH_ERROR, "nonce already used (replayed startup)")

    async def _upsert_devices(
        self, conn: asyncpg.Connection, batch: Sequence[Message]
    ) -> dict[str, int]:
        seen: dict[str, float] = {}
        for m in batch:
            keys = {f.device_key for f in m.facts}
            if m.startup is not None:
                keys.add(m.startup.serial)
            if m.status is not None and m.kind is Kind.STATUS and m.device_key:
                keys.add(m.device_key)
            for k in keys:
                seen[k] = max(seen.get(k, 0.0), m.received_at)
        if not seen:
            return {}
        order = sorted(seen)  # a fixed order keeps concurrent replicas from deadlocking
        rows = await conn.fetch(
            Q_UPSERT_DEVICES, order, [legacy_id(k) for k in order], [_ts(seen[k]) for k in order]
        )
        blocked = {r["device_key"] for r in rows if r["blocked"]}
        if blocked:
            for m in batch:
                if any(f.device_key in blocked for f in m.facts) or (
                    m.startup is not None and m.startup.serial in blocked
                ):
                    m.facts.clear()
                    m.startup = None
                    m.reject(Code.BLOCKED_DEVICE, "device is blocked")
        return {r["device_key"]: r["id"] for r in rows}

    async def _insert_facts(
        self, conn: asyncpg.Connection, batch: Sequence[Message], device_ids: dict[str, int]
    ) -> None:
        rows_in = [
            (m.raw_id, f.idx, device_ids[f.device_key], f.type_id, f.time, f.value, f.seq)
            for m in batch
            for f in m.facts
        ]
        if not rows_in:
            return
        pid = conn.get_server_pid()
        if pid not in self._scratch_ready:
            await conn.execute(Q_FACTS_SCRATCH)
            self._scratch_ready.add(pid)
        await conn.copy_records_to_table("facts_in", columns=FACT_COLUMNS, records=rows_in)
        rows = await conn.fetch(Q_INSERT_FACTS)
        by_raw: dict[int, list[int]] = {}
        for r in rows:
            by_raw.setdefault(r["raw_id"], []).append(r["id"])
        for m in batch:
            m.processed_ids = sorted(by_raw.get(m.raw_id, ()))

    async def _provision(self, conn: asyncpg.Connection, batch: Sequence[Message]) -> None:
        ok = [m.startup for m in batch if m.startup is not None]
        if ok:
            await conn.execute(
                Q_PROVISION,
                [s.serial for s in ok],
                [s.firmware for s in ok],
                [s.device_type for s in ok],
                [_ts(s.issued_at) for s in ok],
            )

    async def _status(self, conn: asyncpg.Connection, batch: Sequence[Message]) -> None:
        st = [m for m in batch if m.kind is Kind.STATUS and m.status is not None and m.device_key]
        if st:
            await conn.execute(Q_STATUS, [m.device_key for m in st], [m.body for m in st])
