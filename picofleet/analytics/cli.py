"""CLI: ``picofleet etl run|prune|status|flow``, ``picofleet stats hourly|daily``,
``picofleet alerts``. Times are ISO 8601 (UTC unless they say otherwise) or relative to now:
``90m``, ``24h``, ``7d`` ago."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

import asyncpg
import typer
from pydantic import BaseModel

from picofleet.core.command import CommandError, DataDir, settings_for

from . import _queries as queries
from ._rollup import RefreshResult, backfill, refresh
from ._settings import AnalyticsSettings

T = TypeVar("T")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

Since = Annotated[str | None, typer.Option(help="start: ISO time or 24h / 7d ago.")]
Until = Annotated[str | None, typer.Option(help="end (exclusive): ISO time or 1h ago.")]
Device = Annotated[str | None, typer.Option(help="device key.")]
AsJson = Annotated[bool, typer.Option("--json", help="JSON lines output.")]
Limit = Annotated[int, typer.Option(help="at most this many rows.")]


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An aware datetime from ISO 8601 (naive means UTC) or ``N[smhd]`` ago."""
    m = _RELATIVE.match(text.strip())
    if m:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[m[2]]: float(m[1])})
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CommandError(f"bad time {text!r}: use ISO 8601 or e.g. 90m, 24h, 7d") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _opt_time(text: str | None) -> datetime | None:
    return parse_time(text) if text else None


def _with_pool(data_dir: Path | None, work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    from picofleet.core.runtime import command_pool

    settings = settings_for(data_dir)

    async def main() -> T:
        async with command_pool(settings) as pool:
            return await work(pool)

    return asyncio.run(main())


def _show(rows: Sequence[BaseModel], as_json: bool, columns: Sequence[str]) -> None:
    if as_json:
        for r in rows:
            typer.echo(r.model_dump_json())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=None, pad_edge=False)
    for r in rows:
        data = r.model_dump()
        table.add_row(*(_cell(data[c]) for c in columns))
    Console().print(table)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _report(res: RefreshResult) -> str:
    return (
        f"facts {res.facts}, device-hours {res.hours} (changed {res.hourly_written}, "
        f"removed {res.hourly_deleted}), device-days {res.days} (changed {res.daily_written}, "
        f"removed {res.daily_deleted}), watermark {res.last_id}, {res.seconds:.2f}s"
        + (
            f", {res.pruned_hours} late device-hours before the retention horizon"
            if res.pruned_hours
            else ""
        )
    )


etl_app = typer.Typer(
    help="Rollups and retention: incremental runs and backfills.", no_args_is_help=True
)
stats_app = typer.Typer(help="Hourly and daily rollups.", no_args_is_help=True)


@etl_app.command("run")
def etl_run(data_dir: DataDir = None, since: Since = None, until: Until = None) -> None:
    """Fold new facts into the rollups; with --since/--until recompute that window."""
    settings = AnalyticsSettings()
    lo, hi = _opt_time(since), _opt_time(until)

    async def work(pool: asyncpg.Pool) -> RefreshResult:
        if lo is not None or hi is not None:
            return await backfill(pool, settings, lo, hi)
        total = RefreshResult()
        while True:  # a backlog larger than one run's cap takes several runs
            res = await refresh(pool, settings, wait=True)
            total.add(res)
            total.seconds += res.seconds
            if res.facts < settings.max_facts_per_run:
                return total

    typer.echo(_report(_with_pool(data_dir, work)))


@etl_app.command("prune")
def etl_prune(
    data_dir: DataDir = None,
    days: Annotated[
        int | None, typer.Option(min=1, help="keep this many days (default: the setting).")
    ] = None,
) -> None:
    """Bring rollups up to date, then drop raw records and facts older than the retention."""
    from ._retention import prune

    settings = AnalyticsSettings()
    if days is None and settings.retention_days is None:
        raise CommandError("no retention: pass --days or set PICOFLEET_ANALYTICS_RETENTION_DAYS")

    async def work(pool: asyncpg.Pool) -> str:
        await refresh(pool, settings, wait=True)
        res = await prune(pool, settings, days=days)
        assert res.cutoff is not None
        return f"pruned {res.facts} facts and {res.raw} raw records before {res.cutoff:%Y-%m-%d}"

    typer.echo(_with_pool(data_dir, work))


