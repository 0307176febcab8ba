"""One MQTT connection per USB Pico, with that device's own credentials.

The broker's ACL lets a device publish only under its own topics, so the gateway speaks for
each board as that board: a USB Pico is indistinguishable from a Wi-Fi one upstream. paho
runs each connection's network loop in its own thread and reconnects by itself; while the
broker is away, QoS 1 messages wait in paho's queue, bounded, and drops are counted.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as paho

from picofleet.core import logs
from picofleet.core.mqttclient import MqttTarget, new_client


class DevicePublisher:
    """Publishes a device's telemetry as the device.

    Args:
        target: the broker (and its CA when it speaks TLS).
        key: the device key (its MQTT username).
        password: its derived MQTT password.
        queue_max: messages held while disconnected before new ones are dropped (counted).
    """

    def __init__(
        self,
        *,
        target: MqttTarget,
        key: str,
        password: str,
        queue_max: int,
        keepalive: int = 30,
    ) -> None:
        self.key = key
        self.dropped = 0
        self._host, self._port, self._keepalive = target.host, target.port, keepalive
        self._client = new_client(target, client_id=f"usbgw-{key}", username=key, password=password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=15)
        self._client.max_queued_messages_set(queue_max)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        # Messages queued and not yet acknowledged by the broker (PUBACK). paho cannot say
        # this for a message first queued while disconnected, so we count ourselves.
        self._unacked = 0
        self._lock = threading.Lock()
        self._log = logs.get("picofleet.usb.publisher").bind(device_key=key)
        self.connected = False
        self._closing = False

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connected = not rc.is_failure
        if rc.is_failure:
            self._log.warning("usb.mqtt_refused", reason=str(rc))
        else:
            self._log.info("usb.mqtt_connected")

    def _on_disconnect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connected = False
        if not self._closing:
            self._log.warning("usb.mqtt_disconnected", reason=str(rc))

    def _on_publish(self, client: paho.Client, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        with self._lock:
            self._unacked -= 1

    @property
    def unacked(self) -> int:
        return max(self._unacked, 0)

    def start(self) -> None:
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes) -> bool:
        """Queue one QoS 1 message; False when the queue was full and it was dropped."""
        info = self._client.publish(topic, payload, qos=1)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                self._log.warning("usb.queue_full", dropped=self.dropped)
            return False
        with self._lock:
            self._unacked += 1
        return True

    def close(self, drain_s: float = 2.0) -> None:
        """Give queued messages a moment to get out, then disconnect (blocking)."""
        deadline = time.monotonic() + drain_s
        while self.connected and self.unacked and time.monotonic() < deadline:
            time.sleep(0.05)
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()
