"""amqtt plugins that apply ``picofleet.broker.policy.Policy``.

amqtt builds plugins from a dotted path and a config dict, so the live ``Policy`` (whose
blocked set the hub refreshes) is registered here under a name the config carries.
"""

from __future__ import annotations

from dataclasses import dataclass

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from picofleet.broker.policy import Policy

_POLICIES: dict[str, Policy] = {}


def register(name: str, policy: Policy) -> None:
    _POLICIES[name] = policy


def unregister(name: str) -> None:
    _POLICIES.pop(name, None)


class FleetAuthPlugin(BaseAuthPlugin):
    @dataclass
    class Config:
        policy: str = "default"

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.policy = _POLICIES[self.config.policy]

    async def authenticate(self, *, session: Session) -> bool | None:
        return self.policy.authenticate(session.username, session.password)


class FleetTopicPlugin(BaseTopicPlugin):
    @dataclass
    class Config:
        policy: str = "default"

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.policy = _POLICIES[self.config.policy]

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        if session is None or topic is None or not session.username:
            return False
        if action == Action.PUBLISH:
            return self.policy.may_publish(session.username, topic)
        if action == Action.SUBSCRIBE:
            return self.policy.may_subscribe(session.username, topic)
        return self.policy.may_receive(session.username, topic)
