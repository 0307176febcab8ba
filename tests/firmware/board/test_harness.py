"""The board harness itself: rp2 socket semantics, the watchdog, resets, the flash."""

from __future__ import annotations

import ast
import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from picofleet.sim.board import Board

MP = Path(__file__).with_name("mp")


def results(board: Board) -> dict[str, Any]:
    out = {}
    for line in board.lines():
        if line.startswith("R "):
            _, name, value = line.split(" ", 2)
            out[name] = ast.literal_eval(value)
    return out


@contextlib.asynccontextmanager
async def line_server() -> AsyncIterator[int]:
    """Echoes each line; answers "half" with 3 bytes only, closes after "bye"."""

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while line := await r.readline():
                if line == b"half\n":
                    w.write(b"hal")
                elif line == b"bye\n":
                    w.write(b"bye!")
                    await w.drain()
                    break
                else:
                    w.write(line)
                await w.drain()
        w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def boot(root: Path, main: str, **files: str) -> Board:
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.py").write_text(main)
    for name, text in files.items():
        (root / name).write_text(text)
    return Board(root, ap=("fleet", "fleet-password")).start()


async def test_sockets_behave_like_rp2_lwip(tmp_path: Path) -> None:
    async with line_server() as port:
        main = (MP / "sockets.py").read_text().replace("PORT = 0", f"PORT = {port}")
        board = boot(tmp_path, main)
        try:
            await asyncio.to_thread(board.wait_line, "R done", timeout=30)
        finally:
            board.stop()
    got = results(board)
    assert got == {
        "literal": ("127.0.0.1", port),
        "nxdomain": ("OSError", -2),
        "readline": b"line\n",
        "nb_read": None,
        "nb_readinto": None,
        "nb_recv": ("OSError", 11),
        "timeout_read": ("OSError", 110),
        "partial_lost": ("OSError", 110),
        "eof_read": b"bye!",
        "eof_recv": b"",
        "closed": ("OSError", 9),
        "connect_again": ("ok", None),
        "connect_twice": ("OSError", 106),
        "refused": ("OSError", 104),
        "statvfs": (4096, 4096, 212, 209),  # 848 KB littlefs; root + main.py blocks used
        "urandom": 8,
        "done": 1,
    }, board.console()


async def test_watchdog_resets_a_busy_loop_and_flash_survives(tmp_path: Path) -> None:
    main = """
import machine, os
n = 0
try:
    n = int(open("count").read())
except OSError:
    pass
with open("count", "w") as f:
    f.write(str(n + 1))
print("R boot", n + 1, machine.reset_cause())
if n < 2:
    machine.WDT(timeout=300)
    while True:
        pass
"""
    board = boot(tmp_path, main)
    try:
        await asyncio.to_thread(board.wait_line, "R boot 3", timeout=30)
    finally:
        board.stop()
    assert board.resets() == ["watchdog", "watchdog"]
    assert [ln for ln in board.lines() if ln.startswith("R ")] == [
        "R boot 1 1",
        "R boot 2 3",
        "R boot 3 3",
    ]
    assert (tmp_path / "count").read_text() == "3"


async def test_power_cut_loses_uncommitted_data_only(tmp_path: Path) -> None:
    # ops: 1 create a.tmp, 2 write, 3 rename -> a; 4 create b.tmp, 5 write, 6 write, 7 rename
    main = """
import os
with open("a.tmp", "w") as f:
    f.write("A")
os.rename("a.tmp", "a")
with open("b.tmp", "w") as f:
    f.write("B1")
    f.write("B2")
os.rename("b.tmp", "b")
print("R done")
"""
    (tmp_path / "b").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "b").write_text("old")
    board = Board(tmp_path, ap=("fleet", "fleet-password"))
    try:
        board.power_cut_at(6)
        (tmp_path / "main.py").write_text(main)
        board.start()
        cut = await asyncio.to_thread(board.wait, lambda e: e["ev"] == "powercut", timeout=30)
    finally:
        board.stop()
    assert (cut["op"], cut["path"], cut["n"]) == ("write", "/b.tmp", 6)
    assert (tmp_path / "a").read_text() == "A"
    assert (tmp_path / "b").read_text() == "old"
    assert (tmp_path / "b.tmp").read_text() == ""  # created, its data never committed
    assert not (tmp_path / "a.tmp").exists()
