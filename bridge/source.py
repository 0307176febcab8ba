"""What the bridge drains: an MQTT session (paho, any broker) or the embedded broker's tap."""

from __future__ import annotations

from typing import Protocol

from bridge.mqtt import Inbound


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
