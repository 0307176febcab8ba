"""N boards in real MicroPython against a hub: what ``picofleet simulate --firmware`` runs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from picofleet.core import logs
from picofleet.core.credentials import FleetKeys
from picofleet.sim.board import Board, device_config, flash


@dataclass(frozen=True)
class BoardReport:
    key: str
    boots: int
    resets: list[str]
    last_lines: list[str]


async def run_board_fleet(
    *,
    n: int,
    mqtt_host: str,
    mqtt_port: int,
    http_base: str | None,
    keys: FleetKeys,
    prefix: str = "picofleet",
    duration: float | None = None,
    root: Path | None = None,
    key_prefix: str = "SIMW",
    ota_key: tuple[str, str] | None = None,
    telemetry_interval_s: int = 5,
    channel: str = "stable",
    stop: asyncio.Event | None = None,
    ca_pem: str | None = None,
) -> list[BoardReport]:
    """Flash and power N boards (keys ``{key_prefix}-{i:03d}``), run them until ``duration``
    seconds pass or ``stop`` is set (forever when both are None), power them off and report.
    A flash directory already in ``root`` keeps its state (seq numbers, OTA state)."""
    log = logs.get("picofleet.sim.board")
    base = root or Path(tempfile.mkdtemp(prefix="picofleet-boards-"))
    boards: list[Board] = []
    try:
        for i in range(n):
            key = f"{key_prefix}-{i:03d}"
            cfg = device_config(
                key,
                keys,
                broker=(mqtt_host, mqtt_port),
                hub_http=http_base,
                prefix=prefix,
                telemetry_interval_s=telemetry_interval_s,
                channel=channel,
                ota_key=ota_key,
                ca_pem=ca_pem,
            )
            flash(base / key, cfg)
            uid = hashlib.sha256(key.encode()).hexdigest()[:16]
            board = Board(base / key, uid=uid, name=key)
            await asyncio.to_thread(board.start)
            boards.append(board)
        log.info("sim.boards_started", devices=n, root=str(base))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((stop or asyncio.Event()).wait(), duration)
    finally:
        for b in boards:
            await asyncio.to_thread(b.stop)
    log.info("sim.boards_stopped", devices=n)
    return [BoardReport(b.name, b.boots(), b.resets(), b.lines()[-5:]) for b in boards]
