"""The OTA announcer: drives every rollout from the database and publishes retained meta.

Each tick is one transaction under an advisory lock (one announcer acts at a time, however
many bridge replicas run), then a publish step:

    time out silent devices -> mark healthy (booted_ok + telemetry after the soak)
    -> per running rollout: start the wave, offer its members (per-device or channel meta),
       halt when (failed + rolled_back + timed_out) / offered passes the threshold,
       advance / wait for the operator / complete when enough of the wave is healthy
       and still runs the rollout's version (its newest booted_ok)
    -> commit -> publish changed meta rows (all rows after a (re)connect: the broker may
       have lost its retained store) -> announce halts on {prefix}/ingest/errors

Everything lives in PostgreSQL and every step is conditional on the stored state, so a
restarted hub carries on where the last one stopped and never repeats a step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from typing import Any

import asyncpg

from picofleet.bridge.service import backoff
from picofleet.core import db, logs
from picofleet.core.source import Source
from picofleet.core.topics import Kind, Topics
from picofleet.ota import meta
from picofleet.ota.events import hub_events, rollout_event
from picofleet.ota.model import FLEET_KINDS, HALTED_CODE, IN_PROGRESS
from picofleet.ota.rollouts import withdraw

# How far behind its arrival a device's own clock may date telemetry and still count.
_CLOCK_SLACK = "1 day"
# Rollouts finished longer ago than this are settled: no more timeouts or health checks.
_SETTLED = "1 day"

Q_TIMEOUTS = f"""
UPDATE ota_rollout_device rd SET state = 'timed_out', reason = 'timeout', updated_at = now()
FROM ota_rollout r
WHERE r.id = rd.rollout_id AND rd.offered_at IS NOT NULL
  AND (r.finished_at IS NULL OR r.finished_at > now() - interval '{_SETTLED}') AND (
    (rd.state = ANY($1::text[])
     AND coalesce(rd.started_at, rd.offered_at) + make_interval(secs => r.timeout_s) < now())
    OR (rd.state = 'booted_ok' AND rd.healthy_at IS NULL AND r.kind = ANY($2::text[])
     AND coalesce(rd.started_at, rd.offered_at)
         + make_interval(secs => r.timeout_s + r.soak_s) < now()))
RETURNING rd.rollout_id, rd.device_key, r.version, rd.booted_at IS NOT NULL AS booted
"""
# Install success alone is not health: a device counts once it still sends valid telemetry
# (processed_record rows) soak_s after it reported booted_ok.
Q_HEALTHY = f"""
UPDATE ota_rollout_device rd
SET healthy_at = now(), state = 'booted_ok', reason = NULL, updated_at = now()
FROM ota_rollout r, device d
WHERE r.id = rd.rollout_id AND r.kind = ANY($1::text[])
  AND (r.finished_at IS NULL OR r.finished_at > now() - interval '{_SETTLED}')
  AND rd.booted_at IS NOT NULL AND rd.healthy_at IS NULL
  AND rd.state IN ('booted_ok', 'timed_out') AND d.device_key = rd.device_key
  AND EXISTS (SELECT 1 FROM processed_record p
              WHERE p.device_id = d.id AND p.record_time >= rd.booted_at - interval '{_CLOCK_SLACK}'
                AND p.ingested_at >= rd.booted_at + make_interval(secs => r.soak_s))
RETURNING rd.rollout_id, rd.device_key, r.version
"""
Q_RUNNING = "SELECT * FROM ota_rollout WHERE state = 'running' ORDER BY id FOR UPDATE"
Q_START_WAVE = """
UPDATE ota_rollout SET wave_started_at = now(), updated_at = now() WHERE id = $1
"""
Q_NEXT_WAVE = """
UPDATE ota_rollout SET current_wave = current_wave + 1, wave_started_at = NULL,
       updated_at = now()
WHERE id = $1 RETURNING *
"""
Q_OFFER = """
UPDATE ota_rollout_device rd
SET state = CASE WHEN x.pinned THEN 'skipped' ELSE 'offered' END,
    reason = CASE WHEN x.pinned THEN 'pinned' END,
    offered_at = CASE WHEN x.pinned THEN NULL ELSE now() END,
    updated_at = now()
