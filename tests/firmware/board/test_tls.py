"""Issue 17: the board verifies the hub. A board flashed with the hub's CA (config.json
``ca_pem``) speaks TLS to the broker (the hub's own TLS listener, and a real TLS server in
front of the hub, tlsfront.py, for certificates the hub would never serve), and its telemetry
lands in PostgreSQL; a hub whose certificate comes from
another CA, or has expired, is refused: the board keeps retrying, never resets, and its
password never leaves it. What the board's TLS stand-in leaves untested (mbedTLS on the chip,
its RAM and time): picofleet/sim/board/README.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import asyncpg

from picofleet.core.settings import Settings
from picofleet.core.tls import ca_pem
from picofleet.sim.board import Board
from tests.conftest import RunningHub, running_hub
from tests.firmware.board.kit import duplicates, provision, provisioned, seqs, until
from tests.firmware.board.tlsfront import Ca, TlsFront, make_ca, server_cert

REFUSED = "hub certificate refused"


async def _device_rows(pool: asyncpg.Pool, key: str) -> int:
    """raw_record rows the hub holds from this device (any topic of its own)."""
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM raw_record WHERE topic LIKE $1", f"%/devices/{key}/%"
        )
    )


async def _refuses(
    tmp_path: Path,
    hub: RunningHub,
    pool: asyncpg.Pool,
    trusted: Ca,
    cert: tuple[bytes, bytes],
    key: str,
    why: str,
) -> None:
    """The board trusts ``trusted`` and the front shows ``cert``: it must refuse, retry, stay
    up, and send nothing in the clear."""
    async with TlsFront(("127.0.0.1", hub.mqtt_port), *cert, tmp_path / "front") as front:
        flash_dir = provision(tmp_path / "flash", hub, key=key, port=front.port, ca_pem=trusted.pem)
        board = Board(flash_dir, name=key.lower())
        try:
            board.start()
            # three refusals in a row: it keeps retrying (backoff 0.5, 1, 2 s ...)
            for _ in range(3):
                await asyncio.to_thread(board.wait_line, REFUSED, since=board.mark(), timeout=60)
            lines = [x for x in board.lines() if REFUSED in x]
            assert all(why in x for x in lines), board.console()
            assert board.resets() == [] and board.boots() == 1, board.console()
            password = hub.keys.device_password(key).encode()
            assert front.seen.connections >= 3
            assert front.seen.handshakes == 0  # refused mid-handshake, as mbedTLS does
            assert front.seen.wire[:1] == b"\x16"  # a TLS handshake record, not MQTT
            assert password not in front.seen.wire
            assert b"MQTT" not in front.seen.wire  # no CONNECT in clear
            assert front.seen.plaintext == b""  # nor through the TLS: nothing reached the hub
            assert await _device_rows(pool, key) == 0
        finally:
            board.stop()


async def test_board_speaks_tls_to_the_hub(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    ca = make_ca()
    key = "BOARD-TLS"
    async with (
        running_hub(settings) as hub,
        TlsFront(("127.0.0.1", hub.mqtt_port), *server_cert(ca), tmp_path / "front") as front,
    ):
        flash_dir = provision(
            tmp_path / "flash",
            hub,
            key=key,
            telemetry_interval_s=2,
            port=front.port,
            ca_pem=ca.pem,
        )
        board = Board(flash_dir, name="tls")
        try:
            board.start()
            await until(board, lambda: provisioned(pool, key))

            async def three() -> list[int] | None:
                s = await seqs(pool, key)
                return s if len(s) >= 3 else None

            got = await until(board, three, timeout=90)
            assert got == list(range(got[0], got[0] + len(got)))  # contiguous
            assert await duplicates(pool, key) == 0
            assert board.resets() == [], board.console()
            assert not [x for x in board.lines() if REFUSED in x]
            password = hub.keys.device_password(key).encode()
            assert front.seen.handshakes >= 1
            assert password in front.seen.plaintext  # the CONNECT went through the TLS...
            assert password not in front.seen.wire  # ...and never in clear
        finally:
            board.stop()


async def test_board_refuses_a_hub_of_another_ca(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    trusted, other = make_ca("the fleet's CA"), make_ca("someone else's CA")
    async with running_hub(settings) as hub:
        await _refuses(
            tmp_path,
            hub,
            pool,
            trusted,
            server_cert(other),
            "BOARD-WRONG-CA",
            "not correctly signed by the trusted CA",
        )


async def test_board_refuses_an_expired_hub_certificate(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    ca = make_ca()
    now = dt.datetime.now(dt.UTC)
    expired = server_cert(
        ca, valid_from=now - dt.timedelta(days=60), valid_to=now - dt.timedelta(days=1)
    )
    async with running_hub(settings) as hub:
        await _refuses(tmp_path, hub, pool, ca, expired, "BOARD-EXPIRED", "validity has expired")


async def test_board_with_no_clock_refuses_then_connects_once_it_has_one(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    # mbedTLS on rp2 checks the certificate's dates against the RTC, which comes up at
    # 2021-01-01: until NTP (or the hub's Date header) answers, the hub's certificate is
    # from the future. The board must wait that out without a reset, then connect.
    ca = make_ca()
    key = "BOARD-NO-CLOCK"
    async with (
        running_hub(settings) as hub,
        TlsFront(("127.0.0.1", hub.mqtt_port), *server_cert(ca), tmp_path / "front") as front,
    ):
        flash_dir = provision(
            tmp_path / "flash",
            hub,
            key=key,
            port=front.port,
            ca_pem=ca.pem,
            hub_http="http://127.0.0.1:9",  # no Date header to set the clock from either
        )
        board = Board(flash_dir, name="no-clock")
        try:
            board.ntp(False)
            board.start()
            for _ in range(2):
                await asyncio.to_thread(board.wait_line, REFUSED, since=board.mark(), timeout=60)
            assert all("starts in the future" in x for x in board.lines() if REFUSED in x), (
                board.console()
            )
            assert front.seen.handshakes == 0 and front.seen.plaintext == b""
            assert await _device_rows(pool, key) == 0
            board.ntp(True)  # the next clock sync (within a minute) sets the RTC
            await until(board, lambda: provisioned(pool, key), timeout=120)
            assert board.resets() == [] and board.boots() == 1, board.console()
        finally:
            board.stop()


async def test_board_and_the_hubs_own_tls_listener(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """No front: the embedded broker's own TLS port (``mqtts_port``) and the CA that
    ``picofleet usb flash`` writes into config.json (picofleet.core.tls.ca_pem). A board that
    trusts another CA is refused by the same listener and never resets."""
    key, stranger = "BOARD-HUBTLS", "BOARD-STRANGER"
    async with running_hub(settings) as hub:
        good = Board(
            provision(
                tmp_path / "good",
                hub,
                key=key,
                telemetry_interval_s=2,
                port=settings.mqtts_port,
                ca_pem=ca_pem(settings),
            ),
            name="hubtls",
        )
        bad = Board(
            provision(
                tmp_path / "bad",
                hub,
                key=stranger,
                port=settings.mqtts_port,
                ca_pem=make_ca("someone else's CA").pem,
            ),
            name="stranger",
        )
        try:
            good.start()
            bad.start()

            async def three() -> list[int] | None:
                s = await seqs(pool, key)
                return s if len(s) >= 3 else None

            got = await until(good, three, timeout=90)
            assert got == list(range(got[0], got[0] + len(got)))
            assert await duplicates(pool, key) == 0
            assert good.resets() == [] and not [x for x in good.lines() if REFUSED in x]
            for _ in range(2):
                await asyncio.to_thread(bad.wait_line, REFUSED, since=bad.mark(), timeout=60)
            assert bad.resets() == [] and bad.boots() == 1, bad.console()
            assert await _device_rows(pool, stranger) == 0
        finally:
            good.stop()
            bad.stop()
