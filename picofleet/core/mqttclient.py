"""The one paho wrapper, ``MqttSession``: every MQTT client of the hub's own code (the bridge,
``tail``, ``doctor``, ``smoke``, the USB gateway's per-device connections) is one, over TLS
(trusting only the hub's CA, server name checked) whenever the hub speaks it.

paho runs its network loop in its own thread; inbound messages go into a bounded buffer.
Two faces on the same session:

* async (the bridge): ``async with``; ``take`` drains the buffer in batches, and a QoS 1
  message is acknowledged (PUBACK) only when ``ack`` is called after its batch committed.
  When the buffer is full the network thread waits, so the broker, not our memory, holds the
  backlog. Each (re)connection is an epoch: messages of an older epoch are never acked on
  the new connection (their packet ids belong to the old one); the broker redelivers them to
  the persistent session instead.
* blocking (tools, the USB gateway): ``with`` (connect or raise ``ConnectFailed``),
  ``subscribe``, ``publish_wait``, ``get``; or ``start`` (connect in the background and keep
  reconnecting), ``queue`` (QoS 1 into paho's bounded queue, drops counted) and ``close``.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from picofleet.core import logs
from picofleet.core.credentials import OPERATOR_USER
from picofleet.core.endpoints import local_host
from picofleet.core.settings import Settings, mqtt_endpoint, mqtt_url_tls
from picofleet.core.source import Inbound
from picofleet.core.tls import ca_file, client_context, is_loopback


@dataclass(frozen=True)
class MqttTarget:
    """Where a client connects; ``ca`` set: over TLS, trusting only that CA certificate."""

    host: str
    port: int
    ca: Path | None = None

    @property
    def tls(self) -> bool:
        return self.ca is not None

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class _Client(paho.Client):
    """paho's client without per-topic callbacks: it walks its topic matcher for every
    inbound message before calling ``on_message``, a tenth of the network thread's time in a
    profile (bench/README.md), for callbacks these sessions never register. If paho renames
    the hook, this override is simply not called and paho's own path runs."""

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise NotImplementedError("MqttSession delivers every message to on_message")

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)


def new_client(
    target: MqttTarget,
    *,
    client_id: str,
    username: str | None,
    password: str | None,
    clean_session: bool = True,
    manual_ack: bool = False,
) -> paho.Client:
    """A paho client (MQTT 3.1.1) with credentials and, for a TLS target, the hub's CA."""
    client = _Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=paho.MQTTv311,
        manual_ack=manual_ack,
    )
    if username is not None:
        client.username_pw_set(username, password)
    if target.ca is not None:
        # paho checks the certificate against the host it connects to (SNI and name).
        client.tls_set_context(client_context(target.ca))
    return client


class MqttError(RuntimeError):
    """Connecting to the broker failed."""


