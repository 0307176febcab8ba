"""The bridge: drain the MQTT session in batches, commit, then acknowledge.

    take batch -> decode -> one transaction (ledger) -> commit -> PUBACK -> publish rejections

Every failure of a batch write is one of two things (``is_outage``):

- an outage (no connection, a connection lost or left in an unknown state, a server that is
  shutting down or out of resources): retried with capped full-jitter backoff while nothing
  is acked; the session buffer fills, the network thread stops reading, and the broker holds
  the rest;
- a refusal of the data (any other error): the batch is split into single messages so that
  one poison message is kept as raw + ``store_refused`` instead of blocking the stream.

A batch in hand when the bridge task dies of anything else is kept and handled first when
the hub's supervisor restarts the task, so its messages are neither lost nor acked unstored.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence

import asyncpg

from picofleet.bridge.decode import Decoder, Limits, Message
from picofleet.bridge.ledger import Ledger, Rules, Stored, load_record_types, status_of
from picofleet.bridge.metrics import IngestMetrics
from picofleet.bridge.replay import split_replays
from picofleet.core import logs
from picofleet.core.codes import Code
from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.source import Inbound, Source
from picofleet.core.topics import Topics

_RECORD_TYPE_REFRESH_S = 30.0
# SQLSTATE classes of an unavailable database (connection, rollback, resources, operator
# intervention, system, internal): retry the batch. Any other class is about the data.
_TRANSIENT_SQLSTATE = frozenset({"08", "40", "53", "57", "58", "XX"})


def is_transient(exc: asyncpg.PostgresError) -> bool:
    return (exc.sqlstate or "XX")[:2] in _TRANSIENT_SQLSTATE


def is_outage(exc: BaseException) -> bool:
    """True when a write failed because the database is unavailable (retry the same batch
    later), False when it refused this data (isolate the culprit)."""
    if isinstance(exc, asyncpg.PostgresError):
        return is_transient(exc)
    if isinstance(exc, asyncpg.DataError):  # a value asyncpg cannot encode: the data's fault
        return False
    # asyncpg.InternalClientError covers a protocol left mid-operation by a lost connection
    # ("cannot switch to state ..."); InterfaceError a closed or released connection.
    return isinstance(
        exc, (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError)
    )


def _why(exc: BaseException) -> str:
    sqlstate = getattr(exc, "sqlstate", None)
    return str(sqlstate) if sqlstate else type(exc).__name__


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_payload_bytes=settings.max_payload_bytes,
        stored_payload_bytes=settings.stored_payload_bytes,
        max_items=settings.max_items_per_message,
        token_window_s=settings.token_window_s,
        max_clock_drift_s=settings.max_clock_drift_s,
        legacy_token_enabled=settings.legacy_token_enabled,
    )


def rules_from(settings: Settings) -> Rules:
    return Rules(
        untimed_window_s=float(settings.untimed_dedupe_window_s),
        anonymous_legacy=settings.ingest_anonymous_legacy,
    )


def backoff(attempt: int, *, base: float = 0.2, cap: float = 10.0) -> float:
    """Capped exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * 2**attempt))


class Ingest:
    """Decoding + ledger + metrics: the core shared by the MQTT bridge and POST /ingest."""

    def __init__(self, *, settings: Settings, pool: asyncpg.Pool, keys: FleetKeys) -> None:
        self.settings = settings
        self.pool = pool
        self.topics = Topics(settings.topic_prefix)
        self.ledger = Ledger(pool, rules_from(settings))
        self.decoder = Decoder(
            topics=self.topics, keys=keys, record_types={}, limits=limits_from(settings)
        )
        self.metrics = IngestMetrics()
        self.db_ok = False
        self._log = logs.get("ingest")
        self._types_loaded_at = 0.0

    async def refresh_record_types(self, force: bool = False) -> None:
        if force or time.monotonic() - self._types_loaded_at > _RECORD_TYPE_REFRESH_S:
            self.decoder.record_types = await load_record_types(self.pool)
            self._types_loaded_at = time.monotonic()

    async def commit(self, batch: Sequence[Message]) -> list[Stored]:
        """Write one batch in one transaction and account for it; raises on DB failure."""
        t0 = time.perf_counter()
        stored = await self.ledger.write(batch)
        self.db_ok = True
        m = self.metrics
        m.commit_seconds.observe(time.perf_counter() - t0)
        m.batch_size.observe(len(batch))
        m.batches += 1
        for w in stored:
            m.committed_by[(w.msg.source, status_of(w))] += 1
            m.facts += len(w.processed_ids)
            if w.facts and not w.processed_ids:
                m.duplicates += 1
            for e in w.errors:
                m.rejected_by[(w.msg.source, e.code.value)] += 1
        return stored

    async def store(self, batch: Sequence[Message]) -> list[Stored]:
        """Commit as one batch; what became of each message, in order.

        A transient database error propagates for the caller to retry with the same
        messages; a refusal of the data itself isolates the culprit, which is kept as its
        raw record with ``store_refused``.
        """
        try:
            return await self.commit(batch)
        except Exception as exc:
            if is_outage(exc):
                raise
            self._log.error(
                "ingest.batch_refused", reason=_why(exc), error=str(exc)[:200], n=len(batch)
            )
        out: list[Stored] = []
        for msg in batch:
            try:
                out += await self.commit([msg])
            except Exception as exc:
                if is_outage(exc):
                    raise
                why = f"database refused the data ({_why(exc)})"
                out += await self.commit([msg.refused(Code.STORE_REFUSED, why)])
        return out


