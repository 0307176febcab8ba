"""What the board tests share: flashing a board for a running hub, and PostgreSQL checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from picofleet.sim.board import Board, device_config, flash
from tests.conftest import RunningHub
from tests.helpers import wait_for

WIFI = ("fleet", "fleet-password")


def provision(
    root: Path,
    hub: RunningHub,
    *,
    key: str,
    telemetry_interval_s: int = 60,
    pump: dict[str, Any] | None = None,
    source: Path | None = None,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """A flash directory as `picofleet usb flash` leaves it, for a board of this hub."""
    cfg = device_config(
        key,
        hub.keys,
        broker=("127.0.0.1", hub.mqtt_port),
        hub_http=hub.http,
        prefix=hub.settings.topic_prefix,
        wifi=WIFI,
        telemetry_interval_s=telemetry_interval_s,
        pump=pump,
    )
    flash(root, cfg, source=source, extra=extra)
    return root


async def provisioned(pool: asyncpg.Pool, key: str, firmware: str | None = None) -> bool:
    row = await pool.fetchrow(
        "SELECT provisioned_at, firmware FROM device WHERE device_key = $1", key
    )
    return bool(row and row["provisioned_at"] and (firmware is None or row["firmware"] == firmware))


async def until(board: Board, check: Callable[[], Awaitable[Any]], timeout: float = 60) -> Any:
    """wait_for(check), failing with the board's console when it never comes true."""
    try:
        return await wait_for(check, timeout=timeout, interval=0.2)
    except AssertionError as e:
        raise AssertionError(
            f"{e}\n--- board {board.name} console ---\n{board.console(60)}"
        ) from None