@etl_app.command("status")
def etl_status(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Watermark, facts waiting for the next run, rollup sizes, open alerts."""
    st = _with_pool(data_dir, queries.status)
    if as_json:
        typer.echo(st.model_dump_json())
    else:
        for k, v in st.model_dump().items():
            typer.echo(f"{k}: {_cell(v)}")


@etl_app.command("flow")
def etl_flow(
    key: Annotated[str, typer.Argument(help="device key")],
    l_per_min: Annotated[float | None, typer.Argument(help="pump flow rate in l/min")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="forget the flow rate.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Set a device's pump flow rate: daily rollups then show watering volume."""
    if (l_per_min is None) != clear:
        raise CommandError("give a flow rate in l/min, or --clear")
    if l_per_min is not None and l_per_min <= 0:
        raise CommandError("the flow rate must be positive")

    async def work(pool: asyncpg.Pool) -> bool:
        return await queries.set_flow(pool, key, l_per_min)

    if not _with_pool(data_dir, work):
        raise CommandError(f"no device {key!r}")
    typer.echo(f"{key}: " + (f"{l_per_min} l/min" if l_per_min else "flow rate cleared"))


@stats_app.command("hourly")
def stats_hourly(
    data_dir: DataDir = None,
    device: Device = None,
    type: Annotated[str | None, typer.Option("--type", help="series (record type).")] = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 10_000,
    as_json: AsJson = False,
) -> None:
    """Hourly count/min/max/avg/sum per device and series (default: the last 24 h)."""
    lo, hi = _opt_time(since), _opt_time(until)

    async def work(pool: asyncpg.Pool) -> list[Any]:
        return await queries.hourly(
            pool, device=device, series=type, since=lo, until=hi, limit=limit
        )

    cols = ("hour", "device", "series", "n", "min", "max", "avg", "sum")
    _show(_with_pool(data_dir, work), as_json, cols)


@stats_app.command("daily")
def stats_daily(
    data_dir: DataDir = None,
    device: Device = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 10_000,
    as_json: AsJson = False,
) -> None:
    """Daily pump run time, starts, watering, moisture and battery (default: last 30 days)."""
    lo, hi = _opt_time(since), _opt_time(until)

    async def work(pool: asyncpg.Pool) -> list[Any]:
        return await queries.daily(
            pool,
            device=device,
            since=lo.date() if lo else None,
            until=hi.date() if hi else None,
            limit=limit,
        )

    cols = (
        "day",
        "device",
        "pump_runtime_s",
        "pump_starts",
        "watering_l",
        "moisture_min",
        "moisture_avg",
        "battery_min",
    )
    _show(_with_pool(data_dir, work), as_json, cols)


def alerts_command(
    data_dir: DataDir = None,
    state: Annotated[str | None, typer.Option(help="open or closed (default: both).")] = None,
    kind: Annotated[str | None, typer.Option(help="alert kind, e.g. battery_low.")] = None,
    device: Device = None,
    limit: Limit = 200,
    as_json: AsJson = False,
) -> None:
    """Alerts, newest first."""
    if state not in (None, "open", "closed"):
        raise CommandError("--state is open or closed")

    async def work(pool: asyncpg.Pool) -> list[Any]:
        return await queries.alerts(
            pool,
            state=cast(Literal["open", "closed"] | None, state),
            kind=kind,
            device=device,
            limit=limit,
        )

    cols = ("id", "kind", "subject", "state", "opened_at", "closed_at", "detail")
    _show(_with_pool(data_dir, work), as_json, cols)


def register(app: typer.Typer) -> None:
    app.add_typer(etl_app, name="etl")
    app.add_typer(stats_app, name="stats")
    app.command("alerts")(alerts_command)
