"""Assembling the hub: database, broker, bridge and HTTP in one asyncio loop, or one role.

``run_up`` is ``picofleet up`` (embedded defaults); ``run_role`` is ``picofleet serve ROLE``
against an external broker and database. Both build the same parts the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn

from bridge.mqtt import MqttSession
from bridge.source import Source
from broker.policy import Policy, hub_client_ids
from picofleet import db, endpoints, extensions, logs
from picofleet.credentials import (
    HUB_USER,
    OPERATOR_USER,
    FleetKeys,
    load_fleet_keys,
    read_renewed,
    read_rotation,
)
from picofleet.settings import Settings, mqtt_endpoint
from picofleet.topics import Topics

DRAIN_SECONDS = 10.0
POLICY_SYNC_S = 5.0  # how often the broker's view of devices (and a grace period) is refreshed


@dataclass
class Endpoints:
    database_url: str
    mqtt_host: str
    mqtt_port: int
    http_port: int | None


async def renewed_devices(
    settings: Settings, pool: asyncpg.Pool, keys: FleetKeys
) -> frozenset[str]:
    """Devices a managed Mosquitto lists with the current secret's password during a grace
    period: those marked renewed, and those first seen after the rotation."""
    rotation = read_rotation(settings)
    if rotation is None or keys.grace_keys() is None:
        return frozenset()
    return read_renewed(settings) | await db.devices_first_seen_since(pool, rotation.rotated_at)


def mqtt_session(settings: Settings, keys: FleetKeys, host: str, port: int) -> MqttSession:
    """The bridge's persistent session on an external broker (optionally shared)."""
    filters = Topics(settings.topic_prefix).inbound_filters()
    if settings.shared_subscription:
        filters = [f"$share/{settings.shared_subscription}/{f}" for f in filters]
    return MqttSession(
        host=host,
        port=port,
        username=HUB_USER,
        password=keys.role_password(HUB_USER),
        client_id=settings.bridge_client_id,
        filters=filters,
        buffer_max=settings.buffer_max_messages,
        keepalive=settings.mqtt_keepalive_s,
        will=(Topics(settings.topic_prefix).hub_status, b'{"state":"offline"}'),
    )


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[str]:
    """The database URL: the configured server, or the embedded cluster for the duration."""
    if settings.database_url:
        yield settings.database_url
        return
    from picofleet.pgembed import EmbeddedPostgres

    pg = EmbeddedPostgres(settings.data_path, port=settings.pg_port)
    url = await asyncio.to_thread(pg.start)
    try:
        yield url
    finally:
        await asyncio.to_thread(pg.stop)


def embedded_url(settings: Settings, *, create: bool = False) -> str:
    """URL of the hub's database for one-shot commands (the embedded cluster is started if
    needed, and created only with ``create``: never a second hub by accident)."""
    return endpoints.database_url(settings, create=create)


