"""An MQTT peer for the policy tests: a real paho client with an async face.

Unlike ``tests.helpers.Client`` it can keep a persistent session under a chosen client id and
counts disconnects, which is what the client-id takeover cells need to observe.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


class Peer:
    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        *,
        client_id: str = "",
        clean_session: bool = True,
        ca: Path | None = None,
    ) -> None:
        """``ca``: connect over TLS, trusting only this CA certificate."""
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
        )
        if ca is not None:
            self.c.tls_set_context(ssl.create_default_context(cafile=str(ca)))
        if username is not None:
            self.c.username_pw_set(username, password)
        self.port = port
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects = 0
        self.rc: Any = None
        self._lock = threading.Lock()
        # paho writes a publish from the caller's thread when it runs no loop thread of its
        # own; one TLS connection must not be read and written by two threads at once.
        self._io = threading.Lock()
        self._connected = threading.Event()
        self._subacked = threading.Event()
        self._suback: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe

    # paho callbacks (network thread)
    def _on_connect(self, c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        self.rc = rc
        self._connected.set()

    def _on_disconnect(self, c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        self.disconnects += 1

    def _on_message(self, c: Any, u: Any, m: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((m.topic, bytes(m.payload)))

    def _on_subscribe(self, c: Any, u: Any, mid: Any, rcs: Any, p: Any) -> None:
        self._suback = list(rcs)
        self._subacked.set()

    # blocking bodies, run in a thread so an in-process broker keeps its loop
    def _network(self) -> None:
        # paho's loop_start() reconnects by itself and sleeps a second before it can stop;
        # a peer here must stay down once the broker drops it, and stop at once.
        while not self._stop.is_set():
            with self._io:
                rc = self.c.loop(timeout=0.02)
            time.sleep(0.0005)  # let a waiting publish take the connection
            if rc != paho.MQTT_ERR_SUCCESS:
                self._stop.wait(0.02)

    def _connect(self) -> bool:
        try:
            self.c.connect("127.0.0.1", self.port, keepalive=30)
        except OSError:
            return False
        self._thread = threading.Thread(target=self._network, daemon=True)
        self._thread.start()
        if not self._connected.wait(5) or self.rc.is_failure:
            self._halt()
            return False
        return True

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        with self._io:
            info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)

    def _subscribe(self, topic_filter: str) -> bool:
        """True when the SUBACK grants the subscription."""
        self._subacked.clear()
        with self._io:
            self.c.subscribe(topic_filter, 1)
        assert self._subacked.wait(5), "no SUBACK"
        return not self._suback[0].is_failure

    async def connect(self) -> bool:
        return await asyncio.to_thread(self._connect)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await asyncio.to_thread(self._publish, topic, payload, retain)

    async def subscribe(self, topic_filter: str) -> bool:
        return await asyncio.to_thread(self._subscribe, topic_filter)

    def got(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        if self._thread is not None and self.c.is_connected():
            with self._io:
                self.c.disconnect()
            time.sleep(0.01)  # let the network thread send DISCONNECT
        self._halt()
