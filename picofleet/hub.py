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
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
from fastapi import FastAPI
from pydantic_settings import BaseSettings

from picofleet import areas
from picofleet.bridge.mqtt import hub_session
from picofleet.bridge.service import Bridge, Ingest
from picofleet.broker import access, mosquitto
from picofleet.broker.policy import Policy, hub_client_ids
from picofleet.broker.tap import Tap
from picofleet.core import db, endpoints, logs, partitions
from picofleet.core.credentials import OPERATOR_USER, FleetKeys, load_fleet_keys
from picofleet.core.mqttclient import MqttTarget, hub_target
from picofleet.core.runtime import hub_database, install_signals
from picofleet.core.settings import Settings
from picofleet.core.source import Source
from picofleet.core.supervise import Supervisor
from picofleet.core.tls import TlsFiles, ensure_tls, is_loopback, server_context
from picofleet.core.topics import Topics
from picofleet.web.app import HubContext, create_app
from picofleet.web.metrics import MetricSource, metrics_app
from picofleet.web.server import serve_http

DRAIN_SECONDS = 10.0


@dataclass
class Endpoints:
    database_url: str
    mqtt_host: str
    mqtt_port: int
    http_port: int | None
    operator_port: int | None = None  # where operators connect, when not mqtt_port
    ca: Path | None = None  # the CA operators' clients trust, when their listener speaks TLS
    tls_ca: Path | None = None  # the hub's CA, when devices speak TLS


