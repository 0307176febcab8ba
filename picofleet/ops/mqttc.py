"""A blocking MQTT client for operator tools (tail, doctor, smoke): clean session, QoS 0/1.

One context manager owns the connection: entering waits for CONNACK and raises
``ConnectFailed`` (``refused`` tells a broker that said no from one that never answered);
leaving disconnects and stops paho's network thread.
"""

from __future__ import annotations

import queue
import secrets
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from picofleet.core.credentials import OPERATOR_USER


class ConnectFailed(RuntimeError):
    """No session: the broker is unreachable or refused us.

    Attributes:
        refused: True when the broker answered with a refusal (bad credentials, ...).
        reason: the broker's reason or the socket error, as text.
    """

    def __init__(self, reason: str, *, refused: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


def _default_client_id(username: str) -> str:
    if username == OPERATOR_USER:
        return OPERATOR_USER
    return f"picofleet-ops-{secrets.token_hex(4)}"


class BlockingClient:
    """Args:
    host, port: the broker.
    username, password: credentials (operator, hub, or a device's).
    client_id: default a random ``picofleet-ops-...`` id; the operator's is its username
        (a managed Mosquitto binds it: picofleet/broker/mosquitto.py).
    timeout: seconds to wait for CONNACK, SUBACK and PUBACK.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        client_id: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or _default_client_id(username),
            clean_session=True,
            protocol=paho.MQTTv311,
        )
        self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._connack = threading.Event()
        self._suback = threading.Event()
        self._rc: Any = None
        self.messages: queue.Queue[Received] = queue.Queue(maxsize=10000)
        self.dropped = 0
        self._open = False
        self._filters: list[tuple[str, int]] = []

    def _on_connect(self, c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._rc = rc
        self._connack.set()
        if self._filters and not rc.is_failure:
            # paho reconnects by itself with a clean session: subscribe again. (Another
            # operator tool connecting under the operator's one client id drops this one.)
            c.subscribe(self._filters)

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: Any, _rcs: Any, _p: Any) -> None:
        self._suback.set()

    def _on_message(self, _c: paho.Client, _u: Any, m: paho.MQTTMessage) -> None:
        try:
            self.messages.put_nowait(Received(m.topic, bytes(m.payload), bool(m.retain)))
        except queue.Full:
            self.dropped += 1  # a reader that cannot keep up loses messages, not memory

    def __enter__(self) -> Self:
        if self._open:
            raise RuntimeError("BlockingClient is already connected")
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise ConnectFailed(
                f"cannot reach {self.host}:{self.port}: {exc}", refused=False
            ) from exc
        self._client.loop_start()
        self._open = True
        if not self._connack.wait(self.timeout):
            self._close()
            raise ConnectFailed(
                f"no CONNACK from {self.host}:{self.port} within {self.timeout:g} s", refused=False
            )
        if self._rc.is_failure:
            self._close()
            raise ConnectFailed(str(self._rc), refused=True)
        return self

    def subscribe(self, filters: list[str], qos: int = 0) -> None:
        self._suback.clear()
        self._filters = [(f, qos) for f in filters]
        self._client.subscribe(self._filters)
        if not self._suback.wait(self.timeout):
            raise TimeoutError(f"no SUBACK within {self.timeout:g} s")

    def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Publish and, for QoS 1, wait until the broker has it (PUBACK)."""
        info = self._client.publish(topic, payload, qos=qos)
        info.wait_for_publish(self.timeout)
        if qos and not info.is_published():
            raise TimeoutError(f"no PUBACK for {topic} within {self.timeout:g} s")

    def _close(self) -> None:
        self._open = False
        self._client.disconnect()
        self._client.loop_stop()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._open:
            self._close()


def probe(host: str, port: int, username: str, password: str, timeout: float = 5.0) -> None:
    """Connect and disconnect; raises ConnectFailed."""
    with BlockingClient(host, port, username, password, timeout=timeout):
        pass
