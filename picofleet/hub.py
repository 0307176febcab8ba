"""Assembling the hub: database, broker, bridge and HTTP in one asyncio loop, or one role.

``run_up`` is ``picofleet up`` (embedded defaults); ``run_role`` is ``picofleet serve ROLE``
against an external broker and database. Both build the same parts the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
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
from picofleet.supervise import Supervisor
from picofleet.topics import Topics

DRAIN_SECONDS = 10.0
POLICY_SYNC_S = 5.0  # how often the broker's view of devices (and a grace period) is refreshed


@dataclass
class Endpoints:
    database_url: str
    mqtt_host: str
    mqtt_port: int
    http_port: int | None
    operator_port: int | None = None  # where operators connect, when not mqtt_port


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
        f"    mosquitto_sub -h {host} -p {ep.operator_port or ep.mqtt_port} -u {OPERATOR_USER}"
        f" -P {op} "
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


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the hub's stop event owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_http(app: Any, settings: Settings, port: int, stop: asyncio.Event) -> None:
    from pi_server.header_timeout import header_timeout_protocol

    config = uvicorn.Config(
        app,
        host=settings.http_bind,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        http=header_timeout_protocol(settings.http_header_timeout_s),
    )
    server = _HttpServer(config)
    task = asyncio.create_task(server.serve(), name="hub[http].serve")
    await stop.wait()
    server.should_exit = True
    await task


def _reattaching(
    module: ModuleType, i: int, first: Coroutine[Any, Any, None], hub: Any, stop: asyncio.Event
) -> Callable[[], Awaitable[None]]:
    """The i-th loop of an extension as a restartable task: the first run is the coroutine
    ``attach`` gave; a restart attaches the module again and runs its i-th loop only."""
    given = [first]

    async def run() -> None:
        if given:
            await given.pop()
            return
        loops = await module.attach(hub, stop)
        for j, other in enumerate(loops):
            if j != i:
                other.close()  # never started: only the i-th loop is restarted
        await loops[i]

    return run


async def run_hub(
    settings: Settings,
    *,
    roles: set[str],
    stop: asyncio.Event | None = None,
    embedded_broker: bool = True,
    ready: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Run the given roles ('bridge', 'http') with or without the embedded broker.

    Raises ``HubFailed`` (after a clean shutdown) when a supervised task kept failing."""
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
            session_port = mqtt_port
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
                        hub_port=settings.hub_mqtt_port,
                        renewed=await renewed_devices(settings, pool, keys),
                        max_packet=settings.mqtt_max_packet_bytes,
                    )

                active, policy.blocked = await db.device_access(pool)
                managed = await stack.enter_async_context(
                    mosquitto.ManagedMosquitto(
                        await write_files(active),
                        port=settings.mqtt_port,
                        hub_port=settings.hub_mqtt_port,
                    )
                )
                # Devices cannot log in on the hub's own listener (broker/mosquitto.py).
                session_port = settings.hub_mqtt_port

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
                    max_packet=settings.mqtt_max_packet_bytes,
                )
                await stack.enter_async_context(tap)
        else:
            if not settings.mqtt_url:
                raise SystemExit("picofleet: set PICOFLEET_MQTT_URL to serve the bridge")
            mqtt_host, mqtt_port = mqtt_endpoint(settings.mqtt_url)
            session_port = mqtt_port

        supervisor = Supervisor(
            stop,
            max_failures=settings.task_max_failures,
            window_s=settings.task_failure_window_s,
        )
        hub = HubContext(
            settings=settings, pool=pool, ingest=ingest, keys=keys, supervisor=supervisor
        )
        if policy is not None:
            supervisor.start(
                "policy",
                partial(
                    sync_device_access,
                    pool,
                    policy,
                    stop,
                    on_change,
                    POLICY_SYNC_S,
                    users_state=users_state,
                    on_blocked=None if tap is None else tap.disconnect,
                ),
            )
        if "bridge" in roles:
            source: Source
            if tap is not None:
                source = tap
            else:
                source = await stack.enter_async_context(
                    mqtt_session(settings, keys, mqtt_host, session_port)
                )
            source.publish(topics.hub_status, b'{"state":"online"}', qos=1, retain=True)
            hub.bridge = Bridge(ingest=ingest, session=source)
            supervisor.start("bridge", hub.bridge.run)
            for module in extensions.modules("service"):
                for i, coro in enumerate(await module.attach(hub, stop)):
                    name = f"{module.__name__.rsplit('.', 2)[-2]}[{i}]"
                    supervisor.start(name, _reattaching(module, i, coro, hub, stop))
        http_port = settings.http_port if "http" in roles else None
        if http_port:
            app = create_app(hub)
            supervisor.start("http", partial(_serve_http, app, settings, http_port, stop))
        ep = Endpoints(url, mqtt_host, mqtt_port, http_port, operator_port=session_port)
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
        await supervisor.join(DRAIN_SECONDS)
        if hub.bridge is not None:
            hub.bridge.session.publish(
                topics.hub_status, b'{"state":"offline"}', qos=1, retain=True
            )
            await asyncio.sleep(0.1)
    log.info("hub.stopped")
    supervisor.raise_if_failed()
