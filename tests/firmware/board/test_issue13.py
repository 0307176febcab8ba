"""Issue 13's firmware bugs, each where a board shows it: real MicroPython, real hub.

Every test here failed on the firmware of 7d14445 (run it with
PICOFLEET_BOARD_FIRMWARE=<that pico_w> and, for its umqtt wrapper, PICOFLEET_BOARD_LIB=<a
/lib holding umqtt.simple 1.4.0>), each for its own bug.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from picofleet.core.settings import Settings
from picofleet.sim.board import HEAP_CEILING, Board
from tests.conftest import RunningHub, running_hub
from tests.firmware.board.kit import (
    acks,
    command,
    provision,
    provisioned,
    readings_past,
    send,
    statuses,
    until,
)

DATA = Path(__file__).with_name("data")
RELAY = 15
PUMP = {"max_run_s": 30, "cooldown_s": 0, "auto_below_pct": None}


@contextlib.asynccontextmanager
async def online_board(
    settings: Settings, pool: asyncpg.Pool, root: Path, key: str, **flash: object
) -> AsyncIterator[tuple[RunningHub, Board]]:
    """A hub and a board of it that has provisioned itself."""
    async with running_hub(settings) as hub:
        provision(root, hub, key=key, telemetry_interval_s=2, pump=PUMP, **flash)  # type: ignore[arg-type]
        board = Board(root, name=key)
        board.start()
        try:
            await until(board, lambda: provisioned(pool, key))
            yield hub, board
        finally:
            board.stop()


async def test_field_board_with_umqtt_installed_connects_and_stays_up(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """A board in the field has umqtt.simple from `mip install` in /lib (1.8.0: connect()
    calls sock.settimeout). Bug: the firmware's wrapper socket had no settimeout, every
    connect raised AttributeError and the board reset, forever."""
    lib = {"lib/umqtt/simple.py": (DATA / "umqtt" / "simple.py").read_bytes()}
    key = "BOARD-UMQTT"
    async with running_hub(settings) as hub:
        root = provision(tmp_path / "flash", hub, key=key, telemetry_interval_s=2, extra=lib)
        board = Board(root, name=key)
        board.start()
        try:

            async def online_or_reset() -> bool:
                return bool(board.resets()) or await provisioned(pool, key)

            await until(board, online_or_reset)
            assert board.resets() == [], board.console()
            await readings_past(board, pool, 2, key)
        finally:
            board.stop()


async def test_non_ascii_command_id_is_echoed_in_a_wellformed_ack(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Bug: umqtt sized strings with len(str) while json.dumps leaves UTF-8 unescaped, so
    the ack of a command whose id is not ASCII was a malformed packet and the broker
    dropped the session."""
    key = "BOARD-UTF8"
    async with online_board(settings, pool, tmp_path / "flash", key) as (hub, board):
        doc = await send(board, hub, pool, {"cmd": "stop", "id": "pümp-✓"}, key)
        assert doc["ack"]["id"] == "pümp-✓" and doc["ack"]["ok"] is True
        after = await send(board, hub, pool, {"cmd": "stop", "id": "ascii"}, key)
        assert after["ack"]["ok"] is True
        online = [d for d in await statuses(pool, key) if d.get("state") == "online"]
        assert len([d for d in online if "ack" not in d]) == 1, "the session was dropped"