FROM (SELECT m.device_key,
             ($3 AND EXISTS (SELECT 1 FROM ota_pin p WHERE p.device_key = m.device_key)) AS pinned
      FROM ota_rollout_device m
      WHERE m.rollout_id = $1 AND m.wave <= $2 AND m.state = 'pending') x
WHERE rd.rollout_id = $1 AND rd.device_key = x.device_key
RETURNING rd.device_key, x.pinned
"""
Q_COUNTS = """
SELECT count(*) FILTER (WHERE offered_at IS NOT NULL) AS offered,
       count(*) FILTER (WHERE state = 'booted_ok') AS booted_ok,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'rolled_back') AS rolled_back,
       count(*) FILTER (WHERE state = 'timed_out') AS timed_out
FROM ota_rollout_device WHERE rollout_id = $1 AND wave <= $2 AND state <> 'skipped'
"""
# A member counts only while it still runs the rollout's version by its own word (its newest
# booted_ok): one that booted it and then went elsewhere is not done (issue 19).
Q_WAVE_HEALTH = """
SELECT count(*) AS size,
       count(*) FILTER (WHERE rd.state = 'booted_ok' AND rd.healthy_at IS NOT NULL
                        AND s.running_version = $3) AS healthy
FROM ota_rollout_device rd LEFT JOIN ota_device_state s ON s.device_key = rd.device_key
WHERE rd.rollout_id = $1 AND rd.wave = $2 AND rd.state <> 'skipped'
"""
Q_OPEN_MEMBERS = """
SELECT count(*) FROM ota_rollout_device rd
LEFT JOIN ota_device_state s ON s.device_key = rd.device_key
WHERE rd.rollout_id = $1 AND (rd.state = 'pending' OR rd.state = ANY($2::text[])
      OR (rd.state = 'booted_ok' AND s.running_version IS DISTINCT FROM $3))
