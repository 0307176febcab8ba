"""Ack-after-commit all the way to the device, for the embedded amqtt broker.

Every broker acknowledges a device's QoS 1 PUBLISH before the data is anywhere durable. In
embedded mode the broker and the bridge share a process, so we own the TCP listener and hand
each connection to amqtt through its public ``external`` listener API with our own
reader/writer adapters:

    device --TCP--> TapReader --bytes--> amqtt (auth, ACL, routing to subscribers)
                       | PUBLISH on an inbound topic, allowed by the policy
                       v
                    Tap buffer --take()--> bridge --commit--> ack() releases the PUBACK
    device <--TCP-- TapWriter <--PUBACK held until released-- amqtt

QoS 2 works the same way: the PUBREC is held until the commit (a device that has its PUBREC
never sends the PUBLISH again), so QoS 2 is honoured rather than downgraded.

amqtt itself is not patched. The bridge needs no MQTT subscription, so amqtt's 5 s give-up on
unacked outgoing messages never applies to ingest. A device that loses its connection before
the release gets no PUBACK and sends again (raw at least once, facts deduplicated).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections import deque
from types import TracebackType
from typing import Any, Self

from amqtt.adapters import ReaderAdapter, WriterAdapter

from picofleet.broker import amqtt_plugin
from picofleet.broker.embedded import LISTENER, FleetBroker, amqtt_config
from picofleet.broker.policy import Policy
from picofleet.core import logs
from picofleet.core import mqttwire as wire
from picofleet.core.settings import MQTT_MAX_PACKET_BYTES
from picofleet.core.source import Inbound
from picofleet.core.topics import INBOUND_KINDS, Kind

# The acknowledgement that hands a message's ownership to the server, per QoS: PUBACK, and
# PUBREC (after it a QoS 2 sender resends only PUBREL, never the PUBLISH). Both wait for
# the commit of the message's raw record.
_OWNING_ACK = {1: wire.PUBACK, 2: wire.PUBREC}
# Connections the kernel queues before the hub accepts them. asyncio's default, 100, made a
# restart under 5,000 boards a storm of dropped SYNs and retries (bench/fleet_size.py); the
# kernel caps it at net.core.somaxconn (4096 on current kernels, Raspberry Pi OS included).
LISTEN_BACKLOG = 4096
_INBOUND = (*INBOUND_KINDS, Kind.INGEST)


class Connection:
    """One device connection: the parsed identity and the PUBACKs (PUBRECs) held for it."""

    _ids = itertools.count(1)

    def __init__(
        self, tap: Tap, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.id = next(self._ids)
        self.tap = tap
        self.stream_reader = reader
        self.stream_writer = writer
        self.username: str | None = None
        self.connects = 0
        self.authenticated = False
        self.closed = False
        self.held: dict[int, int] = {}  # packet id -> commits still owed
        self.parked: dict[int, bytes] = {}  # PUBACK bytes waiting for their commit
        self.released: set[int] = set()  # committed before amqtt wrote the PUBACK

    def hold(self, pid: int) -> None:
        self.held[pid] = self.held.get(pid, 0) + 1

    def release(self, pid: int) -> None:
        left = self.held.get(pid, 0) - 1
        if left > 0:
            self.held[pid] = left
            return
        self.held.pop(pid, None)
        data = self.parked.pop(pid, None)
        if data is None:
            self.released.add(pid)
        elif not self.closed:
            self.stream_writer.write(data)


class TapReader(ReaderAdapter):
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._head = bytearray()
        self._body = bytearray()
        self._need = -1  # body bytes still to come; -1 while reading the fixed header

    async def read(self, n: int = -1) -> bytes:
        data = (
            await self.conn.stream_reader.readexactly(n)
            if n >= 0
            else await self.conn.stream_reader.read(n)
        )
        await self._observe(data)
        return data

    async def _observe(self, data: bytes) -> None:
        # Follow the byte stream amqtt reads (in whatever pieces) and cut it into packets:
        # fixed header byte, 1..4 remaining-length bytes, then the body.
        for i, b in enumerate(data):
            if self._need < 0:  # still in the fixed header
                self._head.append(b)
                if len(self._head) >= 2 and not b & 0x80:
                    self._need = wire.decode_length(self._head[1:])
                    if self._need == 0:
                        await self._emit()
                    else:
                        self._body = bytearray()
                        rest = data[i + 1 :]
                        if rest:
                            await self._observe_body(rest)
                        return
            else:
                await self._observe_body(data[i:])
                return

    async def _observe_body(self, data: bytes) -> None:
        take = data[: self._need]
        self._body += take
        self._need -= len(take)
        if self._need == 0:
            await self._emit()
            if len(data) > len(take):
                await self._observe(data[len(take) :])

    async def _emit(self) -> None:
        ptype, flags = self._head[0] >> 4, self._head[0] & 0x0F
        body = bytes(self._body)
        self._head.clear()
        self._body = bytearray()
        self._need = -1
        await self.conn.tap.on_packet(self.conn, ptype, flags, body)

    def feed_eof(self) -> None:
        self.conn.stream_reader.feed_eof()


class TapWriter(WriterAdapter):
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def write(self, data: bytes) -> None:
        conn = self.conn
        first = data[0] >> 4 if data else 0
        if first in _OWNING_ACK.values() and len(data) == 4:
            pid = (data[2] << 8) | data[3]
            if pid in conn.held:
                conn.parked[pid] = bytes(data)
                return
            conn.released.discard(pid)
        elif first == wire.CONNACK and len(data) >= 4:
            conn.authenticated = data[3] == 0
        conn.stream_writer.write(data)

    async def drain(self) -> None:
        await self.conn.stream_writer.drain()

    def get_peer_info(self) -> tuple[str, int] | None:
        info = self.conn.stream_writer.get_extra_info("peername")
        return (str(info[0]), int(info[1])) if info else None

    def get_ssl_info(self) -> Any:
        return self.conn.stream_writer.get_extra_info("ssl_object")

    def abort(self) -> None:
        """Drop the connection at once (a protocol violation: broker/embedded.py PacketGuard)."""
        self.conn.closed = True
        self.conn.stream_writer.transport.abort()

    async def close(self) -> None:
        self.conn.closed = True
        self.conn.stream_writer.close()


class Tap:
    """The embedded broker with ingest tapped off its inbound stream (a bridge ``Source``)."""

    def __init__(
        self,
        *,
        policy: Policy,
        bind: str,
        port: int,
        buffer_max: int = 20000,
        max_packet: int = MQTT_MAX_PACKET_BYTES,
        tls: tuple[str, int, ssl.SSLContext] | None = None,
    ) -> None:
        """``bind``/``port``: the plain listener; ``tls``: (bind, port, context) of the TLS one,
        which feeds the same broker and buffer."""
        self.policy = policy
        self.bind, self.port = bind, port
        self.tls = tls
        self.buffer_max = buffer_max
        self.max_packet = max_packet
        self._buf: deque[Inbound] = deque()
        self._conns: dict[int, Connection] = {}
        self._space = asyncio.Condition()
        self._wakeup = asyncio.Event()
        self._broker: FleetBroker | None = None
        self._servers: list[asyncio.Server] = []
        self._name = f"tap-{id(self):x}"
        self._log = logs.get("picofleet.broker.tap")
        self._pending: set[asyncio.Task[None]] = set()

    # -- Source protocol ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._broker is not None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    async def take(self, max_n: int, max_age: float) -> list[Inbound]:
        while not self._buf:
            self._wakeup.clear()
            await self._wakeup.wait()
        if len(self._buf) < max_n and max_age > 0:
            await asyncio.sleep(max_age)
        n = min(max_n, len(self._buf))
        out = [self._buf.popleft() for _ in range(n)]
        async with self._space:
            self._space.notify_all()
        return out

    def ack(self, items: list[Inbound]) -> int:
        n = 0
        for m in items:
            conn = self._conns.get(m.connection)
            if m.qos in _OWNING_ACK and conn is not None:
                conn.release(m.mid)
                n += 1
        return n

    def disconnect(self, usernames: set[str]) -> int:
        """Cut the open connections of these users (just blocked); returns how many."""
        cut = [c for c in self._conns.values() if c.username in usernames and not c.closed]
        for c in cut:
            c.stream_writer.transport.abort()
        return len(cut)

    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(self._publish(topic, payload, qos, retain))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        broker = self._broker
        if broker is None:
            return
        if retain:
            # An empty payload clears the retained message and still goes to live
            # subscribers (MQTT 3.3.1.3): a connected device learns of an unpin or withdraw.
            await broker.retain_message(None, topic, payload, qos)
        await broker.internal_message_broadcast(topic, payload, qos)

    # -- tapping ------------------------------------------------------------------------------
    async def on_packet(self, conn: Connection, ptype: int, flags: int, body: bytes) -> None:
        if ptype == wire.CONNECT:
            conn.connects += 1
            if conn.connects > 1:
                # The broker's PacketGuard cuts a second CONNECT before it is read whole; were
                # one ever to arrive here, it names nobody and ends the connection.
                conn.username, conn.authenticated = None, False
                conn.stream_writer.transport.abort()
                return
            try:
                conn.username = wire.connect_username(body)
            except wire.WireError:
                conn.username = None
            return
        if ptype != wire.PUBLISH or not conn.authenticated or not conn.username:
            return
        qos = (flags >> 1) & 0x03
        try:
            topic, pid, at = wire.publish_parts(flags, body)
        except wire.WireError:
            return
        parsed = self.policy.topics.parse(topic)
        if parsed is None or parsed.kind not in _INBOUND:
            return
        if not self.policy.may_publish(conn.username, topic):
            return  # amqtt drops it too
        async with self._space:
            await self._space.wait_for(lambda: len(self._buf) < self.buffer_max or conn.closed)
        if qos in _OWNING_ACK:
            conn.hold(pid)
        self._buf.append(
            Inbound(topic, bytes(body[at:]), pid, qos, conn.id, time.time(), sender=conn.username)
        )
        self._wakeup.set()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = Connection(self, reader, writer)
        self._conns[conn.id] = conn
        try:
            assert self._broker is not None
            await self._broker.external_connected(TapReader(conn), TapWriter(conn), LISTENER)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            conn.closed = True
            self._conns.pop(conn.id, None)
            writer.close()

    async def __aenter__(self) -> Self:
        if self._broker is not None:
            raise RuntimeError("Tap is already running")
        amqtt_plugin.register(self._name, self.policy)
        self._broker = FleetBroker(
            amqtt_config(external=True, policy_name=self._name),
            policy=self.policy,
            max_packet=self.max_packet,
        )
        await self._broker.start()
        self._servers.append(
            await asyncio.start_server(
                self._on_connection, self.bind, self.port, backlog=LISTEN_BACKLOG
            )
        )
        self._log.info("tap.listening", bind=self.bind, port=self.port, tls=False)
        if self.tls is not None:
            bind, port, context = self.tls
            self._servers.append(
                await asyncio.start_server(
                    self._on_connection, bind, port, ssl=context, backlog=LISTEN_BACKLOG
                )
            )
            self._log.info("tap.listening", bind=bind, port=port, tls=True)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            for server in self._servers:
                server.close()
            if self._broker is not None:
                await self._broker.shutdown()
            for server in self._servers:
                await server.wait_closed()
        finally:
            self._servers = []
            self._broker = None
            amqtt_plugin.unregister(self._name)
