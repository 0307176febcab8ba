"""``picofleet keys ...`` and ``picofleet ota ...``: operator commands on the database.

Commands talk to PostgreSQL directly (the embedded cluster unless PICOFLEET_DATABASE_URL is
set), one transaction each; the running hub's announcer picks the change up on its next
tick. Errors an operator can fix come back as ``picofleet: message``, exit code 1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from picofleet.core.command import CommandError, DataDir, settings_for
from picofleet.core.settings import Settings

T = TypeVar("T")

keys_app = typer.Typer(help="The OTA signing key.", no_args_is_help=True)
ota_app = typer.Typer(
    help="Over-the-air updates: releases, rollouts, status.", no_args_is_help=True
)

DeviceType = Annotated[str, typer.Option("--device-type", "-t", help="Device type.")]
AsJson = Annotated[bool, typer.Option("--json", help="JSON output.")]


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(ota_app, name="ota")


def _db(data_dir: Path | None, op: Callable[[Any, Settings], Awaitable[T]]) -> T:
    """Run ``op(conn, settings)`` in one transaction on the hub's database."""
    from picofleet.core.errors import OtaError
    from picofleet.core.runtime import command_pool

    settings = settings_for(data_dir)

    async def go() -> T:
        async with command_pool(settings, max_size=1, migrate=True) as pool:
            async with pool.acquire() as conn, conn.transaction():
                return await op(conn, settings)

    try:
        return asyncio.run(go())
    except OtaError as exc:
        raise CommandError(str(exc)) from exc


def _signer(settings: Settings) -> Any:
    from picofleet.core.errors import OtaError
    from picofleet.core.signing import load_signer

    try:
        return load_signer(settings.data_path)
    except OtaError as exc:
        raise CommandError(str(exc)) from exc


def _out(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, default=str) if as_json else text)


# -- keys -----------------------------------------------------------------------------------
@keys_app.command("init")
def keys_init(
    data_dir: DataDir = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
    as_json: AsJson = False,
) -> None:
    """Create the Ed25519 signing key (private part mode 0600 in the data dir)."""
    from picofleet.core.errors import OtaError
    from picofleet.core.signing import init_keys, key_paths

    settings = settings_for(data_dir)
    try:
        signer = init_keys(settings.data_path, force=force)
    except OtaError as exc:
        raise CommandError(str(exc)) from exc
    private, public = key_paths(settings.data_path)
    data = {
        "public_key": signer.public_b64,
        "key_id": signer.key_id,
        "private_key_file": str(private),
        "public_key_file": str(public),
    }
    _out(
        data,
        as_json,
        f"public key  {signer.public_b64}\nkey id      {signer.key_id}\n"
        f"private key {private} (mode 0600; back it up, never copy it to a device)",
    )


