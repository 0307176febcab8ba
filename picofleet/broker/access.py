"""The broker's view of the device table: who may connect, who is blocked, and, for a
managed Mosquitto, the password file regenerated when that changes.

The device table is the one source the broker's access is built from; the hub runs
``sync_device_access`` as a supervised loop, ``picofleet broker sync`` runs it on its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable

import asyncpg

from picofleet.broker.policy import Policy
from picofleet.core import db, logs
from picofleet.core.credentials import FleetKeys, read_renewed, read_rotation
from picofleet.core.settings import Settings

POLICY_SYNC_S = 5.0  # how often the broker's view of devices (and a grace period) is refreshed


async def renewed_devices(
    settings: Settings, pool: asyncpg.Pool, keys: FleetKeys
) -> frozenset[str]:
    """Devices a managed Mosquitto lists with the current secret's password during a grace
    period: those marked renewed, and those first seen after the rotation."""
    rotation = read_rotation(settings)
    if rotation is None or keys.grace_keys() is None:
        return frozenset()
    return read_renewed(settings) | await db.devices_first_seen_since(pool, rotation.rotated_at)


async def grace_state(settings: Settings, pool: asyncpg.Pool, keys: FleetKeys) -> Hashable:
    """What else decides Mosquitto's users during a rotation: whether the grace period runs,
    and which devices are renewed."""
    return keys.grace_keys() is not None, await renewed_devices(settings, pool, keys)


async def sync_device_access(
    pool: asyncpg.Pool,
    policy: Policy,
    stop: asyncio.Event,
    on_change: Callable[[set[str]], Awaitable[None]] | None,
    interval: float = POLICY_SYNC_S,
    users_state: Callable[[], Awaitable[Hashable]] | None = None,
    on_blocked: Callable[[set[str]], int] | None = None,
) -> None:
    """Keep the broker's view of blocked (and, for Mosquitto, known) devices current.

    ``users_state`` adds to what makes Mosquitto's users change: the grace period of a
    rotation (its end, devices renewed during it). ``on_blocked`` cuts the open connections
    of devices blocked since the last look (a block would otherwise wait for a reconnect).
    """
    log = logs.get("picofleet.broker.access")
    known: tuple[set[str], Hashable] | None = None
    while not stop.is_set():
        try:
            before = policy.blocked
            active, policy.blocked = await db.device_access(pool)
            newly = policy.blocked - before
            if newly and on_blocked is not None:
                log.info("hub.blocked_disconnected", devices=sorted(newly), n=on_blocked(newly))
            state = (active, None if users_state is None else await users_state())
            # The first look counts as a change too: devices may have come and gone since
            # the caller last wrote what on_change writes.
            if on_change is not None and state != known:
                await on_change(active)
                log.info("hub.broker_users_updated", devices=len(active))
            known = state
        except (
            OSError,
            TimeoutError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,  # a connection left mid-operation by an outage
        ) as exc:
            log.warning("hub.policy_sync_failed", error=str(exc)[:200])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
