"""MQTT broker side: the access policy, the embedded amqtt broker and the managed Mosquitto."""

from picofleet.broker.policy import Policy, Role

__all__ = ["Policy", "Role"]
