"""What the bridge drains, whatever delivers it: an MQTT session (paho, any broker,
picofleet/bridge/mqtt.py) or the embedded broker's tap (picofleet/broker/tap.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    # Which connection delivered it (the session's reconnect count, the tap's connection id):
    # its packet id means something only there, so it is acked there or not at all.
    connection: int
    received_at: float
    sender: str | None = None  # the publisher's login, where the broker tells us (the tap)
    # The broker flagged it retained: sent because we subscribed, not because it was
    # published now (MQTT 3.1.1, 3.3.1.3). The embedded tap never sets it.
    retained: bool = False


class Source(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def buffered(self) -> int: ...

    async def take(self, max_n: int, max_age: float) -> list[Inbound]: ...

    def ack(self, items: list[Inbound]) -> int: ...

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> None: ...
