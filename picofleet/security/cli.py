"""``picofleet creds rotate | renewed | end-grace``: rotating the fleet secret.

None of these print a secret: device credentials come from ``picofleet creds device`` and
the operator's from ``picofleet creds operator``, as before.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from picofleet.core.command import CommandError, DataDir, settings_for
from picofleet.core.topics import valid_device_key
from picofleet.security.rotation import DEFAULT_GRACE_HOURS


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def rotate(
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0,
            help="Hours the old secret stays valid for devices' passwords and startup tokens.",
        ),
    ] = DEFAULT_GRACE_HOURS,
    data_dir: DataDir = None,
) -> None:
    """Make a new fleet secret; devices keep working with the old one for --grace hours."""
    from picofleet.security.rotation import RotationError, rotate_fleet_secret

    settings = settings_for(data_dir)
    try:
        done = rotate_fleet_secret(settings, grace_hours=grace)
    except RotationError as exc:
        raise CommandError(str(exc)) from None
    typer.echo(f"new fleet secret written to {settings.data_path / 'fleet.secret'} (mode 0600)")
    if done.replaced_grace:
        typer.echo("the grace period of the rotation before this one has ended")
    if grace > 0:
        typer.echo(
            f"devices' old passwords and startup tokens are accepted until {_when(done.expires_at)}"
        )
    else:
        typer.echo("no grace period: devices' old credentials are refused from the restart on")
    typer.echo(
        "next: restart the hub; the hub and operator credentials change now "
        "(picofleet creds operator); re-provision each device (picofleet usb flash, or "
        "picofleet creds device KEY) before the grace period ends; with a managed Mosquitto, "
        "mark each re-provisioned device: picofleet creds renewed KEY"
    )


def renewed(
    keys: Annotated[list[str], typer.Argument(help="Device keys now holding new credentials.")],
    data_dir: DataDir = None,
) -> None:
    """Mark re-provisioned devices, so a managed Mosquitto lists their new password now."""
    from picofleet.security.rotation import mark_renewed

    bad = sorted(k for k in keys if not valid_device_key(k))
    if bad:
        raise CommandError(f"not valid device keys: {bad}")
    marked = mark_renewed(settings_for(data_dir), keys)
    typer.echo(f"{len(marked)} device(s) marked renewed; the hub applies it within seconds")


def end_grace_cmd(data_dir: DataDir = None) -> None:
    """End the grace period of the last rotation now (restart the hub to apply)."""
    from picofleet.security.rotation import end_grace

    if end_grace(settings_for(data_dir)):
        typer.echo("grace period ended: restart the hub; devices' old credentials are refused")
    else:
        typer.echo("no grace period is running")


def _creds_group(app: typer.Typer) -> typer.Typer:
    for group in app.registered_groups:
        if group.name == "creds" and group.typer_instance is not None:
            return group.typer_instance
    raise RuntimeError("picofleet.cli has no 'creds' group to extend")


def register(app: typer.Typer) -> None:
    creds = _creds_group(app)
    creds.command("rotate")(rotate)
    creds.command("renewed")(renewed)
    creds.command("end-grace")(end_grace_cmd)
    from picofleet.security.tls_cli import app as tls_app

    app.add_typer(tls_app, name="tls")
