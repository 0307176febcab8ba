"""One MQTT connection per USB Pico, with that device's own credentials.

The broker's ACL lets a device publish only under its own topics, so the gateway speaks for
each board as that board: a USB Pico is indistinguishable from a Wi-Fi one upstream. The
connection is the hub's one paho wrapper (picofleet.core.mqttclient.MqttSession, over TLS
when the hub speaks it), started in the background: it reconnects by itself, and while the
broker is away QoS 1 messages wait in paho's queue, bounded, and drops are counted.
"""

from __future__ import annotations

from picofleet.core.mqttclient import MqttSession, MqttTarget

DRAIN_S = 2.0  # how long closing waits for queued messages to get out


def device_session(
    *, target: MqttTarget, key: str, password: str, queue_max: int, keepalive: int = 30
) -> MqttSession:
    """A clean session as device ``key`` (its MQTT username); ``start`` it, then ``queue``."""
    return MqttSession(
        target=target,
        username=key,
        password=password,
        client_id=f"usbgw-{key}",
        clean_session=True,
        manual_ack=False,
        queue_max=queue_max,
        keepalive=keepalive,
    )
