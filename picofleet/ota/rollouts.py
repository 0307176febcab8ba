"""Operator operations on rollouts: create, pause, resume, abort, rollback, pin, unpin.

Each function runs on a connection inside the caller's transaction and only writes rows;
the announcer (``announcer.py``) turns them into retained meta and drives the waves. Signing
happens here, at the operator's command, so the announcer never needs the private key.

Wave membership is decided once, at creation: the devices of the type (of the channel, for
a channel rollout) ordered by sha256 of their key, cut at the cumulative percentages. A new
channel or waves rollout also takes its members over (``takeover.py``): a rollback under way
ends, and no rollback meta stays retained where it could pull a member back.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from typing import Any

import asyncpg

from picofleet.core.errors import Conflict, Invalid, NotFound
from picofleet.core.rollout import ACTIONS
from picofleet.core.settings import Settings
from picofleet.core.signing import Signer
from picofleet.ota import meta, takeover
from picofleet.ota.events import hub_events, rollout_event
from picofleet.ota.manifest import (
    check_channel,
    check_device_type,
    parse_version,
    rollout_manifest,
    signed_meta,
)
from picofleet.ota.model import ACTIVE_ROLLOUT_STATES, BAD, DEFAULT_CHANNEL, FLEET_KINDS

Q_RELEASE = "SELECT * FROM ota_release WHERE device_type = $1 AND version = $2"
Q_ROLLOUT = "SELECT * FROM ota_rollout WHERE id = $1 FOR UPDATE"
Q_ACTIVE_FLEET_ROLLOUT = """
SELECT id, version, state FROM ota_rollout
WHERE device_type = $1 AND kind = ANY($2::text[]) AND state = ANY($3::text[])
"""
Q_ACTIVE_ROLLBACKS = """
SELECT * FROM ota_rollout
WHERE device_type = $1 AND kind = 'rollback' AND state = ANY($2::text[])
ORDER BY id FOR UPDATE
"""
Q_FLEET = """
SELECT device_key FROM device
WHERE device_type = $1 AND NOT blocked AND ($2::text IS NULL OR channel = $2)
"""
Q_INSERT_ROLLOUT = """
INSERT INTO ota_rollout (release_id, device_type, version, kind, channel, action, waves,
    max_failure_rate, min_booted, min_devices, soak_s, timeout_s, pause_between_waves, meta)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, '')
RETURNING id, created_at
"""
Q_SET_ROLLOUT_META = "UPDATE ota_rollout SET meta = $2 WHERE id = $1"
Q_INSERT_MEMBERS = """
INSERT INTO ota_rollout_device (rollout_id, device_key, wave)
SELECT $1, u.key, u.wave FROM unnest($2::text[], $3::smallint[]) AS u(key, wave)
"""
Q_SET_STATE = """
UPDATE ota_rollout SET state = $2, reason = $3, updated_at = now(),
       finished_at = CASE WHEN $2 = ANY($4::text[]) THEN finished_at
                          ELSE coalesce(finished_at, now()) END
WHERE id = $1
"""
Q_RESUME_WAITING = """
UPDATE ota_rollout SET state = 'running', reason = NULL, current_wave = current_wave + 1,
       wave_started_at = NULL, updated_at = now()
WHERE id = $1
"""
# Members whose meta went out (or would) but that never reported anything.
Q_WITHDRAW_TO_PENDING = """
UPDATE ota_rollout_device SET state = 'pending', reason = NULL, offered_at = NULL,
       updated_at = now()