async def test_extended_pump_run_keeps_the_relay_on(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Bug: a second pump command moved the run's end but not the hardware backstop timer,
    which cut the relay at the first run's end while status still said on."""
    key = "BOARD-PUMP"
    async with online_board(settings, pool, tmp_path / "flash", key) as (hub, board):
        await send(board, hub, pool, {"cmd": "pump", "seconds": 2, "id": "e1"}, key)
        ext = await send(board, hub, pool, {"cmd": "pump", "seconds": 15, "id": "e2"}, key)
        assert ext["pump"] == 1
        await asyncio.sleep(4)  # past the first run's end and its backstop (2 + 0.5 s)
        probe = await send(board, hub, pool, {"cmd": "nothing", "id": "p1"}, key)
        assert probe["pump"] == 1
        assert board.pin(RELAY)[-1][1] == 1, "relay dropped while the pump reports on"
        off = await send(board, hub, pool, {"cmd": "stop", "id": "s1"}, key)
        assert off["pump"] == 0 and board.pin(RELAY)[-1][1] == 0


class _BadHttp:
    """An HTTP server that answers every request with ``reply`` and counts them."""

    def __init__(self, reply: bytes) -> None:
        self.reply, self.hits = reply, 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> _BadHttp:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await r.readuntil(b"\r\n\r\n")
            self.hits += 1
            w.write(self.reply)
            await w.drain()
        w.close()


@pytest.mark.parametrize(
    "reply",
    [b"HTTP/1.0 2OO OK\r\n\r\n", b"HTTP/1.0 200 OK\r\nDate: \xff\xfe\xfd\r\n\r\n"],
    ids=["bad-status-line", "non-utf8-header"],
)
async def test_broken_http_reply_does_not_reset_the_board(
    reply: bytes, settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """NTP does not answer, so the board asks the hub's HTTP Date header for the time; the
    answer is broken. Bug: httpc raised ValueError/UnicodeError past its callers into a
    fatal reset."""
    key = "BOARD-HTTP"
    async with _BadHttp(reply) as bad, running_hub(settings) as hub:
        root = provision(tmp_path / "flash", hub, key=key, telemetry_interval_s=2, hub_http=bad.url)
        board = Board(root, name=key)
        board.ntp(False)
        board.start()
        try:

            async def asked() -> bool:
                return bad.hits >= 1

            await until(board, asked)
            await readings_past(board, pool, 3, key)  # without a clock, it still reports
            assert board.resets() == [], board.console()
            assert not [ln for ln in board.lines() if "fatal" in ln], board.console()
        finally:
            board.stop()


class _DripHttp(_BadHttp):
    """Answers one byte every 1.5 s: every socket call finishes within its timeout, the
    whole answer takes half a minute."""

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await r.readuntil(b"\r\n\r\n")
            self.hits += 1
            for b in self.reply:
                w.write(bytes([b]))
                await w.drain()
                await asyncio.sleep(1.5)
        w.close()


async def test_slow_http_reply_does_not_trip_the_watchdog(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """NTP does not answer and the hub's HTTP answer trickles in. Bug: httpc read the status
    line and headers with the whole board blocked and nothing feeding the 8 s watchdog."""
    key = "BOARD-DRIP"
    reply = b"HTTP/1.0 200 OK\r\n\r\n"  # 19 bytes, 28 s
    async with _DripHttp(reply) as drip, running_hub(settings) as hub:
        root = provision(
            tmp_path / "flash", hub, key=key, telemetry_interval_s=2, hub_http=drip.url
        )
        board = Board(root, name=key)
        board.ntp(False)
        board.start()
        try:

            async def asked() -> bool:
                return drip.hits >= 1

            await until(board, asked)
            await asyncio.sleep(12)  # the watchdog's 8 s, and then some
            assert board.resets() == [], board.console()
            await readings_past(board, pool, 3, key)  # after the whole answer
        finally:
            board.stop()


async def test_slow_dns_does_not_trip_the_watchdog(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The broker is configured by name and the resolver takes 12 s to answer (rp2's
    getaddrinfo has no timeout). Bug: nothing fed the 8 s watchdog meanwhile: reset, forever."""
    key = "BOARD-DNS"
    async with running_hub(settings) as hub:
        root = provision(tmp_path / "flash", hub, key=key, telemetry_interval_s=2, host="hub.test")
        board = Board(root, name=key)
        board.dns("hub.test", "127.0.0.1", delay_s=12)
        board.start()
        try:

            async def online_or_reset() -> bool:
                return bool(board.resets()) or await provisioned(pool, key)

            await until(board, online_or_reset, timeout=90)
            assert board.resets() == [], board.console()
        finally:
            board.stop()


async def test_huge_message_is_dropped_not_taken_into_the_heap(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """A 200 KB command (a huge retained message on an OTA topic is the same). Bug: the
    client read any message whole: a MemoryError and a fatal reset on a Pico W. This build's
    heap grows instead of failing, so the test checks that the message was never taken in
    (no ack for it) and that the session goes on."""
    key = "BOARD-HUGE"
    async with online_board(settings, pool, tmp_path / "flash", key) as (hub, board):
        big = {"cmd": "stop", "id": "big", "pad": "x" * 200_000}
        await asyncio.to_thread(command, hub, big, key)
        after = await send(board, hub, pool, {"cmd": "stop", "id": "small"}, key)
        assert after["ack"]["ok"] is True
        assert "big" not in await acks(pool, key), "a 200 KB message was read into the heap"
        heap = await asyncio.to_thread(board.heap, "after-huge")
        assert heap.firmware < HEAP_CEILING, heap
        assert board.resets() == [], board.console()