"""
Q_FINISH = """
UPDATE ota_rollout SET state = $2, reason = $3, finished_at = now(), updated_at = now()
WHERE id = $1
"""
Q_WAIT = """
UPDATE ota_rollout SET state = 'waiting', reason = $2, updated_at = now() WHERE id = $1
"""
Q_MARK_BAD = """
UPDATE ota_release SET bad_at = now(), bad_reason = $2 WHERE id = $1 AND bad_at IS NULL
"""
Q_ALL_META = "SELECT id, device_type, channel, device_key, payload, rev FROM ota_meta ORDER BY id"
Q_DIRTY_META = """
SELECT id, device_type, channel, device_key, payload, rev FROM ota_meta
WHERE rev > published_rev ORDER BY id
"""
Q_PUBLISHED = """
UPDATE ota_meta m SET published_rev = u.rev
FROM unnest($1::bigint[], $2::bigint[]) AS u(id, rev)
WHERE m.id = u.id AND m.published_rev < u.rev
"""


def should_halt(r: asyncpg.Record | dict[str, Any], c: asyncpg.Record | dict[str, Any]) -> bool:
    """Failures pass the threshold once enough devices (min_devices, or all offered when
    fewer) have a result: a lone early failure does not stop a large wave."""
    offered = c["offered"]
    bad = c["failed"] + c["rolled_back"] + c["timed_out"]
    finished = bad + c["booted_ok"]
    if offered == 0 or bad == 0 or finished < min(r["min_devices"], offered):
        return False
    return bool(bad / offered > r["max_failure_rate"])


class Announcer:
    """Args:
    pool: the hub's database pool.
    session: what the bridge drains (publishes retained meta); an ``epoch`` attribute, when
        it has one, counts its connections.
    topics: topic builder of the hub's prefix.
    tick_s: seconds between ticks.
    """

    def __init__(
        self, *, pool: asyncpg.Pool, session: Source, topics: Topics, tick_s: float
    ) -> None:
        self.pool = pool
        self.session = session
        self.topics = topics
        self.tick_s = tick_s
        self._published_epoch: object = None
        self._need_full = True  # the first publish after start or a reconnect sends every row
        self._log = logs.get("picofleet.ota.announcer")

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        self._log.info("ota.announcer_started", tick_s=self.tick_s)
        while not stop.is_set():
            delay = self.tick_s
            try:
                await self.tick()
                attempt = 0
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                delay = max(self.tick_s, backoff(attempt))
                attempt += 1
                self._log.warning(
                    "ota.tick_failed", error=str(exc)[:200], attempt=attempt, retry_in=delay
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        self._log.info("ota.announcer_stopped")

    async def tick(self) -> None:
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                if not await db.xact_lock(conn, db.Lock.OTA_ANNOUNCER, wait=False):
                    return  # another replica's announcer is on it
                halts = await self._drive(conn)
            await self._publish(conn)
        for note in halts:
            self.session.publish(
                self.topics.ingest_errors, json.dumps(note).encode(), qos=0, retain=False
            )

    # -- the state machine --------------------------------------------------------------------
    async def _drive(self, conn: asyncpg.Connection) -> list[dict[str, Any]]:
        await self._timeouts(conn)
        healthy = await conn.fetch(Q_HEALTHY, list(FLEET_KINDS))
        for (rid, version), keys in _group(healthy).items():
            await hub_events(conn, keys, version=version, state="healthy", rollout_id=rid)
        halts = []
        for r in await conn.fetch(Q_RUNNING):
            note = await self._drive_rollout(conn, r)
            if note is not None:
                halts.append(note)
        return halts

    async def _timeouts(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch(Q_TIMEOUTS, list(IN_PROGRESS), list(FLEET_KINDS))
        for booted in (False, True):
            part = [r for r in rows if r["booted"] is booted]
            for (rid, version), keys in _group(part).items():
                why = "no telemetry after booted_ok" if booted else "no result within timeout"
                await hub_events(
                    conn,
                    keys,
                    version=version,
                    state="timed_out",
                    reason="timeout",
                    rollout_id=rid,
                    why=why,
                )
                self._log.warning("ota.devices_timed_out", rollout=rid, devices=keys, why=why)

    async def _drive_rollout(
        self, conn: asyncpg.Connection, r: asyncpg.Record
    ) -> dict[str, Any] | None:
        while True:
            wave = r["current_wave"]
            if r["wave_started_at"] is None:
                await conn.execute(Q_START_WAVE, r["id"])
                await rollout_event(conn, r["id"], "wave_started", wave)
                self._log.info(
                    "ota.wave_started", rollout=r["id"], version=r["version"], wave=wave + 1
                )
            await self._offer(conn, r, wave)
            if r["kind"] not in FLEET_KINDS:
                if not await conn.fetchval(
                    Q_OPEN_MEMBERS, r["id"], list(IN_PROGRESS), r["version"]
                ):
                    await self._complete(conn, r)
                return None
            counts = await conn.fetchrow(Q_COUNTS, r["id"], wave)
            if should_halt(r, counts):
                return await self._halt(conn, r, counts)
            health = await conn.fetchrow(Q_WAVE_HEALTH, r["id"], wave, r["version"])
            if health["size"] and health["healthy"] < r["min_booted"] * health["size"] - 1e-9:
                return None
            await rollout_event(
                conn, r["id"], "wave_done", wave, healthy=health["healthy"], size=health["size"]
            )
            self._log.info("ota.wave_done", rollout=r["id"], wave=wave + 1, **dict(health))
            if wave + 1 >= len(r["waves"]):
                await self._complete(conn, r)
                return None
            if r["pause_between_waves"]:
                reason = f"wave {wave + 1}/{len(r['waves'])} done; waiting for resume"
                await conn.execute(Q_WAIT, r["id"], reason)
                await rollout_event(conn, r["id"], "waiting", wave)
                return None
            r = await conn.fetchrow(Q_NEXT_WAVE, r["id"])

    async def _offer(self, conn: asyncpg.Connection, r: asyncpg.Record, wave: int) -> None:
        skip_pinned = r["kind"] != "pin"
        rows = await conn.fetch(Q_OFFER, r["id"], wave, skip_pinned)
        offered = sorted(row["device_key"] for row in rows if not row["pinned"])
        pinned = sorted(row["device_key"] for row in rows if row["pinned"])
        if r["kind"] == "channel":
            await meta.set_channel_meta(conn, r["device_type"], r["channel"], r["meta"], r["id"])
        else:
            await meta.set_device_meta(conn, r["device_type"], offered, r["meta"], r["id"])
        common = {"version": r["version"], "rollout_id": r["id"], "wave": wave + 1}
        await hub_events(conn, offered, state="offered", **common)
        await hub_events(conn, pinned, state="skipped", reason="pinned", **common)

    async def _complete(self, conn: asyncpg.Connection, r: asyncpg.Record) -> None:
        await conn.execute(Q_FINISH, r["id"], "completed", None)
        if r["kind"] == "waves":
            # New and returning devices of the channel pick the release up from now on.
            await meta.set_channel_meta(conn, r["device_type"], r["channel"], r["meta"], r["id"])
        await rollout_event(conn, r["id"], "completed")
        self._log.info("ota.rollout_completed", rollout=r["id"], version=r["version"])

    async def _halt(
        self, conn: asyncpg.Connection, r: asyncpg.Record, c: asyncpg.Record
    ) -> dict[str, Any]:
        offered = c["offered"]
        bad = c["failed"] + c["rolled_back"] + c["timed_out"]
        reason = (
            f"halted: {bad} of {offered} devices failed (failed {c['failed']}, rolled back "
            f"{c['rolled_back']}, timed out {c['timed_out']}) > max {r['max_failure_rate']:.0%}"
        )
        skipped = await withdraw(conn, r, reason="halted")
        await conn.execute(Q_FINISH, r["id"], "halted", reason)
        await conn.execute(Q_MARK_BAD, r["release_id"], f"rollout {r['id']} {reason}")
        counts = {k: c[k] for k in ("offered", "booted_ok", "failed", "rolled_back", "timed_out")}
        await rollout_event(
            conn,
            r["id"],
            "halted",
            r["current_wave"],
            reason=reason,
            skipped=len(skipped),
            **counts,
        )
        self._log.warning(
            "ota.rollout_halted",
            rollout=r["id"],
            version=r["version"],
            device_type=r["device_type"],
            wave=r["current_wave"] + 1,
            reason=reason,
        )
        return {
            "code": HALTED_CODE,
            "detail": reason,
            "rollout": str(r["id"]),
            "version": r["version"],
            "device_type": r["device_type"],
            "wave": r["current_wave"] + 1,
            "counts": counts,
        }

    # -- publishing ---------------------------------------------------------------------------
    def _topic(self, row: asyncpg.Record) -> str:
        if row["channel"] is not None:
            return self.topics.ota_channel(row["device_type"], row["channel"])
        return self.topics.device(row["device_key"], Kind.OTA)

    async def _publish(self, conn: asyncpg.Connection) -> None:
        session = self.session
        if not session.connected:
            self._need_full = True
            return
        epoch = getattr(session, "epoch", None)
        full = self._need_full or epoch != self._published_epoch
        rows = await conn.fetch(Q_ALL_META if full else Q_DIRTY_META)
        for row in rows:
            session.publish(self._topic(row), row["payload"].encode(), qos=1, retain=True)
        if rows:
            await conn.execute(Q_PUBLISHED, [r["id"] for r in rows], [r["rev"] for r in rows])
            self._log.info("ota.meta_published", topics=len(rows), full=full)
        self._published_epoch, self._need_full = epoch, False


def _group(rows: list[asyncpg.Record]) -> dict[tuple[int, str], list[str]]:
    out: dict[tuple[int, str], list[str]] = defaultdict(list)
    for row in rows:
        out[(row["rollout_id"], row["version"])].append(row["device_key"])
    return {k: sorted(v) for k, v in out.items()}
