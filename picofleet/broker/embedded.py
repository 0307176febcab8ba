"""The embedded amqtt broker: zero-install default of ``picofleet up``.

``FleetBroker`` closes holes in amqtt 0.12.1 (amqtt/broker.py) without patching it:

* ``_initialize_client_session`` (l. 508-530) deletes the session of a clean-session CONNECT's
  client id, or rewrites the persistent one's credentials, and ``_handle_client_session``
  (l. 565-580) takes over a connected one, all before ``_authenticate`` (l. 559) has judged
  the newcomer. We read the CONNECT first, authenticate it and check its client id, refuse
  with a CONNACK before amqtt looks the id up, and replay the same bytes to amqtt otherwise.
* amqtt reads any length a client announces (a 200 MiB PUBLISH is buffered whole) and logs a
  second CONNECT on an open connection, then goes on reading what follows it. ``PacketGuard``
  sits under every reader amqtt (and the Tap) gets and cuts the connection as soon as a
  fixed header announces a packet over the limit, or a second CONNECT begins: not one byte
  after that is handed on, so nothing after it is acted on.
* on every connect (l. 601-602) amqtt replays the retained messages matching *every*
  client's filters to the newcomer, and ``_publish_retained_messages_for_subscription``
  (l. 1134-1154) sends retained messages without the RECEIVE check that live broadcasts get
  (l. 1025). Ours replays only the client's own filters and asks the policy per message.
"""

from __future__ import annotations

import asyncio
import uuid
from types import TracebackType
from typing import Any, Self

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from picofleet.broker import amqtt_plugin
from picofleet.broker.policy import Policy
from picofleet.core import logs
from picofleet.core import mqttwire as wire
from picofleet.core.settings import MQTT_MAX_PACKET_BYTES
from picofleet.core.tls import TlsFiles

LISTENER = "default"
TLS_LISTENER = "tls"


def amqtt_config(
    *,
    policy_name: str,
    bind: str = "",
    port: int = 0,
    external: bool = False,
    tls: tuple[str, int, TlsFiles] | None = None,
) -> dict[str, Any]:
    """amqtt config; ``external`` leaves accepting connections to us (see picofleet.broker.tap).

    ``tls``: (bind, port, files) of a second, TLS listener with the same users and policy."""
    plugin_cfg = {"policy": policy_name}
    listener: dict[str, Any] = (
        {"type": "external", "bind": "external"}
        if external
        else {"type": "tcp", "bind": f"{bind}:{port}", "max_connections": 0}
    )
    listeners = {LISTENER: listener}
    if tls is not None:
        tls_bind, tls_port, files = tls
        listeners[TLS_LISTENER] = {
            "type": "tcp",
            "bind": f"{tls_bind}:{tls_port}",
            "max_connections": 0,
            "ssl": True,
            "certfile": str(files.cert),
            "keyfile": str(files.key),
        }
    return {
        "listeners": listeners,
        "timeout_disconnect_delay": 0,
        "plugins": {
            "picofleet.broker.amqtt_plugin.FleetAuthPlugin": plugin_cfg,
            "picofleet.broker.amqtt_plugin.FleetTopicPlugin": plugin_cfg,
        },
    }


class _Recorder(ReaderAdapter):
    """Reads through to the connection and keeps what it read, to be replayed to amqtt."""

    def __init__(self, inner: ReaderAdapter) -> None:
        self.inner = inner
        self.data = bytearray()

    async def read(self, n: int = -1) -> bytes:
        data = await self.inner.read(n)
        self.data += data
        return data

    def feed_eof(self) -> None:
        self.inner.feed_eof()


class _Replay(ReaderAdapter):
    """Serves the recorded bytes first, then the connection."""

    def __init__(self, data: bytes, inner: ReaderAdapter) -> None:
        self.data = data
        self.inner = inner

    async def read(self, n: int = -1) -> bytes:
        if not self.data:
            return await self.inner.read(n)
        if n < 0:
            head, self.data = self.data, b""
            return head + await self.inner.read(n)
        head, self.data = self.data[:n], self.data[n:]
        if len(head) < n:
            head += await self.inner.read(n - len(head))
        return head

    def feed_eof(self) -> None:
        self.inner.feed_eof()


