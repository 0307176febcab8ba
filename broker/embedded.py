"""The embedded amqtt broker: zero-install default of ``picofleet up``."""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Any, Self

from amqtt.broker import Broker

from broker import amqtt_plugin
from broker.policy import Policy

LISTENER = "default"


def amqtt_config(
    *, policy_name: str, bind: str = "", port: int = 0, external: bool = False
) -> dict[str, Any]:
    """amqtt config; ``external`` leaves accepting connections to us (see broker.tap)."""
    plugin_cfg = {"policy": policy_name}
    listener: dict[str, Any] = (
        {"type": "external", "bind": "external"}
        if external
        else {"type": "tcp", "bind": f"{bind}:{port}", "max_connections": 0}
    )
    return {
        "listeners": {LISTENER: listener},
        "timeout_disconnect_delay": 0,
        "plugins": {
            "broker.amqtt_plugin.FleetAuthPlugin": plugin_cfg,
            "broker.amqtt_plugin.FleetTopicPlugin": plugin_cfg,
        },
    }


class EmbeddedBroker:
    """Async context manager: the broker listens on entry and shuts down on exit."""

    def __init__(self, *, policy: Policy, bind: str = "0.0.0.0", port: int = 1883) -> None:
        self.policy = policy
        self.bind = bind
        self.port = port
        self._name = f"policy-{uuid.uuid4().hex[:8]}"
        self._broker: Broker | None = None

    @property
    def broker(self) -> Broker:
        assert self._broker is not None, "broker not started"
        return self._broker

    async def __aenter__(self) -> Self:
        if self._broker is not None:
            raise RuntimeError("EmbeddedBroker is already running")
        amqtt_plugin.register(self._name, self.policy)
        self._broker = Broker(amqtt_config(bind=self.bind, port=self.port, policy_name=self._name))
        await self._broker.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._broker is not None:
                await self._broker.shutdown()
        finally:
            self._broker = None
            amqtt_plugin.unregister(self._name)
