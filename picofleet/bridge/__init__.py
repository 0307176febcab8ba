"""The bridge: MQTT -> decode -> raw ledger -> facts / errors in PostgreSQL.

Exceptions: ``picofleet.bridge.mqtt.MqttError`` (broker unreachable or refused). Bad input never
raises; it becomes an ``ingest_error`` row with a ``picofleet.core.codes.Code``.
"""

from picofleet.bridge.decode import Decoder, Message
from picofleet.bridge.ledger import Ledger
from picofleet.bridge.mqtt import MqttError, MqttSession
from picofleet.bridge.service import Bridge, Ingest
from picofleet.core.codes import Code

__all__ = ["Bridge", "Code", "Decoder", "Ingest", "Ledger", "Message", "MqttError", "MqttSession"]