class ProtocolViolation(ConnectionResetError):
    """The client broke the protocol; amqtt sees the connection end (NoDataError) and closes."""


class PacketGuard(ReaderAdapter):
    """Follows the packet framing of the bytes amqtt reads, and refuses to hand on

    * a second CONNECT (MQTT 3.1.1 §3.1, MQTT-3.1.0-2: a protocol violation, disconnect), and
    * a packet longer than ``max_packet`` bytes, once its fixed header says so (before any of
      its body is read, so nothing of it is buffered).

    amqtt reads a fixed header one byte at a time, so the guard judges each header byte before
    amqtt (or the Tap under it, which acts on whole packets only) has seen the packet. After a
    violation every read fails and the transport is aborted.
    """

    def __init__(
        self, inner: ReaderAdapter, writer: WriterAdapter, *, max_packet: int, log: Any
    ) -> None:
        self.inner, self.writer = inner, writer
        self.max_packet = max_packet
        self._log = log
        self._connects = 0
        self._header = bytearray()  # the fixed header read so far
        self._body_left = 0
        self.violation: str | None = None

    async def read(self, n: int = -1) -> bytes:
        if self.violation is not None:
            raise ProtocolViolation(self.violation)
        data = await self.inner.read(n)
        at = 0
        while at < len(data):
            if self._body_left:
                step = min(self._body_left, len(data) - at)
                self._body_left -= step
                at += step
                continue
            self._header_byte(data[at])
            at += 1
        return data

    def _header_byte(self, b: int) -> None:
        head = self._header
        head.append(b)
        if len(head) == 1:
            if b >> 4 == wire.CONNECT:
                self._connects += 1
                if self._connects > 1:
                    self._violate("second CONNECT on an open connection (MQTT-3.1.0-2)")
            return
        if b & 0x80:
            if len(head) > wire.MAX_LENGTH_BYTES:  # the field is 1..4 bytes (§2.2.3)
                self._violate("malformed remaining length")
            return
        remaining = wire.decode_length(head[1:])
        # Counted as Mosquitto counts for max_packet_size (remaining length + 1), so one
        # setting means the same on both brokers.
        if remaining + 1 > self.max_packet:
            self._violate(f"packet of {remaining + 1} bytes over {self.max_packet}")
        self._body_left = remaining
        head.clear()

    def _violate(self, why: str) -> None:
        self.violation = why
        self._log.warning("broker.protocol_violation", reason=why, peer=self.writer.get_peer_info())
        abort = getattr(self.writer, "abort", None)
        if abort is not None:
            abort()
        raise ProtocolViolation(why)

    def feed_eof(self) -> None:
        self.inner.feed_eof()


