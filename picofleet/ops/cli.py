"""Operator commands: ``tail``, ``doctor``, ``smoke`` and ``broker config``.

They talk to a hub from outside, like an operator would: MQTT with the operator's (or a
throwaway device's) derived credentials, HTTP with the operator token. None of them creates
a fleet secret: a missing one is an error, never a new fleet.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

import typer

from picofleet.core.command import CommandError, DataDir, settings_for
from picofleet.core.credentials import OPERATOR_USER, FleetKeys
from picofleet.core.endpoints import fleet_keys, local_http_url
from picofleet.core.mqttclient import MqttTarget, hub_target
from picofleet.core.settings import Settings
from picofleet.core.tls import TlsError, trusted_ca
from picofleet.core.topics import Topics
from picofleet.ops import device_cli

MqttOpt = Annotated[
    str | None,
    typer.Option(
        "--mqtt",
        help="Broker [mqtts://]HOST:PORT [PICOFLEET_MQTT_URL or this host's listener].",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON output.")]


def keys_for(settings: Settings) -> FleetKeys:
    # Without the previous secret: these commands act as operators, never in a grace period.
    return FleetKeys(fleet_keys(settings).secret)


def _broker(settings: Settings, mqtt: str | None, *, device: bool = False) -> MqttTarget:
    """Where to connect: as a device (smoke) to the devices' listener, else to the hub's
    (they differ on a managed Mosquitto, picofleet/broker/mosquitto.py); over TLS when the
    hub speaks it."""
    try:
        return hub_target(settings, device=device, url=mqtt)
    except (ValueError, TlsError) as exc:
        raise CommandError(str(exc)) from None


def tail(
    pattern: Annotated[
        str | None, typer.Argument(help="MQTT topic filter or device key [every topic].")
    ] = None,
    errors: Annotated[bool, typer.Option("--errors", help="Only rejected messages.")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="`topic payload`, like mosquitto_sub -v.")] = (
        False
    ),
    count: Annotated[int | None, typer.Option(help="Exit after this many messages.")] = None,
    duration: Annotated[float | None, typer.Option(help="Exit after this many seconds.")] = None,
    mqtt: MqttOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Follow the fleet's topics: one decoded line per message, with the device's key."""
    from rich.console import Console
    from rich.text import Text

    from picofleet.core.mqttclient import ConnectFailed, MqttSession
    from picofleet.ops import tail as tl

    settings = settings_for(data_dir)
    keys = keys_for(settings)
    topics = Topics(settings.topic_prefix)
    try:
        sel = tl.select(topics, pattern, errors=errors)
    except tl.PatternError as exc:
        raise CommandError(str(exc)) from None
    target = _broker(settings, mqtt)
    console = Console(highlight=False, soft_wrap=True)
    colour = console.is_terminal
    deadline = time.monotonic() + duration if duration is not None else None
    shown = 0
    try:
        session = MqttSession(
            target=target,
            username=OPERATOR_USER,
            password=keys.role_password(OPERATOR_USER),
            clean_session=True,
            manual_ack=False,
            drop_when_full=True,  # a reader that cannot keep up loses messages, not memory
            buffer_max=10000,
        )
        with session as client:
            client.subscribe(sel.filters)
            if colour:
                console.print(f"[dim]following {' '.join(sel.filters)} on {target}[/dim]")
            while count is None or shown < count:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                msg = client.get(timeout=0.25)
                if msg is None:
                    continue
                line = tl.describe(topics, msg.topic, msg.payload, retained=msg.retained)
                if sel.device is not None and line.device != sel.device:
                    continue
                shown += 1
                if raw:
                    typer.echo(f"{msg.topic} {msg.payload.decode('utf-8', 'replace')}")
                elif colour:
                    text = Text(f"{line.time} ", style="dim")
                    text.append(f"{line.device:<16} ", style="bold")
                    text.append(f"{line.kind:<10} ", style=line.style)
                    text.append(line.text)
                    if line.retained:
                        text.append(" (retained)", style="dim")
                    console.print(text)
                else:
                    typer.echo(line.plain())
    except ConnectFailed as exc:
        raise CommandError(f"cannot follow {target}: {exc.reason}") from None
    except KeyboardInterrupt:
        return
    if count is not None and shown < count:
        raise CommandError(f"{shown} of {count} messages within {duration:g} s")