@keys_app.command("show")
def keys_show(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Print the public key and key id devices need (ota_pubkey, ota_key_id)."""
    signer = _signer(settings_for(data_dir))
    data = {"public_key": signer.public_b64, "key_id": signer.key_id}
    _out(data, as_json, f"public key  {signer.public_b64}\nkey id      {signer.key_id}")


# -- releases -------------------------------------------------------------------------------
@ota_app.command("release")
def ota_release(
    file: Annotated[
        Path,
        typer.Argument(
            help="The application (main.py).", exists=True, dir_okay=False, readable=True
        ),
    ],
    version: Annotated[str, typer.Option("--version", "-v", help="MAJOR.MINOR.PATCH")],
    device_type: DeviceType = "pico_w",
    notes: Annotated[str, typer.Option(help="Release notes.")] = "",
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Check (size, mpy-cross), store content-addressed, sign and record a release."""
    from picofleet.ota.config import OtaSettings
    from picofleet.ota.release import create_release

    cfg = OtaSettings()
    data = file.read_bytes()

    async def op(conn: Any, settings: Settings) -> dict[str, Any]:
        return await create_release(
            conn,
            settings=settings,
            signer=_signer(settings),
            data=data,
            version=version,
            device_type=device_type,
            notes=notes,
            max_bytes=cfg.max_artifact_bytes,
            compile_timeout=cfg.compile_timeout_s,
        )

    rel = _db(data_dir, op)
    _out(
        rel,
        as_json,
        f"release {rel['version']} for {rel['device_type']}: {rel['size']} bytes, "
        f"sha256 {rel['sha256']}\n  {rel['artifact_url']}",
    )


@ota_app.command("releases")
def ota_releases(
    device_type: Annotated[str | None, typer.Option("--device-type", "-t")] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """List releases, newest version first."""
    from picofleet.ota import queries

    rows = _db(data_dir, lambda c, _s: queries.releases(c, device_type))
    if as_json:
        _out(rows, True, "")
        return
    from picofleet.core import tables

    rows_out = [
        (
            r["device_type"],
            r["version"],
            str(r["size"]),
            r["sha256"][:12],
            _short_time(r["created_at"]),
            r["bad_reason"] or "",
            r["notes"],
        )
        for r in rows
    ]
    columns = ("type", "version", "size", "sha256", "created", "bad~", "notes~")
    tables.show(tables.make(columns, rows_out, "releases"))


# -- rollouts -------------------------------------------------------------------------------
@ota_app.command("rollout")
def ota_rollout(
    version: Annotated[str, typer.Argument(help="Release version to roll out.")],
    device_type: DeviceType = "pico_w",
    channel: Annotated[
        str | None, typer.Option(help="canary|stable: announce on the channel topic.")
    ] = None,
    waves: Annotated[
        str | None, typer.Option(help="Cumulative percentages, e.g. 10,50,100.")
    ] = None,
    max_failure_rate: Annotated[float | None, typer.Option(help="Halt above this [0.2].")] = None,
    min_booted: Annotated[
        float | None, typer.Option(help="Share of a wave healthy to advance [0.9].")
    ] = None,
    min_devices: Annotated[
        int | None, typer.Option(help="Results needed before halting [3].")
    ] = None,
    soak_s: Annotated[
        int | None, typer.Option(help="Telemetry needed this long after booted_ok [300].")
    ] = None,
    timeout_s: Annotated[int | None, typer.Option(help="Silence is failure after [1800].")] = None,
    pause_between_waves: Annotated[
        bool, typer.Option(help="Wait for `ota resume` after each wave.")
    ] = False,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Start a rollout: on a channel, or in waves of the device type's fleet."""
    from picofleet.core.errors import Invalid
    from picofleet.ota import rollouts
    from picofleet.ota.config import OtaSettings

    cfg = OtaSettings()
    try:
        wave_list = None if waves is None else rollouts.parse_waves(waves)
    except Invalid as exc:
        raise CommandError(str(exc)) from exc

    async def op(conn: Any, settings: Settings) -> dict[str, Any]:
        return await rollouts.create_rollout(
            conn,
            settings=settings,
            signer=_signer(settings),
            version=version,
            device_type=device_type,
            channel=channel,
            waves=wave_list,
            max_failure_rate=_or(max_failure_rate, cfg.max_failure_rate),
            min_booted=_or(min_booted, cfg.min_booted),
            min_devices=_or(min_devices, cfg.min_devices),
            soak_s=_or(soak_s, cfg.soak_s),
            timeout_s=_or(timeout_s, cfg.timeout_s),
            pause_between_waves=pause_between_waves,
        )

    r = _db(data_dir, op)
    sizes = "/".join(str(n) for n in r["wave_sizes"])
    _out(
        r,
        as_json,
        f"rollout {r['id']}: {r['version']} to {r['devices']} {r['device_type']} device(s) "
        f"({r['kind']} {r['channel'] if r['kind'] == 'channel' else sizes})",
    )


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def _rollout_op(name: str, rollout_id: int, data_dir: Path | None, as_json: bool) -> None:
    from picofleet.ota import rollouts

    fn = getattr(rollouts, name)
    out = _db(data_dir, lambda c, _s: fn(c, rollout_id))
    _out(out, as_json, f"rollout {rollout_id}: {out['state']}")


RolloutId = Annotated[int, typer.Argument(help="Rollout id (see `ota status`).")]


@ota_app.command("pause")
def ota_pause(rollout: RolloutId, data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Pause: devices that have not started lose their offer until resume."""
    _rollout_op("pause", rollout, data_dir, as_json)


@ota_app.command("resume")
def ota_resume(rollout: RolloutId, data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Resume a paused rollout, or start the next wave of a waiting one."""
    _rollout_op("resume", rollout, data_dir, as_json)


@ota_app.command("abort")
def ota_abort(rollout: RolloutId, data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Abort: finished devices stay as they are, devices that have not started are skipped."""
    _rollout_op("abort", rollout, data_dir, as_json)


@ota_app.command("rollback")
def ota_rollback(
    device_type: DeviceType = "pico_w",
    timeout_s: Annotated[int | None, typer.Option(help="Silence is failure after [1800].")] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Republish the previous good release of the device type (action rollback)."""
    from picofleet.ota import rollouts
    from picofleet.ota.config import OtaSettings

    cfg = OtaSettings()

    async def op(conn: Any, settings: Settings) -> dict[str, Any]:
        return await rollouts.rollback(
            conn,
            settings=settings,
            signer=_signer(settings),
            device_type=device_type,
            timeout_s=_or(timeout_s, cfg.timeout_s),
        )

    r = _db(data_dir, op)
    _out(
        r,
        as_json,
        f"rollout {r['id']}: rolling {r['device_type']} back from {r['from_version']} to "
        f"{r['version']} on {r['devices']} device(s)",
    )


@ota_app.command("pin")
def ota_pin(
    device: Annotated[str, typer.Argument(help="Device key.")],
    version: Annotated[str, typer.Argument(help="Version to install and stay on.")],
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Pin a device to a version: it installs it and ignores channel meta until unpinned."""
    from picofleet.ota import rollouts

    async def op(conn: Any, settings: Settings) -> dict[str, Any]:
        return await rollouts.pin(
            conn, settings=settings, signer=_signer(settings), device_key=device, version=version
        )

    r = _db(data_dir, op)
    _out(r, as_json, f"pinned {device} to {version} (rollout {r['id']})")


@ota_app.command("unpin")
def ota_unpin(
    device: Annotated[str, typer.Argument(help="Device key.")],
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Remove a pin: the device follows its channel again."""
    from picofleet.ota import rollouts

    r = _db(data_dir, lambda c, _s: rollouts.unpin(c, device))
    _out(r, as_json, f"unpinned {device} (was {r['unpinned']})")


# -- status ---------------------------------------------------------------------------------
_COUNTS = ("devices", "booted_ok", "healthy", "running", "failed", "rolled_back", "timed_out")


def _short_time(iso: str | None) -> str:
    """``MM-DD HH:MM:SS`` (UTC) for tables; --json keeps the full timestamp."""
    return "" if not iso else iso[5:19].replace("T", " ")


@ota_app.command("status")
def ota_status(
    version: Annotated[str | None, typer.Argument(help="Only rollouts of this version.")] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Rollouts and, per device, its state in the latest of them and the version it runs
    (its newest booted_ok report)."""
    from picofleet.ota import queries

    data = _db(data_dir, lambda c, _s: queries.status(c, version))
    if as_json:
        _out(data, True, "")
        return
    from picofleet.core import tables

    rollouts = data["rollouts"]
    # two tables for the rollouts: what and where, then the counts, each within 80 columns
    plan = [
        (
            str(r["id"]),
            r["version"],
            r["device_type"],
            r["kind"] if r["kind"] != "channel" else f"channel {r['channel']}",
            r["state"],
            f"{r['wave']}/{r['waves']}",
            r["reason"] or "",
        )
        for r in rollouts
    ]
    counts = [(str(r["id"]), *(str(r[k]) for k in _COUNTS)) for r in rollouts]
    devices = [
        (
            d["device_key"],
            d["version"],
            d["state"],
            d["running_version"] or "?",
            d["rollout"],
            str(d["wave"]),
            _short_time(d["updated_at"]),
            d["reason"] or "",
        )
        for d in data["devices"]
    ]
    tables.show(
        tables.make(
            ("id", "version", "type", "kind", "state", "wave", "reason~"), plan, "rollouts"
        ),
        tables.make(("id", *_COUNTS), counts),
        tables.make(
            ("device", "version", "state", "runs", "rollout", "wave", "time", "reason~"),
            devices,
            "devices",
        ),
    )
    for p in data["pins"]:
        typer.echo(f"pinned: {p['device_key']} -> {p['version']}")


@ota_app.command("log")
def ota_log(
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    limit: Annotated[int, typer.Option(help="Newest N events.")] = 50,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """The deploy log (OTA reports, hub decisions, USB flashes), newest first."""
    from picofleet.core.deploylog import deploy_log
    from picofleet.ota import queries

    async def read(c: Any, _s: Settings) -> list[dict[str, Any]]:
        return [queries.jsonable(r) for r in await deploy_log(c, device=device, limit=limit)]

    rows = _db(data_dir, read)
    if as_json:
        _out(rows, True, "")
        return
    from picofleet.core import tables

    out = [
        (
            _short_time(r["created_at"]),
            r["device_key"],
            r["version"] or "",
            r["state"],
            r["source"],
            "" if r["seq"] is None else str(r["seq"]),
            r["reason"] or "",
        )
        for r in rows
    ]
    columns = ("time", "device", "version", "state", "source", "seq", "reason~")
    tables.show(tables.make(columns, out, "deploy log"))