class FleetBroker(Broker):
    """amqtt's broker that authenticates before touching sessions and filters retained replay."""

    # A connection that opens a socket and never sends its CONNECT would hold it forever
    # (amqtt has no such limit); this is how long it gets.
    connect_timeout_s: float = 10.0

    def __init__(
        self, config: dict[str, Any], *, policy: Policy, max_packet: int = MQTT_MAX_PACKET_BYTES
    ) -> None:
        super().__init__(config)
        self.policy = policy
        self.max_packet = max_packet
        self._log = logs.get("picofleet.broker.embedded")

    async def _client_connected(
        self, listener_name: str, reader: ReaderAdapter, writer: WriterAdapter
    ) -> None:
        # Everything amqtt reads from this connection, the CONNECT included, passes the guard.
        guard = PacketGuard(reader, writer, max_packet=self.max_packet, log=self._log)
        await super()._client_connected(listener_name, guard, writer)

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        # amqtt's own parser on the same bytes, so we judge exactly the CONNECT amqtt will see.
        recorder = _Recorder(reader)
        try:
            connect = await asyncio.wait_for(
                ConnectPacket.from_stream(recorder), self.connect_timeout_s
            )
            username, client_id = connect.username, connect.client_id
        except TimeoutError as exc:
            await writer.close()
            raise MQTTError("no CONNECT within the time limit") from exc
        except (AMQTTError, MQTTError, NoDataError):
            await writer.close()
            raise
        except Exception as exc:  # undecodable strings, missing headers: not a CONNECT
            await writer.close()
            raise MQTTError(f"unreadable CONNECT: {exc!r}") from exc
        refusal = await self._refusal(username, connect.password, client_id)
        if refusal is not None:
            self._log.info(
                "broker.connect_refused",
                username=username,
                client_id=client_id,
                rc=refusal,
                peer=f"{remote_address}:{remote_port}",
            )
            await ConnackPacket.build(0, refusal).to_stream(writer)
            await writer.close()
            raise MQTTError(f"CONNECT refused with return code {refusal}")
        replay = _Replay(bytes(recorder.data), reader)
        return await super()._initialize_client_session(replay, writer, remote_address, remote_port)

    async def _refusal(
        self, username: str | None, password: str | None, client_id: str | None
    ) -> int | None:
        """The CONNACK return code that refuses this CONNECT, or None to let it in."""
        probe = Session()
        probe.client_id, probe.username, probe.password = client_id, username, password
        # The configured auth plugins, so this agrees with amqtt's own (later) check.
        if not username or not await self._authenticate(probe, self.listeners_config[LISTENER]):
            return NOT_AUTHORIZED
        if not client_id or not self.policy.may_use_client_id(username, client_id):
            return IDENTIFIER_REJECTED
        held, _ = self._sessions.get(client_id, (None, None))
        # A live or persistent session belongs to the user that opened it: another user
        # could otherwise kick it off, or resume it and collect the messages queued for it.
        if (
            held is not None
            and held.username != username
            and (held.transitions.is_connected() or not held.clean_session)
        ):
            return IDENTIFIER_REJECTED
        return None

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter = subscription[0]
        mine = (
            q
            for s, q in self._subscriptions.get(topic_filter, ())
            if s.client_id == session.client_id
        )
        granted = next(mine, None)
        handler = self._get_handler(session)
        if granted is None or handler is None:
            return  # not this client's filter: amqtt offers every client's on connect
        sends = []
        for topic, retained in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter):
                continue
            if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                continue
            qos = granted if retained.qos is None else min(granted, retained.qos)
            sends.append(
                asyncio.ensure_future(handler.mqtt_publish(topic, retained.data, qos, retain=True))
            )
        if sends:
            await asyncio.wait(sends)


class EmbeddedBroker:
    """Async context manager: the broker listens on entry and shuts down on exit."""

    def __init__(
        self,
        *,
        policy: Policy,
        bind: str = "0.0.0.0",
        port: int = 1883,
        max_packet: int = MQTT_MAX_PACKET_BYTES,
        tls: TlsFiles | None = None,
        tls_port: int = 0,
    ) -> None:
        self.policy = policy
        self.bind = bind
        self.port = port
        self.max_packet = max_packet
        self.tls, self.tls_port = tls, tls_port
        self._name = f"policy-{uuid.uuid4().hex[:8]}"
        self._broker: FleetBroker | None = None

    @property
    def broker(self) -> FleetBroker:
        assert self._broker is not None, "broker not started"
        return self._broker

    async def __aenter__(self) -> Self:
        if self._broker is not None:
            raise RuntimeError("EmbeddedBroker is already running")
        amqtt_plugin.register(self._name, self.policy)
        self._broker = FleetBroker(
            amqtt_config(
                bind=self.bind,
                port=self.port,
                policy_name=self._name,
                tls=None if self.tls is None else (self.bind, self.tls_port, self.tls),
            ),
            policy=self.policy,
            max_packet=self.max_packet,
        )
        await self._broker.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._broker is not None:
                await self._broker.shutdown()
        finally:
            self._broker = None
            amqtt_plugin.unregister(self._name)