class Bridge:
    def __init__(self, *, ingest: Ingest, session: Source) -> None:
        self.ingest = ingest
        self.session = session
        self.settings = ingest.settings
        self._log = logs.get("bridge")
        self._stopping = asyncio.Event()
        # The batch being handled; still set if the task died with it (see run()).
        self._in_hand: list[Inbound] | None = None

    @property
    def ready(self) -> bool:
        return self.ingest.db_ok and self.session.connected

    def stop(self) -> None:
        self._stopping.set()

    def _decode(self, items: Sequence[Inbound]) -> list[Message]:
        dec = self.ingest.decoder
        return [
            dec.decode(i.topic, i.payload, received_at=i.received_at, sender=i.sender)
            for i in items
        ]

    async def run(self) -> None:
        """Drain until stop(); the last batch is committed and acked before returning.

        Run again after it raised (the hub's supervisor does), it first finishes the batch
        that was in hand."""
        s = self.settings
        max_age = s.batch_max_age_ms / 1000
        if self._in_hand:
            self._log.warning("bridge.resume_batch", size=len(self._in_hand))
            await asyncio.shield(self._handle(self._in_hand))
        while not self._stopping.is_set():
            take = asyncio.ensure_future(self.session.take(s.batch_max_messages, max_age))
            stop = asyncio.ensure_future(self._stopping.wait())
            done, _ = await asyncio.wait({take, stop}, return_when=asyncio.FIRST_COMPLETED)
            if take not in done:
                take.cancel()
                stop.cancel()
                break
            stop.cancel()
            items = take.result()
            if items:
                self._in_hand = items
                # Shielded: a cancellation must not cut a batch between commit and ack.
                await asyncio.shield(self._handle(items))

    async def _handle(self, items: list[Inbound]) -> None:
        self.ingest.metrics.received_by["mqtt"] += len(items)
        attempt = 0
        while True:
            try:
                await self.ingest.refresh_record_types(force=attempt > 0)
                fresh, replays = await split_replays(self.ingest.pool, self.ingest.topics, items)
                # Decoded on each attempt: the retry reads the record types again.
                batch = await self.ingest.store(self._decode(fresh)) if fresh else []
                break
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self.ingest.db_ok = False
                self.ingest.metrics.commit_failures += 1
                delay = backoff(attempt)
                self._log.warning(
                    "bridge.commit_failed",
                    error=f"{type(exc).__name__}: {str(exc)[:200]}",
                    attempt=attempt,
                    retry_in=round(delay, 2),
                    batch=len(items),
                )
                attempt += 1
                await asyncio.sleep(delay)
        if replays:
            self.ingest.metrics.retained_replays += replays
            self._log.info("bridge.retained_replays_skipped", n=replays)
        acked = self.session.ack(items)
        self._in_hand = None
        self.ingest.metrics.lag_seconds = time.time() - items[0].received_at
        self._publish_rejections(batch)
        self._log.debug("bridge.batch", size=len(items), acked=acked)

    def _publish_rejections(self, batch: Sequence[Stored]) -> None:
        publish_rejections(self.session, self.ingest.topics, batch)


def publish_rejections(session: Source, topics: Topics, batch: Sequence[Stored]) -> None:
    """Every rejection of committed messages on ``{prefix}/ingest/errors`` (QoS 0), whatever
    carried them (the bridge's batches, POST /ingest)."""
    for w in batch:
        for e in w.errors:
            body = {
                "raw_id": w.raw_id,
                "topic": w.msg.topic,
                "source": w.msg.source,
                "device": w.msg.device_key,
                "item": e.idx,
                "code": e.code.value,
                "detail": e.detail,
            }
            session.publish(topics.ingest_errors, json.dumps(body).encode(), qos=0)
