"""Assembling the hub: database, broker, bridge, areas and HTTP in one asyncio loop.

``run_hub`` serves ``picofleet up`` (all roles, embedded broker) and ``picofleet serve ROLE``
(one role against an external broker and database); both build the same parts the same way:
``open_database``, ``open_broker``, then the bridge, the areas' loops and the HTTP app.
This is the top floor: it imports every other part, and nothing imports it but the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
from fastapi import FastAPI

from picofleet import areas
from picofleet.bridge.mqtt import hub_session
from picofleet.bridge.service import Bridge, Ingest
from picofleet.broker import access, mosquitto
from picofleet.broker.policy import Policy, hub_client_ids
from picofleet.broker.tap import Tap
from picofleet.core import db, endpoints, logs, partitions
from picofleet.core.credentials import OPERATOR_USER, FleetKeys, load_fleet_keys
from picofleet.core.runtime import hub_database, install_signals
from picofleet.core.settings import Settings, mqtt_endpoint
from picofleet.core.source import Source
from picofleet.core.supervise import Supervisor
from picofleet.core.topics import Topics
from picofleet.web.app import HubContext, create_app
from picofleet.web.server import serve_http

DRAIN_SECONDS = 10.0


@dataclass
class Endpoints:
    database_url: str
    mqtt_host: str
    mqtt_port: int
    http_port: int | None
    operator_port: int | None = None  # where operators connect, when not mqtt_port


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


@dataclass
class BrokerSide:
    """What the broker part of the assembly hands the rest."""

    mqtt_host: str
    mqtt_port: int
    session_port: int  # where the hub's own session connects
    policy: Policy | None = None  # the embedded brokers' access policy
    tap: Tap | None = None  # the embedded amqtt broker feeds the bridge directly
    on_change: Callable[[set[str]], Awaitable[None]] | None = None
    users_state: Callable[[], Awaitable[Hashable]] | None = None


async def open_database(
    stack: contextlib.AsyncExitStack, settings: Settings, keys: FleetKeys
) -> tuple[str, asyncpg.Pool, Ingest]:
    """Start (or find) the database, migrate it, and open the runtime pool and the ingest."""
    from picofleet.security.roles import ensure_runtime_login

    url = await stack.enter_async_context(hub_database(settings))
    applied = await db.migrate(url)
    if applied:
        logs.get("picofleet.hub").info("hub.migrated", versions=applied)
    # Migrations ran as the owner; the long-running pool gets only row rights.
    runtime_url = await ensure_runtime_login(url, keys)
    pool = await db.create_pool(runtime_url or url, max_size=8)
    stack.push_async_callback(pool.close)
    ingest = Ingest(settings=settings, pool=pool, keys=keys)
    await ingest.refresh_record_types(force=True)
    ingest.db_ok = True
    return url, pool, ingest


async def _managed_mosquitto(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    policy: Policy,
    pool: asyncpg.Pool,
    keys: FleetKeys,
) -> BrokerSide:
    async def write_files(active: set[str]) -> Path:
        return mosquitto.write_config(
            settings.data_path / "mosquitto",
            policy,
            device_keys=active,
            bind=settings.mqtt_bind,
            port=settings.mqtt_port,
            hub_port=settings.hub_mqtt_port,
            renewed=await access.renewed_devices(settings, pool, keys),
            max_packet=settings.mqtt_max_packet_bytes,
        )

    active, policy.blocked = await db.device_access(pool)
    managed = await stack.enter_async_context(
        mosquitto.ManagedMosquitto(
            await write_files(active), port=settings.mqtt_port, hub_port=settings.hub_mqtt_port
        )
    )

    async def refresh_users(active: set[str]) -> None:
        await write_files(active)
        managed.reload()

    async def users_now() -> Hashable:
        return await access.grace_state(settings, pool, keys)

    # Devices cannot log in on the hub's own listener (picofleet/broker/mosquitto.py).
    return BrokerSide(
        "127.0.0.1",
        settings.mqtt_port,
        settings.hub_mqtt_port,
        policy=policy,
        on_change=refresh_users,
        users_state=users_now,
    )


async def open_broker(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    keys: FleetKeys,
    pool: asyncpg.Pool,
    *,
    embedded: bool,
) -> BrokerSide:
    """The embedded broker (amqtt with its tap, or a managed Mosquitto), or the external
    broker of PICOFLEET_MQTT_URL."""
    if not embedded:
        if not settings.mqtt_url:
            raise SystemExit("picofleet: set PICOFLEET_MQTT_URL to serve the bridge")
        host, port = mqtt_endpoint(settings.mqtt_url)
        return BrokerSide(host, port, port)
    policy = Policy(Topics(settings.topic_prefix), keys, hub_client_ids=hub_client_ids(settings))
    if settings.broker == "mosquitto":
        return await _managed_mosquitto(stack, settings, policy, pool, keys)
    # The embedded broker feeds the bridge directly; devices' PUBACKs wait for the commit
    # (picofleet/broker/tap.py).
    tap = Tap(
        policy=policy,
        bind=settings.mqtt_bind,
        port=settings.mqtt_port,
        buffer_max=settings.buffer_max_messages,
        max_packet=settings.mqtt_max_packet_bytes,
    )
    await stack.enter_async_context(tap)
    port = settings.mqtt_port
    return BrokerSide("127.0.0.1", port, port, policy=policy, tap=tap)


def build_app(hub: HubContext) -> FastAPI:
    """The HTTP app with every area's routes."""
    return create_app(hub, routers=[m.router for m in areas.modules("routes")])


