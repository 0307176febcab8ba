"""The bridge: MQTT -> decode -> raw ledger -> facts / errors in PostgreSQL.

Exceptions: ``bridge.mqtt.MqttError`` (broker unreachable or refused). Bad input never
raises; it becomes an ``ingest_error`` row with a ``bridge.codes.Code``.
"""

from bridge.codes import Code
from bridge.decode import Decoder, Message
from bridge.ledger import Ledger
from bridge.mqtt import MqttError, MqttSession
from bridge.service import Bridge, Ingest

__all__ = ["Bridge", "Code", "Decoder", "Ingest", "Ledger", "Message", "MqttError", "MqttSession"]
