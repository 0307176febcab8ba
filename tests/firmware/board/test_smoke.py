"""Smoke: one board in real MicroPython boots the firmware and gets onto the real hub."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from picofleet.core.settings import Settings
from picofleet.sim.board import Board
from tests.conftest import running_hub
from tests.firmware.board.kit import provision, provisioned, until


async def test_board_boots_and_provisions_on_the_hub(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with running_hub(settings) as hub:
        flash_dir = provision(tmp_path / "flash", hub, key="BOARD-SMOKE")
        board = Board(flash_dir, name="smoke")
        try:
            board.start()
            await until(board, lambda: provisioned(pool, "BOARD-SMOKE"))
            heap = await asyncio.to_thread(board.heap, "online")
            assert 0 < heap.alloc and board.resets() == [], board.console()
        finally:
            board.stop()
