"""A TLS front for the board tests: a CA and server certificates made with ``cryptography``,
and a real TLS server (Python ``ssl``) that terminates the board's TLS and forwards the
plaintext to the hub's MQTT port, keeping what it saw on the wire.

It stands in for the hub's own TLS listener (picofleet.core.tls) so these tests depend only on
the firmware and the board; the server speaks what Python's ssl speaks by default (TLS 1.2 and
1.3, its default cipher list) with an ECDSA P-256 certificate, the key type the Pico W's
mbedTLS can use with those ciphers (it has no ECDHE-RSA).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from picofleet.core import tls
from tests.helpers import free_port


@dataclass(frozen=True)
class Ca:
    """A CA made the way the hub makes its own (picofleet.core.tls.make_ca)."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def pem(self) -> str:
        return self.cert_pem.decode()


def make_ca(name: str = "picofleet test CA") -> Ca:
    return Ca(*tls.make_ca(name))


def server_cert(
    ca: Ca,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    *,
    valid_from: dt.datetime | None = None,
    valid_to: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for ``hosts`` (names or IP addresses), signed by ``ca``."""
    start = valid_from or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    days = (valid_to - start).days if valid_to else 30
    return tls.make_server_cert(ca.cert_pem, ca.key_pem, list(hosts), days=days, not_before=start)


@dataclass
class Seen:
    """What the front saw, over all connections."""

    connections: int = 0
    handshakes: int = 0  # completed on the server side
    refused: list[str] = field(default_factory=list)  # handshakes that failed, and why
    wire: bytearray = field(default_factory=bytearray)  # every byte the clients sent
    plaintext: bytearray = field(default_factory=bytearray)  # decrypted, sent to the hub


class TlsFront:
    """A TLS listener on 127.0.0.1:``port`` forwarding to ``target`` in plain TCP."""

    def __init__(self, target: tuple[str, int], cert_pem: bytes, key_pem: bytes, tmp: Path):
        self.target = target
        self.port = free_port()
        self.seen = Seen()
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "front.crt").write_bytes(cert_pem)
        (tmp / "front.key").write_bytes(key_pem)
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(tmp / "front.crt", tmp / "front.key")
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.seen.connections += 1
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._ctx.wrap_bio(inc, out, server_side=True)

        def flush() -> None:
            if data := out.read():
                w.write(data)

        async def feed() -> bool:
            data = await r.read(65536)
            if not data:
                inc.write_eof()
                return False
            self.seen.wire += data
            inc.write(data)
            return True

        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    flush()
                    await w.drain()
                    if not await feed():
                        self.seen.refused.append("closed during the handshake")
                        return
                except ssl.SSLError as e:
                    flush()
                    self.seen.refused.append(e.reason or str(e))
                    return
            flush()
            await w.drain()
            self.seen.handshakes += 1
            ur, uw = await asyncio.open_connection(*self.target)
        except (OSError, ssl.SSLError) as e:
            self.seen.refused.append(repr(e))
            w.close()
            return

        async def up() -> None:
            while await feed():
                while True:
                    try:
                        data = tls.read(65536)
                    except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                        break
                    if not data:
                        break
                    self.seen.plaintext += data
                    uw.write(data)
                flush()
                await uw.drain()
            uw.close()

        async def down() -> None:
            while data := await ur.read(65536):
                tls.write(data)
                flush()
                await w.drain()
            w.close()

        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.CancelledError):
            await asyncio.gather(up(), down())
        w.close()
        uw.close()

    def _spawn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        t = asyncio.create_task(self._handle(r, w))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(
            self._spawn, "127.0.0.1", self.port, reuse_address=True
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