def banner(settings: Settings, keys: FleetKeys, ep: Endpoints) -> str:
    topics = Topics(settings.topic_prefix)
    host = settings.public_host or "127.0.0.1"
    op = keys.role_password(OPERATOR_USER)
    mqtt = f"{host}:{ep.mqtt_port}  ({settings.broker})"
    if ep.tls_ca is not None:
        mqtt = f"{host}:{settings.mqtts_port} TLS, {mqtt} plain on {settings.mqtt_plain_bind}"
    lines = [
        "picofleet hub is up",
        f"  data dir   {settings.data_path}",
        f"  database   {ep.database_url.split('@')[-1]}  (picofleet db url)",
        f"  mqtt       {mqtt}",
    ]
    if ep.tls_ca is not None:
        lines.append(f"  hub CA     {ep.tls_ca}  (devices and clients trust only this)")
    if ep.http_port:
        lines.append(f"  http       http://127.0.0.1:{ep.http_port}/  (/health /ready /docs)")
        if settings.https_enabled:
            lines.append(f"  https      https://{host}:{settings.https_port}/  (the network)")
        lines.append(f"  public     {endpoints.public_url(settings)}  (devices, artifact URLs)")
    sub_tls = f" --cafile {ep.ca}" if ep.ca is not None else ""
    lines += [
        "  tail every topic:",
        f"    mosquitto_sub -h {host} -p {ep.operator_port or ep.mqtt_port}{sub_tls}"
        f" -i {OPERATOR_USER} -u {OPERATOR_USER} -P {op} "
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
    session_ca: Path | None = None  # the CA of that listener, when it speaks TLS
    operator: MqttTarget | None = None  # where operators connect (the banner)
    tls_ca: Path | None = None  # the hub's CA, when devices speak TLS
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
    tls: TlsFiles | None,
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
            tls=tls,
            tls_port=settings.mqtts_port,
            plain_bind=settings.mqtt_plain_bind,
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

    # Devices cannot log in on the hub's own listener (picofleet/broker/mosquitto.py); it
    # speaks TLS unless bound to loopback.
    hub_ca = None if tls is None or is_loopback(settings.mqtt_bind) else tls.ca_cert
    return BrokerSide(
        "127.0.0.1",
        settings.mqtt_port,
        settings.hub_mqtt_port,
        session_ca=hub_ca,
        operator=MqttTarget("127.0.0.1", settings.hub_mqtt_port, hub_ca),
        tls_ca=None if tls is None else tls.ca_cert,
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
        ext = hub_target(settings, device=False)  # mqtts:// for a broker speaking TLS
        return BrokerSide(ext.host, ext.port, ext.port, session_ca=ext.ca)
    tls = ensure_tls(settings) if settings.tls else None
    if tls is not None and settings.mqtt_plain_open and not is_loopback(settings.mqtt_bind):
        logs.get("picofleet.hub").warning(
            "hub.plain_mqtt_open",
            bind=settings.mqtt_bind,
            port=settings.mqtt_port,
            why="mqtt_plain_open: device passwords cross the network in clear on this port",
        )
    policy = Policy(Topics(settings.topic_prefix), keys, hub_client_ids=hub_client_ids(settings))
    if settings.broker == "mosquitto":
        return await _managed_mosquitto(stack, settings, policy, pool, keys, tls)
    # The embedded broker feeds the bridge directly; devices' PUBACKs wait for the commit
    # (picofleet/broker/tap.py).
    tap = Tap(
        policy=policy,
        bind=settings.mqtt_plain_bind,
        port=settings.mqtt_port,
        buffer_max=settings.buffer_max_messages,
        max_packet=settings.mqtt_max_packet_bytes,
        tls=None if tls is None else (settings.mqtt_bind, settings.mqtts_port, server_context(tls)),
    )
    await stack.enter_async_context(tap)
    port = settings.mqtt_port
    operator = MqttTarget(
        "127.0.0.1",
        port if tls is None else settings.mqtts_port,
        None if tls is None else tls.ca_cert,
    )
    return BrokerSide(
        "127.0.0.1", port, port, policy=policy, tap=tap, operator=operator, tls_ca=operator.ca
    )


def metric_sources() -> list[MetricSource]:
    return [m.collect for m in areas.modules("metrics")]


def build_app(hub: HubContext) -> FastAPI:
    """The HTTP app with every area's routes and metrics."""
    return create_app(
        hub, routers=[m.router for m in areas.modules("routes")], metric_sources=metric_sources()
    )


async def start_areas(
    hub: HubContext, areas: list[ModuleType], stop: asyncio.Event, supervisor: Supervisor
) -> None:
    """Each area's background loops, supervised and restarted one by one."""
    for module in areas:
        for i, coro in enumerate(await module.attach(hub, stop)):
            name = f"{module.__name__.rsplit('.', 2)[-2]}[{i}]"
            supervisor.start(name, _reattaching(module, i, coro, hub, stop))


def _access_sync(
    broker: BrokerSide, pool: asyncpg.Pool, stop: asyncio.Event
) -> Callable[[], Awaitable[None]]:
    """The broker's view of the device table, kept current (picofleet/broker/access.py)."""
    assert broker.policy is not None
    return partial(
        access.sync_device_access,
        pool,
        broker.policy,
        stop,
        broker.on_change,
        access.POLICY_SYNC_S,
        users_state=broker.users_state,
        on_blocked=None if broker.tap is None else broker.tap.disconnect,
    )


async def start_bridge(
    stack: contextlib.AsyncExitStack, hub: HubContext, broker: BrokerSide, stop: asyncio.Event
) -> None:
    """The bridge on the tap (embedded amqtt) or on the hub's own session, then the areas'
    loops, which may use its session."""
    settings, supervisor = hub.settings, hub.supervisor
    assert supervisor is not None
    source: Source
    if broker.tap is not None:
        source = broker.tap
    else:
        target = MqttTarget(broker.mqtt_host, broker.session_port, broker.session_ca)
        source = await stack.enter_async_context(hub_session(settings, hub.keys, target))
    hub_status = Topics(settings.topic_prefix).hub_status
    source.publish(hub_status, b'{"state":"online"}', qos=1, retain=True)
    hub.bridge = Bridge(ingest=hub.ingest, session=source)
    supervisor.start("bridge", hub.bridge.run)
    # The ledger's day partitions, created ahead (picofleet/core/partitions.py).
    upkeep = partial(
        partitions.run,
        hub.pool,
        stop,
        settings.ledger_partition_ahead_days,
        settings.ledger_partition_interval_s,
    )
    supervisor.start("partitions", upkeep)
    await start_areas(hub, areas.modules("service"), stop, supervisor)


def _endpoints(url: str, broker: BrokerSide, http_port: int | None) -> Endpoints:
    op = broker.operator
    return Endpoints(
        url,
        broker.mqtt_host,
        broker.mqtt_port,
        http_port,
        operator_port=op.port if op else broker.session_port,
        ca=op.ca if op else None,
        tls_ca=broker.tls_ca,
    )


async def run_hub(
    settings: Settings,
    *,
    roles: set[str],
    stop: asyncio.Event | None = None,
    embedded_broker: bool = True,
    ready: asyncio.Event | None = None,
    handle_signals: bool = True,
    area_settings: Sequence[BaseSettings] = (),
) -> None:
    """Run the given roles ('bridge', 'http') with or without the embedded broker.

    ``area_settings`` replace what an area would read from the environment (flags of
    ``picofleet up`` such as ``--usb-gateway``).

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
            settings=settings,
            pool=pool,
            ingest=ingest,
            keys=keys,
            supervisor=supervisor,
            areas={type(a): a for a in area_settings},
        )
        if broker.policy is not None:
            supervisor.start("policy", _access_sync(broker, pool, stop))
        if "bridge" in roles:
            await start_bridge(stack, hub, broker, stop)
        http_port = settings.http_port if "http" in roles else None
        if http_port:
            app = build_app(hub)
            supervisor.start("http", partial(serve_http, app, settings, http_port, stop))
        elif settings.metrics_port:  # a bridge without HTTP still answers Prometheus
            app = metrics_app(hub, metric_sources())
            port = settings.metrics_port
            supervisor.start("metrics", partial(serve_http, app, settings, port, stop))
        if embedded_broker:
            endpoints.record(settings, database_url=url, http=bool(http_port))
            ep = _endpoints(url, broker, http_port)
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
