"""The bridge's persistent session on an external broker (core.mqttclient.MqttSession)."""

from __future__ import annotations

from picofleet.core.credentials import HUB_USER, FleetKeys
from picofleet.core.mqttclient import MqttError, MqttSession, MqttTarget
from picofleet.core.settings import Settings
from picofleet.core.topics import Topics

__all__ = ["MqttError", "MqttSession", "hub_session"]


def hub_session(settings: Settings, keys: FleetKeys, target: MqttTarget) -> MqttSession:
    """The bridge's persistent session (optionally shared) at ``target``."""
    filters = Topics(settings.topic_prefix).inbound_filters()
    if settings.shared_subscription:
        filters = [f"$share/{settings.shared_subscription}/{f}" for f in filters]
    return MqttSession(
        target=target,
        username=HUB_USER,
        password=keys.role_password(HUB_USER),
        client_id=settings.bridge_client_id,
        filters=filters,
        buffer_max=settings.buffer_max_messages,
        keepalive=settings.mqtt_keepalive_s,
        will=(Topics(settings.topic_prefix).hub_status, b'{"state":"offline"}'),
    )
