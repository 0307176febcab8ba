"""The write path: a batch of decoded messages becomes one transaction.

Round trips per batch are fixed whatever its size (ids, devices, raw, facts, errors, plus
startups/status when present), all with ``unnest`` arrays; ``ON CONFLICT DO NOTHING``
turns a redelivered fact into a no-op inside the same statement.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from asyncpg.transaction import Transaction

from picofleet.bridge.decode import Fact, Message, RecordType, Rejection, Startup, legacy_id
from picofleet.core.codes import NOTE_CODES, UNAUTHORIZED_CODES, Code
from picofleet.core.credentials import HUB_USER
from picofleet.core.topics import Kind


@dataclass(slots=True)
class Stored:
    """What the ledger made of one decoded message, beside it (the message is immutable).

    ``facts`` and ``startup`` start as decoded and lose what the ledger refuses (a blocked
    device, a replayed nonce, a sender without a grant, a seq conflict); ``errors`` are the
    decoder's plus the ledger's own."""

    msg: Message
    raw_id: int = 0
    facts: list[Fact] = field(default_factory=list)
    startup: Startup | None = None
    errors: list[Rejection] = field(default_factory=list)
    # Facts without a device time: the receive time of the first copy, by item index.
    times: dict[int, float] = field(default_factory=dict)
    processed_ids: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, msg: Message) -> Stored:
        return cls(msg, facts=list(msg.facts), startup=msg.startup, errors=list(msg.errors))

    def reject(self, code: Code, detail: str, idx: int = 0) -> None:
        self.errors.append(Rejection(idx, code, detail))


ExtraWriter = Callable[[asyncpg.Connection, Sequence[Stored]], Awaitable[None]]

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
    value float8, seq bigint, untimed boolean
) ON COMMIT DELETE ROWS
"""
FACTS_SCRATCH = "facts_in"
FACT_COLUMNS = (
    "raw_id",
    "item_idx",
    "device_id",
    "record_type_id",
    "t",
    "value",
    "seq",
    "untimed",
)
Q_INSERT_FACTS = """
INSERT INTO processed_record (raw_id, item_idx, device_id, record_type_id, record_time, value, seq)
SELECT raw_id, item_idx, device_id, record_type_id, to_timestamp(t), value, seq FROM facts_in
ON CONFLICT DO NOTHING
RETURNING id, raw_id, item_idx
"""
# Facts a seq already held at the same time with other content (type or value): the first
# stands, the later one becomes a seq_conflict. Run only when a seq'd fact was refused. The
# seq key holds record_time (the ledger's partition key, sql/0080), so only a fact at the same
# time can have refused it, and the join names the time: one probe, not one per partition.
Q_SEQ_CONFLICTS = """
SELECT f.raw_id, f.item_idx, f.seq, f.value, f.t, p.raw_id AS first_raw, t.name,
       p.value AS first_value, extract(epoch FROM p.record_time)::float8 AS first_t
FROM facts_in f
JOIN processed_record p
  ON p.device_id = f.device_id AND p.seq = f.seq AND p.item_idx = f.item_idx
 AND p.record_time = to_timestamp(f.t)
JOIN record_type t ON t.id = p.record_type_id
WHERE f.seq IS NOT NULL AND p.raw_id <> f.raw_id
  AND (p.record_type_id <> f.record_type_id OR p.value <> f.value)
"""
# The first copy of each untimed message within the window; a copy past it starts anew.
Q_UNTIMED = """
INSERT INTO untimed_message AS m (digest, first_at, raw_id)
SELECT * FROM unnest($1::bytea[], $2::timestamptz[], $3::bigint[])
ON CONFLICT (digest) DO UPDATE SET
    first_at = CASE WHEN m.first_at < EXCLUDED.first_at - make_interval(secs => $4)
                    THEN EXCLUDED.first_at ELSE m.first_at END,
    raw_id = CASE WHEN m.first_at < EXCLUDED.first_at - make_interval(secs => $4)
                  THEN EXCLUDED.raw_id ELSE m.raw_id END
RETURNING digest, first_at
"""
Q_PRUNE_UNTIMED = "DELETE FROM untimed_message WHERE first_at < now() - make_interval(secs => $1)"
# What the write path needs to know to decide who may speak for a device on the shared
# ingest: whether the device runs picofleet firmware, and whether the sender holds a grant.
Q_AUTHORITY = """
SELECT u.sender, u.key,
       EXISTS (SELECT 1 FROM device d WHERE d.device_key = u.key AND d.serial IS NOT NULL)
           AS firmware,
       EXISTS (SELECT 1 FROM ingest_grant g WHERE g.sender = u.sender AND g.device_key = u.key)
           AS granted,
       EXISTS (SELECT 1 FROM device s WHERE s.device_key = u.sender AND s.blocked)
           AS sender_blocked
FROM unnest($1::text[], $2::text[]) AS u(sender, key)
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


def first_error(w: Stored) -> Rejection | None:
    """The error that makes the message rejected (notes such as duplicate_item do not)."""
    return next((e for e in w.errors if e.code not in NOTE_CODES), None)


def status_of(w: Stored) -> str:
    """The status POST /ingest reports for one message."""
    error = first_error(w)
    if error is not None:
        return "unauthorized" if error.code in UNAUTHORIZED_CODES else "invalid"
    if w.startup is not None:
        return "provisioned"
    if w.facts and not w.processed_ids:
        return "duplicate"
    return "ok"


async def load_record_types(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, RecordType]:
    rows = await conn.fetch(Q_RECORD_TYPES)
    return {r["name"]: RecordType(r["id"], r["name"], r["min_value"], r["max_value"]) for r in rows}


@dataclass(frozen=True, slots=True)
class Rules:
    """The write path's identity rules (settings ``untimed_dedupe_window_s`` and
    ``ingest_anonymous_legacy``)."""

    untimed_window_s: float = 300.0
    anonymous_legacy: bool = True


class Ledger:
    """Writes batches; extra writers (OTA status, ...) run inside the same transaction."""

    def __init__(self, pool: asyncpg.Pool, rules: Rules | None = None) -> None:
        self.pool = pool
        self.rules = rules or Rules()
        self.extra_writers: list[ExtraWriter] = []
        self._scratch_ready: set[int] = set()  # server pids whose session has facts_in
        self._pruned_at = 0.0

    async def write(self, batch: Sequence[Message]) -> list[Stored]:
        """One transaction for the batch; what became of each message, in order. On failure
        the first error propagates unmasked, and a connection that may be in any state but a
        clean rollback is terminated, never handed back to the pool."""
        if not batch:
            return []
        async with self.pool.acquire() as conn:
            pid = conn.get_server_pid()  # before anything can detach the proxy
            tx = conn.transaction()
            try:
                await tx.start()
                stored = await self.write_in(conn, batch)
                await tx.commit()
            except BaseException as exc:
                # A rollback also undoes a scratch table created in this transaction.
                self._scratch_ready.discard(pid)
                await _abandon(conn, tx, exc)
                raise
        return stored

    async def write_in(self, conn: asyncpg.Connection, msgs: Sequence[Message]) -> list[Stored]:
        ids = await conn.fetchval(Q_RAW_IDS, len(msgs))
        batch = [Stored.of(m) for m in msgs]
        for w, rid in zip(batch, ids, strict=True):
            w.raw_id = rid
        await self._use_nonces(conn, batch)
        await self._authorize(conn, batch)
        await self._untimed(conn, batch)
        device_ids = await self._upsert_devices(conn, batch)
        await conn.copy_records_to_table(
            "raw_record",
            columns=RAW_COLUMNS,
            records=[
                (
                    w.raw_id,
                    _ts(w.msg.received_at),
                    w.msg.source,
                    w.msg.topic,
                    w.msg.device_key,
                    w.msg.payload,
                    w.msg.payload_size,
                    w.msg.body,
                )
                for w in batch
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
        return batch

    async def _use_nonces(self, conn: asyncpg.Connection, batch: Sequence[Stored]) -> None:
        claims = [w for w in batch if w.startup is not None and w.startup.nonce is not None]
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

    def _denied(self, sender: str | None, key: str, r: asyncpg.Record) -> str | None:
        """Why ``sender`` may not speak for ``key`` on the shared ingest, or None."""
        if r["firmware"]:
            return f"device {key!r} runs picofleet firmware: it is written only on its own topic"
        if sender is None:
            if self.rules.anonymous_legacy:
                return None
            return "anonymous senders may not write devices (ingest_anonymous_legacy is off)"
        if r["sender_blocked"]:  # HTTP credentials stay valid; the broker refuses the login
            return f"sender {sender!r} is blocked"
        if sender in (key, HUB_USER) or r["granted"]:
            return None
        return f"sender {sender!r} may not speak for device {key!r} (no ingest_grant)"

    async def _authorize(self, conn: asyncpg.Connection, batch: Sequence[Stored]) -> None:
        claims = {
            (w.msg.sender, f.device_key)
            for w in batch
            if w.msg.kind is Kind.INGEST
            for f in w.facts
        }
        if not claims:
            return
        order = sorted(claims, key=lambda c: (c[0] or "", c[1]))
        rows = await conn.fetch(Q_AUTHORITY, [s or "" for s, _ in order], [k for _, k in order])
        denied: dict[tuple[str | None, str], str] = {}
        for r in rows:
            sender = r["sender"] or None  # "" stands for an anonymous sender in the query
            why = self._denied(sender, r["key"], r)
            if why is not None:
                denied[(sender, r["key"])] = why
        if not denied:
            return
        for m in batch:
            if m.msg.kind is not Kind.INGEST:
                continue
            kept: list[Fact] = []
            for f in m.facts:
                why = denied.get((m.msg.sender, f.device_key))
                if why is None:
                    kept.append(f)
                else:
                    m.reject(Code.SENDER_NOT_AUTHORIZED, why, f.idx)
            m.facts = kept

    async def _untimed(self, conn: asyncpg.Connection, batch: Sequence[Stored]) -> None:
        """Give the facts without a device time the receive time of the first copy of their
        message, so a redelivered copy is the same fact."""
        window = self.rules.untimed_window_s
        first: dict[bytes, Stored] = {}
        for m in batch:
            digest = m.msg.digest
            if digest is not None and any(f.untimed for f in m.facts):
                seen = first.get(digest)
                if seen is None or m.msg.received_at < seen.msg.received_at:
                    first[digest] = m
        if time.monotonic() - self._pruned_at > window:
            await conn.execute(Q_PRUNE_UNTIMED, float(window))
            self._pruned_at = time.monotonic()
        if not first:
            return
        order = sorted(first)  # a fixed order keeps concurrent writers from deadlocking
        rows = await conn.fetch(
            Q_UNTIMED,
            order,
            [_ts(first[d].msg.received_at) for d in order],
            [first[d].raw_id for d in order],
            float(window),
        )
        at = {bytes(r["digest"]): r["first_at"].timestamp() for r in rows}
        for m in batch:
            if m.msg.digest is not None:
                for f in m.facts:
                    if f.untimed:
                        m.times[f.idx] = at[m.msg.digest]

    async def _upsert_devices(
        self, conn: asyncpg.Connection, batch: Sequence[Stored]
    ) -> dict[str, int]:
        seen: dict[str, float] = {}
        for m in batch:
            keys = {f.device_key for f in m.facts}
            if m.startup is not None:
                keys.add(m.startup.serial)
            if m.msg.status is not None and m.msg.kind is Kind.STATUS and m.msg.device_key:
                keys.add(m.msg.device_key)
            for k in keys:
                seen[k] = max(seen.get(k, 0.0), m.msg.received_at)
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
        self, conn: asyncpg.Connection, batch: Sequence[Stored], device_ids: dict[str, int]
    ) -> None:
        rows_in = [
            (
                m.raw_id,
                f.idx,
                device_ids[f.device_key],
                f.type_id,
                m.times.get(f.idx, f.time),
                f.value,
                f.seq,
                f.untimed,
            )
            for m in batch
            for f in m.facts
        ]
        if not rows_in:
            return
        pid = conn.get_server_pid()
        if pid not in self._scratch_ready:
            await conn.execute(Q_FACTS_SCRATCH)
            self._scratch_ready.add(pid)
        await conn.copy_records_to_table(FACTS_SCRATCH, columns=FACT_COLUMNS, records=rows_in)
        rows = await conn.fetch(Q_INSERT_FACTS)
        by_raw: dict[int, list[int]] = {}
        stored: set[tuple[int, int]] = set()
        for r in rows:
            by_raw.setdefault(r["raw_id"], []).append(r["id"])
            stored.add((r["raw_id"], r["item_idx"]))
        for m in batch:
            m.processed_ids = sorted(by_raw.get(m.raw_id, ()))
        if any(
            f.seq is not None and (m.raw_id, f.idx) not in stored for m in batch for f in m.facts
        ):
            await self._seq_conflicts(conn, batch)

    async def _seq_conflicts(self, conn: asyncpg.Connection, batch: Sequence[Stored]) -> None:
        """A refused seq'd fact is a harmless copy when equal to the stored one; otherwise a
        coded conflict (raw kept, the first reading stands), never a silent drop."""
        conflicts = {(r["raw_id"], r["item_idx"]): r for r in await conn.fetch(Q_SEQ_CONFLICTS)}
        if not conflicts:
            return
        for m in batch:
            kept: list[Fact] = []
            for f in m.facts:
                r = conflicts.get((m.raw_id, f.idx))
                if r is None:
                    kept.append(f)
                    continue
                m.reject(
                    Code.SEQ_CONFLICT,
                    f"seq {r['seq']} reading {f.idx} is already stored from raw {r['first_raw']}"
                    f" as {r['name']}={r['first_value']} at {r['first_t']}; this copy has"
                    f" {r['value']} at {r['t']}",
                    f.idx,
                )
            m.facts = kept

    async def _provision(self, conn: asyncpg.Connection, batch: Sequence[Stored]) -> None:
        ok = [m.startup for m in batch if m.startup is not None]
        if ok:
            await conn.execute(
                Q_PROVISION,
                [s.serial for s in ok],
                [s.firmware for s in ok],
                [s.device_type for s in ok],
                [_ts(s.issued_at) for s in ok],
            )

    async def _status(self, conn: asyncpg.Connection, batch: Sequence[Stored]) -> None:
        st = [
            w.msg
            for w in batch
            if w.msg.kind is Kind.STATUS and w.msg.status is not None and w.msg.device_key
        ]
        if st:
            await conn.execute(Q_STATUS, [m.device_key for m in st], [m.body for m in st])
