"""Mosquitto's generated files (``picofleet broker config``), kept current from the device table.

Mosquitto cannot derive a device's password, so its password file must list every device the
hub knows. ``picofleet up --broker mosquitto`` rewrites it itself; when Mosquitto runs on its
own (compose.yaml), ``picofleet broker config --watch`` does, and whatever runs Mosquitto
sends it SIGHUP when the files change (deploy/mosquitto/run.sh). Files are rewritten only when
the set of admitted devices (or a rotation's grace period) changes: each write salts the
hashes anew, so unchanged files rewritten would look like a change and reload the broker for
nothing. The staff's dynamic-security.json keeps its hashes while they match (it changes only
with the fleet secret; run.sh restarts Mosquitto then, as the plugin reads it only at start).
During a fleet-secret rotation the files follow the hub's own rule (picofleet.hub
``renewed_devices``): devices not yet renewed keep the previous secret's password until the
grace period ends.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

from picofleet.broker import mosquitto
from picofleet.broker.access import grace_state, renewed_devices, sync_device_access
from picofleet.broker.policy import Policy
from picofleet.core import db, logs
from picofleet.core.files import replace_file
from picofleet.core.settings import MQTT_MAX_PACKET_BYTES, Settings
from picofleet.core.tls import TlsFiles


@dataclass
class BrokerFiles:
    """mosquitto.conf, passwd, acl and dynamic-security.json in ``out`` for the devices
    admitted."""

    out: Path
    policy: Policy
    bind: str
    port: int  # devices' listener
    hub_port: int  # the hub's and operators' listener
    extra: frozenset[str] = frozenset()  # admitted besides the database's (--device)
    owner: tuple[int, int] | None = None  # chown to the broker's uid:gid
    max_packet: int = MQTT_MAX_PACKET_BYTES  # settings.mqtt_max_packet_bytes
    plugin: str | None = None  # the dynamic security plugin where Mosquitto runs [found here]
    # Devices over TLS on tls_port with the hub CA's server certificate (copied into out/tls
    # for the broker's container); plain `port` then listens on loopback only.
    tls: TlsFiles | None = None
    tls_port: int | None = None

    def _tls_copy(self) -> TlsFiles | None:
        if self.tls is None:
            return None
        d = self.out / "tls"
        copy = TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key")
        for src, dst, mode in (
            (self.tls.ca_cert, copy.ca_cert, 0o644),
            (self.tls.cert, copy.cert, 0o644),
            (self.tls.key, copy.key, 0o600),
        ):
            replace_file(dst, src.read_bytes(), mode=mode)
            if self.owner is not None:
                os.chown(dst, *self.owner)
        if self.owner is not None:
            os.chown(d, *self.owner)
        return copy

    def write(self, active: set[str], renewed: frozenset[str] = frozenset()) -> set[str]:
        """Write the files for ``active`` devices; returns the devices admitted."""
        keys = set(active) | self.extra
        conf = mosquitto.write_config(
            self.out,
            self.policy,
            device_keys=keys,
            bind=self.bind,
            port=self.port,
            hub_port=self.hub_port,
            renewed=renewed,
            max_packet=self.max_packet,
            plugin=self.plugin,
            tls=self._tls_copy(),
            tls_port=self.tls_port,
            # The hub's listener is on the compose network only (never published).
            hub_tls=False,
        )
        if self.owner is not None:
            names = ("passwd", "acl", mosquitto.DYNSEC_FILE)
            for path in (self.out, conf, *(self.out / f for f in names)):
                os.chown(path, *self.owner)
        return set(mosquitto.admitted(self.policy, keys))


async def sync(
    files: BrokerFiles,
    url: str,
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    interval: float = 5.0,
) -> set[str]:
    """Write the files from the device table once (``stop`` None), or keep them current until
    ``stop`` is set, with the hub's own loop (``broker.access.sync_device_access``). Returns
    the devices last admitted.

    Once: a database error is raised. Watching: it is logged and retried, and the files
    already written stay in force.
    """
    log = logs.get("picofleet.ops.broker")
    pool = await db.create_pool(url, min_size=1, max_size=1)
    keys = files.policy.keys
    admitted: set[str] = set()

    async def write(active: set[str]) -> None:
        nonlocal admitted
        moved = await renewed_devices(settings, pool, keys)
        admitted = await asyncio.to_thread(files.write, active, moved)
        log.info("broker.files_written", out=str(files.out), devices=len(admitted))

    async def users_state() -> Hashable:
        return await grace_state(settings, pool, keys)

    try:
        if stop is None:
            active, files.policy.blocked = await db.device_access(pool)
            await write(active)
        else:
            await sync_device_access(
                pool, files.policy, stop, write, interval, users_state=users_state
            )
        return admitted
    finally:
        await pool.close()
