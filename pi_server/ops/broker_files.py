"""Mosquitto's generated files (``picofleet broker config``), kept current from the device table.

Mosquitto cannot derive a device's password, so its password file must list every device the
hub knows. ``picofleet up --broker mosquitto`` rewrites it itself; when Mosquitto runs on its
own (compose.yaml), ``picofleet broker config --watch`` does, and whatever runs Mosquitto
sends it SIGHUP when the files change (deploy/mosquitto/run.sh). Files are rewritten only when
the set of admitted devices (or a rotation's grace period) changes: each write salts the
hashes anew, so unchanged files rewritten would look like a change and reload the broker for
nothing. During a fleet-secret rotation the files follow the hub's own rule (picofleet.hub
``renewed_devices``): devices not yet renewed keep the previous secret's password until the
grace period ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from broker import mosquitto
from broker.policy import Policy
from picofleet import db, logs


@dataclass
class BrokerFiles:
    """mosquitto.conf, passwd and acl in ``out`` for the devices admitted."""

    out: Path
    policy: Policy
    bind: str
    port: int
    extra: frozenset[str] = frozenset()  # admitted besides the database's (--device)
    owner: tuple[int, int] | None = None  # chown to the broker's uid:gid

    def write(self, active: set[str], renewed: frozenset[str] = frozenset()) -> set[str]:
        """Write the files for ``active`` devices; returns the devices admitted."""
        keys = set(active) | self.extra
        conf = mosquitto.write_config(
            self.out,
            self.policy,
            device_keys=keys,
            bind=self.bind,
            port=self.port,
            renewed=renewed,
        )
        if self.owner is not None:
            for path in (self.out, conf, self.out / "passwd", self.out / "acl"):
                os.chown(path, *self.owner)
        return keys - self.policy.blocked


Renewed = Callable[[asyncpg.Pool], Awaitable[frozenset[str]]]


async def sync(
    files: BrokerFiles,
    url: str,
    *,
    stop: asyncio.Event | None = None,
    interval: float = 5.0,
    renewed: Renewed | None = None,
) -> set[str]:
    """Write the files from the device table once (``stop`` None), or until ``stop`` is set,
    rewriting them whenever the admitted devices change. Returns the devices last admitted.

    Once: a database error is raised. Watching: it is logged and retried, and the files
    already written stay in force.
    """
    log = logs.get("pi_server.ops.broker")
    pool = await db.create_pool(url, min_size=1, max_size=1)
    written: tuple[set[str], bool, frozenset[str]] | None = None
    admitted: set[str] = set()
    try:
        while True:
            try:
                active, files.policy.blocked = await db.device_access(pool)
                moved = frozenset() if renewed is None else await renewed(pool)
                state = (active, files.policy.keys.grace_keys() is not None, moved)
                if state != written:
                    admitted = await asyncio.to_thread(files.write, active, moved)
                    written = state
                    log.info("broker.files_written", out=str(files.out), devices=len(admitted))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if stop is None:
                    raise
                log.warning("broker.files_sync_failed", error=str(exc)[:200])
            if stop is None:
                return admitted
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return admitted
    finally:
        await pool.close()