WHERE rollout_id = $1 AND state = 'offered' AND started_at IS NULL
RETURNING device_key
"""
Q_WITHDRAW_SKIP = """
UPDATE ota_rollout_device SET state = 'skipped', reason = $2, updated_at = now()
WHERE rollout_id = $1 AND state IN ('pending', 'offered') AND started_at IS NULL
RETURNING device_key, offered_at IS NOT NULL AS had_meta
"""
Q_BAD_MEMBERS = """
SELECT device_key FROM ota_rollout_device WHERE rollout_id = $1 AND state = ANY($2::text[])
"""
Q_LATEST_FLEET_ROLLOUT = """
SELECT r.*, rel.semver FROM ota_rollout r JOIN ota_release rel ON rel.id = r.release_id
WHERE r.device_type = $1 AND r.kind = ANY($2::text[])
ORDER BY r.id DESC LIMIT 1
"""
# Previous good release: older, never marked bad; one that completed a rollout first.
Q_ROLLBACK_TARGET = """
SELECT rel.* FROM ota_release rel
WHERE rel.device_type = $1 AND rel.semver < $2 AND rel.bad_at IS NULL
ORDER BY EXISTS (SELECT 1 FROM ota_rollout r WHERE r.release_id = rel.id
                 AND r.state = 'completed') DESC, rel.semver DESC
LIMIT 1
"""
Q_MARK_BAD = """
UPDATE ota_release SET bad_at = now(), bad_reason = $3
WHERE device_type = $1 AND version = $2 AND bad_at IS NULL
"""
Q_ROLLOUTS_OF_VERSION = """
SELECT * FROM ota_rollout
WHERE device_type = $1 AND version = $2 AND kind = ANY($3::text[])
  AND state NOT IN ('aborted', 'rolled_back')
ORDER BY id FOR UPDATE
"""
# Devices that took (or are taking) the bad version: they need the rollback.
Q_ROLLBACK_MEMBERS = """
SELECT DISTINCT rd.device_key FROM ota_rollout_device rd
JOIN ota_rollout r ON r.id = rd.rollout_id
WHERE r.device_type = $1 AND r.version = $2 AND r.kind = ANY($3::text[])
  AND rd.started_at IS NOT NULL AND rd.state NOT IN ('failed', 'rolled_back')
  AND NOT EXISTS (SELECT 1 FROM ota_pin p WHERE p.device_key = rd.device_key)
ORDER BY 1
"""
Q_CLEAR_VERSION_META = """
UPDATE ota_meta m SET payload = '', rollout_id = NULL, rev = nextval('ota_meta_rev_seq'),
       updated_at = now()
FROM ota_rollout r
WHERE m.rollout_id = r.id AND r.device_type = $1 AND r.version = $2
  AND r.kind = ANY($3::text[]) AND m.payload <> ''
RETURNING m.channel
"""
Q_DEVICE = "SELECT device_key, device_type, channel FROM device WHERE device_key = $1"
Q_PIN = "SELECT * FROM ota_pin WHERE device_key = $1 FOR UPDATE"
Q_UPSERT_PIN = """
INSERT INTO ota_pin (device_key, release_id, rollout_id) VALUES ($1, $2, $3)
ON CONFLICT (device_key) DO UPDATE
SET release_id = EXCLUDED.release_id, rollout_id = EXCLUDED.rollout_id, created_at = now()
"""
Q_SKIP_PINNED = """
UPDATE ota_rollout_device rd SET state = 'skipped', reason = 'pinned', updated_at = now()
FROM ota_rollout r
WHERE r.id = rd.rollout_id AND r.kind = ANY($2::text[]) AND r.state = ANY($3::text[])
  AND rd.device_key = $1 AND rd.state IN ('pending', 'offered') AND rd.started_at IS NULL
