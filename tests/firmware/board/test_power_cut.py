"""Power cuts at every flash operation of a boot: the board comes back and never reuses a
telemetry seq (the hub would drop the second reading under the first one's seq)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from picofleet.core.settings import Settings
from picofleet.core.topics import Kind, Topics
from picofleet.sim.board import Board
from tests.conftest import running_hub
from tests.firmware.board.kit import provision, provisioned, readings_past, seqs, until

KEY = "BOARD-CUT"


async def test_power_cut_at_each_boot_write_never_reuses_a_seq(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with running_hub(settings) as hub:
        root = provision(tmp_path / "flash", hub, key=KEY, telemetry_interval_s=2)
        board = Board(root, name=KEY)
        try:
            board.start()
            await until(board, lambda: provisioned(pool, KEY))
            await readings_past(board, pool, 1, KEY)
            first_boot_ops = [(e["op"], e["path"]) for e in board.flash_ops()]
            cuts = []
            for n in range(1, 4):
                board.power_off()
                board.power_cut_at(n)
                m = board.mark()
                board.start()
                cut = await asyncio.to_thread(
                    board.wait, lambda e: e["ev"] == "powercut", since=m, timeout=60
                )
                cuts.append((cut["op"], cut["path"]))
                before = (await seqs(pool, KEY))[-1]
                board.start()
                await readings_past(board, pool, before + 1, KEY)
        finally:
            board.stop()
    # the boot's first writes reserve a block of seqs: temp file, its data, the rename
    assert cuts == [
        ("create", "/seq.dat.tmp"),
        ("write", "/seq.dat.tmp"),
        ("rename", "/seq.dat.tmp"),
    ]
    assert ("rename", "/seq.dat.tmp") in first_boot_ops
    reused = await pool.fetchval(
        "SELECT count(*) FROM (SELECT body->>'seq' FROM raw_record WHERE topic = $1"
        " GROUP BY 1 HAVING count(DISTINCT body->'readings') > 1) x",
        Topics().device(KEY, Kind.TELEMETRY),
    )
    assert reused == 0
    assert board.resets() == [], board.console()