async def start_areas(
    hub: HubContext, areas: list[ModuleType], stop: asyncio.Event, supervisor: Supervisor
) -> None:
    """Each area's background loops, supervised and restarted one by one."""
    for module in areas:
        for i, coro in enumerate(await module.attach(hub, stop)):
            name = f"{module.__name__.rsplit('.', 2)[-2]}[{i}]"
            supervisor.start(name, _reattaching(module, i, coro, hub, stop))


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
    log = logs.get("picofleet.hub")
    stop = stop or asyncio.Event()
    if handle_signals:
        install_signals(stop)
    keys = load_fleet_keys(settings)
    topics = Topics(settings.topic_prefix)
    async with contextlib.AsyncExitStack() as stack:
        url, pool, ingest = await open_database(stack, settings, keys)
        broker = await open_broker(stack, settings, keys, pool, embedded=embedded_broker)
        supervisor = Supervisor(
            stop,
            max_failures=settings.task_max_failures,
            window_s=settings.task_failure_window_s,
        )
        hub = HubContext(
            settings=settings, pool=pool, ingest=ingest, keys=keys, supervisor=supervisor
        )
        if broker.policy is not None:
            supervisor.start(
                "policy",
                partial(
                    access.sync_device_access,
                    pool,
                    broker.policy,
                    stop,
                    broker.on_change,
                    access.POLICY_SYNC_S,
                    users_state=broker.users_state,
                    on_blocked=None if broker.tap is None else broker.tap.disconnect,
                ),
            )
        if "bridge" in roles:
            source: Source
            if broker.tap is not None:
                source = broker.tap
            else:
                source = await stack.enter_async_context(
                    hub_session(settings, keys, broker.mqtt_host, broker.session_port)
                )
            source.publish(topics.hub_status, b'{"state":"online"}', qos=1, retain=True)
            hub.bridge = Bridge(ingest=ingest, session=source)
            supervisor.start("bridge", hub.bridge.run)
            supervisor.start(
                "partitions",
                partial(
                    partitions.run,
                    pool,
                    stop,
                    settings.ledger_partition_ahead_days,
                    settings.ledger_partition_interval_s,
                ),
            )
            await start_areas(hub, areas.modules("service"), stop, supervisor)
        http_port = settings.http_port if "http" in roles else None
        if http_port:
            app = build_app(hub)
            supervisor.start("http", partial(serve_http, app, settings, http_port, stop))
        ep = Endpoints(
            url, broker.mqtt_host, broker.mqtt_port, http_port, operator_port=broker.session_port
        )
        if embedded_broker:
            endpoints.record(settings, database_url=url, http=bool(http_port))
            print(banner(settings, keys, ep), file=sys.stderr, flush=True)  # noqa: T201
        log.info("hub.ready", roles=sorted(roles), mqtt_port=broker.mqtt_port, http_port=http_port)
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