def doctor(
    mqtt: MqttOpt = None,
    http: Annotated[
        str | None,
        typer.Option("--http", help="Hub URL that must answer (without it, a free port passes)."),
    ] = None,
    skip: Annotated[
        list[str] | None, typer.Option("--skip", help="Leave out a check (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
    data_dir: DataDir = None,
) -> None:
    """Pre-flight checks: database, migrations, secrets, clock, disk, broker, ports."""
    from picofleet.ops import doctor as dr

    unknown = set(skip or ()) - set(dr.CHECKS)
    if unknown:
        raise CommandError(f"unknown check(s) {sorted(unknown)}; known: {', '.join(dr.CHECKS)}")
    settings = settings_for(data_dir)
    target = dr.target_for(settings, mqtt=mqtt, http=http, skip=frozenset(skip or ()))
    results = asyncio.run(dr.run(target))
    if as_json:
        typer.echo(dr.as_json(results))
    else:
        for r in results:
            typer.echo(r.line())
    if not dr.ok(results):
        failed = [r.name for r in results if r.status is dr.Status.FAIL]
        raise CommandError(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}")


def smoke(
    http: Annotated[
        str | None, typer.Option("--http", help="Hub URL [http(s)://127.0.0.1:http_port].")
    ] = None,
    mqtt: MqttOpt = None,
    device: Annotated[str | None, typer.Option(help="Device key to use [smoke-<random>].")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each step may wait.")] = 15.0,
    wait: Annotated[float, typer.Option(help="Seconds to wait for /health to answer.")] = 0.0,
    as_json: JsonOpt = False,
    data_dir: DataDir = None,
) -> None:
    """Post-deploy smoke test of a running hub (health, MQTT -> PostgreSQL, errors, clean-up)."""
    from picofleet.core.topics import valid_device_key
    from picofleet.ops import smoke as sm

    settings = settings_for(data_dir)
    target = _broker(settings, mqtt, device=True)
    run = sm.Smoke(
        http=http or local_http_url(settings),
        mqtt_host=target.host,
        mqtt_port=target.port,
        mqtt_ca=target.ca,
        http_ca=trusted_ca(settings),
        keys=keys_for(settings),
        topics=Topics(settings.topic_prefix),
        timeout=timeout,
        wait=wait,
    )
    if device is not None:
        if not valid_device_key(device):
            raise CommandError(f"{device!r} is not a valid device key")
        run.device_key = device
    steps = run.run()
    if as_json:
        typer.echo(sm.as_json(run))
    else:
        for s in steps:
            typer.echo(s.line())
    if not sm.ok(steps):
        failed = [s.name for s in steps if s.ok is False]
        raise CommandError(f"smoke: failed: {', '.join(failed)}")


def broker_config(
    out: Annotated[Path, typer.Option("--out", help="Directory for mosquitto.conf, passwd, acl.")],
    port: Annotated[int, typer.Option(help="Devices' listener port.")] = 1883,
    bind: Annotated[str, typer.Option(help="Listener address.")] = "0.0.0.0",
    hub_port: Annotated[
        int | None, typer.Option(help="The hub's and operators' listener port [port + 1].")
    ] = None,
    tls_port: Annotated[
        int | None,
        typer.Option(
            help="Devices over TLS on this port with the hub's CA (made in the data dir if "
            "missing); the plain port then listens on loopback only."
        ),
    ] = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", help="Device key to admit (repeatable).")
    ] = None,
    from_db: Annotated[
        bool, typer.Option("--from-db/--no-db", help="Admit every unblocked device in the DB.")
    ] = True,
    owner: Annotated[
        str | None, typer.Option(help="chown the files to UID:GID (the broker's user).")
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Keep running: rewrite the files whenever devices are added, blocked or "
            "unblocked in the DB (the broker must then be sent SIGHUP).",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option(help="Seconds between DB checks with --watch.", min=0.05)
    ] = 5.0,
    dynsec_plugin: Annotated[
        str | None,
        typer.Option(
            help="Path of mosquitto_dynamic_security.so where Mosquitto runs [found on this "
            "machine, else the eclipse-mosquitto image's /usr/lib one]."
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Write Mosquitto's config, password file, ACL and dynamic-security file for this fleet
    (then SIGHUP it)."""
    import asyncpg

    from picofleet.broker.policy import Policy, hub_client_ids
    from picofleet.core.runtime import install_signals
    from picofleet.core.topics import valid_device_key
    from picofleet.ops.broker_files import BrokerFiles, sync

    settings = settings_for(data_dir)
    keys = fleet_keys(settings)  # with the previous secret too while a grace period runs
    extra = frozenset(device or ())
    bad = sorted(k for k in extra if not valid_device_key(k))
    if bad:
        raise CommandError(f"not valid device keys: {bad}")
    ids: tuple[int, int] | None = None
    if owner:
        uid, _, gid = owner.partition(":")
        try:
            ids = (int(uid), int(gid or uid))
        except ValueError:
            raise CommandError(f"--owner wants numeric UID[:GID], not {owner!r}") from None
    tls = None
    if tls_port is not None:
        from picofleet.core.tls import ensure_tls

        try:
            tls = ensure_tls(settings)
        except TlsError as exc:
            raise CommandError(str(exc)) from None
    url = settings.database_url if from_db else None
    if watch and not url:
        raise CommandError("--watch follows the device table: set PICOFLEET_DATABASE_URL")
    files = BrokerFiles(
        out=out.expanduser().absolute(),  # the conf names passwd and acl by absolute path
        policy=Policy(Topics(settings.topic_prefix), keys, hub_client_ids=hub_client_ids(settings)),
        bind=bind,
        port=port,
        hub_port=hub_port or port + 1,
        extra=extra,
        owner=ids,
        max_packet=settings.mqtt_max_packet_bytes,
        plugin=dynsec_plugin,
        tls=tls,
        tls_port=tls_port,
    )

    if url is None:
        admitted = files.write(set())
    elif not watch:
        try:
            admitted = asyncio.run(sync(files, url, settings))
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise CommandError(f"cannot read the devices from the database: {exc}") from None
    else:

        async def follow() -> None:
            stop = asyncio.Event()
            install_signals(stop)
            await sync(files, url, settings, stop=stop, interval=interval)

        asyncio.run(follow())
        return
    typer.echo(f"wrote {files.out / 'mosquitto.conf'} ({len(admitted)} device(s) admitted)")


def register(app: typer.Typer) -> None:
    app.command()(tail)
    app.command()(doctor)
    app.command()(smoke)
    broker_app = typer.Typer(help="The production broker (Mosquitto).", no_args_is_help=True)
    broker_app.command("config")(broker_config)
    app.add_typer(broker_app, name="broker")
    app.add_typer(device_cli.app, name="device")