def install_signals(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM set ``stop``: every long-running command drains the same way."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def banner(settings: Settings, keys: FleetKeys, ep: Endpoints) -> str:
    topics = Topics(settings.topic_prefix)
    host = settings.public_host or "127.0.0.1"
    op = keys.role_password(OPERATOR_USER)
    lines = [
        "picofleet hub is up",
        f"  data dir   {settings.data_path}",
        f"  database   {ep.database_url.split('@')[-1]}  (picofleet db url)",
        f"  mqtt       {host}:{ep.mqtt_port}  ({settings.broker})",
    ]
    if ep.http_port:
        lines.append(f"  http       http://{host}:{ep.http_port}/  (/health /ready /docs)")
        lines.append(f"  public     {endpoints.public_url(settings)}  (devices, artifact URLs)")
    lines += [
        "  tail every topic:",
        f"    mosquitto_sub -h {host} -p {ep.mqtt_port} -u {OPERATOR_USER} -P {op} "
        f"-v -t '{topics.prefix}/#'",
        "  device credentials: picofleet creds device KEY",
    ]
    return "\n".join(lines)


async def grace_state(settings: Settings, pool: asyncpg.Pool, keys: FleetKeys) -> Hashable:
    """What else decides Mosquitto's users during a rotation: whether the grace period runs,
    and which devices are renewed."""
    return keys.grace_keys() is not None, await renewed_devices(settings, pool, keys)


async def sync_device_access(
    pool: asyncpg.Pool,
    policy: Policy,
    stop: asyncio.Event,
    on_change: Callable[[set[str]], Awaitable[None]] | None,
    interval: float = 5.0,
    users_state: Callable[[], Awaitable[Hashable]] | None = None,
    on_blocked: Callable[[set[str]], int] | None = None,
) -> None:
    """Keep the broker's view of blocked (and, for Mosquitto, known) devices current.

    ``users_state`` adds to what makes Mosquitto's users change: the grace period of a
    rotation (its end, devices renewed during it). ``on_blocked`` cuts the open connections
    of devices blocked since the last look (a block would otherwise wait for a reconnect).
    """
    log = logs.get("picofleet.hub")
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
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("hub.policy_sync_failed", error=str(exc)[:200])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the hub's stop event owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_http(app: Any, settings: Settings, port: int, stop: asyncio.Event) -> None:
    config = uvicorn.Config(
        app, host=settings.http_bind, port=port, log_config=None, access_log=False, lifespan="off"
    )
    server = _HttpServer(config)
    task = asyncio.create_task(server.serve(), name="hub[http].serve")
    await stop.wait()
    server.should_exit = True
    await task


async def run_hub(
    settings: Settings,
    *,
    roles: set[str],
    stop: asyncio.Event | None = None,
    embedded_broker: bool = True,
    ready: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Run the given roles ('bridge', 'http') with or without the embedded broker."""
    from bridge.service import Bridge, Ingest
    from broker.tap import Tap
    from pi_server.app import HubContext, create_app

    log = logs.get("picofleet.hub")
    stop = stop or asyncio.Event()
    if handle_signals:
        install_signals(stop)
    keys = load_fleet_keys(settings)
    topics = Topics(settings.topic_prefix)
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(database(settings))
        applied = await db.migrate(url)
        if applied:
            log.info("hub.migrated", versions=applied)
        from pi_server.security.roles import ensure_runtime_login

        # Migrations ran as the owner; the long-running pool gets only row rights.
        runtime_url = await ensure_runtime_login(url, keys)
        pool = await db.create_pool(runtime_url or url, max_size=8)
        stack.push_async_callback(pool.close)
        ingest = Ingest(settings=settings, pool=pool, keys=keys)
        await ingest.refresh_record_types(force=True)
        ingest.db_ok = True

        tap: Tap | None = None
        policy: Policy | None = None
        on_change: Callable[[set[str]], Awaitable[None]] | None = None
        users_state: Callable[[], Awaitable[Hashable]] | None = None
        if embedded_broker:
            mqtt_host, mqtt_port = "127.0.0.1", settings.mqtt_port
            policy = Policy(topics, keys, hub_client_ids=hub_client_ids(settings))
            if settings.broker == "mosquitto":
                from broker import mosquitto

                mosquitto_policy = policy

                async def write_files(active: set[str]) -> Path:
                    return mosquitto.write_config(
                        settings.data_path / "mosquitto",
                        mosquitto_policy,
                        device_keys=active,
                        bind=settings.mqtt_bind,
                        port=settings.mqtt_port,
                        renewed=await renewed_devices(settings, pool, keys),
                    )

                active, policy.blocked = await db.device_access(pool)
                managed = await stack.enter_async_context(
                    mosquitto.ManagedMosquitto(await write_files(active), port=settings.mqtt_port)
                )

                async def refresh_users(active: set[str]) -> None:
                    await write_files(active)
                    managed.reload()

                async def users_now() -> Hashable:
                    return await grace_state(settings, pool, keys)

                on_change, users_state = refresh_users, users_now
            else:
                from broker.tap import Tap

                # The embedded broker feeds the bridge directly; devices' PUBACKs wait for
                # the commit (broker/tap.py).
                tap = Tap(
                    policy=policy,
                    bind=settings.mqtt_bind,
                    port=settings.mqtt_port,
                    buffer_max=settings.buffer_max_messages,
                )
                await stack.enter_async_context(tap)
        else:
            if not settings.mqtt_url:
                raise SystemExit("picofleet: set PICOFLEET_MQTT_URL to serve the bridge")
            mqtt_host, mqtt_port = mqtt_endpoint(settings.mqtt_url)

        hub = HubContext(settings=settings, pool=pool, ingest=ingest, keys=keys)
        tasks: list[asyncio.Task[None]] = []
        if policy is not None:
            tasks.append(
                asyncio.create_task(
                    sync_device_access(
                        pool,
                        policy,
                        stop,
                        on_change,
                        POLICY_SYNC_S,
                        users_state=users_state,
                        on_blocked=None if tap is None else tap.disconnect,
                    ),
                    name="hub[policy].sync",
                )
            )
        if "bridge" in roles:
            source: Source
            if tap is not None:
                source = tap
            else:
                source = await stack.enter_async_context(
                    mqtt_session(settings, keys, mqtt_host, mqtt_port)
                )
            source.publish(topics.hub_status, b'{"state":"online"}', qos=1, retain=True)
            hub.bridge = Bridge(ingest=ingest, session=source)
            tasks.append(asyncio.create_task(hub.bridge.run(), name="hub[bridge].run"))
            for module in extensions.modules("service"):
                for i, coro in enumerate(await module.attach(hub, stop)):
                    tasks.append(asyncio.create_task(coro, name=f"{module.__name__}[{i}]"))
        http_port = settings.http_port if "http" in roles else None
        if http_port:
            app = create_app(hub)
            tasks.append(
                asyncio.create_task(
                    _serve_http(app, settings, http_port, stop), name="hub[http].loop"
                )
            )
        ep = Endpoints(url, mqtt_host, mqtt_port, http_port)
        if embedded_broker:
            endpoints.record(settings, database_url=url, http=bool(http_port))
            print(banner(settings, keys, ep), file=sys.stderr, flush=True)  # noqa: T201
        log.info("hub.ready", roles=sorted(roles), mqtt_port=mqtt_port, http_port=http_port)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("hub.stopping")
        if hub.bridge is not None:
            hub.bridge.stop()
        done, pending = await asyncio.wait(tasks, timeout=DRAIN_SECONDS)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() is not None:
                log.error("hub.task_failed", task=t.get_name(), error=repr(t.exception()))
        if hub.bridge is not None:
            hub.bridge.session.publish(
                topics.hub_status, b'{"state":"offline"}', qos=1, retain=True
            )
            await asyncio.sleep(0.1)
    log.info("hub.stopped")