class ConnectFailed(MqttError):
    """No session: the broker is unreachable or refused us.

    Attributes:
        refused: True when the broker answered with a refusal (bad credentials, ...).
        reason: the broker's reason or the socket error, as text.
    """

    def __init__(self, reason: str, *, refused: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused


class MqttSession:
    """One MQTT session (see the module doc for its async and blocking faces).

    Args:
        target: the broker (and its CA when it speaks TLS).
        username, password: credentials (the hub's, an operator's or a device's).
        client_id: fixed for a persistent session; default a random ``picofleet-ops-...``.
        filters: topic filters to subscribe to at QoS 1 on every (re)connect.
        buffer_max: inbound messages held before the network thread waits (or, with
            ``drop_when_full``, before new ones are dropped and counted: a slow reader).
        clean_session: only for throwaway clients (tools, tests, USB publishers).
        manual_ack: ack after commit (the bridge) or on receipt (everything else).
        queue_max: outgoing messages paho holds while disconnected (0: no bound).
        timeout: seconds the blocking calls wait for CONNACK, SUBACK and PUBACK.
    """

    def __init__(
        self,
        *,
        target: MqttTarget,
        username: str,
        password: str,
        client_id: str | None = None,
        filters: list[str] | None = None,
        buffer_max: int = 20000,
        keepalive: int = 30,
        clean_session: bool = False,
        manual_ack: bool = True,
        will: tuple[str, bytes] | None = None,
        drop_when_full: bool = False,
        queue_max: int = 0,
        timeout: float = 5.0,
    ) -> None:
        if client_id is None:
            # A managed Mosquitto binds the operator's login to its own client id
            # (picofleet/broker/mosquitto.py); every other tool gets a fresh one.
            own = username == OPERATOR_USER
            client_id = username if own else f"picofleet-ops-{secrets.token_hex(4)}"
        self.target = target
        self.host, self.port = target.host, target.port
        self.filters = filters or []
        self.buffer_max = buffer_max
        self.keepalive = keepalive
        self.timeout = timeout
        self._manual_ack = manual_ack
        self._drop_when_full = drop_when_full
        self._client = new_client(
            target,
            client_id=client_id,
            username=username,
            password=password,
            clean_session=clean_session,
            manual_ack=manual_ack,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=15)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(queue_max)
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._buf: deque[Inbound] = deque()
        self._cond = threading.Condition()
        self._epoch = 0
        self._connected = False
        self._closing = False
        self._running = False  # paho's network thread is running
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._first: asyncio.Future[int] | None = None
        self._connack = threading.Event()
        self._connack_rc: Any = None
        self._suback = threading.Event()
        self._subscribed: list[tuple[str, int]] = []  # the blocking face's, again on reconnect
        self._lock = threading.Lock()
        self._unacked = 0  # queued QoS 1 messages not yet PUBACKed (``queue``)
        self._log = logs.get("picofleet.mqtt").bind(client_id=client_id)
        self.dropped_old_epoch = 0
        self.reconnects = 0
        self.dropped = 0  # inbound (drop_when_full) and outbound (queue full) drops

    # -- paho thread ------------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        code = int(rc.value) if hasattr(rc, "value") else int(rc)
        self._connack_rc = rc
        if rc.is_failure:
            self._log.warning("mqtt.connect_refused", reason=str(rc))
            self._connack.set()
            if self._loop and self._first and not self._first.done():
                self._loop.call_soon_threadsafe(self._set_first, code)
            return
        with self._cond:
            self._epoch += 1
            if self._manual_ack:
                # Unacked messages of the previous connection come again on this one.
                before = len(self._buf)
                self._buf = deque(m for m in self._buf if m.connection == self._epoch or m.qos == 0)
                self.dropped_old_epoch += before - len(self._buf)
            self._connected = True
            self._cond.notify_all()
        if self.filters:
            client.subscribe([(f, 1) for f in self.filters])
        if self._subscribed:
            # paho reconnects by itself, with a clean session for tools: subscribe again.
            # (Another operator tool on the operator's one client id drops this connection.)
            client.subscribe(self._subscribed)
        self._log.info(
            "mqtt.connected",
            connection=self._epoch,
            session_present=bool(getattr(flags, "session_present", False)),
        )
        self._connack.set()
        if self._loop and self._first and not self._first.done():
            self._loop.call_soon_threadsafe(self._set_first, 0)

    def _on_connect_fail(self, client: paho.Client, _u: Any) -> None:
        # No connection at all (refused socket, a certificate we do not trust): the first
        # attempt fails the context at once; later ones keep retrying in paho's loop.
        if self._loop and self._first and not self._first.done():
            self._loop.call_soon_threadsafe(self._set_first, -1)

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
            if self._drop_when_full and len(self._buf) >= self.buffer_max:
                self.dropped += 1  # a reader that cannot keep up loses messages, not memory
                return
            while len(self._buf) >= self.buffer_max and not self._closing and self._connected:
                self._cond.wait(0.25)  # backpressure: stop reading the socket
            self._buf.append(item)
            signal = len(self._buf) == 1
            self._cond.notify_all()
        if signal and self._loop is not None and self._wakeup is not None:
            self._loop.call_soon_threadsafe(self._wakeup.set)

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: Any, _rcs: Any, _p: Any) -> None:
        self._suback.set()

    def _on_publish(self, _c: paho.Client, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        with self._lock:
            self._unacked -= 1

    # -- state --------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def unacked(self) -> int:
        """Messages ``queue``d and not yet acknowledged by the broker (counted by us: paho
        cannot say it for a message first queued while disconnected)."""
        return max(self._unacked, 0)

    # -- asyncio face -------------------------------------------------------------------------
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
        if self._loop is not None or self._running:
            raise RuntimeError("MqttSession is already open")
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._first = self._loop.create_future()
        self.start()
        try:
            code = await asyncio.wait_for(self._first, 15)
        except TimeoutError:
            await self._close()
            raise MqttError(f"no CONNACK from {self.target} within 15 s") from None
        if code < 0:
            await self._close()
            raise MqttError(f"cannot connect to {self.target} (unreachable or untrusted)")
        if code != 0:
            await self._close()
            raise MqttError(f"broker {self.target} refused the connection ({code})")
        return self

    async def _close(self) -> None:
        await asyncio.to_thread(self.close)
        self._loop = None

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    # -- blocking face ------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (paho's thread), reconnecting for as long as it runs."""
        self._closing = False
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self._client.loop_start()
        self._running = True

    def __enter__(self) -> Self:
        """Connect now: raises ``ConnectFailed`` (``refused``: the broker said no)."""
        if self._running:
            raise RuntimeError("MqttSession is already connected")
        try:
            self._client.connect(self.host, self.port, keepalive=self.keepalive)
        except OSError as exc:  # ssl.SSLError too: a certificate we do not trust
            raise ConnectFailed(f"cannot reach {self.target}: {exc}", refused=False) from exc
        self._client.loop_start()
        self._running = True
        if not self._connack.wait(self.timeout):
            self.close()
            raise ConnectFailed(
                f"no CONNACK from {self.target} within {self.timeout:g} s", refused=False
            )
        if self._connack_rc.is_failure:
            self.close()
            raise ConnectFailed(str(self._connack_rc), refused=True)
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def subscribe(self, filters: list[str], qos: int = 0) -> None:
        """Subscribe now and wait for the SUBACK (``filters`` are for every reconnect)."""
        self._suback.clear()
        self._subscribed = [(f, qos) for f in filters]
        self._client.subscribe(self._subscribed)
        if not self._suback.wait(self.timeout):
            raise TimeoutError(f"no SUBACK within {self.timeout:g} s")

    def publish_wait(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Publish and, for QoS 1, wait until the broker has it (PUBACK)."""
        info = self._client.publish(topic, payload, qos=qos)
        info.wait_for_publish(self.timeout)
        if qos and not info.is_published():
            raise TimeoutError(f"no PUBACK for {topic} within {self.timeout:g} s")

    def get(self, timeout: float) -> Inbound | None:
        """The next inbound message, or None after ``timeout`` seconds."""
        with self._cond:
            if not self._buf and not self._cond.wait_for(lambda: bool(self._buf), timeout):
                return None
            item = self._buf.popleft()
            self._cond.notify_all()
            return item

    def queue(self, topic: str, payload: bytes) -> bool:
        """Queue one QoS 1 message; False when paho's queue was full and it was dropped."""
        info = self._client.publish(topic, payload, qos=1)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                self._log.warning("mqtt.queue_full", dropped=self.dropped)
            return False
        with self._lock:
            self._unacked += 1
        return True

    def close(self, drain_s: float = 0.0) -> None:
        """Give ``queue``d messages up to ``drain_s`` to get out, then disconnect and stop
        paho's thread (blocking)."""
        deadline = time.monotonic() + drain_s
        while self._connected and self.unacked and time.monotonic() < deadline:
            time.sleep(0.05)
        self._closing = True
        with self._cond:
            self._cond.notify_all()
        if self._running:
            self._client.disconnect()
            self._client.loop_stop()
            self._running = False


def probe(target: MqttTarget, username: str, password: str, timeout: float = 5.0) -> None:
    """Connect and disconnect; raises ConnectFailed."""
    with MqttSession(
        target=target,
        username=username,
        password=password,
        clean_session=True,
        manual_ack=False,
        timeout=timeout,
    ):
        pass


def hub_target(settings: Settings, *, device: bool, url: str | None = None) -> MqttTarget:
    """Where a client on this machine reaches the hub's broker, as a device or as the hub or
    an operator: ``url`` or PICOFLEET_MQTT_URL (``mqtts://`` over TLS, trusting ``tls_ca`` or
    the data dir's CA), else this host's listeners, over TLS whenever the hub speaks it."""
    url = url or settings.mqtt_url
    if url:
        host, port = mqtt_endpoint(url)
        return MqttTarget(host, port, ca_file(settings) if mqtt_url_tls(url) else None)
    host = local_host(settings.mqtt_bind)
    if not settings.tls:
        return MqttTarget(host, settings.mqtt_port if device else settings.hub_mqtt_port)
    if device or settings.broker != "mosquitto":
        return MqttTarget(host, settings.mqtts_port, ca_file(settings))
    # Mosquitto's own listener for the hub and operators: TLS unless bound to loopback.
    ca = None if is_loopback(settings.mqtt_bind) else ca_file(settings)
    return MqttTarget(host, settings.hub_mqtt_port, ca)