RETURNING r.id, r.version
"""
Q_DELETE_PIN = """
DELETE FROM ota_pin p USING ota_release rel
WHERE p.device_key = $1 AND rel.id = p.release_id
RETURNING p.rollout_id, rel.version
"""

_FINAL_OK = ["running", "waiting", "paused"]  # states that keep finished_at empty


def parse_waves(text: str | Sequence[int]) -> list[int]:
    """'10,50,100' -> [10, 50, 100]: cumulative percentages, increasing, ending at 100."""
    try:
        waves = (
            [int(p) for p in text.replace("%", "").split(",") if p.strip()]
            if isinstance(text, str)
            else [int(p) for p in text]
        )
    except ValueError:
        raise Invalid(f"waves must be comma-separated percentages, got {text!r}") from None
    if not waves or waves[-1] != 100:
        raise Invalid("the last wave must be 100 (every device)")
    if any(not 0 < p <= 100 for p in waves) or any(a >= b for a, b in itertools.pairwise(waves)):
        raise Invalid("waves must be increasing percentages between 1 and 100")
    return waves


def assign_waves(keys: Sequence[str], waves: Sequence[int]) -> dict[str, int]:
    """Deterministic: order by sha256 of the key, cut at ceil(n * pct / 100)."""
    ordered = sorted(keys, key=lambda k: hashlib.sha256(k.encode()).hexdigest())
    bounds = [math.ceil(len(ordered) * p / 100) for p in waves]
    out: dict[str, int] = {}
    wave = 0
    for i, key in enumerate(ordered):
        while i >= bounds[wave]:
            wave += 1
        out[key] = wave
    return out


async def _release(conn: asyncpg.Connection, device_type: str, version: str) -> asyncpg.Record:
    rel = await conn.fetchrow(Q_RELEASE, device_type, version)
    if rel is None:
        raise NotFound(f"no release {version} for {device_type}; run `picofleet ota release`")
    return rel


async def _insert_rollout(
    conn: asyncpg.Connection,
    *,
    settings: Settings,
    signer: Signer,
    release: asyncpg.Record,
    kind: str,
    channel: str,
    action: str,
    waves: Sequence[int],
    members: dict[str, int],
    max_failure_rate: float,
    min_booted: float,
    min_devices: int,
    soak_s: int,
    timeout_s: int,
    pause_between_waves: bool = False,
) -> dict[str, Any]:
    try:
        row = await conn.fetchrow(
            Q_INSERT_ROLLOUT,
            release["id"],
            release["device_type"],
            release["version"],
            kind,
            channel,
            action,
            list(waves),
            max_failure_rate,
            min_booted,
            min_devices,
            soak_s,
            timeout_s,
            pause_between_waves,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a rollout of {release['device_type']} is already active") from None
    assert row is not None
    rollout_id = int(row["id"])
    manifest = rollout_manifest(
        settings=settings,
        version=release["version"],
        device_type=release["device_type"],
        channel=channel,
        sha256=release["sha256"],
        size=release["size"],
        rollout=rollout_id,
        action=action,
    )
    await conn.execute(Q_SET_ROLLOUT_META, rollout_id, signed_meta(signer, manifest))
    keys = sorted(members)
    await conn.execute(Q_INSERT_MEMBERS, rollout_id, keys, [members[k] for k in keys])
    await rollout_event(
        conn,
        rollout_id,
        "created",
        kind=kind,
        version=release["version"],
        devices=len(keys),
        waves=list(waves),
    )
    return {
        "id": rollout_id,
        "version": release["version"],
        "device_type": release["device_type"],
        "kind": kind,
        "channel": channel,
        "action": action,
        "waves": list(waves),
        "devices": len(keys),
        "wave_sizes": [sum(1 for w in members.values() if w == i) for i in range(len(waves))],
        "state": "running",
    }


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise Invalid(f"{name} must be between 0 and 1, got {value}")


async def create_rollout(
    conn: asyncpg.Connection,
    *,
    settings: Settings,
    signer: Signer,
    version: str,
    device_type: str,
    channel: str | None = None,
    waves: Sequence[int] | None = None,
    max_failure_rate: float = 0.2,
    min_booted: float = 0.9,
    min_devices: int = 3,
    soak_s: int = 300,
    timeout_s: int = 1800,
    pause_between_waves: bool = False,
) -> dict[str, Any]:
    parse_version(version)
    check_device_type(device_type)
    if (channel is None) == (waves is None):
        raise Invalid("give either a channel (canary|stable) or waves (e.g. 10,50,100)")
    _check_ratio("max_failure_rate", max_failure_rate)
    _check_ratio("min_booted", min_booted)
    if soak_s < 0 or timeout_s <= 0 or min_devices < 1:
        raise Invalid("soak must be >= 0 s, timeout > 0 s and min devices >= 1")
    wave_list = [100] if waves is None else parse_waves(waves)
    if channel is not None:
        check_channel(channel)
    release = await _release(conn, device_type, version)
    active = await conn.fetchrow(
        Q_ACTIVE_FLEET_ROLLOUT, device_type, list(FLEET_KINDS), list(ACTIVE_ROLLOUT_STATES)
    )
    if active is not None:
        raise Conflict(
            f"rollout {active['id']} ({active['version']}) of {device_type} is {active['state']};"
            " abort it or wait until it finishes"
        )
    fleet = [r["device_key"] for r in await conn.fetch(Q_FLEET, device_type, channel)]
    out = await _insert_rollout(
        conn,
        settings=settings,
        signer=signer,
        release=release,
        kind="waves" if channel is None else "channel",
        channel=channel or DEFAULT_CHANNEL,
        action="install",
        waves=wave_list,
        members=assign_waves(fleet, wave_list),
        max_failure_rate=max_failure_rate,
        min_booted=min_booted,
        min_devices=min_devices,
        soak_s=soak_s,
        timeout_s=timeout_s,
        pause_between_waves=pause_between_waves,
    )
    superseded = await _supersede_rollbacks(conn, device_type, out["id"])
    taken = await takeover.take_over(
        conn,
        settings=settings,
        signer=signer,
        device_type=device_type,
        channel=channel,
        members=fleet,
    )
    out.update(superseded=superseded, **{f"{k}_meta": v for k, v in taken.items()})
    return out


async def _supersede_rollbacks(
    conn: asyncpg.Connection, device_type: str, rollout_id: int
) -> list[int]:
    """A new fleet rollout says what the type runs from now on: a rollback still under way
    stops offering (its devices that never started are withdrawn) and ends as aborted."""
    ids = []
    for r in await conn.fetch(Q_ACTIVE_ROLLBACKS, device_type, list(ACTIVE_ROLLOUT_STATES)):
        reason = f"superseded by rollout {rollout_id}"
        withdrawn = await withdraw(conn, r, reason="superseded")
        await conn.execute(Q_SET_STATE, r["id"], "aborted", reason, _FINAL_OK)
        await rollout_event(conn, r["id"], "superseded", by=rollout_id, skipped=len(withdrawn))
        ids.append(int(r["id"]))
    return ids


async def _rollout(conn: asyncpg.Connection, rollout_id: int) -> asyncpg.Record:
    r = await conn.fetchrow(Q_ROLLOUT, rollout_id)
    if r is None:
        raise NotFound(f"no rollout {rollout_id}")
    return r


async def withdraw(
    conn: asyncpg.Connection, r: asyncpg.Record, *, reason: str, to_pending: bool = False
) -> list[str]:
    """Take the offer back from members that never reported: finished and in-progress
    devices are untouched. ``to_pending`` (pause) lets a resume offer them again; otherwise
    they are skipped for good (halt, abort, rollback, superseded), and members that failed,
    rolled back or went silent lose the offer too: they will not run this release, so their
    topic must stop asking for it (each reboot would try it again)."""
    if to_pending:
        keys = [row["device_key"] for row in await conn.fetch(Q_WITHDRAW_TO_PENDING, r["id"])]
        with_meta = keys
    else:
        rows = await conn.fetch(Q_WITHDRAW_SKIP, r["id"], reason)
        keys = [row["device_key"] for row in rows]
        with_meta = [row["device_key"] for row in rows if row["had_meta"]]
        with_meta += [
            row["device_key"] for row in await conn.fetch(Q_BAD_MEMBERS, r["id"], list(BAD))
        ]
    if r["kind"] == "channel":
        await meta.clear_rollout_meta(conn, r["id"])
    else:
        await meta.clear_rollout_meta(conn, r["id"], with_meta)
    await hub_events(
        conn,
        keys,
        version=r["version"],
        state="withdrawn" if to_pending else "skipped",
        reason=reason,
        rollout_id=r["id"],
    )
    return keys


async def pause(conn: asyncpg.Connection, rollout_id: int) -> dict[str, Any]:
    r = await _rollout(conn, rollout_id)
    if r["state"] not in ACTIONS["pause"]:
        raise Conflict(f"rollout {rollout_id} is {r['state']}; only a running rollout pauses")
    withdrawn = await withdraw(conn, r, reason="paused", to_pending=True)
    await conn.execute(Q_SET_STATE, rollout_id, "paused", "paused by operator", _FINAL_OK)
    await rollout_event(conn, rollout_id, "paused", r["current_wave"], withdrawn=len(withdrawn))
    return {"id": rollout_id, "state": "paused", "withdrawn": withdrawn}


async def resume(conn: asyncpg.Connection, rollout_id: int) -> dict[str, Any]:
    r = await _rollout(conn, rollout_id)
    if r["state"] == "paused":
        await conn.execute(Q_SET_STATE, rollout_id, "running", None, _FINAL_OK)
        wave = r["current_wave"]
    elif r["state"] == "waiting":
        await conn.execute(Q_RESUME_WAITING, rollout_id)
        wave = r["current_wave"] + 1
    else:
        raise Conflict(f"rollout {rollout_id} is {r['state']}; only paused or waiting resume")
    await rollout_event(conn, rollout_id, "resumed", wave)
    return {"id": rollout_id, "state": "running", "wave": wave}


async def abort(conn: asyncpg.Connection, rollout_id: int) -> dict[str, Any]:
    r = await _rollout(conn, rollout_id)
    if r["state"] not in ACTIONS["abort"]:
        raise Conflict(f"rollout {rollout_id} is already {r['state']}")
    skipped = await withdraw(conn, r, reason="aborted")
    await conn.execute(Q_SET_STATE, rollout_id, "aborted", "aborted by operator", _FINAL_OK)
    await rollout_event(conn, rollout_id, "aborted", r["current_wave"], skipped=len(skipped))
    return {"id": rollout_id, "state": "aborted", "skipped": skipped}


async def rollback(
    conn: asyncpg.Connection,
    *,
    settings: Settings,
    signer: Signer,
    device_type: str,
    timeout_s: int = 1800,
) -> dict[str, Any]:
    """Republish the previous good release (action "rollback") to every device that took the
    current one, replace its channel meta, and withdraw it everywhere else."""
    check_device_type(device_type)
    kinds = list(FLEET_KINDS)
    cur = await conn.fetchrow(Q_LATEST_FLEET_ROLLOUT, device_type, kinds)
    if cur is None:
        raise Conflict(f"no rollout of {device_type} to roll back")
    if cur["state"] == "rolled_back":
        raise Conflict(f"rollout {cur['id']} ({cur['version']}) was already rolled back")
    target = await conn.fetchrow(Q_ROLLBACK_TARGET, device_type, cur["semver"])
    if target is None:
        raise Conflict(f"no good release of {device_type} older than {cur['version']}")
    bad, good = cur["version"], target["version"]
    await conn.execute(Q_MARK_BAD, device_type, bad, f"rolled back to {good}")
    for r in await conn.fetch(Q_ROLLOUTS_OF_VERSION, device_type, bad, kinds):
        if r["state"] in ACTIVE_ROLLOUT_STATES:
            await withdraw(conn, r, reason="rolled_back")
        await conn.execute(Q_SET_STATE, r["id"], "rolled_back", f"rolled back to {good}", _FINAL_OK)
        await rollout_event(conn, r["id"], "rolled_back", target=good)
    members = [
        row["device_key"] for row in await conn.fetch(Q_ROLLBACK_MEMBERS, device_type, bad, kinds)
    ]
    cleared = await conn.fetch(Q_CLEAR_VERSION_META, device_type, bad, kinds)
    out = await _insert_rollout(
        conn,
        settings=settings,
        signer=signer,
        release=target,
        kind="rollback",
        channel=cur["channel"],
        action="rollback",
        waves=[100],
        members=dict.fromkeys(members, 0),
        max_failure_rate=1.0,
        min_booted=1.0,
        min_devices=1,
        soak_s=0,
        timeout_s=timeout_s,
    )
    channels = sorted({row["channel"] for row in cleared if row["channel"] is not None})
    for channel in channels:
        manifest = rollout_manifest(
            settings=settings,
            version=good,
            device_type=device_type,
            channel=channel,
            sha256=target["sha256"],
            size=target["size"],
            rollout=out["id"],
            action="rollback",
        )
        await meta.set_channel_meta(
            conn, device_type, channel, signed_meta(signer, manifest), out["id"]
        )
    out.update({"from_version": bad, "channels": channels})
    return out


async def pin(
    conn: asyncpg.Connection,
    *,
    settings: Settings,
    signer: Signer,
    device_key: str,
    version: str,
    timeout_s: int = 1800,
) -> dict[str, Any]:
    """Per-device meta with action "pin": the device installs exactly this version and
    ignores channel meta until unpinned; fleet rollouts skip it."""
    parse_version(version)
    dev = await conn.fetchrow(Q_DEVICE, device_key)
    if dev is None:
        raise NotFound(f"no device {device_key!r}")
    release = await _release(conn, dev["device_type"], version)
    old = await conn.fetchrow(Q_PIN, device_key)
    if old is not None:
        await conn.execute(
            "UPDATE ota_rollout SET state = 'aborted', reason = 'superseded by a new pin',"
            " finished_at = now(), updated_at = now()"
            " WHERE id = $1 AND state = ANY($2::text[])",
            old["rollout_id"],
            list(ACTIVE_ROLLOUT_STATES),
        )
    out = await _insert_rollout(
        conn,
        settings=settings,
        signer=signer,
        release=release,
        kind="pin",
        channel=dev["channel"],
        action="pin",
        waves=[100],
        members={device_key: 0},
        max_failure_rate=1.0,
        min_booted=1.0,
        min_devices=1,
        soak_s=0,
        timeout_s=timeout_s,
    )
    await conn.execute(Q_UPSERT_PIN, device_key, release["id"], out["id"])
    # A rollback still offering to the device gives way too: the pin's meta replaces its own.
    skipped = await conn.fetch(
        Q_SKIP_PINNED, device_key, [*FLEET_KINDS, "rollback"], list(ACTIVE_ROLLOUT_STATES)
    )
    for row in skipped:
        await hub_events(
            conn,
            [device_key],
            version=row["version"],
            state="skipped",
            reason="pinned",
            rollout_id=row["id"],
        )
    await hub_events(conn, [device_key], version=version, state="pinned", rollout_id=out["id"])
    out["device_key"] = device_key
    return out


async def unpin(conn: asyncpg.Connection, device_key: str) -> dict[str, Any]:
    row = await conn.fetchrow(Q_DELETE_PIN, device_key)
    if row is None:
        raise NotFound(f"device {device_key!r} is not pinned")
    await conn.execute(
        "UPDATE ota_rollout SET state = 'aborted', reason = 'unpinned', finished_at = now(),"
        " updated_at = now() WHERE id = $1 AND state = ANY($2::text[])",
        row["rollout_id"],
        list(ACTIVE_ROLLOUT_STATES),
    )
    await meta.clear_device_meta(conn, device_key)
    await hub_events(conn, [device_key], version=row["version"], state="unpinned")
    return {"device_key": device_key, "unpinned": row["version"]}
