"""``picofleet device``: the fleet as a noun (list, show, commands), through the hub's API.

Commands go through the hub (HTTP with the operator token), which publishes them on the
device's ``cmd`` topic and waits for the device's ack in the ledger; so the CLI, the
dashboard and scripts share one path and one answer.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from picofleet.core.command import CommandError, DataDir, settings_for

HttpOpt = Annotated[
    str | None,
    typer.Option("--http", metavar="URL", help="Hub URL [http(s)://127.0.0.1:http_port]."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON output.")]
WaitOpt = Annotated[
    float, typer.Option("--wait", metavar="SECONDS", help="Seconds to wait for the device's ack.")
]

app = typer.Typer(help="Devices: list, show, send commands.", no_args_is_help=True)


def _api(http: str | None, data_dir: Any, *, token: bool = False) -> Any:
    from picofleet.core.endpoints import local_http_url
    from picofleet.core.tls import trusted_ca
    from picofleet.ops.api import HubApi
    from picofleet.ops.cli import keys_for

    settings = settings_for(data_dir)
    secret = keys_for(settings).operator_token if token else None
    base = http or local_http_url(settings)
    return HubApi(base, secret, timeout=70, ca=trusted_ca(settings))


def _get(api: Any, path: str, **kw: Any) -> Any:
    try:
        status, body = api.call("GET", path, **kw)
    except OSError as exc:
        raise CommandError(f"cannot reach the hub at {api.base}: {exc}") from None
    if status == 404:
        raise CommandError(str(body.get("detail") if isinstance(body, dict) else body))
    if status != 200:
        raise CommandError(f"GET {path} answered {status}: {body}")
    return body


def _ago(iso: str | None) -> str:
    from datetime import UTC, datetime

    if not iso:
        return "-"
    s = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit} ago"
    return f"{int(s)}s ago"


@app.command("list")
def list_devices(http: HttpOpt = None, as_json: JsonOpt = False, data_dir: DataDir = None) -> None:
    """Every device: online state, type, firmware, last seen."""
    from rich.console import Console
    from rich.table import Table

    rows = _get(_api(http, data_dir), "/api/devices")
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for col in ("device", "online", "type", "fw", "last seen", "battery"):
        table.add_column(col, no_wrap=True)
    for d in rows:
        battery = "-" if d.get("battery_pct") is None else f"{d['battery_pct']:.0f}%"
        table.add_row(
            d["device_key"],
            "yes" if d["online"] else "no",
            d.get("device_type") or "-",
            d.get("firmware") or "-",
            _ago(d.get("last_seen")),
            battery,
        )
    Console(highlight=False).print(table)


@app.command("show")
def show(
    key: Annotated[str, typer.Argument(metavar="KEY", help="Device key.")],
    http: HttpOpt = None,
    as_json: JsonOpt = False,
    data_dir: DataDir = None,
) -> None:
    """One device: its record, last status and latest reading per type."""
    dev = _get(_api(http, data_dir), f"/api/devices/{key}", timeout=10)
    if as_json:
        typer.echo(json.dumps(dev, indent=2))
        return
    for field in ("device_key", "device_type", "channel", "firmware", "online", "blocked"):
        typer.echo(f"{field:<12} {dev.get(field)}")
    typer.echo(f"{'last seen':<12} {dev.get('last_seen')} ({_ago(dev.get('last_seen'))})")
    typer.echo(f"{'status':<12} {json.dumps(dev.get('status'))}")
    for s in dev.get("series", []):
        if s["points"]:
            at, value = s["points"][-1]
            typer.echo(f"  {s['type']:<24} {value:>10g} {s['unit']:<6} {_ago(at)}")


def _send(key: str, body: dict[str, Any], http: str | None, wait: float, data_dir: Any) -> None:
    from urllib.parse import quote

    api = _api(http, data_dir, token=True)
    path = f"/api/devices/{quote(key, safe='')}/cmd?wait={wait:g}"
    try:
        status, res = api.call("POST", path, body, auth=True, timeout=wait + 10)
    except OSError as exc:
        raise CommandError(f"cannot reach the hub at {api.base}: {exc}") from None
    if status not in (200, 202):
        detail = res.get("detail") if isinstance(res, dict) else res
        raise CommandError(f"{body['cmd']} refused by the hub ({status}): {detail}")
    if status == 202:
        raise CommandError(
            f"{body['cmd']} sent to {key} (id {res['id']}), no ack within {wait:g} s:"
            " the device is offline or busy; it gets the command when it reconnects"
        )
    ack = res["ack"]
    if not ack.get("ok"):
        raise CommandError(f"{key} refused {body['cmd']}: {ack.get('error')}: {ack.get('detail')}")
    typer.echo(f"{key}: {body['cmd']} ok {ack.get('detail') or ''}".rstrip())


@app.command("pump")
def pump(
    key: Annotated[str, typer.Argument(metavar="KEY", help="Device key.")],
    seconds: Annotated[int, typer.Option("--seconds", min=1, metavar="N", help="How long to run.")],
    http: HttpOpt = None,
    wait: WaitOpt = 10.0,
    data_dir: DataDir = None,
) -> None:
    """Run the pump for SECONDS (the device enforces its own limit)."""
    _send(key, {"cmd": "pump", "seconds": seconds}, http, wait, data_dir)


@app.command("stop")
def stop(
    key: Annotated[str, typer.Argument(metavar="KEY", help="Device key.")],
    http: HttpOpt = None,
    wait: WaitOpt = 10.0,
    data_dir: DataDir = None,
) -> None:
    """Stop the pump now."""
    _send(key, {"cmd": "stop"}, http, wait, data_dir)


@app.command("reboot")
def reboot(
    key: Annotated[str, typer.Argument(metavar="KEY", help="Device key.")],
    http: HttpOpt = None,
    wait: WaitOpt = 10.0,
    data_dir: DataDir = None,
) -> None:
    """Reboot the device (it acks first)."""
    _send(key, {"cmd": "reboot"}, http, wait, data_dir)


@app.command("config")
def config(
    key: Annotated[str, typer.Argument(metavar="KEY", help="Device key.")],
    pairs: Annotated[
        list[str], typer.Argument(metavar="NAME=VALUE...", help="VALUE as JSON, else text.")
    ],
    http: HttpOpt = None,
    wait: WaitOpt = 10.0,
    data_dir: DataDir = None,
) -> None:
    """Change device settings, e.g. `config KEY pump.max_run_s=60`."""
    changes: dict[str, Any] = {}
    for pair in pairs:
        name, eq, raw = pair.partition("=")
        if not eq or not name:
            raise CommandError(f"{pair!r}: expected KEY=VALUE")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = changes
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    _send(key, {"cmd": "config", "set": changes}, http, wait, data_dir)
