"""What the board tests share: flashing a board for a running hub, and PostgreSQL checks."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from picofleet.core.credentials import OPERATOR_USER
from picofleet.core.topics import Kind, Topics
from picofleet.sim.board import Board, device_config, flash
from tests.conftest import RunningHub
from tests.helpers import Client, wait_for

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
    host: str = "127.0.0.1",
    hub_http: str | None = None,
    port: int | None = None,
    ca_pem: str | None = None,
) -> Path:
    """A flash directory as `picofleet usb flash` leaves it, for a board of this hub.

    $PICOFLEET_BOARD_LIB: a directory copied into the board's /lib (e.g. an older umqtt to
    run an older firmware, with PICOFLEET_BOARD_FIRMWARE, and see a test fail on it).
    port: the broker's port when not the hub's own (a proxy in front); ca_pem: the CA the
    board trusts, so it speaks TLS to the broker."""
    cfg = device_config(
        key,
        hub.keys,
        broker=(host, port or hub.mqtt_port),
        hub_http=hub_http or hub.http,
        prefix=hub.settings.topic_prefix,
        wifi=WIFI,
        telemetry_interval_s=telemetry_interval_s,
        pump=pump,
        ca_pem=ca_pem,
    )
    flash(root, cfg, source=source, extra=extra)
    lib = os.environ.get("PICOFLEET_BOARD_LIB")
    if lib:
        shutil.copytree(lib, root / "lib", dirs_exist_ok=True)
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


async def seqs(pool: asyncpg.Pool, key: str) -> list[int]:
    rows = await pool.fetch(
        "SELECT DISTINCT p.seq FROM processed_record p JOIN device d ON d.id = p.device_id"
        " WHERE d.device_key = $1 AND p.seq IS NOT NULL ORDER BY 1",
        key,
    )
    return [r["seq"] for r in rows]


async def duplicates(pool: asyncpg.Pool, key: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM (SELECT p.seq, p.item_idx FROM processed_record p"
            " JOIN device d ON d.id = p.device_id WHERE d.device_key = $1"
            " GROUP BY 1, 2 HAVING count(*) > 1) x",
            key,
        )
    )


async def statuses(pool: asyncpg.Pool, key: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT payload FROM raw_record WHERE topic = $1 ORDER BY id",
        Topics().device(key, Kind.STATUS),
    )
    out = []
    for r in rows:
        try:
            out.append(json.loads(bytes(r["payload"])))
        except ValueError:
            continue  # a malformed packet's remains: no status of the board
    return out


async def acks(pool: asyncpg.Pool, key: str) -> dict[str, dict[str, Any]]:
    """The status documents that acknowledged a command, by command id."""
    out = {}
    for doc in await statuses(pool, key):
        a = doc.get("ack")
        if isinstance(a, dict) and a.get("id"):
            out[a["id"]] = doc
    return out


def command(hub: RunningHub, body: dict[str, Any], key: str) -> None:
    # The operator's client id is its username (a managed Mosquitto binds it).
    op = Client(
        hub.operator_port, OPERATOR_USER, hub.keys.role_password(OPERATOR_USER), OPERATOR_USER
    )
    assert op.connect(), "operator could not connect"
    try:
        op.publish(hub.topics.device(key, Kind.CMD), json.dumps(body, ensure_ascii=False))
    finally:
        op.close()


async def send(
    board: Board, hub: RunningHub, pool: asyncpg.Pool, body: dict[str, Any], key: str
) -> Any:
    """Send a command and return the status document that acknowledged it."""
    await asyncio.to_thread(command, hub, body, key)

    async def acked() -> Any:
        return (await acks(pool, key)).get(body["id"])

    return await until(board, acked, timeout=30)


async def readings_past(board: Board, pool: asyncpg.Pool, seq: int, key: str) -> list[int]:
    async def grown() -> list[int] | None:
        s = await seqs(pool, key)
        return s if s and s[-1] > seq else None

    result: list[int] = await until(board, grown, timeout=60)
    return result
