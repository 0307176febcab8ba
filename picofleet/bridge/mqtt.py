"""The bridge's MQTT session: paho-mqtt with manual acknowledgement.

paho runs its network loop in its own thread; inbound messages go into a bounded buffer the
asyncio side drains in batches. A QoS 1 message is acknowledged (PUBACK) only when the
asyncio side calls ``ack`` after its batch committed. When the buffer is full the network
thread waits, so the broker, not our memory, holds the backlog.

Each (re)connection is an epoch: messages of an older epoch are never acked on the new
connection (their packet ids belong to the old one); the broker redelivers them to the
persistent session instead.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from picofleet.core import logs
from picofleet.core.credentials import HUB_USER, FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.source import Inbound
from picofleet.core.topics import Topics


class MqttError(RuntimeError):
    """Connecting to the broker failed."""


class _Client(paho.Client):
    """paho's client without per-topic callbacks: it walks its topic matcher for every
    inbound message before calling ``on_message``, a tenth of the network thread's time in a
    profile (bench/README.md), for callbacks this session never registers. If paho renames
    the hook, this override is simply not called and paho's own path runs."""

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise NotImplementedError("MqttSession delivers every message to on_message")

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)


class MqttSession:
    """Async context manager around one persistent MQTT session.

    Args:
        host, port: the broker.
        username, password: credentials (the hub's).
        client_id: fixed, so the broker keeps the session (clean session off).
        filters: topic filters to subscribe to at QoS 1 on every (re)connect.
        buffer_max: inbound messages held before the network thread waits.
        clean_session: only for throwaway clients (tools, tests).
        manual_ack: ack after commit (the bridge) or on receipt (tools).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        client_id: str,
        filters: list[str] | None = None,
        buffer_max: int = 20000,
        keepalive: int = 30,
        clean_session: bool = False,
        manual_ack: bool = True,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.filters = filters or []
        self.buffer_max = buffer_max
        self.keepalive = keepalive
        self._manual_ack = manual_ack
        self._client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
            manual_ack=manual_ack,
        )
        self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=15)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._buf: deque[Inbound] = deque()
        self._cond = threading.Condition()
        self._epoch = 0
        self._connected = False
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._first: asyncio.Future[int] | None = None
        self._log = logs.get("picofleet.bridge.mqtt").bind(client_id=client_id)
        self.dropped_old_epoch = 0
        self.reconnects = 0

    # -- paho thread ------------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        code = int(rc.value) if hasattr(rc, "value") else int(rc)
        if rc.is_failure:
            self._log.warning("mqtt.connect_refused", reason=str(rc))
            if self._loop and self._first and not self._first.done():
                self._loop.call_soon_threadsafe(self._set_first, code)
            return
        with self._cond:
            self._epoch += 1
            # Unacked messages of the previous connection come again on this one.
            before = len(self._buf)
            self._buf = deque(m for m in self._buf if m.connection == self._epoch or m.qos == 0)
            self.dropped_old_epoch += before - len(self._buf)
            self._connected = True
            self._cond.notify_all()
        if self.filters:
            client.subscribe([(f, 1) for f in self.filters])
        self._log.info(
            "mqtt.connected",
            connection=self._epoch,
            session_present=bool(getattr(flags, "session_present", False)),
        )
        if self._loop and self._first and not self._first.done():
            self._loop.call_soon_threadsafe(self._set_first, 0)

    def _set_first(self, code: int) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_result(code)

    def _on_disconnect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()
        if not self._closing:
            self.reconnects += 1
            self._log.warning("mqtt.disconnected", reason=str(rc), reconnect=True)

    def _on_message(self, client: paho.Client, _u: Any, m: paho.MQTTMessage) -> None:
        item = Inbound(
            m.topic,
            bytes(m.payload),
            m.mid,
            m.qos,
            self._epoch,
            time.time(),
            retained=bool(m.retain),
        )
        with self._cond:
            while len(self._buf) >= self.buffer_max and not self._closing and self._connected:
                self._cond.wait(0.25)  # backpressure: stop reading the socket
            self._buf.append(item)
            signal = len(self._buf) == 1
        if signal and self._loop is not None and self._wakeup is not None:
            self._loop.call_soon_threadsafe(self._wakeup.set)

    # -- asyncio side -------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def epoch(self) -> int:
        return self._epoch

    async def take(self, max_n: int, max_age: float) -> list[Inbound]:
        """Wait for messages; return up to max_n, waiting at most max_age for a fuller batch."""
        assert self._wakeup is not None
        while not self._buf:
            self._wakeup.clear()
            if self._buf:
                break
            await self._wakeup.wait()
        if len(self._buf) < max_n and max_age > 0:
            await asyncio.sleep(max_age)
        with self._cond:
            n = min(max_n, len(self._buf))
            out = [self._buf.popleft() for _ in range(n)]
            self._cond.notify_all()
        return out

    def ack(self, items: list[Inbound]) -> int:
        """PUBACK every QoS 1 message of the current connection; returns how many."""
        if not self._manual_ack:
            return 0
        epoch, n = self._epoch, 0
        for m in items:
            if m.qos > 0 and m.connection == epoch:
                self._client.ack(m.mid, m.qos)
                n += 1
        return n

    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain)

    async def __aenter__(self) -> Self:
        if self._loop is not None:
            raise RuntimeError("MqttSession is already open")
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._first = self._loop.create_future()
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self._client.loop_start()
        try:
            code = await asyncio.wait_for(self._first, 15)
        except TimeoutError:
            await self._close()
            raise MqttError(f"no CONNACK from {self.host}:{self.port} within 15 s") from None
        if code != 0:
            await self._close()
            raise MqttError(f"broker {self.host}:{self.port} refused the connection ({code})")
        return self

    async def _close(self) -> None:
        self._closing = True
        with self._cond:
            self._cond.notify_all()
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._loop = None

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()


def hub_session(settings: Settings, keys: FleetKeys, host: str, port: int) -> MqttSession:
    """The bridge's persistent session on an external broker (optionally shared)."""
    filters = Topics(settings.topic_prefix).inbound_filters()
    if settings.shared_subscription:
        filters = [f"$share/{settings.shared_subscription}/{f}" for f in filters]
    return MqttSession(
        host=host,
        port=port,
        username=HUB_USER,
        password=keys.role_password(HUB_USER),
        client_id=settings.bridge_client_id,
        filters=filters,
        buffer_max=settings.buffer_max_messages,
        keepalive=settings.mqtt_keepalive_s,
        will=(Topics(settings.topic_prefix).hub_status, b'{"state":"offline"}'),
    )
