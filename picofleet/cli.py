"""``picofleet`` command line: a thin layer that builds Settings and calls the components.

Every command takes ``--data-dir`` (env ``PICOFLEET_DATA_DIR``). Errors a user can fix are
printed as ``picofleet: message`` with exit code 1; nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from picofleet.core import command
from picofleet.core.command import VERBOSE_FLAG, CommandError, DataDir, settings_for

app = typer.Typer(
    help="Run a fleet of Raspberry Pi Picos from a Raspberry Pi.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="Database: migrations and connection URL.", no_args_is_help=True)
creds_app = typer.Typer(help="MQTT credentials for devices and operators.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(creds_app, name="creds")


@app.callback()
def _options(
    verbose: Annotated[
        bool, typer.Option(VERBOSE_FLAG, help="Log lines on stderr from one-shot commands too.")
    ] = False,
) -> None:
    command.state.verbose = verbose


def _emit(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(data))
    else:
        for k, v in data.items():
            typer.echo(f"{k}: {v}")


@app.command()
def up(
    data_dir: DataDir = None,
    mqtt_port: Annotated[
        int | None, typer.Option(help="Plain MQTT port, loopback only unless opened [1883].")
    ] = None,
    mqtts_port: Annotated[int | None, typer.Option(help="MQTT over TLS port [8883].")] = None,
    http_port: Annotated[
        int | None, typer.Option(help="Plain HTTP port, loopback only unless opened [8000].")
    ] = None,
    https_port: Annotated[int | None, typer.Option(help="HTTPS port [8443].")] = None,
    broker: Annotated[str | None, typer.Option(help="amqtt (embedded) or mosquitto.")] = None,
    pg_port: Annotated[
        int | None, typer.Option(help="Embedded PostgreSQL port [chosen once, then kept].")
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option(
            help="Base URL devices fetch artifacts from [http(s)://LAN-address:http-port]."
        ),
    ] = None,
    usb_gateway: Annotated[
        bool, typer.Option(help="Also relay USB Picos' serial telemetry (picofleet.usb).")
    ] = False,
) -> None:
    """Run the whole hub: embedded PostgreSQL (unless configured), broker, bridge, HTTP.

    Its endpoints are recorded in the data dir; the other commands find the hub there."""
    from picofleet.core.endpoints import public_url as default_public_url
    from picofleet.hub import run_hub
    from picofleet.usb._settings import UsbSettings

    settings = settings_for(
        data_dir,
        starting=True,
        mqtt_port=mqtt_port,
        mqtts_port=mqtts_port,
        http_port=http_port,
        https_port=https_port,
        broker=broker,
        pg_port=pg_port,
        public_url=public_url,
    )
    # Fixed for this run: the announcer's manifests and the record name the same URL.
    settings.public_url = default_public_url(settings)
    areas = [UsbSettings(usb_gateway=True)] if usb_gateway else []
    asyncio.run(
        run_hub(settings, roles={"bridge", "http"}, embedded_broker=True, area_settings=areas)
    )


@app.command()
def serve(
    role: Annotated[str, typer.Argument(help="bridge, http or usb-gateway")],
    data_dir: DataDir = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port [8000].")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="bridge: serve /metrics for Prometheus on this port.")
    ] = None,
) -> None:
    """Run one role against PICOFLEET_DATABASE_URL and PICOFLEET_MQTT_URL."""
    from picofleet.hub import run_hub

    if role == "usb-gateway":
        from picofleet.usb.cli import gateway_cmd

        gateway_cmd(data_dir=data_dir, port=None)
        return
    if role not in ("bridge", "http"):
        raise CommandError(f"unknown role {role!r}; use bridge, http or usb-gateway")
    settings = settings_for(data_dir, http_port=http_port, metrics_port=metrics_port)
    if not settings.database_url:
        raise CommandError("serve needs PICOFLEET_DATABASE_URL (or DATABASE_URL)")
    asyncio.run(run_hub(settings, roles={role}, embedded_broker=False))


@db_app.command("migrate")
def db_migrate(data_dir: DataDir = None) -> None:
    """Apply pending migrations from sql/ (creates the embedded cluster if there is none)."""
    from picofleet.core import db
    from picofleet.core.runtime import embedded_url

    settings = settings_for(data_dir)
    applied = asyncio.run(db.migrate(embedded_url(settings, create=True)))
    typer.echo(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "")
    )


@db_app.command("url")
def db_url(data_dir: DataDir = None) -> None:
    """Print a libpq URL (psql "$(picofleet db url)")."""
    from picofleet.core.runtime import embedded_url

    typer.echo(embedded_url(settings_for(data_dir)))


@db_app.command("stop")
def db_stop(data_dir: DataDir = None) -> None:
    """Stop the embedded cluster that one-shot commands (db url, db migrate) leave running."""
    from picofleet.core.pgembed import EmbeddedPostgres

    settings = settings_for(data_dir)
    if settings.database_url:
        raise CommandError("PICOFLEET_DATABASE_URL is set: that database is not ours to stop")
    pg = EmbeddedPostgres(settings.data_path)
    was_running = pg.running()
    pg.stop()
    typer.echo("stopped" if was_running else "not running")


@creds_app.command("device")
def creds_device(
    key: Annotated[str, typer.Argument(help="device key (serial or legacy numeric id)")],
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    register: Annotated[
        bool, typer.Option(help="Also record the device, so a managed Mosquitto lets it in.")
    ] = False,
) -> None:
    """MQTT username and password of one device."""
    from picofleet.core.endpoints import fleet_keys
    from picofleet.core.topics import valid_device_key

    if not valid_device_key(key):
        raise CommandError(f"{key!r} is not a valid device key ([A-Za-z0-9_-]{{1,64}})")
    settings = settings_for(data_dir)
    keys = fleet_keys(settings)
    if register:
        from picofleet.core import db
        from picofleet.core.runtime import embedded_url

        asyncio.run(db.register_device(embedded_url(settings), key))
    _emit({"username": key, "password": keys.device_password(key)}, as_json)


@creds_app.command("operator")
def creds_operator(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """MQTT credentials (read everything, publish commands) and the HTTP operator token."""
    from picofleet.core.credentials import OPERATOR_USER
    from picofleet.core.endpoints import fleet_keys

    keys = fleet_keys(settings_for(data_dir))
    _emit(
        {
            "username": OPERATOR_USER,
            "password": keys.role_password(OPERATOR_USER),
            "http_token": keys.operator_token,
        },
        as_json,
    )


def _register_extensions() -> None:
    from picofleet import areas

    for module in areas.modules("cli"):
        module.register(app)


def _args() -> list[str]:
    """The command line, with --verbose moved first wherever it was given."""
    import sys

    args = sys.argv[1:]
    if VERBOSE_FLAG in args:
        args = [VERBOSE_FLAG, *(a for a in args if a != VERBOSE_FLAG)]
    command.state.words = tuple(a for a in args if not a.startswith("-"))[:2]
    return args


def main() -> int:
    _register_extensions()
    try:
        code = app(args=_args(), standalone_mode=False)
        if isinstance(code, int) and code:
            return code  # typer.Exit(code) from a command
    except CommandError as exc:
        typer.echo(f"picofleet: {exc}", err=True)
        return 1
    except Exception as exc:
        from picofleet.core.db import MigrationError
        from picofleet.core.endpoints import NoHub
        from picofleet.core.pgembed import PostgresUnavailable
        from picofleet.core.supervise import HubFailed

        # HubFailed: a task kept dying; exit non-zero so that systemd restarts the hub.
        if isinstance(exc, (PostgresUnavailable, MigrationError, NoHub, OSError, HubFailed)):
            typer.echo(f"picofleet: {exc}", err=True)
            return 1
        if isinstance(exc, (typer.Abort, KeyboardInterrupt)):
            return 130
        if type(exc).__name__ in (
            "UsageError",
            "NoSuchOption",
            "BadParameter",
            "MissingParameter",
            "NoArgsIsHelpError",
        ):
            # click's, or the copy of click that newer Typer vendors (typer._click)
            show = getattr(exc, "show", None)
            if callable(show):
                show()
            return 2
        raise
    return 0
